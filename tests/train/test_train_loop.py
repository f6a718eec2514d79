"""The loop's contract with a task: update order, gradient isolation between optimizers, input checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from train_toy_tasks import RegressionTask, ToyGanTask, quiet_cpu_config

from neuroattn.errors import ConfigError
from neuroattn.train import LossItem, ShardedBatchSampler, TrainConfig, Trainer


def _config(out_dir: Path, **overrides) -> TrainConfig:
    defaults = dict(
        max_steps=3,
        batch_size=4,
        grad_accum_steps=2,
        lr=0.01,
        checkpoint_every=0,
    )
    return quiet_cpu_config(out_dir, **{**defaults, **overrides})


class RecordingGan(ToyGanTask):
    """Records, when the generator resumes after yielding G's loss, what the trainer did in between."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, bool, bool]] = []  # (step, G changed, D grads untouched)

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> Iterator[LossItem]:
        source, real = batch
        before = self.G[0].weight.detach().clone()
        d_grads = [None if p.grad is None else p.grad.clone() for p in self.D.parameters()]
        fake = self.G(source)
        yield "G", torch.mean((self.D(fake) - 1.0) ** 2), {}
        untouched = all(
            (a is None and p.grad is None) or (a is not None and torch.equal(a, p.grad))
            for a, p in zip(d_grads, self.D.parameters(), strict=True)
        )
        self.events.append((step, not torch.equal(before, self.G[0].weight), untouched))
        yield "D", torch.mean((self.D(real) - 1.0) ** 2) + torch.mean(self.D(fake.detach()) ** 2), {}


def test_generator_steps_before_discriminator_loss_and_grads_stay_separate(tmp_path: Path) -> None:
    task = RecordingGan()
    Trainer(task, _config(tmp_path)).fit()
    # Two micro-batches per step: G is updated only after the second one, before D's loss is computed;
    # G's backward (through D's forward) never adds to D's gradients.
    assert task.events == [(s, micro == 1, True) for s in range(3) for micro in range(2)]


def test_num_workers_do_not_change_the_run(tmp_path: Path) -> None:
    a, b = RegressionTask(), RegressionTask()
    Trainer(a, _config(tmp_path / "a")).fit()
    Trainer(b, _config(tmp_path / "b", num_workers=2)).fit()
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(pa, pb)


class BadYield(RegressionTask):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> Iterator[LossItem]:
        x, y = batch
        loss = torch.mean((self.net(x) - y) ** 2)
        if self.mode == "unknown":
            yield "D", loss, {}
        elif self.mode == "twice":
            yield "model", loss, {}
            yield "model", loss, {}
        else:
            yield "model", (self.net(x) - y) ** 2, {}


@pytest.mark.parametrize(
    ("mode", "message"),
    [("unknown", "yielded optimizer 'D'"), ("twice", "twice for one batch"), ("vector", "scalar tensor")],
)
def test_bad_losses_are_reported(tmp_path: Path, mode: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Trainer(BadYield(mode), _config(tmp_path)).fit()


class SharedParams(RegressionTask):
    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        params = list(modules["model"].parameters())
        return {"a": torch.optim.SGD(params, lr=1.0), "b": torch.optim.SGD(params[:1], lr=1.0)}


def test_overlapping_optimizers_and_tiny_datasets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both optimizers 'a' and 'b'"):
        Trainer(SharedParams(), _config(tmp_path / "a")).fit()
    with pytest.raises(ConfigError, match="too few for one batch"):
        Trainer(RegressionTask(n=3), _config(tmp_path / "b")).fit()


class FirstMicroBatchOnly(RegressionTask):
    """Yields its loss on the first of two micro-batches of each step only."""

    def __init__(self) -> None:
        super().__init__(n=16, dtype=torch.float64, optimizer="sgd")
        self.calls = 0

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> Iterator[LossItem]:
        self.calls += 1
        if self.calls % 2 == 1:
            yield from super().losses(batch, step)


def test_optimizer_yielded_on_an_early_micro_batch_still_steps(tmp_path: Path) -> None:
    task = FirstMicroBatchOnly()
    x, y = task.data.tensors
    first = next(iter(ShardedBatchSampler(16, 8, seed=0)))  # the step's first micro-batch
    task.net.zero_grad()
    torch.mean((task.net(x[first]) - y[first]) ** 2).backward()
    grads = [p.grad.clone() for p in task.net.parameters()]
    before = [p.detach().clone() for p in task.net.parameters()]
    task.net.zero_grad()
    Trainer(task, _config(tmp_path, max_steps=1, batch_size=8, lr=0.1, seed=0)).fit()
    for p, p0, g in zip(task.net.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach() - p0, -0.1 * g / 2, rtol=1e-12, atol=1e-15)  # loss / accum
        assert p.grad is None  # nothing is carried into the next step


def test_seconds_per_step_reads_the_timed_rows_after_warm_up(tmp_path: Path) -> None:
    from neuroattn.train.metrics import seconds_per_step

    rows = [{"step": s, "seconds": 5.0 + 0.25 * s, "loss": 1.0} for s in range(1, 21)]
    rows[0]["seconds"] = 4.0  # a slow first step must not count once skipped
    lines = [json.dumps(r) for r in rows] + ['{"step": 21, "seco']  # a torn last line is ignored
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert seconds_per_step(tmp_path, skip=5) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no timed rows"):
        seconds_per_step(tmp_path, skip=20)
