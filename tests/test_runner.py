"""One experiment: train a candidate under its budget, score it with the fixed harness."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.experiment.runner import run_experiment
from tests.conftest import with_train

UNTRAINED_BPB = 8.0  # log2(256): a uniform guess over bytes


def test_the_bundled_task_trains_far_below_the_untrained_loss(template):
    result = run_experiment(template.files, template.spec, seed=1, budget_s=10)
    assert result.status == "ok", result.message
    assert result.objective < UNTRAINED_BPB - 1.5
    assert result.metrics["val_bpb"] == result.objective
    assert result.metrics["val_perplexity"] == pytest.approx(2**result.objective)
    assert result.metrics["params"] == 858_880
    assert result.metrics["steps"] > 1  # a busy 2-core machine fits 5 steps in 10 s
    assert result.metrics["inference_tokens_per_s"] > 0
    assert result.metrics["peak_memory_gb"] > 0
    assert "loss_spikes" in result.metrics
    assert result.metrics["steps_per_s"] > 0
    assert result.loss_curve[0][0] == 0
    assert len(result.loss_curve) == min(6, result.metrics["steps"])
    assert result.loss_curve[-1][1] == result.metrics["final_train_loss"]
    assert result.seed == 1 and result.budget_s == 10
    assert result.data_fingerprint


def test_steps_throughput_spikes_and_a_six_point_loss_curve_come_from_the_progress_file(
        template):
    # 100 steps, four a second by train.py's clock, the loss falling by 0.02 a step but for a
    # spike at step 45; then train.py ends without a model: what it trained is measured still.
    source = (
        "import json, os\n"
        "with open(os.environ['AUTORESEARCH_PROGRESS_OUT'], 'a') as progress:\n"
        "    for step in range(100):\n"
        "        loss = 9.0 if step == 45 else 5.0 - step / 50\n"
        "        progress.write(json.dumps({'step': step, 'loss': loss, 'time': 1e9 + step / 4})"
        " + '\\n')\n"
    )
    result = run_experiment(with_train(template.files, source), template.spec, seed=0, budget_s=5)
    assert result.status == "crash"
    assert result.metrics["steps"] == 100
    assert result.metrics["steps_per_s"] == pytest.approx(4.0)
    assert result.metrics["loss_spikes"] == 1
    # Each point is the mean of the ten steps up to it; none of these windows holds the spike.
    mean_up_to = {step: 5.0 - (step - 4.5) / 50 for step in (20, 40, 59, 79, 99)}
    assert result.loss_curve == [(0, 5.0), *((step, pytest.approx(loss))
                                             for step, loss in mean_up_to.items())]
    assert result.metrics["final_train_loss"] == pytest.approx(mean_up_to[99])


def test_a_crashing_candidate_is_a_crash_with_its_error(template):
    files = with_train(template.files, "raise RuntimeError('exploding gradients')\n")
    result = run_experiment(files, template.spec, seed=0, budget_s=5)
    assert result.status == "crash"
    assert "exploding gradients" in result.message
    assert "RuntimeError" in result.log_tail
    assert result.objective is None


def test_a_candidate_that_never_hands_over_a_model_is_a_crash(template):
    result = run_experiment(with_train(template.files, "print('done')\n"), template.spec,
                            seed=0, budget_s=5)
    assert result.status == "crash"
    assert "without handing a model" in result.message


def test_a_hanging_candidate_is_killed_at_budget_plus_grace(template):
    files = with_train(template.files, "import time\nwhile True:\n    time.sleep(0.1)\n")
    started = time.monotonic()
    result = run_experiment(files, template.spec, seed=0, budget_s=1, grace_s=2)
    assert result.status == "timeout"
    assert result.objective is None
    assert 3 <= result.train_wall_s < 6
    assert time.monotonic() - started < 30


def test_the_runner_hands_its_seed_and_budget_to_the_candidate(template):
    source = (
        "from prepare import SEED, TIME_BUDGET\n"
        "raise SystemExit(f'seed={SEED} budget={TIME_BUDGET}')\n"
    )
    result = run_experiment(with_train(template.files, source), template.spec, seed=42,
                            budget_s=7)
    assert "seed=42 budget=7.0" in result.message


def test_a_candidate_that_fakes_its_score_gets_the_true_one(template):
    fake = '{"valid": true, "val_bpb": 0.0001, "params": 1, "data_fingerprint": "x"}'
    faking = template.files["train.py"] + f"""
import pathlib
fake = {fake!r}
print("val_bpb: 0.0001")
print(fake)
run = pathlib.Path.cwd().parent
for name in ("eval.log", "train.report.json", "eval.report.json", "result.json"):
    (run / name).write_text(fake + "\\n")
(run / "score").mkdir(exist_ok=True)
fake_harness = "import json; print(json.dumps(" + repr(fake) + "))"
(run / "score" / "prepare.py").write_text(fake_harness)
pathlib.Path("prepare.py").write_text(fake_harness)
"""
    result = run_experiment(with_train(template.files, faking), template.spec, seed=0,
                            budget_s=2)
    assert result.status == "ok", result.message
    assert result.objective > 2.0
    assert result.metrics["params"] == 858_880


def test_background_processes_are_killed_and_the_score_stands(template, tmp_path):
    pid_file = tmp_path / "daemon.pid"
    leaving_a_daemon = template.files["train.py"] + f"""
import os, time
if os.fork() == 0:
    os.setsid()  # a new session: out of the training process group
    if os.fork() == 0:
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(3600)
    os._exit(0)
time.sleep(0.5)
"""
    # A generous grace: what is tested is the daemon, not how fast a busy machine starts torch.
    result = run_experiment(with_train(template.files, leaving_a_daemon), template.spec,
                            seed=0, budget_s=2, grace_s=90)
    assert result.status == "ok", result.message
    # Scored as the model it trained (on a busy machine, 2 s may be one step: near untrained).
    assert result.objective < UNTRAINED_BPB + 0.5
    assert result.left_behind >= 1
    daemon = int(pid_file.read_text())
    assert not Path(f"/proc/{daemon}").exists()


def test_a_model_over_the_size_limit_is_invalid_with_its_true_score(template):
    spec = dataclasses.replace(template.spec, param_limit=100_000)
    result = run_experiment(template.files, spec, seed=0, budget_s=2)
    assert result.status == "invalid"
    assert "858,880 parameters" in result.message and "fewer than 100,000" in result.message
    assert result.objective is not None and result.objective < UNTRAINED_BPB + 1


def test_a_model_that_sees_future_bytes_is_invalid(template):
    peeking = template.files["train.py"].replace("is_causal=True", "is_causal=False")
    result = run_experiment(with_train(template.files, peeking), template.spec, seed=0,
                            budget_s=2)
    assert result.status == "invalid"
    assert "future tokens" in result.message


def test_a_candidate_over_the_memory_limit_is_killed_and_invalid(template):
    spec = dataclasses.replace(template.spec, memory_limit_gb=0.3)
    hog = "import time\nhog = bytearray(1 << 30)\ntime.sleep(30)\n"
    result = run_experiment(with_train(template.files, hog), spec, seed=0, budget_s=20)
    assert result.status == "invalid"
    assert "memory limit" in result.message
    assert result.train_wall_s < 15


def test_a_candidate_that_rewrites_the_cached_data_is_invalid(template, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache)}
    prepared = subprocess.run([sys.executable, "-c", template.files["prepare.py"]], env=env,
                              capture_output=True, text=True, check=True)
    fingerprint = prepared.stdout.split('"fingerprint": "')[1].split('"')[0]
    tampering = template.files["train.py"] + """
from prepare import harness
val = harness.cache_dir() / "val.bin"
val.write_bytes(b" " * len(val.read_bytes()))
"""
    result = run_experiment(with_train(template.files, tampering), template.spec, seed=0,
                            budget_s=2, grace_s=90, expected_fingerprint=fingerprint,
                            env={"AUTORESEARCH_CACHE": str(cache)})
    assert result.status == "invalid"
    assert "data changed" in result.message
