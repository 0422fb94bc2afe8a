"""When a search stops: one rule for the loop and for a resume that would have nothing to do."""

from __future__ import annotations

from dataclasses import dataclass

from engine.search.evolution import Evolution
from engine.search.options import SearchOptions


@dataclass(frozen=True)
class Stop:
    reason: str  # why the search ends, as the log and run.json's checkpoint say it
    advice: str  # what a resume needs to go on
    at_once: bool = False  # end now, stopping what runs (else: start nothing new, let it finish)


class Limits:
    def __init__(self, options: SearchOptions) -> None:
        self.options = options

    def reached(self, core: Evolution, spent_usd: float, elapsed_s: float = 0.0,
                proposing: bool = False, exhausted: bool = False) -> Stop | None:
        """The limit the search is at, if any: `spent_usd` by the agents, `elapsed_s` since this
        process started searching, `proposing` whether proposals are queued or in flight (a
        spent budget lets them run), `exhausted` whether the agents have had nothing new to
        propose while nothing ran (engine/search/proposers.py)."""
        options, population = self.options, core.population
        if core.noise_outstanding <= 0 and not population.ready:
            return Stop("the starting code has no score",
                        "its starting code has no score on any noise seed; see results.tsv",
                        at_once=True)
        if options.target is not None and population.baseline.runs and not (
                core.spec.objective.is_better(options.target, population.baseline.objective)):
            # the baseline, the best confirmed code: one lucky run does not end a search
            return Stop(f"target {options.target} reached",
                        f"it reached --target {options.target}; pass another --target to go on",
                        at_once=True)
        if options.max_experiments is not None and core.submitted >= options.max_experiments:
            return Stop(f"--max-experiments {options.max_experiments} ran",
                        f"it has run {core.submitted} experiments (--max-experiments "
                        f"{options.max_experiments}); pass a larger --max-experiments to go on")
        if options.max_cost is not None and spent_usd >= options.max_cost and not proposing:
            return Stop(f"--max-cost {options.max_cost} spent",
                        f"its agents have spent ${spent_usd:.2f} (--max-cost {options.max_cost});"
                        f" pass a larger --max-cost to go on")
        if options.hours is not None and elapsed_s > options.hours * 3600:
            return Stop(f"--hours {options.hours} elapsed", "pass --hours to go on")
        if exhausted:
            return Stop("the agents have nothing new to propose",
                        "its agents had nothing new to propose for any parent; a resume asks "
                        "them again, a new search can use others (--agent llm)")
        return None

    def may_propose(self, spent_usd: float) -> bool:
        """Whether the agents may still spend."""
        return self.options.max_cost is None or spent_usd < self.options.max_cost
