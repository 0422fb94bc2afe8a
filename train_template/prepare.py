"""The fixed harness of the bundled task, built on the harness kit (autoresearch/kit.py).

Agents never edit this file; the engine refuses any change to it. Its data is a byte-level corpus
built offline and deterministically from the Python standard library's own source (it ships with
every Python), split by file into train, validation and holdout parts; train.py is given the
train part only. A model is scored in a process of its own (`python prepare.py evaluate MODEL`) by
its bits per byte on a fixed validation slice, with the model's own code never running there. The
same measure on a holdout slice is reported beside it and never selected on: where the two part
ways over a search, selection has fitted the validation slice.

Usage:
    python prepare.py                  # build the data cache and print its summary
    python prepare.py evaluate MODEL   # score a handed-over model; prints one JSON line
"""

import hashlib
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoresearch.kit import SEED, TIME_BUDGET, Harness, report  # noqa: F401 (for train.py)

VOCAB_SIZE = 256  # byte-level tokens
EVAL_SEQ_LEN = 256  # the context the model is scored at; models must accept this length
EVAL_BATCH = 16  # the exported model's batch shape
EVAL_BYTES = 16 * EVAL_BATCH * EVAL_SEQ_LEN  # the fixed validation slice: 65,536 bytes
SPLIT_BUCKETS = 20  # by a hash of its path, one source file in 20 is validation, one holdout
# Source folders that are not prose-like code (data tables, tests, GUI demos) stay out.
SKIPPED_FOLDERS = {
    "__pycache__", "config", "encodings", "ensurepip", "idlelib", "lib-dynload", "lib2to3",
    "pydoc_data", "site-packages", "test", "tests", "tkinter", "turtledemo",
}
# What the JSON line reports, each key with the phrases a goal file may name it by.
METRICS = {
    "val_bpb": ("validation bits per byte", "bits per byte", "validation loss", "loss"),
    "holdout_val_bpb": (),  # the same on the holdout split: reported, never selected on
    "val_perplexity": ("validation perplexity", "perplexity"),
    "inference_tokens_per_s": ("inference speed", "inference throughput", "tokens per second"),
    "params": ("parameter count", "model size", "parameters"),
}


def source_files() -> list[str]:
    """The standard library's .py files the data is made of, as paths relative to it, sorted."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(stdlib):
        subfolders[:] = [name for name in subfolders
                         if name not in SKIPPED_FOLDERS and not name.startswith("config-")]
        files += [Path(folder, name).relative_to(stdlib).as_posix()
                  for name in names if name.endswith(".py")]
    return sorted(files)


def split_of(name: str) -> str:
    """The split a source file belongs to, by a hash of its path: the same on every machine."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % SPLIT_BUCKETS
    return {0: "val", 1: "holdout"}.get(bucket, "train")


def build() -> dict[str, torch.Tensor]:
    """The train, validation and holdout splits, from the standard library's source files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    splits = {"train": bytearray(), "val": bytearray(), "holdout": bytearray()}
    for name in source_files():
        splits[split_of(name)] += (stdlib / name).read_bytes() + b"\n\n"
    return {split: torch.frombuffer(data, dtype=torch.uint8) for split, data in splits.items()}


def bits_per_byte(model, data: torch.Tensor, device: str) -> float:
    """The model's mean loss in bits per byte over the first EVAL_BYTES of `data`."""
    fixed = data[: EVAL_BYTES + 1].long()
    inputs, targets = fixed[:-1].view(-1, EVAL_SEQ_LEN), fixed[1:].view(-1, EVAL_SEQ_LEN)
    total_nats = 0.0
    for first in range(0, len(inputs), EVAL_BATCH):
        logits = model(inputs[first : first + EVAL_BATCH].to(device)).float()
        total_nats += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE),
                                      targets[first : first + EVAL_BATCH].to(device).reshape(-1),
                                      reduction="sum").item()
    return total_nats / EVAL_BYTES / math.log(2)


def evaluate(model, data: dict[str, torch.Tensor], device: str) -> dict[str, float]:
    """Bits per byte on the fixed validation slice, timed; the same on the holdout slice."""
    started = time.perf_counter()
    val_bpb = bits_per_byte(model, data["val"], device)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"val_bpb": val_bpb, "val_perplexity": 2.0**val_bpb,
            "inference_tokens_per_s": EVAL_BYTES / elapsed,
            "holdout_val_bpb": bits_per_byte(model, data["holdout"], device)}


harness = Harness(f"stdlib3-py{sys.version_info.major}.{sys.version_info.minor}", build,
                  (EVAL_BATCH, EVAL_SEQ_LEN), evaluate, input_dtype=torch.long,
                  causal_vocab_size=VOCAB_SIZE)
hand_over = harness.hand_over


class TrainLoader:
    """Random windows of the training split (the only split train.py is given)."""

    def __init__(self, batch_size: int, seq_len: int, device: str) -> None:
        self.data = harness.split("train").long()
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


if __name__ == "__main__":
    harness.main()
