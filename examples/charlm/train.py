"""A small character-level GRU language model, trained for a fixed time budget. The file agents
edit."""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import EVAL_SEQ_LEN, SEED, TIME_BUDGET, VOCAB_SIZE, TrainLoader, hand_over, report

EMBED = 64
HIDDEN = 256
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
GRAD_CLIP = 1.0


class CharGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB_SIZE)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embed(ids))
        return self.head(hidden)


device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(SEED)
model = CharGRU().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
loader = TrainLoader(BATCH_SIZE, EVAL_SEQ_LEN)

started, step = time.time(), 0
while time.time() - started < TIME_BUDGET:
    inputs, targets = (t.to(device) for t in loader.next_batch())
    loss = F.cross_entropy(model(inputs).reshape(-1, VOCAB_SIZE), targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    report(step, loss.item())
    step += 1

print(f"steps: {step}, final loss {loss.item():.4f}")
hand_over(model)
