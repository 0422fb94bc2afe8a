"""The population's records: a member (a scored commit that may be a parent), an island (a
sub-population worked by one agent), and a decision the population takes on a result."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from engine.protocol import Attempt

HISTORY_LENGTH = 30  # attempts an agent sees of its island
CPU = "cpu"  # the accelerator type of a run that had none


@dataclass
class Member:
    """A scored commit that may be a parent."""

    commit: str
    files: dict[str, str]
    runs: list[float]  # objective of each run of this exact code
    exp_id: str = ""  # the experiment that produced it ("" for the starting code)
    children: int = 0
    accelerators: list[str] = field(default_factory=list)  # the type of each run, in order

    def __post_init__(self) -> None:
        self.accelerators += [CPU] * (len(self.runs) - len(self.accelerators))

    @property
    def objective(self) -> float:
        return statistics.fmean(self.runs)

    def add_run(self, value: float, accelerator: str) -> None:
        self.runs.append(value)
        self.accelerators.append(accelerator)

    def runs_on(self, accelerator: str) -> list[float]:
        return [v for v, a in zip(self.runs, self.accelerators, strict=True) if a == accelerator]


@dataclass
class Island:
    """A sub-population worked by one agent, with its own head."""

    index: int
    head: Member
    archive: list[Member] = field(default_factory=list)
    stale: int = 0  # results since the head last advanced
    history: deque[Attempt] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))


@dataclass
class Decision:
    """What the driver must do after a result; the population has already updated itself."""

    kind: str  # "keep", "advance", "discard", "confirm", "promote", "reject_promotion", "reseed",
    # "combine"
    island: int | None = None
    member: Member | None = None  # the commit concerned
    # For "confirm": how many fresh-seed runs of the candidate to queue, each beside a control run
    # of `against` (the baseline), all on `accelerator` (CPU: anywhere).
    confirm_seeds: int = 0
    against: Member | None = None
    accelerator: str = CPU
    reason: str = ""
    files: dict[str, str] | None = None  # for "combine": the candidate's changes on the baseline
