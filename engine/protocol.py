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

__all__ = ["Agent", "Attempt", "Proposal", "ProposalContext", "code_hash"]


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


@dataclass(frozen=True)
class Proposal:
    """One change to try."""

    description: str  # one line; becomes the commit message and the results row
    files: dict[str, str]  # new contents of every changed file (unchanged files left out)
    cost_usd: float = 0.0  # what producing it cost (LLM agents)
    tokens: int = 0


class Agent(Protocol):
    """A proposer. Implementations: agents.offline.OfflineAgent (no model needed)."""

    name: str

    def propose(self, context: ProposalContext) -> Proposal:
        """Propose one change to `context.files`. May raise; the engine records the error."""
        ...
