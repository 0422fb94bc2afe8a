"""A knob trial's training, as a Ray task of its own on one GPU, like a mutation experiment's.

A trial's Tune actor (engine/tuning/ray_tune.py) starts it and reads what it yields: where it runs,
then each step train.py reports while it trains (Tune's early stopping reads them), then the
outcome. It runs on the GPU pool's workers, which it reuses as the pool's experiments do
(engine/search/ray_pool.py); this module imports neither Ray Tune nor Optuna, so that a worker
that trains a trial for the first time does not import them (seconds of CPU each).
"""

from __future__ import annotations

import functools
import queue
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import ray

from engine.experiment.progress import Progress
from engine.experiment.records import Job, Outcome
from engine.experiment.runner import run_experiment
from engine.search.ray_pool import accelerator_here, run_job

STEP_WAIT_S = 0.2  # how often the task looks whether its training ended


def train_trial(job: Job) -> Iterator[dict | Progress | Outcome]:
    """A trial's training, as a Ray task: yields where it runs, then each step train.py reports
    while it trains, then the outcome."""
    yield {"started_at": time.time(), "node": socket.gethostname(),
           "gpu": ",".join(str(g) for g in ray.get_gpu_ids()), "accelerator": accelerator_here()}
    steps: queue.Queue[Progress] = queue.Queue()
    with ThreadPoolExecutor(max_workers=1) as training:
        trained = training.submit(
            run_job, job, functools.partial(job.run or run_experiment, on_progress=steps.put))
        while not (trained.done() and steps.empty()):  # every step is put before it is done
            try:
                yield steps.get(timeout=STEP_WAIT_S)
            except queue.Empty:
                continue
        yield trained.result()


# Workers are reused as the pool's are: the training runs in a child process that exits.
TRAINING = ray.remote(max_calls=0)(train_trial)
