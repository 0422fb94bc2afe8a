"""Refinement: Optuna, through Ray Tune, tunes a member's knobs on the GPUs the mutations use."""

import functools
import math
import re
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import ray
from ray.tune.search.optuna import OptunaSearch

from benchmarks.null_experiment import null_experiment
from engine.experiment.progress import Progress
from engine.experiment.records import ExperimentResult, Job
from engine.experiment.runner import run_experiment
from engine.search.ray_pool import RayPool
from engine.tuning.refinement import Refinement
from tests.conftest import with_train

pytestmark = pytest.mark.usefixtures("ray_local")
WAIT_S = 600  # far beyond what any refinement here needs, on a busy machine too

# The fake trial below travels to Ray's workers by value: they cannot import the tests.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


STEPPING = """import json, os, time
open({pid_file!r}, "w").write(str(os.getpid()))
for step in range({steps}):
    record = {{"step": step, "loss": 5.0 - step, "time": time.time()}}
    with open(os.environ["AUTORESEARCH_PROGRESS_OUT"], "a") as progress:
        progress.write(json.dumps(record) + "\\n")
    time.sleep(0.3)
"""  # a train.py that reports a step every 0.3 s, as prepare.report would, and trains nothing


def test_the_runner_hands_each_step_to_on_progress_while_train_py_trains(template, tmp_path):
    train = STEPPING.format(pid_file=str(tmp_path / "pid"), steps=5)
    seen = []
    run_experiment(with_train(template.files, train), template.spec, seed=0, budget_s=5,
                   on_progress=lambda progress: seen.append((progress, time.monotonic())))
    assert [(p.step, p.loss) for p, _ in seen] == [(0, 5.0), (1, 4.0), (2, 3.0), (3, 2.0),
                                                   (4, 1.0)]
    assert seen[0][0].elapsed_s == 0 and 1.0 < seen[-1][0].elapsed_s < 3.0
    assert seen[-1][1] - seen[0][1] > 0.8, "the steps came all at once, not as they were made"


def test_an_exception_from_on_progress_ends_the_training_and_its_processes(template, tmp_path):
    train = STEPPING.format(pid_file=str(tmp_path / "pid"), steps=1000)

    def enough(progress: Progress) -> None:
        if progress.step == 2:
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        run_experiment(with_train(template.files, train), template.spec, seed=0, budget_s=60,
                       on_progress=enough)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "train.py outlived the exception"
        time.sleep(0.1)


def learning_rate_only(files: dict[str, str], line: str) -> dict[str, str]:
    """The task with its LEARNING_RATE line replaced and every other knob excluded."""
    def exclude(match: re.Match) -> str:
        text = match.group(0)
        if text.startswith("LEARNING_RATE ="):
            return line
        return text.replace("#", "# tune: off;", 1) if "#" in text else text + "  # tune: off"

    source = re.sub(r"^[A-Z_0-9]+ = .*$", exclude, files["train.py"], flags=re.M)
    return {**files, "train.py": source}


def run_to_the_end(refinement: Refinement) -> list:
    deadline = time.monotonic() + WAIT_S
    ended = []
    while not refinement.done:
        assert time.monotonic() < deadline, "the refinement did not end"
        ended += refinement.finished_trials()
        time.sleep(0.2)
    assert refinement.error is None
    return ended + refinement.finished_trials()


def study_of(refinement: Refinement) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(refinement.path / "optuna.journal")))
    return optuna.load_study(study_name=refinement.name, storage=storage)


def test_real_trials_share_the_gpus_with_mutations_and_find_a_better_learning_rate(
        template, tmp_path):
    files = learning_rate_only(template.files, "LEARNING_RATE = 1e-4  # tune: 1e-4..1e-2 log")
    refinement = Refinement(
        "winner", files, template.spec, tmp_path, trials=3, concurrency=3, seed=0, budget_s=3,
        grace_s=120, early_stopping=False).start()
    mutations = RayPool(1)
    ran = []  # (start, end) of each mutation experiment
    deadline = time.monotonic() + WAIT_S
    while not refinement.done:
        assert time.monotonic() < deadline, "the refinement did not end"
        if not mutations.running:
            mutations.submit(Job(template.files, template.spec, 0, 1.0, None, None, 1,
                                 null_experiment), None)
        for _, outcome in mutations.wait(0.2):
            ran.append((outcome.started_at, outcome.finished_at))
    trials = refinement.finished_trials()

    assert [t.outcome.result.status for t in trials] == ["ok"] * 3
    start = next(t for t in trials if t.values == {"LEARNING_RATE": 1e-4})
    best = refinement.best()
    assert best.values["LEARNING_RATE"] > 1e-4
    assert best.objective < start.objective - 0.2
    written = re.search(r"^LEARNING_RATE = (\S+)", best.files["train.py"], re.M).group(1)
    assert float(written) == best.values["LEARNING_RATE"]
    assert best.files["train.py"].replace(f"= {written}", "= 1e-4") == files["train.py"]
    # Trials run at once, each on a GPU of its own. (A trial that starts only once another has
    # ended may reuse its worker, and so its GPU: how many overlap depends on the machine.)
    at_once = [(a, b) for a in trials for b in trials if a.trial_id < b.trial_id
               and a.outcome.started_at < b.outcome.finished_at
               and b.outcome.started_at < a.outcome.finished_at]
    assert at_once, "no two trials ran at the same time"
    assert all(a.outcome.gpu != b.outcome.gpu for a, b in at_once)
    assert any(s < t.outcome.finished_at and t.outcome.started_at < e
               for s, e in ran for t in trials), "no mutation ran beside the trials"
    assert refinement.running_trials == 0 and refinement.slots_wanted == 0


def quick_trial(files, spec, seed, budget_s=None, *, grace_s=None, expected_fingerprint=None,
                env=None, on_progress=None, log=None):
    """A stand-in for the runner whose training loss and score grow with the distance of the
    learning rate from 3e-3 (in decades), the same at every step: a trial's fate does not hang on
    how busy the machine is. Appends the learning rate of each trial it trains to the end to
    `log` (it trains in a Ray task of its own, outside Tune's trial context)."""
    lr = float(re.search(r"^LEARNING_RATE = (\S+)", files["train.py"], re.M).group(1))
    distance = abs(math.log10(lr / 3e-3))
    started = time.time()
    step = 0
    while (elapsed := time.time() - started) < budget_s:
        on_progress(Progress(step, 4.0 + distance, elapsed))
        step += 1
        time.sleep(0.05)
    if log:
        with open(log, "a") as finished:
            finished.write(f"{lr!r}\n")
    score = 3.0 + distance
    return ExperimentResult("ok", score, {"val_bpb": score}, seed, budget_s)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_early_stopping_cuts_a_trial_whose_training_loss_is_far_behind(template, tmp_path):
    files = learning_rate_only(template.files, "LEARNING_RATE = 3e-3  # one of: 3e-3, 3.0")
    refinement = Refinement(
        "asha", files, template.spec, tmp_path, trials=2, concurrency=1, seed=0, budget_s=2,
        run=quick_trial, sampler=optuna.samplers.BruteForceSampler(seed=0)).start()
    good, bad = run_to_the_end(refinement)

    assert good.values == {"LEARNING_RATE": 3e-3} and not good.stopped_early
    assert good.outcome.result.status == "ok"
    assert bad.values == {"LEARNING_RATE": 3.0} and bad.stopped_early
    result = bad.outcome.result
    assert result.status == "stopped" and result.objective is None
    assert result.message.startswith("stopped early by ASHA after ")
    assert 0.5 <= result.train_wall_s < 1.5  # at its first rung, a quarter of the budget
    assert result.metrics["final_train_loss"] == pytest.approx(7.0)
    states = [trial.state.name for trial in study_of(refinement).trials]
    assert states == ["COMPLETE", "PRUNED"]


def test_a_stopped_refinement_resumes_without_repeating_a_finished_trial(template, tmp_path):
    def refinement(log: Path) -> Refinement:
        return Refinement("resumable", files, template.spec, tmp_path / "run", trials=5,
                          concurrency=2, seed=0, budget_s=1.5, early_stopping=False,
                          run=functools.partial(quick_trial, log=log),
                          recorded={t.trial_id for t in first})

    files = learning_rate_only(template.files, "LEARNING_RATE = 1e-3  # tune: 1e-4..1e-2 log")
    first: list = []
    stopping = refinement(tmp_path / "before.log").start()
    deadline = time.monotonic() + WAIT_S
    while len(first) < 2:
        assert time.monotonic() < deadline
        first += stopping.finished_trials()
        time.sleep(0.1)
    stopping.stop()
    first += stopping.finished_trials()
    assert stopping.done and stopping.running_trials == 0
    assert len(first) < 5

    resumed = refinement(tmp_path / "after.log")
    assert resumed.best() is not None  # it knows the trials that finished before the stop
    second = run_to_the_end(resumed.start())

    ids = [t.trial_id for t in first + second]
    assert len(ids) == len(set(ids)) == 5
    before, after = ([float(lr) for lr in (tmp_path / log).read_text().split()]
                     for log in ("before.log", "after.log"))
    assert not {t.values["LEARNING_RATE"] for t in first} & set(after), \
        "a trial recorded before the stop trained again"
    assert {t.values["LEARNING_RATE"] for t in first + second} <= set(before + after)
    study = study_of(resumed)
    finished = [t for t in study.trials if t.state.is_finished()
                and t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == 5
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert Path(resumed.path, "trials.jsonl").read_text().count("\n") == 5


def test_the_private_state_of_optuna_search_that_the_knob_search_reads_is_still_there():
    """_KnobSearch (engine/tuning/refinement.py) reads three private attributes of Ray's
    OptunaSearch to avoid telling Optuna a trial twice and to fail trials a stop left running;
    Ray has no public API for either. This fails the day Ray renames them."""
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    search = OptunaSearch(space=space, metric="objective", mode="min",
                          sampler=optuna.samplers.RandomSampler(seed=0))
    config = search.suggest("trial-1")
    assert set(config) == {"x"}
    assert isinstance(search._completed_trials, set)
    assert search._ot_trials["trial-1"].number == 0
    assert search._ot_study.get_trials()[0].state == optuna.trial.TrialState.RUNNING
    search.on_trial_complete("trial-1", {"objective": 0.5})
    assert "trial-1" in search._completed_trials
