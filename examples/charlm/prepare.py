"""The fixed harness of the character-level language model task: the Python documentation's topic
pages (they ship with Python) as printable ASCII, split 90/10, and a model scored by its loss in
nats per character on a fixed validation slice (see autoresearch/kit.py)."""

import math
import pydoc_data.topics
import time

import torch
import torch.nn.functional as F

from autoresearch.kit import SEED, TIME_BUDGET, Harness, report  # noqa: F401 (for train.py)

VOCAB_SIZE = 96  # newline, then printable ASCII 32..126; anything else reads as "?"
EVAL_SEQ_LEN, EVAL_BATCH = 128, 16
EVAL_CHARS = 8 * EVAL_BATCH * EVAL_SEQ_LEN
METRICS = {
    "val_loss": ("validation loss", "loss"),
    "val_perplexity": ("validation perplexity", "perplexity"),
    "inference_chars_per_s": ("inference speed", "characters per second"),
    "params": ("model size", "parameters"),
}


def build() -> dict[str, torch.Tensor]:
    text = "\n".join(pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics))
    ids = [0 if c == "\n" else ord(c) - 31 if 32 <= ord(c) < 127 else ord("?") - 31 for c in text]
    tokens = torch.tensor(ids, dtype=torch.uint8)
    cut = len(tokens) * 9 // 10
    return {"train": tokens[:cut], "val": tokens[cut:]}


def evaluate(model, data: dict[str, torch.Tensor], device: str) -> dict[str, float]:
    val = data["val"][: EVAL_CHARS + 1].long()
    inputs, targets = val[:-1].view(-1, EVAL_SEQ_LEN), val[1:].view(-1, EVAL_SEQ_LEN)
    total_nats, started = 0.0, time.perf_counter()
    for first in range(0, len(inputs), EVAL_BATCH):
        logits = model(inputs[first : first + EVAL_BATCH].to(device)).float()
        total_nats += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE),
                                      targets[first : first + EVAL_BATCH].to(device).reshape(-1),
                                      reduction="sum").item()
    val_loss = total_nats / EVAL_CHARS
    return {"val_loss": val_loss, "val_perplexity": math.exp(val_loss),
            "inference_chars_per_s": EVAL_CHARS / (time.perf_counter() - started)}


harness = Harness("pydoc-topics-v1", build, (EVAL_BATCH, EVAL_SEQ_LEN), evaluate,
                  input_dtype=torch.long, causal_vocab_size=VOCAB_SIZE)
hand_over = harness.hand_over


class TrainLoader:
    """Random windows of the training split, as inputs and next-character targets."""

    def __init__(self, batch_size: int, seq_len: int) -> None:
        self.data = harness.split("train").long()
        self.batch_size, self.seq_len = batch_size, seq_len
        self.generator = torch.Generator().manual_seed(SEED)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.seq_len - 1, (self.batch_size,),
                               generator=self.generator)
        windows = torch.stack([self.data[s : s + self.seq_len + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]


if __name__ == "__main__":
    harness.main()
