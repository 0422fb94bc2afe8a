"""The objective a search optimises: a metric and its direction, and what better, worse and best
mean for it (every comparison of scores in the engine goes through it)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Objective:
    """The metric to optimise and its direction."""

    metric: str  # a key of the harness's result, e.g. "val_bpb"
    direction: str  # "minimize" or "maximize"
    text: str  # the goal as the researcher wrote it

    def is_better(self, candidate: float, reference: float) -> bool:
        """Whether `candidate` is strictly better than `reference` in this direction."""
        if self.direction == "minimize":
            return candidate < reference
        return candidate > reference

    def advantage(self, candidate: float, reference: float) -> float:
        """How far `candidate` is ahead of `reference` (negative: behind)."""
        return reference - candidate if self.direction == "minimize" else candidate - reference

    def sort_key(self, value: float | None) -> float:
        """Sorts scores best first, no score last."""
        if value is None:
            return math.inf
        return value if self.direction == "minimize" else -value

    def ranked(self, items: Iterable[T], score: Callable[[T], float | None]) -> list[T]:
        """`items` best first by `score` (those without one last)."""
        return sorted(items, key=lambda item: self.sort_key(score(item)))

    def top(self, items: Iterable[T], score: Callable[[T], float | None], count: int) -> list[T]:
        """The first `count` of `ranked(items, score)`, without sorting all of them (heapq keeps
        the order of items with equal scores, as sorted does)."""
        return heapq.nsmallest(count, items, key=lambda item: self.sort_key(score(item)))

    def best(self, items: Iterable[T], score: Callable[[T], float | None]) -> T | None:
        """The item with the best score, None when none has one."""
        ranked = [item for item in self.ranked(items, score) if score(item) is not None]
        return ranked[0] if ranked else None
