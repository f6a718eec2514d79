"""Warm-up + cosine schedule: closed-form values, and the rates the trainer actually uses per step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from train_toy_tasks import RegressionTask

from neuroattn.train import TrainConfig, Trainer, lr_factor
from neuroattn.train.metrics import read_rows


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.25),  # first warm-up step: 1 / warmup_steps
        (1, 0.5),
        (3, 1.0),  # last warm-up step reaches the peak
        (4, 1.0),  # first decay step: cos(0)
        (6, 0.1 + 0.9 * 0.5 * (1 + math.sqrt(0.5))),  # a quarter of the decay: cos(pi / 4)
        (8, 0.55),  # half-way: floor + half the range
        (12, 0.1),  # last step: the floor
    ],
)
def test_lr_factor_closed_form(step: int, expected: float) -> None:
    assert lr_factor(step, warmup_steps=4, max_steps=13, min_lr_ratio=0.1) == pytest.approx(expected, abs=1e-12)


def test_lr_factor_without_warmup_and_single_step() -> None:
    assert lr_factor(0, warmup_steps=0, max_steps=5, min_lr_ratio=0.0) == 1.0
    assert lr_factor(4, warmup_steps=0, max_steps=5, min_lr_ratio=0.0) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(0, warmup_steps=0, max_steps=1, min_lr_ratio=0.3) == 1.0  # a lone step trains at the peak


def test_trainer_uses_one_scheduled_rate_per_step(tmp_path: Path) -> None:
    config = TrainConfig(
        out_dir=tmp_path,
        max_steps=13,
        batch_size=4,
        lr=0.02,
        warmup_steps=4,
        min_lr_ratio=0.1,
        log_every=1,
        checkpoint_every=0,
        device="cpu",
        amp="off",
        progress=False,
        tensorboard=False,
    )
    Trainer(RegressionTask(), config).fit()
    rows = [r for r in read_rows(tmp_path / "metrics.jsonl") if "lr/model" in r]
    assert [r["step"] for r in rows] == list(range(1, 14))
    for row in rows:  # row "step" counts completed steps; the rate it reports is that of step - 1
        expected = 0.02 * lr_factor(row["step"] - 1, warmup_steps=4, max_steps=13, min_lr_ratio=0.1)
        assert row["lr/model"] == pytest.approx(expected, rel=1e-12)
    assert rows[0]["lr/model"] == pytest.approx(0.005) and rows[-1]["lr/model"] == pytest.approx(0.002)
