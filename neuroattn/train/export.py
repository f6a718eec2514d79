"""The trained model a run leaves behind: one ``neuroattn.io.checkpoints`` folder holding every module."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from neuroattn.io.checkpoints import save_checkpoint

FINAL_DIR = "final"


def default_export_state_dict(modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """A lone module's own state dict; for several modules, keys prefixed by module name
    (``"G.conv.weight"``), i.e. the state dict of ``nn.ModuleDict(modules)``."""
    if len(modules) == 1:
        return dict(next(iter(modules.values())).state_dict())
    return dict(nn.ModuleDict(dict(modules)).state_dict())


def save_final_model(
    task: Any, modules: Mapping[str, nn.Module], directory: str | Path, data_summary: dict[str, Any]
) -> Path:
    """Write ``directory`` with :func:`neuroattn.io.checkpoints.save_checkpoint` (``trained=True``).

    Weights come from ``task.export_state_dict(modules)`` when the task has it, else
    :func:`default_export_state_dict`; the config from ``task.model_config()`` (default ``{}``); the class
    name from ``task.model_class`` (default: the task's class name); ``task.data_summary()`` is merged
    into ``data_summary``.
    """
    export = getattr(task, "export_state_dict", None)
    weights = export(modules) if export is not None else default_export_state_dict(modules)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}  # copies: tied weights
    model_config = task.model_config() if hasattr(task, "model_config") else {}
    summary = dict(data_summary)
    if hasattr(task, "data_summary"):
        summary |= task.data_summary()
    model_class = getattr(task, "model_class", type(task).__name__)
    return save_checkpoint(
        directory, weights, model_config, model_class=model_class, trained=True, data_summary=summary
    )
