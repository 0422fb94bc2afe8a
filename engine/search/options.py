"""What the user asked of a search: the CLI's flags, recorded in run.json so a resume keeps them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SearchOptions:
    agents: int = 4
    budget_s: float | None = None  # None: the goal file's training time
    grace_s: float | None = None  # None: engine.experiment.runner.default_grace_s
    max_experiments: int | None = None
    hours: float | None = None
    target: float | None = None
    seed: int = 0
    noise_seeds: int = 3
    confirm_seeds: int = 3  # fresh-seed runs of a candidate, each beside a control run
    surplus: int | None = None  # proposals kept ready beyond the free GPUs; see proposals_ahead
    max_cost: float | None = None  # dollars the agents may spend; then they stop proposing
    memory_limit_gb: float | None = None  # per experiment; None: the goal file's, if any
    tune_trials: int = 12  # Optuna trials per refinement of a winner's knobs; 0: no tuning
    tune_every: int | None = None  # also refine the baseline after this many results
    tune_share: float = 0.25  # of the GPUs, at most, for tuning trials (never all of them)
    # The proposers, recorded so that a resume rebuilds the same ones (agents/__init__.py).
    agent: str = "offline"
    models: tuple[str, ...] = ()
    context_tokens: int | None = None
    strategies: str = ""  # bundled strategy names, or a TOML file (agents/strategies.py)

    def proposals_ahead(self, gpus: int) -> int:
        """How many proposals to keep ready beyond the free GPUs: `surplus`, or by default an
        eighth of the GPUs (at least 2). Experiments started together end together: on 256 GPUs
        a wave of them ends within a minute, and without proposals ready its GPUs would wait for
        the agents' calls (benchmarks/simulate.py measures the search with this default)."""
        return self.surplus if self.surplus is not None else max(2, gpus // 8)
