"""Where the agents' calls go: Thompson sampling over strategies and models.

An arm is a strategy and a model an island's agent can work with (the offline agent has one
model, ""). A proposal that came back is one pull of its arm; it pays when its change is kept
(it beat its parent), nothing when it is refused, fails or loses. When the search wants fewer
proposals than there are free islands, the free island whose arm draws the best value is asked
first, with that arm's model; so calls move to the strategies and models whose changes are kept,
per dollar. The value is a draw of the arm's keep rate from its Beta posterior, divided by what
one proposal costs: its GPU run (GPU_HOUR_USD an hour) and the arm's mean call cost.

The prior: each model's `--model M=W` weight, relative to the mean weight of the agent's models,
scales a keep rate of PRIOR_KEEP_RATE, worth PRIOR_PROPOSALS proposals; a tenth of the picks
(FLOOR) are drawn uniformly, so that no arm starves and a changed fortune is seen. The counts are
fed by the core's `tell`, so a resume rebuilds them from the stored results.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GPU_HOUR_USD = 2.0  # what a GPU-hour is weighed at against what the calls cost
PRIOR_KEEP_RATE = 0.2  # the keep rate an arm of average weight is expected to have
PRIOR_PROPOSALS = 10.0  # what the prior is worth, in proposals: early luck does not decide
FLOOR = 0.1  # the share of picks drawn uniformly over the arms


@dataclass
class Arm:
    """What one strategy and model have done: proposals that came back, changes kept, dollars
    their calls cost."""

    proposals: int = 0
    kept: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Choice:
    """An island the search may ask now, and what its agent may work with."""

    island: int
    strategy: str
    models: Mapping[str, float]  # model -> prior weight; empty: the agent has no model to pick


class Bandit:
    def __init__(self, budget_s: float) -> None:
        self.arms: dict[tuple[str, str], Arm] = {}
        self.gpu_usd = budget_s / 3600 * GPU_HOUR_USD  # the GPU time of one proposal's run

    def told(self, strategy: str, model: str, kept: bool, cost_usd: float) -> None:
        """One proposal of the arm came back: kept, or not (refused, failed or worse)."""
        arm = self.arms.setdefault((strategy, model), Arm())
        arm.proposals += 1
        arm.kept += kept
        arm.cost_usd += cost_usd

    def pick(self, choices: Sequence[Choice], rng: random.Random) -> tuple[Choice, str]:
        """The island to ask next and the model it should ask ("" when it has none)."""
        pulls = [(choice, model, weight / _mean(choice.models.values()))
                 for choice in choices
                 for model, weight in (choice.models.items() or [("", 1.0)])]
        if rng.random() < FLOOR:
            choice, model, _ = rng.choice(pulls)
        else:
            choice, model, _ = max(pulls, key=lambda pull: self._draw(pull[0].strategy, pull[1],
                                                                      pull[2], rng))
        return choice, model

    def _draw(self, strategy: str, model: str, weight: float, rng: random.Random) -> float:
        """A draw of the arm's keep rate, per dollar of a proposal."""
        arm = self.arms.get((strategy, model), Arm())
        prior = min(PRIOR_KEEP_RATE * weight, 0.95)
        rate = rng.betavariate(1 + PRIOR_PROPOSALS * prior + arm.kept,
                               1 + PRIOR_PROPOSALS * (1 - prior) + arm.proposals - arm.kept)
        call_usd = arm.cost_usd / arm.proposals if arm.proposals else 0.0
        return rate / max(self.gpu_usd + call_usd, 1e-9)

    def to_dict(self) -> list[dict]:
        """The arms' counts, for the checkpoint."""
        return [{"strategy": strategy, "model": model, "proposals": arm.proposals,
                 "kept": arm.kept, "cost_usd": round(arm.cost_usd, 6)}
                for (strategy, model), arm in sorted(self.arms.items())]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 1.0
