"""Optimisers, learning-rate schedules and loss-weight schedules, each a table by name.

The config's choices (``optim.name``, ``schedule.name``, a distillation loss's
``schedule``) are the keys of these tables, so a new entry here is a new choice
there. See docs/training.md for the recipe they implement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Optimizer:
    """How to build one optimiser and its learning rate under ``optim.lr=auto``."""

    build: Callable[[list, float, dict], torch.optim.Optimizer]  # (params, lr, optim config)
    auto_lr: Callable[[int], float]  # images per optimiser step -> learning rate


OPTIMIZERS: dict[str, Optimizer] = {
    # the arcface_torch rule: 0.1 for a global batch of 1024, scaled linearly
    "sgd": Optimizer(lambda p, lr, c: torch.optim.SGD(p, lr=lr, momentum=c["momentum"],
                                                      weight_decay=c["weight_decay"]),
                     lambda images: 0.1 * images / 1024),
    "adamw": Optimizer(lambda p, lr, c: torch.optim.AdamW(p, lr=lr, betas=tuple(c["betas"]),
                                                          weight_decay=c["weight_decay"]),
                       lambda images: 1e-3),
    "adam": Optimizer(lambda p, lr, c: torch.optim.Adam(p, lr=lr, betas=tuple(c["betas"]),
                                                        weight_decay=c["weight_decay"]),
                      lambda images: 1e-3),
}

# after warm-up: (progress in [0, 1], power, min_lr / lr) -> multiplier of the base rate
LR_SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "polynomial": lambda t, power, lo: lo + (1 - lo) * (1 - t) ** power,
    "cosine": lambda t, power, lo: lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t)),
    "constant": lambda t, power, lo: 1.0,
}

# progress in [0, 1] -> multiplier of a distillation loss weight
WEIGHT_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "linear_decay": lambda t: 1.0 - t,
    "linear_warmup": lambda t: min(1.0, t / 0.2),  # ramps up over the first 20% of the run
}


def lr_lambda(step: int, total: int, warmup: int, name: str, power: float,
              min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (per iteration): linear warm-up first."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return LR_SCHEDULES[name](progress, power, min_ratio)


def weight_at(weight: float, schedule: str, step: int, total: int) -> float:
    """A loss weight at ``step`` of ``total`` under its schedule."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return weight * WEIGHT_SCHEDULES[schedule](progress)
