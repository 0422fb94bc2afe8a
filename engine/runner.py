"""The experiment runner: train one candidate for its time budget and score it with the harness.

A plain function, `run_experiment`, that a test calls directly and the driver calls inside a Ray
task. It needs no git and no shared filesystem: the task's files come in as a dict.

The life of one run, in a private temporary folder:
1. the task's files are written to `work/`; train.py runs there as a supervised process tree
   (engine/supervise.py) with the budget and the runner's seed, and hands its model to the
   harness (an exported program, `model.pt2`);
2. once that whole tree is dead, a fresh copy of the harness is written to `score/` and scores
   the model in a process of its own; only what that process prints becomes the score;
3. the constraints of the spec are checked against what the harness measured.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.spec import HARNESS_FILE, Spec

STATUSES = ("ok", "crash", "timeout", "invalid")
LOG_TAIL_LINES = 40
EVAL_TIMEOUT_S = 600.0
SUPERVISOR = Path(__file__).with_name("supervise.py")


@dataclass
class ExperimentResult:
    """What one experiment produced. Every number here was measured by the engine or the harness,
    except `steps` and `loss_spikes`, which come from the losses train.py reported."""

    status: str  # one of STATUSES
    objective: float | None  # the spec's objective metric, when the harness could score the model
    metrics: dict[str, float] = field(default_factory=dict)  # everything the harness measured
    seed: int = 0  # chosen by the runner, handed to train.py
    budget_s: float = 0.0  # the training time budget
    train_wall_s: float = 0.0  # wall time of the training process, start-up included
    eval_wall_s: float = 0.0
    message: str = ""  # why, for any status but ok
    log_tail: str = ""  # the end of train.py's output
    left_behind: int = 0  # processes train.py left running, killed by the runner
    data_fingerprint: str = ""  # which data the harness scored against

    def to_dict(self) -> dict:
        return asdict(self)


def default_grace_s(budget_s: float) -> float:
    """Time allowed past the budget for start-up, data loading and the hand-over."""
    return max(20.0, 0.2 * budget_s)


def run_experiment(
    files: dict[str, str],
    spec: Spec,
    seed: int,
    budget_s: float | None = None,
    *,
    grace_s: float | None = None,
    expected_fingerprint: str | None = None,
    env: dict[str, str] | None = None,
) -> ExperimentResult:
    """Train the task given by `files` once and score it.

    `files` maps relative paths to contents (train.py, prepare.py, program.md, ...).
    `expected_fingerprint`, when given, is the data fingerprint of an earlier experiment: an
    evaluation against other data is invalid. `env` adds variables for train.py (for example
    CUDA_VISIBLE_DEVICES or OMP_NUM_THREADS).
    """
    budget = float(budget_s if budget_s is not None else spec.time_budget_s)
    grace = default_grace_s(budget) if grace_s is None else grace_s
    result = ExperimentResult(status="ok", objective=None, seed=seed, budget_s=budget)
    with tempfile.TemporaryDirectory(prefix="autoresearch-") as tmp:
        work, score = Path(tmp, "work"), Path(tmp, "score")
        _write_files(work, files)
        model_path, progress_path = work / "model.pt2", work / "progress.jsonl"
        training_env = {
            **_base_env(env),
            "AUTORESEARCH_BUDGET_S": repr(budget),
            "AUTORESEARCH_SEED": str(seed),
            "AUTORESEARCH_MODEL_OUT": str(model_path),
            "AUTORESEARCH_PROGRESS_OUT": str(progress_path),
        }
        train = _supervised(
            [sys.executable, "train.py"], cwd=work, env=training_env,
            deadline_s=budget + grace, memory_limit_gb=spec.memory_limit_gb,
            log_path=Path(tmp, "train.log"), report_path=Path(tmp, "train.report.json"),
        )
        result.train_wall_s, result.left_behind = train["wall_s"], train["left_behind"]
        result.log_tail = _tail(Path(tmp, "train.log"))
        losses, peak_cuda_gb = _read_progress(progress_path)
        result.metrics.update(_stability(losses))
        result.metrics["peak_memory_gb"] = peak_cuda_gb or train["peak_rss_gb"]
        if train["outcome"] == "timeout":
            return _fail(result, "timeout", f"train.py ran past its budget plus {grace:.0f} s "
                                             "of grace and was killed")
        if train["outcome"] == "memory":
            return _fail(result, "invalid", f"train.py used more than the memory limit of "
                                             f"{spec.memory_limit_gb:g} GB and was killed")
        if train["exit_code"] != 0:
            return _fail(result, "crash", f"train.py exited with status {train['exit_code']}: "
                                           f"{_last_line(result.log_tail)}")
        if not model_path.is_file():
            return _fail(result, "crash", "train.py ended without handing a model to the "
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
        if evaluation["outcome"] != "exited" or evaluation["exit_code"] != 0 or scored is None:
            tail = _last_line(_tail(Path(tmp, "eval.log")))
            return _fail(result, "crash", f"the harness could not score the model: {tail}")
    return _judge(result, scored, spec, expected_fingerprint)


def _judge(result: ExperimentResult, scored: dict, spec: Spec,
           expected_fingerprint: str | None) -> ExperimentResult:
    """Turn what the harness measured into a status, checking the spec's constraints."""
    result.metrics.update({k: float(v) for k, v in scored.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
    result.data_fingerprint = scored.get("data_fingerprint", "")
    result.objective = result.metrics.get(spec.objective.metric)
    if not scored.get("valid", False):
        return _fail(result, "invalid", f"the harness refused the model: {scored.get('reason')}")
    if result.objective is None:
        return _fail(result, "crash", f"the harness reported no {spec.objective.metric}")
    params = int(result.metrics.get("params", 0))
    if spec.param_limit is not None and params >= spec.param_limit:
        return _fail(result, "invalid", f"the model has {params:,} parameters; the goal file "
                                         f"allows fewer than {spec.param_limit:,}")
    if expected_fingerprint and result.data_fingerprint != expected_fingerprint:
        return _fail(result, "invalid", "the task's data changed during the experiment "
                                         f"({result.data_fingerprint} != {expected_fingerprint})")
    return result


def _fail(result: ExperimentResult, status: str, message: str) -> ExperimentResult:
    result.status, result.message = status, message
    if status in ("crash", "timeout"):
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
           if not k.startswith("AUTORESEARCH_") or k == "AUTORESEARCH_CACHE"}
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {**env, **(extra or {})}


def _supervised(command: list[str], *, cwd: Path, env: dict[str, str], deadline_s: float,
                memory_limit_gb: float | None, log_path: Path, report_path: Path) -> dict:
    """Run `command` under engine/supervise.py and return its report."""
    supervisor = [sys.executable, str(SUPERVISOR), str(report_path), repr(deadline_s),
                  repr(memory_limit_gb or 0.0), str(log_path), "--", *command]
    # The supervisor kills the tree at the deadline; the outer timeout only guards against the
    # supervisor itself hanging.
    subprocess.run(supervisor, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                   timeout=deadline_s + 60, check=True)
    return json.loads(report_path.read_text())


def _read_progress(path: Path) -> tuple[list[float], float | None]:
    losses, peak_cuda_gb = [], None
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            if isinstance(record.get("loss"), (int, float)):
                losses.append(float(record["loss"]))
            if isinstance(record.get("peak_cuda_memory_gb"), (int, float)):
                peak_cuda_gb = float(record["peak_cuda_memory_gb"])
    return losses, peak_cuda_gb


def _stability(losses: list[float], window: int = 10, spike_ratio: float = 1.5) -> dict:
    """Training steps, final training loss and loss spikes: steps whose loss exceeds the median
    of the `window` steps before it by `spike_ratio`."""
    if not losses:
        return {"steps": 0.0}
    spikes = sum(
        1 for i in range(window, len(losses))
        if losses[i] > spike_ratio * statistics.median(losses[i - window : i])
    )
    final = statistics.fmean(losses[-window:])
    return {"steps": float(len(losses)), "final_train_loss": final, "loss_spikes": float(spikes)}


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


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
