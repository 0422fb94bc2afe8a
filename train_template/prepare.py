"""The fixed harness of the bundled task: data, the hand-over of a trained model, and evaluation.

Agents never edit this file; the engine refuses any change to it. It does three jobs:

- builds a byte-level corpus offline and deterministically from the Python standard library's
  own source (it ships with every Python), caches it once per machine, and splits it by file into
  a train and a validation part;
- gives train.py the training data only, the time budget and the seed the engine chose, and
  takes the trained model back (`hand_over`), exported as a self-contained program;
- scores that program in a separate process (`python prepare.py evaluate MODEL`): bits per byte
  on a fixed validation slice, with the model's own code never running there.

Usage:
    python prepare.py                  # build the data cache and print its summary
    python prepare.py evaluate MODEL   # score a handed-over model; prints one JSON line
"""

import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Fixed constants of the harness (a candidate cannot change how it is scored)
# ---------------------------------------------------------------------------

VOCAB_SIZE = 256  # byte-level tokens
EVAL_SEQ_LEN = 256  # the context the model is scored at; models must accept this length
EVAL_BATCH = 16  # the exported model's batch shape
EVAL_BYTES = 16 * EVAL_BATCH * EVAL_SEQ_LEN  # the fixed validation slice: 65,536 bytes
VAL_EVERY = 20  # one source file in 20 (chosen by a hash of its path) is validation
# Source folders that are not prose-like code (data tables, tests, GUI demos) stay out.
SKIPPED_FOLDERS = {
    "__pycache__", "config", "encodings", "ensurepip", "idlelib", "lib-dynload", "lib2to3",
    "pydoc_data", "site-packages", "test", "tests", "tkinter", "turtledemo",
}

# Set by the engine for each experiment; the defaults let `python train.py` run by hand.
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_BUDGET_S", "300"))  # seconds of training
SEED = int(os.environ.get("AUTORESEARCH_SEED", "0"))
_MODEL_OUT = os.environ.get("AUTORESEARCH_MODEL_OUT", "model.pt2")
_PROGRESS_OUT = os.environ.get("AUTORESEARCH_PROGRESS_OUT", "progress.jsonl")

# ---------------------------------------------------------------------------
# Data: built once per machine, shared by every experiment on it
# ---------------------------------------------------------------------------


def _source_files() -> list[Path]:
    """The standard library's .py files, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(stdlib):
        subfolders[:] = sorted(
            name for name in subfolders
            if name not in SKIPPED_FOLDERS and not name.startswith("config-")
        )
        files += [Path(folder, name) for name in sorted(names) if name.endswith(".py")]
    return sorted(files, key=lambda path: path.relative_to(stdlib).as_posix())


def cache_dir() -> Path:
    """Where this machine keeps the corpus (`AUTORESEARCH_CACHE` overrides the default)."""
    base = os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch"
    return Path(base) / f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"


def prepare() -> dict:
    """Build the train and validation splits if this machine has none yet; return the summary."""
    folder = cache_dir()
    summary_path = folder / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    splits = _build_splits()
    summary = _summary(splits)
    # Several experiments may start on a fresh machine at once: build aside, then rename.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    staging.mkdir(exist_ok=True)
    for split, data in splits.items():
        (staging / f"{split}.bin").write_bytes(data)
    (staging / "summary.json").write_text(json.dumps(summary))
    try:
        staging.rename(folder)
    except OSError:  # another process won the race; its copy is identical
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()
    return summary


def _build_splits() -> dict[str, bytes]:
    """The train and validation splits, from the standard library's source (a few tens of ms)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    splits = {"train": bytearray(), "val": bytearray()}
    for path in _source_files():
        name = path.relative_to(stdlib).as_posix()
        bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % VAL_EVERY
        splits["val" if bucket == 0 else "train"] += path.read_bytes() + b"\n\n"
    if len(splits["val"]) < EVAL_BYTES + 1:
        raise RuntimeError(f"the validation split has only {len(splits['val'])} bytes")
    return {split: bytes(data) for split, data in splits.items()}


def _summary(splits: dict[str, bytes]) -> dict:
    return {
        "train_bytes": len(splits["train"]),
        "val_bytes": len(splits["val"]),
        "fingerprint": _fingerprint(splits["train"], splits["val"]),
    }


def _repair_cache(splits: dict[str, bytes]) -> bool:
    """Whether the cache, where there is one, still holds `splits`; a cache that does not (a
    candidate rewrote or deleted part of it) is rewritten file by file, each replaced whole, so
    that later experiments train on the true data again."""
    folder = cache_dir()
    if not folder.is_dir():
        return True
    files = {f"{split}.bin": data for split, data in splits.items()}
    files["summary.json"] = json.dumps(_summary(splits)).encode()
    changed = [name for name, data in files.items()
               if not (folder / name).is_file() or (folder / name).read_bytes() != data]
    for name in changed:
        staging = folder / f".{name}.{os.getpid()}.tmp"
        staging.write_bytes(files[name])
        staging.replace(folder / name)
    return not changed


def _fingerprint(train: bytes, val: bytes) -> str:
    return hashlib.sha256(train + val).hexdigest()[:16]


def _read_split(split: str) -> bytes:
    prepare()
    return (cache_dir() / f"{split}.bin").read_bytes()


def _as_tokens(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class TrainLoader:
    """Random windows of the training split (the only split train.py is given)."""

    def __init__(self, batch_size: int, seq_len: int, device: str) -> None:
        self.data = _as_tokens(_read_split("train"))
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        self.generator = torch.Generator().manual_seed(SEED)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-byte targets, each of shape (batch_size, seq_len)."""
        starts = torch.randint(
            len(self.data) - self.seq_len - 1, (self.batch_size,), generator=self.generator
        )
        windows = torch.stack([self.data[s : s + self.seq_len + 1] for s in starts.tolist()])
        windows = windows.to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------
# Hand-over: what train.py calls
# ---------------------------------------------------------------------------


def report(step: int, loss: float) -> None:
    """Record the training loss of a step (for the training-stability metric)."""
    _append_progress({"step": step, "loss": loss, "time": time.time()})


def _append_progress(record: dict) -> None:
    with open(_PROGRESS_OUT, "a") as progress:
        progress.write(json.dumps(record) + "\n")


def hand_over(model: torch.nn.Module) -> None:
    """Export the trained model as a self-contained program for the evaluation process.

    The model must map a (batch, EVAL_SEQ_LEN) tensor of byte ids to logits of shape
    (batch, EVAL_SEQ_LEN, VOCAB_SIZE).
    """
    model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(EVAL_BATCH, EVAL_SEQ_LEN, dtype=torch.long, device=device)
    if device.type == "cuda":
        _append_progress({"peak_cuda_memory_gb": torch.cuda.max_memory_allocated() / 2**30})
    exported = torch.export.export(model, (example,))
    torch.export.save(exported, _MODEL_OUT)


# ---------------------------------------------------------------------------
# Evaluation: runs in its own process, on the exported program only
# ---------------------------------------------------------------------------


def _count_parameters(exported: torch.export.ExportedProgram) -> int:
    """Distinct parameters of the program (tied weights count once)."""
    state = exported.state_dict
    seen, total = set(), 0
    for name in exported.graph_signature.parameters:
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def _is_causal(model, device: str) -> bool:
    """A prediction may depend only on earlier bytes: changing the second half of a window must
    leave the logits of the first half unchanged."""
    generator = torch.Generator().manual_seed(1234)
    tokens = torch.randint(VOCAB_SIZE, (EVAL_BATCH, EVAL_SEQ_LEN), generator=generator)
    changed = tokens.clone()
    half = EVAL_SEQ_LEN // 2
    changed[:, half:] = torch.randint(VOCAB_SIZE, (EVAL_BATCH, half), generator=generator)
    with torch.no_grad():
        first = model(tokens.to(device))[:, :half].float()
        second = model(changed.to(device))[:, :half].float()
    return torch.allclose(first, second, rtol=1e-3, atol=1e-3)


def evaluate(model_path: str) -> dict:
    """Score an exported model on the fixed validation slice."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    exported = torch.export.load(model_path)
    model = exported.module().to(device)
    parameters = _count_parameters(exported)
    if not _is_causal(model, device):
        return {"valid": False, "reason": "the model looks at future bytes", "params": parameters}
    # Scored on splits built afresh from the source, not on the cache train.py read (and could
    # rewrite). A cache that no longer holds them is repaired and the model refused; the
    # fingerprint lets the engine compare the data across experiments and machines.
    splits = _build_splits()
    intact = _repair_cache(splits)
    val = _as_tokens(splits["val"])[: EVAL_BYTES + 1]
    inputs = val[:-1].view(-1, EVAL_SEQ_LEN)
    targets = val[1:].view(-1, EVAL_SEQ_LEN)
    total_nats = 0.0
    started = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(inputs), EVAL_BATCH):
            x = inputs[first : first + EVAL_BATCH].to(device)
            y = targets[first : first + EVAL_BATCH].to(device)
            logits = model(x).float()
            total_nats += F.cross_entropy(
                logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="sum"
            ).item()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    val_bpb = total_nats / EVAL_BYTES / math.log(2)
    if not math.isfinite(val_bpb):
        return {"valid": False, "reason": "the model's predictions are not finite",
                "params": parameters}
    refusal = {} if intact else {
        "valid": False, "reason": "the task's data changed during the experiment (its cache was "
                                  "rebuilt)"}
    return {
        "valid": True,
        "val_bpb": val_bpb,
        "val_perplexity": 2.0**val_bpb,
        "inference_tokens_per_s": EVAL_BYTES / seconds,
        "params": parameters,
        "eval_device": device,
        "data_fingerprint": _fingerprint(splits["train"], splits["val"]),
        **refusal,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "evaluate":
        print(json.dumps(evaluate(sys.argv[2])))
    elif len(sys.argv) == 1:
        print(json.dumps(prepare()))
    else:
        sys.exit(__doc__)
