"""Gradient accumulation, clipping and mixed precision against closed forms and reference runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from train_toy_tasks import RegressionTask, quiet_cpu_config

from neuroattn.errors import ConfigError
from neuroattn.train import TrainConfig, Trainer
from neuroattn.train.metrics import read_rows
from neuroattn.train.precision import resolve_amp


def _config(out_dir: Path, **overrides) -> TrainConfig:
    defaults = dict(
        max_steps=5,
        batch_size=8,
        lr=0.05,
        min_lr_ratio=0.5,
        checkpoint_every=0,
        log_every=1,
    )
    return quiet_cpu_config(out_dir, **{**defaults, **overrides})


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path: Path) -> None:
    # float64 so the only difference is the order of a few additions (relative error ~1e-16).
    whole = RegressionTask(dtype=torch.float64, optimizer="sgd", momentum=0.9)
    halves = RegressionTask(dtype=torch.float64, optimizer="sgd", momentum=0.9)
    start = copy.deepcopy(whole.net.state_dict())
    Trainer(whole, _config(tmp_path / "a", batch_size=8)).fit()
    Trainer(halves, _config(tmp_path / "b", batch_size=4, grad_accum_steps=2)).fit()
    for key, value in whole.net.state_dict().items():
        assert not torch.equal(value, start[key])  # training moved every tensor
        torch.testing.assert_close(halves.net.state_dict()[key], value, rtol=1e-12, atol=1e-14)
    # Logged losses are the mean over micro-batches, i.e. the full-batch loss.
    rows_a = [r["loss/model"] for r in read_rows(tmp_path / "a" / "metrics.jsonl")]
    rows_b = [r["loss/model"] for r in read_rows(tmp_path / "b" / "metrics.jsonl")]
    assert rows_a == pytest.approx(rows_b, rel=1e-12)


def _full_gradient(task: RegressionTask) -> torch.Tensor:
    x, y = task.data.tensors
    task.net.zero_grad()
    torch.mean((task.net(x) - y) ** 2).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in task.net.parameters()])
    task.net.zero_grad()
    return grad


def _flat_params(task: RegressionTask) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in task.net.parameters()])


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_clipping_bounds_the_sgd_update_in_closed_form(tmp_path: Path, clip: float) -> None:
    # One plain-SGD step on the whole data set: update = -lr * g * min(1, clip / (|g| + 1e-6)), where 1e-6 is
    # the guard torch.nn.utils.clip_grad_norm_ adds to the norm.
    task = RegressionTask(n=16, dtype=torch.float64, optimizer="sgd")
    grad, before, lr = _full_gradient(task), _flat_params(task), 0.1
    config = _config(tmp_path, max_steps=1, batch_size=16, lr=lr, clip_grad_norm=clip)
    Trainer(task, config).fit()
    update = _flat_params(task) - before
    norm = grad.norm()
    assert norm > 1e-2  # the small clip really clips
    scale = min(1.0, clip / (float(norm) + 1e-6))
    torch.testing.assert_close(update, -lr * grad * scale, rtol=1e-10, atol=1e-14)
    if clip < norm:
        assert float(update.norm()) == pytest.approx(lr * clip, rel=1e-6)  # |update| = lr * clip
        assert float(update.norm()) <= lr * clip
    row = read_rows(tmp_path / "metrics.jsonl")[0]
    assert row["grad_norm/model"] == pytest.approx(float(norm), rel=1e-10)  # logged before clipping


@pytest.mark.parametrize(("amp", "dtype"), [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_cpu_precision_modes_train(tmp_path: Path, amp: str, dtype: torch.dtype) -> None:
    task = RegressionTask(n=64)
    config = _config(tmp_path, amp=amp, max_steps=40, batch_size=16, lr=0.02, log_every=10)
    result = Trainer(task, config).fit()
    assert set(task.forward_dtypes) == {dtype}  # the forward ran under the requested autocast
    assert all(p.dtype == torch.float32 for p in task.net.parameters())  # master weights stay fp32
    first, last = sum(task.losses_seen[:4]) / 4, sum(task.losses_seen[-4:]) / 4
    assert last < 0.3 * first, (first, last)
    assert result.last_metrics["loss/model"] == pytest.approx(task.losses_seen[-1], rel=1e-6)


def test_amp_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu).dtype is None
    assert resolve_amp("bf16", cpu).dtype == torch.bfloat16 and not resolve_amp("bf16", cpu).use_scaler
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_amp("fp16", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with loss scaling needs CUDA")
def test_fp16_with_grad_scaler_on_cuda(tmp_path: Path) -> None:
    task = RegressionTask(n=64)
    config = _config(tmp_path, amp="fp16", device="cuda", max_steps=40, batch_size=16, lr=0.02, checkpoint_every=20)
    Trainer(task, config).fit()
    assert set(task.forward_dtypes) == {torch.float16}
    first, last = sum(task.losses_seen[:4]) / 4, sum(task.losses_seen[-4:]) / 4
    assert last < 0.3 * first
    resumed = RegressionTask(n=64)
    result = Trainer(
        resumed, _config(tmp_path, amp="fp16", device="cuda", max_steps=40, batch_size=16, lr=0.02, checkpoint_every=20)
    ).fit(resume=True)
    assert result.resumed_from == 40  # the finished run's state, GradScaler included, loads back
