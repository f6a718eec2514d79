"""Shape checks for q/k/v and a small description of an attention call that backends and the planner share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neuroattn.attention.specs import MAX_SPATIAL_AXES, AttentionSpec, Dense, check_spec


@dataclass(frozen=True)
class AttentionCall:
    """What a backend needs to know about a call, without the tensors themselves."""

    batch: int
    heads: int  # query heads
    kv_heads: int  # key/value heads; heads % kv_heads == 0 (grouped-query attention)
    q_spatial: tuple[int, ...]
    kv_spatial: tuple[int, ...]
    head_dim: int
    value_dim: int
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool = False
    has_padding_mask: bool = False

    @property
    def groups(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def q_tokens(self) -> int:
        return math.prod(self.q_spatial)

    @property
    def kv_tokens(self) -> int:
        return math.prod(self.kv_spatial)

    @property
    def rank(self) -> int:
        return len(self.q_spatial)


def describe_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    key_padding_mask: torch.Tensor | None = None,
) -> AttentionCall:
    """Validate q/k/v (and the padding mask) against each other and ``spec``; raise ValueError naming the problem.

    Parameters
    ----------
    q : Tensor, shape (B, heads, *spatial, head_dim)
    k : Tensor, shape (B, kv_heads, *kv_spatial, head_dim)
    v : Tensor, shape (B, kv_heads, *kv_spatial, value_dim)
    key_padding_mask : bool Tensor, shape (B, prod(kv_spatial)), True = keep, optional
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 4 or t.dim() > 3 + MAX_SPATIAL_AXES:
            raise ValueError(
                f"{name} must be shaped (B, heads, *spatial, head_dim) with 1 to {MAX_SPATIAL_AXES} spatial axes, "
                f"got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must agree except in the last axis, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head_dim, got {q.shape[-1]} and {k.shape[-1]}")
    heads, kv_heads = q.shape[1], k.shape[1]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
    q_spatial, kv_spatial = tuple(q.shape[2:-1]), tuple(k.shape[2:-1])
    check_spec(spec, q_spatial, kv_spatial)
    if key_padding_mask is not None:
        if not isinstance(spec, Dense):
            raise ValueError(f"key_padding_mask is only supported with Dense attention, not {type(spec).__name__}")
        n_kv = math.prod(kv_spatial)
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (q.shape[0], n_kv):
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape (B, N_kv) = ({q.shape[0]}, {n_kv}), "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != k.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but k is on {k.device}")
        if not bool(key_padding_mask.any(dim=1).all()):
            raise ValueError("key_padding_mask masks every key of some batch element; its attention is undefined")
        if spec.causal and not bool(key_padding_mask[:, 0].all()):
            raise ValueError("key_padding_mask masks key 0 with Dense(causal=True), so query 0 would attend to nothing")
    return AttentionCall(
        batch=q.shape[0],
        heads=heads,
        kv_heads=kv_heads,
        q_spatial=q_spatial,
        kv_spatial=kv_spatial,
        head_dim=q.shape[-1],
        value_dim=v.shape[-1],
        dtype=q.dtype,
        device=q.device,
        requires_grad=torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad),
        has_padding_mask=key_padding_mask is not None,
    )
