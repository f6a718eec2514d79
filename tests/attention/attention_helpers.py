"""Shared helpers for the attention tests: seeded tensors and the relative-error metric."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| computed in float64."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return float((a64 - b64).norm() / b64.norm())


def qkv(shape_q, shape_kv=None, value_dim=None, *, seed=0, dtype=torch.float64, requires_grad=False):
    """Seeded q, k, v; k/v take ``shape_kv`` (default the q shape) and v's last axis ``value_dim``."""
    gen = torch.Generator().manual_seed(seed)
    shape_kv = tuple(shape_q if shape_kv is None else shape_kv)
    shape_v = (*shape_kv[:-1], shape_kv[-1] if value_dim is None else value_dim)
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in (shape_q, shape_kv, shape_v)]
    return [t.requires_grad_(requires_grad) for t in tensors]


def masked_attention64(q, k, v, mask, scale=None):
    """softmax(q k^T * scale, mask) v in float64 for flat (B, h, N, d) tensors; written out independently."""
    q, k, v = (x.detach().to(torch.float64) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v
