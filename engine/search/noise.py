"""The noise of a task's score: sigma per accelerator type, pooled from groups of runs of one code
made at one time, and the Student-t quantiles the promotion test compares against."""

from __future__ import annotations

import math
import statistics
from functools import lru_cache

from scipy.stats import t as student_t

MIN_SIGMA = 1e-6  # a task with no measurable noise still needs a strictly positive margin
MIN_OWN_DF = 4  # below this, a type's sigma is pooled with every other type's


class Noise:
    """The noise sigma per accelerator type, pooled from groups of runs of one code made at one
    time: a group's spread about its own mean holds no drift between groups."""

    def __init__(self) -> None:
        self._squares: dict[str, float] = {}  # type -> summed squared deviations
        self._df: dict[str, int] = {}  # type -> degrees of freedom

    def add_group(self, accelerator: str, values: list[float]) -> None:
        if len(values) < 2:
            return
        mean = statistics.fmean(values)
        self._squares[accelerator] = self._squares.get(accelerator, 0.0) + sum(
            (v - mean) ** 2 for v in values)
        self._df[accelerator] = self._df.get(accelerator, 0) + len(values) - 1

    def estimate(self, accelerator: str | None = None) -> tuple[float, int] | None:
        """Sigma and its degrees of freedom on `accelerator` (pooled over every type when that
        type has fewer than MIN_OWN_DF, or when None); None before any repeated run."""
        if accelerator is not None and self._df.get(accelerator, 0) >= MIN_OWN_DF:
            squares, df = self._squares[accelerator], self._df[accelerator]
        else:
            squares, df = sum(self._squares.values()), sum(self._df.values())
        if df == 0:
            return None
        return max(math.sqrt(squares / df), MIN_SIGMA), df

    def to_dict(self) -> dict:
        return {accelerator: {"sigma": self.estimate(accelerator)[0], "df": df}
                for accelerator, df in sorted(self._df.items())}


@lru_cache(maxsize=1024)
def t_quantile(level: float, df: int) -> float:
    """The one-sided critical value of Student's t with `df` degrees of freedom."""
    return float(student_t.ppf(1 - level, df))
