"""Training-state checkpoints without pickle: tensors in safetensors, the nested structure in JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from neuroattn.errors import CheckpointError
from neuroattn.io.atomic import atomic_write_bytes, atomic_write_text

FORMAT = "neuroattn-train-state"
FORMAT_VERSION = 1
TENSORS_FILE = "state.safetensors"
SKELETON_FILE = "state.json"
LATEST_FILE = "latest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TENSOR, _TUPLE, _PAIRS = "__tensor__", "__tuple__", "__pairs__"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Split a nested state (dicts, lists, tuples, tensors, JSON scalars) into JSON and a tensor dict.

    Each tensor moves into ``tensors`` (a CPU copy) under a unique path-like key and is replaced by
    ``{"__tensor__": key}``; tuples become ``{"__tuple__": [...]}`` and dicts with non-string keys (such
    as an optimizer's per-parameter state) become ``{"__pairs__": [[key, value], ...]}``.
    """
    if isinstance(obj, torch.Tensor):
        key, n = prefix or "tensor", 1
        while key in tensors:
            key, n = f"{prefix}#{n}", n + 1
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()  # a copy: safetensors refuses views
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten_state(v, tensors, _join(prefix, k)) for k, v in obj.items()}
        return {_PAIRS: [[k, flatten_state(v, tensors, _join(prefix, k))] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten_state(v, tensors, _join(prefix, i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, _join(prefix, i)) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix or '/'} in a training checkpoint")


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}/{key}" if prefix else str(key)


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if len(obj) == 1 and _TUPLE in obj:
            return tuple(unflatten_state(v, tensors) for v in obj[_TUPLE])
        if len(obj) == 1 and _PAIRS in obj:
            return {_json_key(k): unflatten_state(v, tensors) for k, v in obj[_PAIRS]}
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def _json_key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key  # JSON turns tuple keys into lists


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint taken after ``step`` completed steps."""
    return f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / SKELETON_FILE).is_file() and (child / TENSORS_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_training_state(root: str | Path, step: int, state: dict[str, Any], *, keep_last: int) -> Path:
    """Write ``state`` as ``root/step_XXXXXXXX/`` atomically, point ``latest.json`` at it, prune old ones.

    The folder is filled under a temporary name and renamed into place, and ``latest.json`` is written
    last, so a crash at any moment leaves the previous checkpoint usable. Folders of later steps (left
    by an abandoned run) and all but the newest ``keep_last`` are removed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "state": flatten_state(state, tensors)}
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        atomic_write_bytes(tmp / TENSORS_FILE, save(tensors))
        atomic_write_text(tmp / SKELETON_FILE, json.dumps(skeleton))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_FILE, json.dumps({"step": step, "dir": final.name}) + "\n")
    checkpoints = list_checkpoints(root)
    kept = [(s, p) for s, p in checkpoints if s <= step][-keep_last:]
    for s, path in checkpoints:
        if (s, path) not in kept:
            shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``latest.json`` points to, else the newest complete one, else ``None``."""
    root = Path(root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / json.loads(pointer.read_text())["dir"]
        if (candidate / SKELETON_FILE).is_file():
            return candidate
    checkpoints = list_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def load_training_state(directory: str | Path) -> tuple[int, dict[str, Any]]:
    """Read a folder written by :func:`save_training_state`; returns ``(step, state)`` with CPU tensors."""
    directory = Path(directory)
    try:
        skeleton = json.loads((directory / SKELETON_FILE).read_text())
        tensors = load_file(directory / TENSORS_FILE, device="cpu")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: unreadable training checkpoint ({exc})") from exc
    if skeleton.get("format") != FORMAT or skeleton.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: not a {FORMAT} v{FORMAT_VERSION} checkpoint "
            f"(found {skeleton.get('format')!r} v{skeleton.get('version')!r})"
        )
    return int(skeleton["step"]), unflatten_state(skeleton["state"], tensors)
