"""A null experiment for measuring the engine itself: it holds its GPU slot for the budget and
scores the code on a known landscape instead of training it.

The score is a smooth function of the task's numeric constants (each constant's log-distance from
an optimum) plus seeded noise, so a search over it has real winners and losers and the engine's
throughput and decisions can be measured without the cost of training. Same signature as
`engine.experiment.runner.run_experiment`.
"""

from __future__ import annotations

import math
import random
import re
import time

from engine.experiment.progress import Progress, ProgressCallback
from engine.experiment.records import ExperimentResult
from engine.experiment.spec import Spec

OPTIMUM = {"LEARNING_RATE": 0.01, "BATCH_SIZE": 32, "N_EMBD": 128, "WARMUP_FRACTION": 0.05}
NOISE = 0.01
REPORTS = 4  # training losses reported over the budget, for early stopping to read
_CONSTANT = re.compile(r"^([A-Z_]+) = ([-+0-9.e]+)", re.M)


def landscape(source: str) -> float:
    """Lower is better: squared log-distance of the known constants from their optimum."""
    values = {name: float(value) for name, value in _CONSTANT.findall(source)}
    return 1.0 + sum(math.log(max(values[name], 1e-9) / best) ** 2
                     for name, best in OPTIMUM.items() if name in values)


def null_experiment(files: dict[str, str], spec: Spec, seed: int, budget_s: float | None = None,
                    *, grace_s: float | None = None, expected_fingerprint: str | None = None,
                    env: dict[str, str] | None = None,
                    on_progress: ProgressCallback | None = None) -> ExperimentResult:
    """Sleep for the budget, then score `train.py` on the landscape with noise drawn from `seed`.
    On the way it reports a training loss that falls towards that score, as train.py would."""
    budget = spec.time_budget_s if budget_s is None else budget_s
    objective = landscape(files.get("train.py", "")) + random.Random(seed).gauss(0, NOISE)
    for step in range(1, REPORTS + 1):
        time.sleep(budget / REPORTS)
        if on_progress is not None:
            on_progress(Progress(step, objective + 1.0 / step, step * budget / REPORTS))
    return ExperimentResult(status="ok", objective=objective, seed=seed, budget_s=budget,
                            metrics={spec.objective.metric: objective}, train_wall_s=budget,
                            data_fingerprint="null")
