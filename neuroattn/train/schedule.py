"""Learning-rate schedule: linear warm-up, then cosine decay to a floor, one LambdaLR per optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate used by the 0-based optimizer step ``step``.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the last warm-up step reaches 1).
    Decay: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup_steps) / (max_steps - 1 -
    warmup_steps)`` clipped to [0, 1], so the first decay step uses the peak and the last step
    (``max_steps - 1``) uses ``r = min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max_steps - 1 - warmup_steps  # decay steps after the first one
    progress = (step - warmup_steps) / span if span > 0 else 0.0
    progress = min(max(progress, 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_peak_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times the group's ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_scale", 1.0))
        group.pop("initial_lr", None)  # LambdaLR reads its base rates from here when present


def _warmup_cosine(warmup_steps: int, max_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    # A plain function, not a callable object: LambdaLR then keeps it out of its state dict, so a resumed
    # run follows today's config while the step count comes from the checkpoint.
    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)

    return factor


def build_schedulers(
    optimizers: Mapping[str, torch.optim.Optimizer],
    peak_lrs: Mapping[str, float],
    *,
    warmup_steps: int,
    max_steps: int,
    min_lr_ratio: float,
) -> dict[str, LambdaLR]:
    """Warm-up + cosine ``LambdaLR`` per optimizer after setting its peak rates from ``peak_lrs``.

    Step each scheduler once per optimizer step; before the first step the rate is that of step 0.
    """
    schedulers = {}
    for name, optimizer in optimizers.items():
        set_peak_lr(optimizer, peak_lrs[name])
        schedulers[name] = LambdaLR(optimizer, _warmup_cosine(warmup_steps, max_steps, min_lr_ratio))
    return schedulers
