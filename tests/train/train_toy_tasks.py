"""Small deterministic tasks shared by the trainer tests and the data-parallel worker script."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import TensorDataset

from neuroattn.train import LossItem, TrainConfig, adam_per_module


def quiet_cpu_config(out_dir, **values) -> TrainConfig:
    """A CPU, full-precision, silent TrainConfig; tests pass only the fields they are about."""
    base = dict(device="cpu", amp="off", progress=False, tensorboard=False, checkpoint_every=0)
    return TrainConfig(out_dir=out_dir, **{**base, **values})


def make_regression_data(n: int, in_dim: int, dtype: torch.dtype, seed: int = 123) -> TensorDataset:
    """``y = x @ w + 0.1 * noise`` with a fixed generator, independent of the global random streams."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=gen, dtype=torch.float64)
    w = torch.randn(in_dim, 1, generator=gen, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return TensorDataset(x.to(dtype), y.to(dtype))


def _build(factory, init_seed: int, dtype: torch.dtype) -> nn.Module:
    with torch.random.fork_rng():  # weights depend on init_seed only, not on who seeded what before
        torch.manual_seed(init_seed)
        return factory().to(dtype)


class RegressionTask:
    """An MLP (optionally with dropout) fitted with a mean squared error; one optimizer named "model"."""

    model_class = "ToyRegressor"

    def __init__(
        self,
        *,
        n: int = 40,
        in_dim: int = 6,
        hidden: int = 16,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
        optimizer: str = "adam",
        momentum: float = 0.0,
        crash_at_step: int | None = None,
    ) -> None:
        self.data = make_regression_data(n, in_dim, dtype)
        self.in_dim, self.hidden, self.dropout = in_dim, hidden, dropout
        self.net = _build(
            lambda: nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1)),
            7,
            dtype,
        )
        self.optimizer, self.momentum, self.crash_at_step = optimizer, momentum, crash_at_step
        self.forward_dtypes: list[torch.dtype] = []
        self.losses_seen: list[float] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        if self.optimizer == "sgd":
            return {"model": torch.optim.SGD(modules["model"].parameters(), lr=1.0, momentum=self.momentum)}
        return adam_per_module(modules)

    def train_dataset(self) -> TensorDataset:
        return self.data

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> Iterator[LossItem]:
        if step == self.crash_at_step:
            raise RuntimeError("injected crash")
        x, y = batch
        pred = self.net(x)
        self.forward_dtypes.append(pred.dtype)
        loss = torch.mean((pred.to(y.dtype) - y) ** 2)  # under autocast pred is bf16; compare in y dtype
        self.losses_seen.append(float(loss.detach()))
        yield "model", loss, {"mse": loss.detach()}

    def model_config(self) -> dict[str, object]:
        return {"in_dim": self.in_dim, "hidden": self.hidden, "dropout": self.dropout}


class ToyGanTask:
    """A least-squares GAN on vectors: G maps noise-free inputs to fakes, D scores real vs fake.

    G's loss runs D's forward, D's loss is computed after G's update (the trainer steps G first).
    """

    model_class = "ToyGan"

    def __init__(
        self,
        *,
        n: int = 48,
        dim: int = 4,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float64,
        crash_at_step: int | None = None,
    ) -> None:
        gen = torch.Generator().manual_seed(5)
        source = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        target = 2.0 * torch.randn(n, dim, generator=gen, dtype=torch.float64) + 1.0
        self.data = TensorDataset(source.to(dtype), target.to(dtype))
        self.G = _build(lambda: nn.Sequential(nn.Linear(dim, 8), nn.Dropout(dropout), nn.Linear(8, dim)), 11, dtype)
        self.D = _build(lambda: nn.Sequential(nn.Linear(dim, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)), 13, dtype)
        self.crash_at_step = crash_at_step

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {
            "G": torch.optim.Adam(modules["G"].parameters(), lr=1.0, betas=(0.5, 0.999)),
            "D": torch.optim.SGD(modules["D"].parameters(), lr=1.0, momentum=0.9),
        }

    def train_dataset(self) -> TensorDataset:
        return self.data

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> Iterator[LossItem]:
        if step == self.crash_at_step:
            raise RuntimeError("injected crash")
        source, real = batch
        fake = self.G(source)
        g_loss = torch.mean((self.D(fake) - 1.0) ** 2) + 0.1 * torch.mean((fake - source) ** 2)
        yield "G", g_loss, {"G/identity": torch.mean((fake - source) ** 2).detach()}
        d_loss = torch.mean((self.D(real) - 1.0) ** 2) + torch.mean(self.D(fake.detach()) ** 2)
        yield "D", d_loss, {}

    def validate(self, modules: dict[str, nn.Module], step: int) -> dict[str, float]:
        noise = torch.randn(8, self.data.tensors[0].shape[1], dtype=self.data.tensors[0].dtype)
        return {"fake_mean": float(modules["G"](noise).mean())}
