"""The contract between a model and the trainer: modules, optimizers, data and a generator of losses."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from neuroattn.errors import ConfigError

LossItem = tuple[str, Tensor, Mapping[str, float | Tensor]]
"""``(optimizer_name, scalar loss, metrics)`` yielded by :meth:`TrainTask.losses`."""


@runtime_checkable
class TrainTask(Protocol):
    """What the trainer needs from a model family.

    Required methods are below. Optional attributes the trainer uses when present:

    - ``validate(modules, step) -> dict[str, float]``: run on rank 0 under ``torch.no_grad`` with the
      modules in eval mode; its random draws do not disturb the training random streams.
    - ``model_class: str`` and ``model_config() -> dict``: recorded in the final checkpoint
      (defaults: the task's class name and ``{}``).
    - ``data_summary() -> dict``: recorded in the final checkpoint beside the sample count.
    - ``export_state_dict(modules) -> dict[str, Tensor]``: the weights of the final checkpoint
      (default: see :func:`neuroattn.train.trainer.default_export_state_dict`).
    - ``collate_fn``: a DataLoader collate function (default: torch's ``default_collate``).
    """

    def modules(self) -> dict[str, nn.Module]:
        """Every trainable module by name, e.g. ``{"G": generator, "D": discriminator}``.

        The trainer moves them to its device in place, so the task keeps using its own references.
        """
        ...

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per name (their parameter sets must be disjoint); see :func:`adam_per_module`.

        Learning rates given here are replaced by the config's (times a group's ``lr_scale``, default 1).
        """
        ...

    def train_dataset(self) -> Dataset:
        """A map-style dataset; its samples are batched by the trainer's seeded, sharded sampler."""
        ...

    def losses(self, batch: Any, step: int) -> Iterator[LossItem]:
        """Yield ``(optimizer_name, loss, metrics)`` for one micro-batch, in update order.

        ``batch`` is already on the trainer's device and ``step`` is the 0-based optimizer step. After
        each yield the trainer back-propagates that loss into that optimizer's parameters only and, on
        the last micro-batch of a step, updates that optimizer before resuming the generator. So a GAN
        yields the generator loss first and computes the discriminator loss after the generator update,
        as CycleGAN does. Each optimizer name may be yielded at most once per micro-batch; one yielded only
        on earlier micro-batches of a step is updated after the last one. Under data parallelism every rank
        must yield the same names in the same order. Losses should be means over the batch so that
        accumulation and data parallelism average them correctly.
        """
        ...


def adam_per_module(
    modules: Mapping[str, nn.Module],
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> dict[str, torch.optim.Optimizer]:
    """One Adam (or AdamW when ``decoupled``) optimizer per module, in the modules' order.

    The learning rate is a placeholder; the trainer sets it from :class:`TrainConfig`.
    """
    factory: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW if decoupled else torch.optim.Adam
    return {
        name: factory(module.parameters(), lr=1e-3, betas=betas, weight_decay=weight_decay)
        for name, module in modules.items()
    }


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The trainable parameters an optimizer updates, in its group order."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def check_modules(modules: Any) -> dict[str, nn.Module]:
    """``task.modules()``'s result as a dict, or a ConfigError saying what is wrong with it."""
    if not isinstance(modules, Mapping) or not modules:
        raise ConfigError("task.modules() must return a non-empty dict of name -> torch.nn.Module")
    for name, module in modules.items():
        if not isinstance(module, nn.Module):
            raise ConfigError(f"task.modules()[{name!r}] is a {type(module).__name__}, not a torch.nn.Module")
    return dict(modules)


def check_optimizers(optimizers: Any) -> dict[str, torch.optim.Optimizer]:
    """``task.configure_optimizers()``'s result as a dict; parameter sets must be disjoint."""
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise ConfigError("task.configure_optimizers() must return a non-empty dict of name -> Optimizer")
    owner: dict[int, str] = {}
    for name, optimizer in optimizers.items():
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer {name!r} is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
        for param in optimizer_params(optimizer):
            if id(param) in owner:
                raise ConfigError(f"a parameter belongs to both optimizers {owner[id(param)]!r} and {name!r}")
            owner[id(param)] = name
    return dict(optimizers)
