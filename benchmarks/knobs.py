"""Refining knobs: Optuna's TPE with early stopping against its random sampler, on real training.

The bundled task starts with its learning rate set 10x too low (3e-4 instead of the shipped 3e-3),
and only the learning rate is tuned, over 1e-5..1e-1 on a log scale. Both sides run the same number
of trials through `engine.tuning.refinement.Refinement` (Ray Tune, trials on logical GPUs, every
trial on the same seed), one after the other: TPE with ASHA, then Optuna's random sampler without
early stopping. The shipped learning rate, trained on the same seed and budget before and after them
(the mean of the two: a machine shared with other work drifts), gives the reference score; a side
reaches the target when a trial scores within 1% of it.

Printed: the reference, and for each side its best trial, after how many finished trials (and
how many seconds) it reached the target, and the GPU-seconds its trials held; then the ratios:
trials to the target (random / TPE with ASHA), and the share of the training budget that the
trials ASHA stopped did not use.

Every trial trains with one CPU thread, so keep --gpus at or below the cores of a CPU machine.

    .venv/bin/python -m benchmarks.knobs [--gpus 2] [--trials 12] [--budget 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
import ray

from engine.cluster import start_ray
from engine.experiment.runner import run_experiment
from engine.experiment.task import Task, load_task, template_path
from engine.tuning.refinement import Refinement, TrialOutcome

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHIPPED = "LEARNING_RATE = 3e-3"
TEN_TIMES_OFF = "LEARNING_RATE = 3e-4  # tune: 1e-5..1e-1 log"
WITHIN = 0.01  # the target: within 1% of the reference's score
GRACE_S = 60.0  # past the budget: start-up and the model's export take long on a busy machine


def only_the_learning_rate(task: Task) -> dict[str, str]:
    """The task with its learning rate 10x too low and every other knob left alone."""
    lines = []
    for line in task.files["train.py"].splitlines(keepends=True):
        if line.startswith(SHIPPED):
            line = TEN_TIMES_OFF + "\n"
        elif line[:1].isupper() and " = " in line and not line.startswith("SEQ_LEN"):
            body, newline = line.rstrip("\n"), "\n"
            line = (body.replace("#", "# tune: off;", 1) if "#" in body
                    else body + "  # tune: off") + newline
        lines.append(line)
    return {**task.files, "train.py": "".join(lines)}


def refine(task: Task, files: dict[str, str], run_dir: Path, label: str, *,
           sampler: optuna.samplers.BaseSampler | None, early_stopping: bool, trials: int,
           gpus: int, budget: float, seed: int) -> list[tuple[float, TrialOutcome]]:
    """Run one side. Returns (seconds since its start, trial) in the order its trials ended."""
    started = time.monotonic()
    name = label.split()[0].lower()
    refinement = Refinement(name, files, task.spec, run_dir / name, trials=trials,
                            concurrency=gpus, seed=seed, budget_s=budget, grace_s=GRACE_S,
                            sampler=sampler, early_stopping=early_stopping).start()
    ended = []
    while not refinement.done:
        ended += [(time.monotonic() - started, t) for t in refinement.finished_trials()]
        time.sleep(0.5)
    ended += [(time.monotonic() - started, t) for t in refinement.finished_trials()]
    if refinement.error is not None:
        raise refinement.error
    return ended


def summary(label: str, ended: list[tuple[float, TrialOutcome]], target: float
            ) -> tuple[int | None, float]:
    """Print one side's lines; return the number of trials it needed to reach the target and the
    GPU-seconds its trials held."""
    scored = [(seconds, t) for seconds, t in ended if t.objective is not None]
    best = min((t for _, t in scored), key=lambda t: t.objective)
    held = sum(t.outcome.finished_at - t.outcome.started_at for _, t in ended)
    stopped = [t for _, t in ended if t.stopped_early]
    reached = next((k for k, (_, t) in enumerate(ended, 1)
                    if t.objective is not None and t.objective <= target), None)
    print(f"{label:<14} best {best.objective:.4f} (LEARNING_RATE {best.values['LEARNING_RATE']}), "
          f"{len(stopped)} of {len(ended)} trials stopped early, GPU-seconds held {held:.0f}")
    if reached is None:
        print(f"{'':<14} did not reach the target in {len(ended)} trials")
    else:
        print(f"{'':<14} reached the target after {reached} trials, "
              f"{ended[reached - 1][0]:.0f} s")
    return reached, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=2, help="logical GPUs: trials at once")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = load_task(template_path())
    files = only_the_learning_rate(task)
    references = [run_experiment(task.files, task.spec, args.seed, args.budget, grace_s=GRACE_S,
                                 env=ONE_THREAD)]
    start_ray(None, args.gpus)
    try:
        with tempfile.TemporaryDirectory() as folder:
            # The refinement's own sampler (TPE) and early stopping, as a search uses them.
            sides = {"TPE + ASHA": (None, True),
                     "random": (optuna.samplers.RandomSampler(seed=args.seed), False)}
            ended = {label: refine(task, files, Path(folder), label, sampler=sampler,
                                   early_stopping=early, trials=args.trials, gpus=args.gpus,
                                   budget=args.budget, seed=args.seed)
                     for label, (sampler, early) in sides.items()}
    finally:
        ray.shutdown()
    references.append(run_experiment(task.files, task.spec, args.seed, args.budget,
                                     grace_s=GRACE_S, env=ONE_THREAD))
    for run in references:
        if run.objective is None:
            raise SystemExit(f"the reference run failed: {run.status}: {run.message}")
    reference = sum(r.objective for r in references) / 2
    target = reference * (1 + WITHIN)
    print(f"reference ({SHIPPED}): val_bpb {reference:.4f} (before {references[0].objective:.4f}, "
          f"after {references[1].objective:.4f}); target {target:.4f}")
    start = next(t for _, t in ended["random"] if t.values["LEARNING_RATE"] == 3e-4)
    print(f"start ({TEN_TIMES_OFF.split('  #')[0]}): val_bpb {start.objective:.4f}")
    tpe, tpe_held = summary("TPE + ASHA", ended["TPE + ASHA"], target)
    random, random_held = summary("random", ended["random"], target)
    if tpe and random:
        print(f"trials ratio (random / TPE + ASHA, to the target): {random / tpe:.2f}")
    elif tpe:
        print(f"trials ratio (random / TPE + ASHA, to the target): > {args.trials / tpe:.2f}")
    elif random:
        print(f"trials ratio (random / TPE + ASHA, to the target): < {random / args.trials:.2f}")
    print(f"GPU-seconds held (TPE + ASHA / random): {tpe_held / random_held:.2f}")
    stopped = [t for _, t in ended["TPE + ASHA"] if t.stopped_early]
    unused = sum(args.budget - t.outcome.result.train_wall_s for t in stopped)
    print(f"training budget early stopping saved: {unused:.0f} of "
          f"{args.trials * args.budget:.0f} s ({unused / (args.trials * args.budget):.0%})")


if __name__ == "__main__":
    main()
