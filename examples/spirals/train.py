"""A small MLP classifying points into spirals, trained for a fixed time budget. The file agents
edit."""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import CLASSES, SEED, TIME_BUDGET, hand_over, report, train_data

HIDDEN = 32
LAYERS = 2
BATCH_SIZE = 256
LEARNING_RATE = 3e-3

torch.manual_seed(SEED)
layers, width = [], 2
for _ in range(LAYERS):
    layers += [nn.Linear(width, HIDDEN), nn.Tanh()]
    width = HIDDEN
model = nn.Sequential(*layers, nn.Linear(width, CLASSES))
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
points, labels = train_data()
generator = torch.Generator().manual_seed(SEED)

started, step = time.time(), 0
while time.time() - started < TIME_BUDGET:
    batch = torch.randint(len(points), (BATCH_SIZE,), generator=generator)
    loss = F.cross_entropy(model(points[batch]), labels[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    report(step, loss.item())
    step += 1

print(f"steps: {step}, final loss {loss.item():.4f}")
hand_over(model)
