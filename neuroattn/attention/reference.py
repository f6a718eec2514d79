"""The float64 reference: every pattern as an explicit boolean mask over flattened tokens (the truth for tests)."""

from __future__ import annotations

import math

import torch

from neuroattn.attention.masks import axial_axis_masks, axis_masks, combine_axis_masks
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Linear, Neighborhood, Window


def _masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v with q (B, h, N, d), k/v (B, h, M, d|dv), mask broadcastable to (B, h, N, M)."""
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale  # (B, h, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhnm,bhmd->bhnd", scores.softmax(dim=-1), v)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0, the feature map of linear attention."""
    return torch.nn.functional.elu(x) + 1.0


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention computed naively in float64 with explicit masks; returns the input dtype.

    Parameters
    ----------
    q : Tensor, shape (B, heads, *spatial, head_dim)
    k, v : Tensor, shape (B, kv_heads, *kv_spatial, head_dim | value_dim); kv_heads divides heads
    spec : Dense | Neighborhood | Window | Axial | Linear
    key_padding_mask : bool Tensor, shape (B, N_kv), True = keep (Dense only)
    scale : float, default 1/sqrt(head_dim) (Linear: no scaling unless given)

    Returns
    -------
    Tensor, shape (B, heads, *spatial, value_dim), dtype of q
    """
    batch, heads = q.shape[:2]
    q_spatial = tuple(q.shape[2:-1])
    groups = heads // k.shape[1]
    q64 = q.to(torch.float64).reshape(batch, heads, math.prod(q_spatial), q.shape[-1])  # (B, h, N, d)
    k64 = k.to(torch.float64).repeat_interleave(groups, dim=1).reshape(batch, heads, -1, k.shape[-1])  # (B, h, M, d)
    v64 = v.to(torch.float64).repeat_interleave(groups, dim=1).reshape(batch, heads, -1, v.shape[-1])  # (B, h, M, dv)
    device = q.device

    if isinstance(spec, Linear):
        q_scale = 1.0 if scale is None else scale
        weights = torch.einsum("bhnd,bhmd->bhnm", elu_feature_map(q64 * q_scale), elu_feature_map(k64))
        out = torch.einsum("bhnm,bhmd->bhnd", weights / weights.sum(dim=-1, keepdim=True), v64)
    else:
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        if isinstance(spec, Dense):
            n, m = q64.shape[2], k64.shape[2]
            mask = torch.ones(n, m, dtype=torch.bool, device=device)
            if spec.causal:
                mask = mask.tril()
            if key_padding_mask is not None:
                mask = mask & key_padding_mask[:, None, None, :]  # (B, 1, N, M)
            out = _masked_softmax_attention(q64, k64, v64, mask, scale)
        elif isinstance(spec, Neighborhood | Window):
            mask = combine_axis_masks(axis_masks(spec, q_spatial)).to(device)  # (N, N)
            out = _masked_softmax_attention(q64, k64, v64, mask, scale)
        elif isinstance(spec, Axial):
            masks = axial_axis_masks(q_spatial)
            out = sum(_masked_softmax_attention(q64, k64, v64, m.to(device), scale) for m in masks) / len(masks)
        else:
            raise ValueError(f"unknown attention spec {spec!r}")
    return out.reshape(batch, heads, *q_spatial, v.shape[-1]).to(q.dtype)
