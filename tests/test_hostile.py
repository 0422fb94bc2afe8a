"""Hostile candidates: against each train.py below the engine goes on, the candidate gets the
status a user would expect, and nothing it left or wrote becomes its score.

Covered elsewhere, not repeated here: a candidate that prints or writes a fake score, or plants a
harness in its own folder or the scoring folder (tests/test_runner.py, fakes its score); a daemon
that double-forks into a new session (test_runner.py, background processes); a single process
over the memory limit (test_runner.py); a seed-only change, or one that ignores its seed, never
promoted on noise (tests/test_population.py); edits to protected files refused before any GPU
(tests/test_search.py). Not enforced, so not tested: reading the validation data, and writing
outside the run's folders (README, "Isolation").
"""

import dataclasses
from pathlib import Path

import pytest

import engine.experiment.runner
from engine.experiment.runner import run_experiment
from tests.conftest import with_train

UNTRAINED_BPB = 8.0  # log2(256): what a model predicting every byte as equally likely scores

# A model handed over without training: all-zero logits, so its true score is exactly 8.0. Cheap
# (a few seconds of export and scoring), for tests that need the scoring to happen.
UNIFORM_MODEL = """
import torch
from prepare import VOCAB_SIZE, hand_over

class Uniform(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Embedding(VOCAB_SIZE, VOCAB_SIZE)
        torch.nn.init.zeros_(self.logits.weight)

    def forward(self, x):
        return self.logits(x)

hand_over(Uniform())
"""
# Generous limits cost nothing when all goes well, and a busy machine does not fail the tests.
BUDGET_S = 60  # for candidates that must be stopped for something else than their time
GRACE_S = 120
FAKE_SCORE = '{"valid": true, "val_bpb": 0.0001, "params": 1, "data_fingerprint": "x"}'


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead and waiting for its parent to notice, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def recorded_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def test_an_endless_loop_deaf_to_sigterm_is_a_timeout_and_leaves_no_process(template, tmp_path):
    pid_file = tmp_path / "pid"
    looping = f"""
import os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open({str(pid_file)!r}, "w").write(str(os.getpid()))
while True:
    pass
"""
    result = run_experiment(with_train(template.files, looping), template.spec, seed=0,
                            budget_s=1, grace_s=1)
    assert result.status == "timeout"
    assert "past its budget" in result.message
    assert result.objective is None
    assert result.train_wall_s < 10  # killed at its deadline of 2 s, not much later
    assert not alive(int(pid_file.read_text()))


def test_memory_spread_over_many_processes_counts_against_the_limit(template, tmp_path):
    spec = dataclasses.replace(template.spec, memory_limit_gb=0.5)
    pids = tmp_path / "pids"
    spreading = f"""
import os, time
for _ in range(8):  # 150 MB each: 1.2 GB together, no one process over the limit
    pid = os.fork()
    if pid == 0:
        hog = b"x" * (150 << 20)
        time.sleep(60)
        os._exit(0)
    open({str(pids)!r}, "a").write(f"{{pid}}\\n")
time.sleep(60)
"""
    result = run_experiment(with_train(template.files, spreading), spec, seed=0, budget_s=BUDGET_S)
    assert result.status == "invalid"
    assert "memory limit of 0.5 GB" in result.message
    assert result.metrics["peak_memory_gb"] > 0.5
    assert result.train_wall_s < BUDGET_S  # killed for what it did, not for its time
    assert not any(alive(pid) for pid in recorded_pids(pids))


def test_pages_that_forked_workers_share_are_counted_once(template):
    spec = dataclasses.replace(template.spec, memory_limit_gb=1.0)
    # 300 MB in the parent, shared by 8 forked children: 2.7 GB of resident sizes summed, about
    # 0.3 GB of memory in truth. The run must not be killed for memory.
    sharing = """
import os, time
shared = b"x" * (300 << 20)
for _ in range(8):
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
time.sleep(1.5)
"""
    result = run_experiment(with_train(template.files, sharing), spec, seed=0, budget_s=BUDGET_S)
    assert result.status == "crash"
    assert "without handing a model" in result.message
    assert result.left_behind == 8
    assert 0.25 < result.metrics["peak_memory_gb"] < 1.0


def test_a_fork_bomb_is_killed_whole_and_invalid(template, tmp_path, monkeypatch):
    monkeypatch.setattr(engine.experiment.runner, "MAX_PROCESSES", 50)
    pids = tmp_path / "pids"
    bomb = f"""
import os, time
for _ in range(200):  # bounded, so that a failing test cannot hurt the machine
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    open({str(pids)!r}, "a").write(f"{{pid}}\\n")
time.sleep(3600)
"""
    result = run_experiment(with_train(template.files, bomb), template.spec, seed=0,
                            budget_s=BUDGET_S)
    assert result.status == "invalid"
    assert "more than 50 processes" in result.message
    assert result.left_behind >= 50
    assert result.train_wall_s < BUDGET_S  # killed for what it did, not for its time
    assert not any(alive(pid) for pid in recorded_pids(pids))


def test_output_without_end_is_stopped_and_only_its_tail_kept(template, monkeypatch):
    monkeypatch.setattr(engine.experiment.runner, "MAX_LOG_BYTES", 2**20)
    flooding = "while True:\n    print('x' * 1000)\n"
    result = run_experiment(with_train(template.files, flooding), template.spec, seed=0,
                            budget_s=BUDGET_S)
    assert result.status == "invalid"
    assert "printed more than 1 MB" in result.message
    assert result.train_wall_s < BUDGET_S  # killed for what it did, not for its time
    assert len(result.log_tail.splitlines()) <= engine.experiment.runner.LOG_TAIL_LINES


def test_a_candidate_that_kills_its_supervisor_is_a_crash_and_dies_with_it(template, tmp_path):
    pid_file = tmp_path / "pid"
    killing = f"""
import os, signal, time
open({str(pid_file)!r}, "w").write(str(os.getpid()))
os.kill(os.getppid(), signal.SIGKILL)
time.sleep(60)
"""
    result = run_experiment(with_train(template.files, killing), template.spec, seed=0,
                            budget_s=BUDGET_S)
    assert result.status == "crash"
    assert "supervisor of train.py was killed" in result.message
    assert result.train_wall_s < BUDGET_S  # killed for what it did, not for its time
    assert not alive(int(pid_file.read_text()))


def test_a_model_file_that_is_a_link_is_never_read(template):
    linking = "import os\nos.symlink('/dev/zero', os.environ['AUTORESEARCH_MODEL_OUT'])\n"
    result = run_experiment(with_train(template.files, linking), template.spec, seed=0,
                            budget_s=5, grace_s=GRACE_S)
    assert result.status == "crash"
    assert "without handing a model" in result.message
    assert result.eval_wall_s == 0


def test_a_pipe_for_a_progress_file_does_not_hang_the_runner(template):
    piping = """
import os, time
os.mkfifo(os.environ["AUTORESEARCH_PROGRESS_OUT"])
time.sleep(1)
"""
    steps = []
    result = run_experiment(with_train(template.files, piping), template.spec, seed=0,
                            budget_s=BUDGET_S, on_progress=steps.append)
    assert result.status == "crash"
    assert "without handing a model" in result.message
    assert steps == [] and result.metrics["steps"] == 0


def test_a_daemon_waiting_for_the_scoring_is_dead_before_it_starts(template, tmp_path):
    pid_file = tmp_path / "daemon.pid"
    lurking = f"""
import os, pathlib, time
run = pathlib.Path.cwd().parent
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        harness = run / "score" / "prepare.py"
        while not harness.exists():
            time.sleep(0.001)
        harness.write_text("print(" + repr({FAKE_SCORE!r}) + ")")
        os._exit(0)
    os._exit(0)
while not os.path.exists({str(pid_file)!r}):
    time.sleep(0.01)
""" + UNIFORM_MODEL
    result = run_experiment(with_train(template.files, lurking), template.spec, seed=0,
                            budget_s=5, grace_s=GRACE_S)
    assert result.status == "ok", result.message
    assert result.objective == pytest.approx(UNTRAINED_BPB)
    assert result.left_behind == 1
    assert not alive(int(pid_file.read_text()))


def test_modules_planted_around_the_scoring_folder_do_not_change_the_score(template):
    # Modules that the harness imports, planted wherever the scoring might look for them, and a
    # scoring folder that is a link to a folder of the candidate's holding a fake harness.
    planting = f"""
import pathlib
run = pathlib.Path.cwd().parent
fake = "import sys; print(" + repr({FAKE_SCORE!r}) + "); sys.exit(0)\\n"
decoy = run / "decoy"
for folder in (run, decoy):
    folder.mkdir(exist_ok=True)
    for module in ("torch", "json", "math", "sitecustomize", "prepare"):
        (folder / f"{{module}}.py").write_text(fake)
(run / "score").symlink_to(decoy)
""" + UNIFORM_MODEL
    result = run_experiment(with_train(template.files, planting), template.spec, seed=0,
                            budget_s=5, grace_s=GRACE_S)
    assert result.status == "ok", result.message
    assert result.objective == pytest.approx(UNTRAINED_BPB)
    assert result.metrics["params"] == 256 * 256


def test_a_candidate_that_rewrites_the_data_is_invalid_and_the_next_one_trains_on_true_data(
        template, tmp_path):
    cache = {"AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    tampering = """
from prepare import harness
harness.prepare()
for split in ("train", "val"):
    (harness.cache_dir() / f"{split}.bin").write_bytes(b" " * 100_000)
""" + UNIFORM_MODEL
    tampered = run_experiment(with_train(template.files, tampering), template.spec, seed=0,
                              budget_s=5, grace_s=GRACE_S, env=cache)
    assert tampered.status == "invalid"
    assert "data changed" in tampered.message
    assert tampered.objective == pytest.approx(UNTRAINED_BPB)  # its true score, recorded
    honest = run_experiment(with_train(template.files, UNIFORM_MODEL), template.spec, seed=0,
                            budget_s=5, grace_s=GRACE_S, env=cache,
                            expected_fingerprint=tampered.data_fingerprint)
    assert honest.status == "ok", honest.message
