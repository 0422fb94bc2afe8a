"""The fixed harness of the spirals task: four interleaved noisy spirals, generated from a fixed
seed, and a classifier scored by its accuracy on held-out points (see autoresearch/kit.py)."""

import math
import time

import torch
import torch.nn.functional as F

from autoresearch.kit import SEED, TIME_BUDGET, Harness, report  # noqa: F401 (for train.py)

CLASSES = 4
TRAIN_POINTS, VAL_POINTS = 8000, 2000
METRICS = {
    "val_accuracy": ("validation accuracy", "classification accuracy", "accuracy"),
    "val_loss": ("validation loss", "loss"),
    "inference_points_per_s": ("inference speed", "points per second"),
    "params": ("model size", "parameters"),
}


def build() -> dict[str, torch.Tensor]:
    """Points on CLASSES spirals of two turns, with Gaussian noise; the same on every machine."""
    generator = torch.Generator().manual_seed(1234)
    total = TRAIN_POINTS + VAL_POINTS
    labels = torch.randint(CLASSES, (total,), generator=generator)
    radius = torch.rand(total, generator=generator)
    angle = 4 * math.pi * radius + labels * (2 * math.pi / CLASSES)
    points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    points += 0.04 * torch.randn(total, 2, generator=generator)
    return {"train_x": points[:TRAIN_POINTS], "train_y": labels[:TRAIN_POINTS],
            "val_x": points[TRAIN_POINTS:], "val_y": labels[TRAIN_POINTS:]}


def evaluate(model, data: dict[str, torch.Tensor], device: str) -> dict[str, float]:
    started = time.perf_counter()
    logits = model(data["val_x"].to(device)).float().cpu()
    seconds = time.perf_counter() - started
    return {"val_accuracy": (logits.argmax(1) == data["val_y"]).float().mean().item(),
            "val_loss": F.cross_entropy(logits, data["val_y"]).item(),
            "inference_points_per_s": VAL_POINTS / seconds}


harness = Harness("spirals-v1", build, (VAL_POINTS, 2), evaluate)
hand_over = harness.hand_over


def train_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The training points and their labels (the only split train.py is given)."""
    return harness.split("train_x"), harness.split("train_y")


if __name__ == "__main__":
    harness.main()
