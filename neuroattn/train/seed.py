"""Seeding and JSON-ready capture/restore of the python, numpy and torch (CPU and CUDA) random states."""

from __future__ import annotations

import base64
import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _tensor_to_b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _b64_to_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """Every global random state of this process as a JSON-ready dict (no pickle needed to store it).

    Keys: ``python`` (``random.getstate()`` as lists), ``numpy`` (``np.random.get_state()`` with the key
    array as a list), ``torch`` (CPU generator bytes, base64) and ``cuda`` (one base64 string per
    visible CUDA device, empty when CUDA is not initialised).
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [_tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _tensor_to_b64(torch.get_rng_state()),
        "cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_b64_to_tensor(state["torch"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise ValueError(f"saved {len(cuda)} CUDA random states but {torch.cuda.device_count()} devices")
        torch.cuda.set_rng_state_all([_b64_to_tensor(s) for s in cuda])


@contextlib.contextmanager
def rng_isolated() -> Iterator[None]:
    """Run a block (e.g. validation) without moving any global random stream of the training run."""
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)
