"""Blocked local attention without an (N, N) mask: query tiles with their key halo, batched SDPA calls.

The tiling (``tiling.py``) cuts the grid into ``T`` tiles of ``Tq`` queries, each with a halo of ``Hk``
keys and one of a few (Tq, Hk) masks -- a single band mask for non-causal neighborhoods, no mask at all
for unshifted windows. Per piece of consecutive tiles, q is gathered into (tiles, B*kv_heads, g*Tq, d) and
k/v into (tiles, B*kv_heads, Hk, d) (strided views of token-gathered tensors): one SDPA call, one mask.

Inference gathers each piece into scratch buffers reused by every piece and writes its outputs straight
into the result, so the memory beyond the inputs is the output, the cached index tables and masks, and one
piece of gathered q/k/v and its output (the planner sizes pieces to a few MiB on the CPU). With gradients
the pieces' outputs are concatenated and read back through an inverse index; each piece is checkpointed
when the planner asks for several chunks. O(N * Hk) memory, never O(N^2).
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint

from neuroattn.attention.cache import ByteLRU
from neuroattn.attention.sdpa_backend import sdpa
from neuroattn.attention.specs import AttentionSpec
from neuroattn.attention.tiling import Tiling, build_tiling, choose_tile, tiling_shape

__all__ = ["TILING_CACHE", "blocked_attention", "build_tiling", "choose_tile", "get_tiling", "tiling_shape"]

TILING_CACHE = ByteLRU(max_bytes=1 << 30, max_items=32)  # tilings and their additive masks
# Training in one chunk still splits the tiles into pieces of about GRAD_PIECE_BYTES of gathered k/v, so that
# backward holds the gradients of one piece's gathered k/v at a time. Every piece also scatters its gradients
# into full-size q/k/v buffers, so a piece never gathers less k/v than the inputs hold, and there are at most
# GRAD_MAX_PIECES of them.
GRAD_PIECE_BYTES = {"cpu": 8 << 20, "cuda": 512 << 20}
GRAD_MAX_PIECES = 8


def get_tiling(
    spec: AttentionSpec, spatial: tuple[int, ...], tile: tuple[int, ...] | None, device: torch.device
) -> Tiling:
    """Cached tiling with its index tensors on ``device`` (key slots as int32: they are the largest table)."""

    def make() -> Tiling:
        base = build_tiling(spec, spatial, tile)
        small = math.prod(spatial) < 2**31
        return Tiling(
            q_index=base.q_index.to(device),  # int64: index_copy_ takes no other index type
            k_index=base.k_index.to(device, torch.int32 if small else torch.int64),
            inverse=base.inverse.to(device),
            segments=tuple((lo, hi, None if m is None else m.to(device)) for lo, hi, m in base.segments),
            n_tiles=base.n_tiles,
            tile_q=base.tile_q,
            tile_k=base.tile_k,
            in_order=base.in_order,
        )

    return TILING_CACHE.get_or_create(("blocked", spec, spatial, tile, str(device)), make)


def segment_masks(
    tiling: Tiling, key: tuple, groups: int, dtype: torch.dtype
) -> tuple[torch.Tensor | None, ...]:
    """Additive (1, 1, groups*Tq, Hk) mask of each segment in ``dtype``, None where every key is seen (cached).

    SDPA would otherwise convert a boolean mask to this form on every call. Folded query rows are
    (group, slot), so the (Tq, Hk) mask repeats once per query head sharing a k/v head.
    """

    def make() -> tuple[torch.Tensor | None, ...]:
        additive = []
        for _, _, mask in tiling.segments:
            if mask is None:
                additive.append(None)
                continue
            rows = mask.repeat(groups, 1) if groups > 1 else mask  # (g*Tq, Hk)
            values = torch.zeros(rows.shape, dtype=dtype, device=rows.device).masked_fill_(~rows, float("-inf"))
            additive.append(values[None, None])
        return tuple(additive)

    return TILING_CACHE.get_or_create((*key, "masks", groups, dtype), make)


def _gather(x: torch.Tensor, dim: int, rows: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """``x.index_select(dim, rows)``, written into the front of the flat ``buffer`` when one is given."""
    if buffer is None:
        return x.index_select(dim, rows)
    shape = (*x.shape[:dim], rows.shape[0], *x.shape[dim + 1 :])
    return torch.index_select(x, dim, rows, out=buffer[: math.prod(shape)].view(shape))


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    scale: float | None = None,
    tile: tuple[int, ...] | None = None,
    chunks: int = 1,
) -> torch.Tensor:
    """Neighborhood or Window attention by tiles; q (B, heads, *spatial, d), k/v (B, kv_heads, *spatial, d|dv).

    ``chunks`` > 1 runs the tiles in that many sequential pieces, bounding the gathered k/v; when gradients
    are needed each piece is checkpointed (its tiles are gathered and attended again in backward).
    """
    batch, heads = q.shape[:2]
    kv_heads, head_dim, value_dim = k.shape[1], q.shape[-1], v.shape[-1]
    groups = heads // kv_heads
    spatial = tuple(q.shape[2:-1])
    n_tokens = math.prod(spatial)
    tiling = get_tiling(spec, spatial, tile, q.device)
    masks = segment_masks(tiling, ("blocked", spec, spatial, tile, str(q.device)), groups, q.dtype)
    tq, hk = tiling.tile_q, tiling.tile_k
    bh = batch * kv_heads
    # head-major layouts: gathering along the token axis of a contiguous tensor is the fast index_select
    qf = q.reshape(bh, groups, n_tokens, head_dim)  # (B*kv_heads, g, N, d)
    kf = k.reshape(bh, n_tokens, head_dim)  # (B*kv_heads, N, d)
    vf = v.reshape(bh, n_tokens, value_dim)

    def run_tiles(
        qf: torch.Tensor,
        kf: torch.Tensor,
        vf: torch.Tensor,
        lo: int,
        hi: int,
        mask: torch.Tensor | None,
        buffers: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """Outputs of tiles ``lo .. hi-1`` in slot order, (B*kv_heads, g, n*Tq, dv); a strided view when g == 1.

        ``buffers`` (flat q, k, v scratch tensors, inference only) receive the gathered tiles instead of
        fresh allocations, which on the CPU would fault their pages in again for every piece.
        """
        n = hi - lo
        qb, kb, vb = buffers or (None, None, None)
        q_rows = tiling.q_index[lo * tq : hi * tq]  # in order: slots are tokens, the queries a slice
        qt = qf[:, :, lo * tq : hi * tq] if tiling.in_order else _gather(qf, 2, q_rows, qb)  # (B*kv_heads, g, n*Tq, d)
        qt = qt.view(bh, groups, n, tq, head_dim).permute(2, 0, 1, 3, 4)  # (n, B*kv_heads, g, Tq, d)
        qt = qt.reshape(n, bh, groups * tq, head_dim)  # a view when g == 1
        k_rows = tiling.k_index[lo * hk : hi * hk]
        kt = _gather(kf, 1, k_rows, kb).view(bh, n, hk, head_dim).transpose(0, 1)  # (n, B*kv_heads, Hk, d)
        vt = _gather(vf, 1, k_rows, vb).view(bh, n, hk, value_dim).transpose(0, 1)
        out = sdpa(qt, kt, vt, mask=mask, scale=scale)  # (n, B*kv_heads, g*Tq, dv): tiles are the SDPA batch
        out = out.view(n, bh, groups, tq, value_dim).permute(1, 2, 0, 3, 4)  # (B*kv_heads, g, n, Tq, dv)
        # no copy when g == 1 and the kernel lays its output out as (n, Tq, B*kv_heads, dv), as on the CPU
        return out.reshape(bh, groups, n * tq, value_dim)

    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    chunks = max(1, min(chunks, tiling.n_tiles))
    piece = math.ceil(tiling.n_tiles / chunks)  # tiles per SDPA call at most
    if needs_grad and chunks == 1:
        gathered = q.element_size() * bh * hk * (head_dim + value_dim) * tiling.n_tiles  # k/v of all tiles
        target = GRAD_PIECE_BYTES.get(q.device.type, GRAD_PIECE_BYTES["cuda"])
        n_pieces = min(GRAD_MAX_PIECES, math.ceil(gathered / target), tiling.n_tiles * hk // n_tokens)
        piece = math.ceil(tiling.n_tiles / max(1, n_pieces))
    pieces = [
        (lo, min(lo + piece, end), mask)
        for (first, end, _), mask in zip(tiling.segments, masks, strict=True)
        for lo in range(first, end, piece)
    ]
    if not needs_grad and tiling.one_slot_per_query:
        most = max(hi - lo for lo, hi, _ in pieces)  # tiles in the largest piece
        buffers = (
            q.new_empty(0 if tiling.in_order else bh * groups * most * tq * head_dim),
            k.new_empty(bh * most * hk * head_dim),
            v.new_empty(bh * most * hk * value_dim),
        )
        out = q.new_empty(bh, groups, n_tokens, value_dim)  # (B*kv_heads, g, N, dv) = (B, heads, N, dv)
        for lo, hi, mask in pieces:
            out.index_copy_(2, tiling.q_index[lo * tq : hi * tq], run_tiles(qf, kf, vf, lo, hi, mask, buffers))
        return out.view(batch, heads, *spatial, value_dim)
    # training with several chunks: keep only each piece's output and recompute its tiles in backward
    recompute = chunks > 1 and needs_grad
    outputs = [
        torch.utils.checkpoint.checkpoint(run_tiles, qf, kf, vf, lo, hi, mask, use_reentrant=False)
        if recompute
        else run_tiles(qf, kf, vf, lo, hi, mask)
        for lo, hi, mask in pieces
    ]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B*kv_heads, g, T*Tq, dv)
    if not tiling.in_order:
        out = out.index_select(2, tiling.inverse)  # (B*kv_heads, g, N, dv): each token's slot
    return out.reshape(batch, heads, *spatial, value_dim).contiguous()
