"""The fixed harness of the bundled task, built on the harness kit (autoresearch/kit.py).

Agents never edit this file; the engine refuses any change to it. Its data is a byte-level corpus
built offline and deterministically from the Python standard library's own source (it ships with
every Python), split by file into a train and a validation part; train.py is given the train part
only. A model is scored in a process of its own (`python prepare.py evaluate MODEL`) by its bits
per byte on a fixed validation slice, with the model's own code never running there.

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
VAL_EVERY = 20  # one source file in 20 (chosen by a hash of its path) is validation
# Source folders that are not prose-like code (data tables, tests, GUI demos) stay out.
SKIPPED_FOLDERS = {
    "__pycache__", "config", "encodings", "ensurepip", "idlelib", "lib-dynload", "lib2to3",
    "pydoc_data", "site-packages", "test", "tests", "tkinter", "turtledemo",
}
# What the JSON line reports, each key with the phrases a goal file may name it by.
METRICS = {
    "val_bpb": ("validation bits per byte", "bits per byte", "validation loss", "loss"),
    "val_perplexity": ("validation perplexity", "perplexity"),
    "inference_tokens_per_s": ("inference speed", "inference throughput", "tokens per second"),
    "params": ("parameter count", "model size", "parameters"),
}


def build() -> dict[str, torch.Tensor]:
    """The train and validation splits, from the standard library's .py files in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(stdlib):
        subfolders[:] = [name for name in subfolders
                         if name not in SKIPPED_FOLDERS and not name.startswith("config-")]
        files += [Path(folder, name).relative_to(stdlib).as_posix()
                  for name in names if name.endswith(".py")]
    splits = {"train": bytearray(), "val": bytearray()}
    for name in sorted(files):
        bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % VAL_EVERY
        splits["val" if bucket == 0 else "train"] += (stdlib / name).read_bytes() + b"\n\n"
    return {split: torch.frombuffer(data, dtype=torch.uint8) for split, data in splits.items()}


def evaluate(model, data: dict[str, torch.Tensor], device: str) -> dict[str, float]:
    """Bits per byte on the first EVAL_BYTES of the validation split."""
    val = data["val"][: EVAL_BYTES + 1].long()
    inputs, targets = val[:-1].view(-1, EVAL_SEQ_LEN), val[1:].view(-1, EVAL_SEQ_LEN)
    total_nats, started = 0.0, time.perf_counter()
    for first in range(0, len(inputs), EVAL_BATCH):
        logits = model(inputs[first : first + EVAL_BATCH].to(device)).float()
        total_nats += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE),
                                      targets[first : first + EVAL_BATCH].to(device).reshape(-1),
                                      reduction="sum").item()
    if device == "cuda":
        torch.cuda.synchronize()
    val_bpb = total_nats / EVAL_BYTES / math.log(2)
    return {"val_bpb": val_bpb, "val_perplexity": 2.0**val_bpb,
            "inference_tokens_per_s": EVAL_BYTES / (time.perf_counter() - started)}


harness = Harness(f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}", build,
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
