"""The small interface every proposer implements, and the data that flows through it.

An agent sees the code of its island's parent commit and what was tried before, and proposes one
change: a short description and the new contents of the files it changed. Agents never run code;
the engine checks, commits and trains what they propose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# What the engine counts as the same code (a repeat is refused before it runs): agents may use it
# to avoid proposing one.
from engine.experiment.checks import code_hash

__all__ = ["Agent", "Attempt", "Measured", "NothingToPropose", "Proposal", "ProposalContext",
           "code_hash"]


@dataclass(frozen=True)
class Measured:
    """What the engine measured of one training run (engine/experiment/progress.py); None where
    it was not measured (a harness that reports no `params`, a run that crashed before scoring)."""

    steps: int | None = None  # training steps within the time budget
    steps_per_s: float | None = None  # training throughput
    params: int | None = None  # the model's parameter count, as the harness counted it
    peak_memory_gb: float | None = None  # peak GPU memory (or the process tree's, on CPU)
    final_train_loss: float | None = None  # the mean training loss of the last 10 steps
    loss_spikes: int | None = None  # steps whose loss exceeded 1.5x the median of the 10 before
    loss_curve: tuple[tuple[int, float], ...] = ()  # (step, training loss), up to 6 points


@dataclass(frozen=True)
class Attempt:
    """One earlier experiment of the island, as an agent sees it."""

    description: str
    status: str  # ok, crash, timeout, invalid, rejected, interrupted
    objective: float | None  # None when the experiment has no score
    parent_objective: float | None  # the score of the code it changed
    message: str = ""  # why it failed or was refused
    diff: str = ""  # the change, as a unified diff against its parent
    log_tail: str = ""  # the end of train.py's output, for crashes
    exp_id: str = ""
    measured: Measured | None = None  # None when it never trained (refused, or crashed at once)
    parent_measured: Measured | None = None  # the same of the code it changed


@dataclass(frozen=True)
class ProposalContext:
    """Everything an agent is given for one proposal."""

    island: int
    goal: str  # the goal file's whole text
    files: dict[str, str]  # the parent commit's files (relative path -> contents)
    editable: tuple[str, ...]  # the files the agent may change
    objective: str  # the metric's name, e.g. "val_bpb"
    direction: str  # "minimize" or "maximize"
    parent_objective: float | None  # the parent's score (mean over its runs)
    baseline_objective: float | None  # the shared baseline's score
    history: tuple[Attempt, ...] = field(default=())  # the island's experiments, oldest first
    protected: tuple[str, ...] = field(default=())  # files no edit may touch (the harness, ...)
    leaderboard: tuple[Attempt, ...] = field(default=())  # the best kept changes, all islands
    promotions: tuple[Attempt, ...] = field(default=())  # recent promotions, newest last
    # The model this call should ask, of the agent's `models` (the search's bandit chose it,
    # engine/search/bandit.py); "": the agent's own choice.
    model: str = ""


@dataclass(frozen=True)
class Proposal:
    """One change to try."""

    description: str  # one line; becomes the commit message and the results row
    files: dict[str, str]  # new contents of every changed file (unchanged files left out)
    cost_usd: float = 0.0  # what producing it cost (LLM agents)
    tokens: int = 0
    model: str = ""  # the model that wrote it (LLM agents)


class Agent(Protocol):
    """A proposer. Implementations: agents.offline.OfflineAgent (no model needed).

    An agent may also have a `strategy` (the name of the strategy it works by,
    agents/strategies.py) and `models` (the models it may ask, each with its prior weight): the
    search's bandit then picks one for each call. Without them: no strategy, no model to pick."""

    name: str

    def propose(self, context: ProposalContext) -> Proposal:
        """Propose one change to `context.files`. May raise; the engine records the error, and
        the agent rests a while (raise NothingToPropose to say it has nothing new: no rest)."""
        ...


class NothingToPropose(Exception):
    """What an agent raises when it has no change left that it has not proposed for this parent
    (an agent that fails for a while, an LLM endpoint that is down, raises anything else). The
    search asks it nothing more for that parent, and ends once no agent has anything new for any
    parent while nothing runs: waiting would not change the answer."""
