"""The experiment runner: train one candidate for its time budget and score it with the harness.

A plain function, `run_experiment`, that a test calls directly and the driver calls inside a Ray
task. It needs no git and no shared filesystem: the task's files come in as a dict.

The life of one run, in a private temporary folder:
1. the task's files are written to `work/`; train.py runs there as a supervised process tree
   (engine/experiment/supervise.py) with the budget and the runner's seed, and hands its model
   to the harness (an exported program, `model.pt2`);
2. once that whole tree is dead, a fresh copy of the harness is written to `score/` and scores
   the model in a process of its own; only what that process prints becomes the score;
3. the constraints of the spec are checked against what the harness measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from engine.experiment import environment
from engine.experiment.progress import (
    ProgressCallback,
    ProgressFile,
    ProgressReader,
    open_regular,
)
from engine.experiment.records import ExperimentResult, Status
from engine.experiment.spec import HARNESS_FILE, Spec

LOG_TAIL_LINES = 40
EVAL_TIMEOUT_S = 600.0
SUPERVISOR = Path(__file__).with_name("supervise.py")
# Limits on a candidate's process tree beyond the spec's: a training program needs a few dozen
# processes and a few MB of output; more is a fork bomb or a print in a hot loop.
MAX_PROCESSES = 1024
MAX_LOG_BYTES = 256 * 2**20
POLL_S = 0.2  # how often the runner looks at the supervisor and at train.py's progress
# The folder that holds this installation's packages: train.py and the harness run with it on
# their path, so that a harness built on the kit (autoresearch/kit.py) imports the kit of the
# engine that runs it, whatever folder they run in.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def default_grace_s(budget_s: float) -> float:
    """Time allowed past the budget for start-up, data loading and the hand-over."""
    return max(20.0, 0.2 * budget_s)


def thread_env(threads: int) -> dict[str, str]:
    """The variables that cap the CPU threads of train.py's numeric libraries."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def threads_per_slot(cpus: int, slots: int) -> int:
    """The CPU threads each experiment gets: the cores divided among the experiments that run at
    once (engine/search/ray_pool.py shares a cluster's out so)."""
    return max(cpus // max(slots, 1), 1)


def slot_threads(gpus_per_experiment: int) -> int:
    """The CPU threads a search slot on this machine gets: one slot per GPU set, or one per core
    where there is no GPU. `experiment` and `reproduce` train with the same, so that their steps
    take as long as a search's: on a busy 2-core machine a step took 4.5 s with 2 threads
    against 0.1 s with 1."""
    import torch  # late: only the commands that train need it

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    return threads_per_slot(cpus, gpus // max(gpus_per_experiment, 1) if gpus else cpus)


def run_experiment(
    files: dict[str, str],
    spec: Spec,
    seed: int,
    budget_s: float | None = None,
    *,
    grace_s: float | None = None,
    expected_fingerprint: str | None = None,
    env: dict[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExperimentResult:
    """Train the task given by `files` once and score it.

    `files` maps relative paths to contents (train.py, prepare.py, program.md, ...).
    `expected_fingerprint`, when given, is the data fingerprint of an earlier experiment: an
    evaluation against other data is invalid. `env` adds variables for train.py (for example
    CUDA_VISIBLE_DEVICES or OMP_NUM_THREADS). `on_progress`, when given, is called with every
    step train.py reports, while it trains, from this thread; whatever it raises stops the
    training (its whole process tree is killed) and ends this call.
    """
    budget = float(budget_s if budget_s is not None else spec.time_budget_s)
    grace = default_grace_s(budget) if grace_s is None else grace_s
    result = ExperimentResult(status=Status.OK, objective=None, seed=seed, budget_s=budget)
    with tempfile.TemporaryDirectory(prefix="autoresearch-") as tmp:
        work, score = Path(tmp, "work"), Path(tmp, "score")
        _write_files(work, files)
        model_path, progress_path = work / "model.pt2", work / "progress.jsonl"
        training_env = {
            **_base_env(env),
            environment.BUDGET_S: repr(budget),
            environment.SEED: str(seed),
            environment.MODEL_OUT: str(model_path),
            environment.PROGRESS_OUT: str(progress_path),
        }
        launched_at = time.time()
        train = _supervised(
            [sys.executable, "train.py"], cwd=work, env=training_env,
            deadline_s=budget + grace, memory_limit_gb=spec.memory_limit_gb,
            log_path=Path(tmp, "train.log"), report_path=Path(tmp, "train.report.json"),
            on_poll=ProgressReader(progress_path, on_progress) if on_progress else None,
        )
        result.train_wall_s, result.left_behind = train["wall_s"], train["left_behind"]
        result.log_tail = _tail(Path(tmp, "train.log"))
        progress = ProgressFile.read(progress_path)
        result.metrics.update(progress.measures())
        result.loss_curve = progress.loss_curve()
        result.metrics["peak_memory_gb"] = progress.peak_cuda_gb or train["peak_rss_gb"]
        if progress.first_step_at is not None:
            result.startup_s = progress.first_step_at - launched_at
        result.export_s = progress.export_s
        if train["outcome"] == "timeout":
            return _fail(result, Status.TIMEOUT, f"train.py ran past its budget plus {grace:.0f} s "
                                             "of grace and was killed")
        if train["outcome"] == "memory":
            return _fail(result, Status.INVALID, f"train.py used more than the memory limit of "
                                             f"{spec.memory_limit_gb:g} GB and was killed")
        if train["outcome"] == "supervisor killed":
            return _fail(result, Status.CRASH,
                         "the supervisor of train.py was killed (by train.py, or from outside); "
                         "train.py died with it, processes it started may still run")
        if train["outcome"] == "processes":
            return _fail(result, Status.INVALID,
                         f"train.py ran more than {MAX_PROCESSES} processes at once and was killed")
        if train["outcome"] == "log":
            return _fail(result, Status.INVALID, f"train.py printed more than "
                                             f"{MAX_LOG_BYTES / 2**20:g} MB and was killed")
        if train["exit_code"] != 0:
            return _fail(result, Status.CRASH, f"train.py exited with status {train['exit_code']}: "
                                           f"{_last_line(result.log_tail)}")
        if not _is_plain_file(model_path):
            return _fail(result, Status.CRASH, "train.py ended without handing a model to the "
                                           "harness (prepare.hand_over)")
        # Nothing of the candidate runs any more: write the harness afresh, over whatever the
        # candidate may have left at these paths, and let it score.
        for planted in (score, Path(tmp, "eval.log"), Path(tmp, "eval.report.json")):
            _remove(planted)
        _write_files(score, {HARNESS_FILE: files[HARNESS_FILE]})
        evaluation = _supervised(
            [sys.executable, HARNESS_FILE, "evaluate", str(model_path)], cwd=score,
            env=_base_env(env), deadline_s=EVAL_TIMEOUT_S, memory_limit_gb=spec.memory_limit_gb,
            log_path=Path(tmp, "eval.log"), report_path=Path(tmp, "eval.report.json"),
        )
        result.eval_wall_s = evaluation["wall_s"]
        scored = _last_json_line(Path(tmp, "eval.log"))
        if evaluation["outcome"] != "exited" or evaluation["exit_code"] != 0:
            tail = _last_line(_tail(Path(tmp, "eval.log")))
            return _fail(result, Status.CRASH, f"the harness could not score the model: {tail}")
        if scored is None:
            return _fail(result, Status.CRASH, f"`python {HARNESS_FILE} evaluate` printed no JSON "
                                               f"line (its score); its last line: "
                                               f"{_last_line(_tail(Path(tmp, 'eval.log')))}")
    return _judge(result, scored, spec, expected_fingerprint)


def _judge(result: ExperimentResult, scored: dict, spec: Spec,
           expected_fingerprint: str | None) -> ExperimentResult:
    """Turn what the harness measured into a status, checking the spec's constraints."""
    result.metrics.update({k: float(v) for k, v in scored.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
    result.data_fingerprint = scored.get("data_fingerprint", "")
    result.objective = result.metrics.get(spec.objective.metric)
    reported = ", ".join(scored) or "nothing"
    if not isinstance(scored.get("valid"), bool):
        return _fail(result, Status.CRASH,
                     f"{HARNESS_FILE} printed a result without `valid` (true, or false with a "
                     f"`reason`); it reported: {reported}")
    if not scored["valid"]:
        return _fail(result, Status.INVALID,
                     f"the harness refused the model: {scored.get('reason') or 'no reason given'}")
    if result.objective is None:
        return _fail(result, Status.CRASH,
                     f"{HARNESS_FILE} printed a result without `{spec.objective.metric}`, the "
                     f"goal file's objective; it reported: {reported}")
    if spec.param_limit is not None and "params" not in result.metrics:
        return _fail(result, Status.INVALID,
                     f"the goal file allows fewer than {spec.param_limit:,} parameters, but "
                     f"{HARNESS_FILE} reported no `params` to check it by")
    params = int(result.metrics.get("params", 0))
    if spec.param_limit is not None and params >= spec.param_limit:
        return _fail(result, Status.INVALID, f"the model has {params:,} parameters; the goal file "
                                         f"allows fewer than {spec.param_limit:,}")
    if expected_fingerprint and result.data_fingerprint != expected_fingerprint:
        return _fail(result, Status.INVALID, "the task's data changed during the experiment "
                                         f"({result.data_fingerprint} != {expected_fingerprint})")
    return result


def _fail(result: ExperimentResult, status: Status, message: str) -> ExperimentResult:
    result.status, result.message = status, message
    if status in (Status.CRASH, Status.TIMEOUT):
        result.objective = None
    return result


def _write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        if not path.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{name} lies outside the task folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _base_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The runner's environment without anything that could redirect imports or the harness."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(environment.PREFIX) or k == environment.CACHE}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {**env, **(extra or {})}


def _supervised(command: list[str], *, cwd: Path, env: dict[str, str], deadline_s: float,
                memory_limit_gb: float | None, log_path: Path, report_path: Path,
                on_poll: Callable[[], None] | None = None) -> dict:
    """Run `command` under engine/experiment/supervise.py and return its report, calling
    `on_poll` every POLL_S while it runs and once after."""
    supervisor = [sys.executable, str(SUPERVISOR), "--report", str(report_path),
                  "--log", str(log_path), "--deadline", repr(deadline_s),
                  "--memory-gb", repr(memory_limit_gb or 0.0),
                  "--max-processes", str(MAX_PROCESSES), "--max-log-bytes", str(MAX_LOG_BYTES),
                  "--", *command]
    process = subprocess.Popen(supervisor, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    # A loop rather than a blocking wait, so that a cancelled Ray task or an exception from
    # `on_poll` stops the training here. The supervisor kills the tree at the deadline; the
    # outer limit only guards against the supervisor itself hanging.
    started = time.monotonic()
    given_up_at = started + deadline_s + 60
    try:
        while process.poll() is None:
            if time.monotonic() > given_up_at:
                raise subprocess.TimeoutExpired(supervisor, deadline_s + 60)
            if on_poll:
                on_poll()
            time.sleep(POLL_S)
        if on_poll:
            on_poll()
    except BaseException:
        _kill_supervised(process)
        raise
    if process.returncode < 0:  # a signal: the candidate (same user) or the machine killed it
        return {"outcome": "supervisor killed", "exit_code": None, "peak_rss_gb": 0.0,
                "wall_s": time.monotonic() - started, "left_behind": 0}
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, supervisor)
    return json.loads(report_path.read_text())


def _kill_supervised(process: subprocess.Popen) -> None:
    """Kill the supervisor and everything under it; its children would outlive it otherwise."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    for member in (process, *tree):
        try:
            member.kill()
        except (psutil.Error, ProcessLookupError):
            pass
    process.wait()


def _tail(path: Path, lines: int = LOG_TAIL_LINES, limit_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log, read from its last `limit_bytes` only."""
    log = open_regular(path)
    if log is None:
        return ""
    with log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - limit_bytes))
        return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])


def _is_plain_file(path: Path) -> bool:
    """A regular file, not a link (to /dev/zero, a pipe, a file elsewhere) the candidate left."""
    return path.is_file() and not path.is_symlink()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _last_json_line(path: Path) -> dict | None:
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None
