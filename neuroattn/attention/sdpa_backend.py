"""torch SDPA: Dense natively, Neighborhood/Window through a cached (N, N) boolean mask, Axial one axis at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuroattn.attention.cache import ByteLRU
from neuroattn.attention.masks import token_mask
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Neighborhood, Window

ADDITIVE_MASK_CACHE = ByteLRU(max_bytes=1 << 30, max_items=16)  # CUDA float masks, per (key, dtype)


def kernel_mask(
    mask: torch.Tensor, dtype: torch.dtype, key: tuple | None = None, *, convert_on_cpu: bool = False
) -> torch.Tensor:
    """The mask in the form SDPA uses without converting it on every call.

    SDPA turns a boolean mask into an additive float mask of the query dtype on each call. On CUDA (and on
    the CPU with ``convert_on_cpu``, meant for small masks) the converted mask is made once and cached under
    ``key``; otherwise the boolean mask is passed through.
    """
    if mask.dtype != torch.bool or (mask.device.type != "cuda" and not convert_on_cpu):
        return mask

    def make() -> torch.Tensor:
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill_(~mask, float("-inf"))

    if key is None:
        return make()
    return ADDITIVE_MASK_CACHE.get_or_create((key, dtype), make)


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA on 4-D (batch, heads, L, d) tensors where k/v may have fewer heads than q (grouped-query attention).

    Grouped heads use ``enable_gqa`` on the CPU, whose fused kernel supports it with and without masks; on
    other devices k/v heads are repeated, so no call can fall to the O(N^2)-memory math kernel because a
    fused kernel lacks grouped-query support in this torch version.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        if q.device.type == "cpu":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True
            )
        k = k.repeat_interleave(groups, dim=1)  # (B, heads, M, d)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])  # (B, h, N, d)


def axial_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Full attention along each spatial axis on the same q/k/v; outputs summed and divided by the number of axes."""
    batch, heads, value_dim = q.shape[0], q.shape[1], v.shape[-1]
    n_axes = q.dim() - 3
    total = None
    for axis in range(2, 2 + n_axes):
        # move the attended axis next to head_dim, the heads next to it, everything else into the batch
        qa, ka, va = (x.movedim(axis, -2).movedim(1, -3) for x in (q, k, v))  # (B, *others, h, L_a, d)
        others = qa.shape[1:-3]
        out = sdpa(
            qa.reshape(-1, heads, qa.shape[-2], qa.shape[-1]),  # (B * others, h, L_a, d)
            ka.reshape(-1, ka.shape[-3], ka.shape[-2], ka.shape[-1]),
            va.reshape(-1, va.shape[-3], va.shape[-2], va.shape[-1]),
            scale=scale,
        )
        out = out.reshape(batch, *others, heads, qa.shape[-2], value_dim).movedim(-3, 1).movedim(-2, axis)
        total = out if total is None else total + out
    return total / n_axes


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Serve Dense, Neighborhood, Window or Axial with torch SDPA; shapes as in ``attend``."""
    batch, heads = q.shape[:2]
    q_spatial = tuple(q.shape[2:-1])
    if isinstance(spec, Axial):
        return axial_sdpa(q, k, v, scale)
    qf, kf, vf = _flat(q), _flat(k), _flat(v)  # (B, h, N, d)
    if isinstance(spec, Dense):
        if key_padding_mask is None:
            out = sdpa(qf, kf, vf, is_causal=spec.causal, scale=scale)
        else:
            mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, M)
            if spec.causal:
                mask = mask & token_mask(spec, q_spatial, q.device)  # (B, 1, N, M)
            out = sdpa(qf, kf, vf, mask=kernel_mask(mask, q.dtype), scale=scale)
    elif isinstance(spec, Neighborhood | Window):
        mask = token_mask(spec, q_spatial, q.device)  # (N, N)
        out = sdpa(qf, kf, vf, mask=kernel_mask(mask, q.dtype, key=(spec, q_spatial, str(q.device))), scale=scale)
    else:
        raise ValueError(f"the sdpa backend does not serve {type(spec).__name__} attention")
    return out.reshape(batch, heads, *q_spatial, v.shape[-1])
