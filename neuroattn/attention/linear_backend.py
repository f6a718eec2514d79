"""Linear (kernelized) attention in O(N): summarise keys and values once, then read the summary per query."""

from __future__ import annotations

import torch

from neuroattn.attention.reference import elu_feature_map
from neuroattn.attention.specs import AttentionSpec, Linear

FEATURE_MAP_FUNCTIONS = {"elu": elu_feature_map}


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """phi(q) (sum_j phi(k_j) v_j^T) / (phi(q) . sum_j phi(k_j)); half precision accumulates in float32.

    Parameters
    ----------
    q : Tensor, shape (B, heads, *spatial, d)
    k, v : Tensor, shape (B, kv_heads, *kv_spatial, d | dv)
    scale : float, optional; multiplies q before the feature map (default: none)

    Returns
    -------
    Tensor, shape (B, heads, *spatial, dv)
    """
    if not isinstance(spec, Linear):
        raise ValueError(f"the linear backend does not serve {type(spec).__name__} attention")
    phi = FEATURE_MAP_FUNCTIONS[spec.feature_map]
    batch, heads = q.shape[:2]
    kv_heads = k.shape[1]
    q_spatial = tuple(q.shape[2:-1])
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qf = q.reshape(batch, kv_heads, heads // kv_heads, -1, q.shape[-1]).to(work)  # (B, h_kv, g, N, d)
    kf = k.reshape(batch, kv_heads, -1, k.shape[-1]).to(work)  # (B, h_kv, M, d)
    vf = v.reshape(batch, kv_heads, -1, v.shape[-1]).to(work)  # (B, h_kv, M, dv)
    phi_q = phi(qf if scale is None else qf * scale)
    phi_k = phi(kf)
    kv = torch.einsum("bkmd,bkme->bkde", phi_k, vf)  # (B, h_kv, d, dv)
    k_sum = phi_k.sum(dim=2)  # (B, h_kv, d)
    numerator = torch.einsum("bkgnd,bkde->bkgne", phi_q, kv)  # (B, h_kv, g, N, dv)
    denominator = torch.einsum("bkgnd,bkd->bkgn", phi_q, k_sum)  # (B, h_kv, g, N)
    out = numerator / denominator[..., None]
    return out.reshape(batch, heads, *q_spatial, v.shape[-1]).to(q.dtype)
