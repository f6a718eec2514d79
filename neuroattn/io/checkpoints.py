"""Model checkpoints: a folder with ``model.safetensors`` and ``config.json``; loading never unpickles."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from neuroattn import __version__
from neuroattn.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1  # bump when the folder layout or config keys change incompatibly


@dataclass
class Checkpoint:
    """What a checkpoint folder holds: weights, the model's constructor config and its provenance."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    model_class: str
    version: str
    trained: bool
    data_summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _major_minor(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def save_checkpoint(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    *,
    model_class: str,
    trained: bool,
    data_summary: dict[str, Any] | None = None,
) -> Path:
    """Write weights and config into ``directory`` atomically (built in a temp folder, then renamed).

    ``config`` holds the model's constructor arguments (JSON-serialisable) so the model can be rebuilt from the
    checkpoint alone; ``trained`` says whether the weights were fitted (False for random initialisations).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "model_class": model_class,
        "neuroattn_version": __version__,
        "trained": bool(trained),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_summary": data_summary or {},
        "config": config,
    }
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"{directory}: config is not JSON-serialisable ({exc})") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"model_class": model_class})
        (tmp / CONFIG_NAME).write_text(meta_text + "\n", encoding="utf-8")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a checkpoint folder without loading weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_NAME}")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable config ({exc})") from None
    missing = [k for k in ("model_class", "neuroattn_version", "trained", "config") if k not in meta]
    if missing:
        raise CheckpointError(f"{cfg_path}: config lacks {', '.join(missing)}")
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {meta['format_version']} is newer than this neuroattn "
            f"({__version__}) understands; upgrade neuroattn"
        )
    return meta


def load_checkpoint(directory: str | Path, *, expected_class: str | None = None) -> Checkpoint:
    """Load a checkpoint folder; refuse another model class or an incompatible package version."""
    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    if expected_class is not None and meta["model_class"] != expected_class:
        raise CheckpointError(
            f"{directory}: checkpoint holds a {meta['model_class']}, expected a {expected_class}"
        )
    saved = str(meta["neuroattn_version"])
    if _major_minor(saved)[:1] != _major_minor(__version__)[:1] or _major_minor(saved) > _major_minor(__version__):
        raise CheckpointError(
            f"{directory}: written by neuroattn {saved}, incompatible with installed {__version__}"
        )
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable weights ({exc})") from None
    return Checkpoint(
        state_dict=state,
        config=dict(meta["config"]),
        model_class=str(meta["model_class"]),
        version=saved,
        trained=bool(meta["trained"]),
        data_summary=dict(meta.get("data_summary") or {}),
        path=directory,
    )


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy weights into ``module`` requiring identical keys and shapes; the message names what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:3]}")
    if shapes:
        problems.append(f"shape mismatch {shapes[:3]}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def load_model(
    run_or_checkpoint_dir: str | Path, expected_class: str, build: Callable[[dict[str, Any]], torch.nn.Module]
) -> torch.nn.Module:
    """A model saved by the trainer, from a run folder (its ``final/``) or a checkpoint folder, in eval mode.

    ``build`` makes the module from the stored config; its weights must then match the checkpoint exactly.
    """
    from neuroattn.errors import ConfigError

    path = Path(run_or_checkpoint_dir)
    if (path / "final" / "config.json").is_file():
        path = path / "final"
    ckpt = load_checkpoint(path, expected_class=expected_class)
    try:
        model = build(ckpt.config)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad {expected_class} config ({exc})") from None
    load_state_strict(model, ckpt.state_dict, path)
    return model.eval()
