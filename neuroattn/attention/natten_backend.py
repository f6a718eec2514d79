"""NATTEN fused neighborhood attention on CUDA, used when the ``natten`` package imports; imported lazily."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

from neuroattn.attention.specs import AttentionSpec, Neighborhood

NATTEN_PIP_HINT = "pip install natten (CUDA wheels: see https://natten.org/install), or pip install 'neuroattn[gpu]'"


@functools.lru_cache(maxsize=1)
def natten_import_error() -> str | None:
    """None when ``import natten`` works, else the reason (checked once per process)."""
    try:
        importlib.import_module("natten")
    except Exception as exc:  # an installed natten can fail on import for CUDA/ABI reasons too
        return f"natten is not importable ({type(exc).__name__}: {exc}); {NATTEN_PIP_HINT}"
    return None


def _natten_function(rank: int) -> Callable:
    """natten.na{rank}d (NATTEN >= 0.20) or natten.functional.na{rank}d (0.17-0.19); both heads-last."""
    natten = importlib.import_module("natten")
    fn = getattr(natten, f"na{rank}d", None)
    if fn is None:
        fn = getattr(importlib.import_module("natten.functional"), f"na{rank}d")
    return fn


def natten_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Neighborhood attention through NATTEN; q (B, heads, *spatial, d), k/v may have fewer heads."""
    if not isinstance(spec, Neighborhood):
        raise ValueError(f"the natten backend does not serve {type(spec).__name__} attention")
    spatial = tuple(q.shape[2:-1])
    kernels, dilations, causals = spec.resolve(spatial)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, heads, *spatial, d)
        v = v.repeat_interleave(groups, dim=1)
    # NATTEN's layout is heads-last: (B, *spatial, heads, d)
    qn, kn, vn = (x.movedim(1, -2).contiguous() for x in (q, k, v))
    fn = _natten_function(len(spatial))
    out = fn(
        qn,
        kn,
        vn,
        kernel_size=kernels,
        dilation=dilations,
        is_causal=causals,
        scale=q.shape[-1] ** -0.5 if scale is None else scale,
    )
    return out.movedim(-2, 1)  # (B, heads, *spatial, dv)
