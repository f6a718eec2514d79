"""Blocked local attention without an (N, N) mask: query tiles with their key halo, batched SDPA calls.

Per spatial axis the queries are cut into tiles of ``t`` consecutive tokens of one dilation group (the last
tile of a group is moved back so it stays full; its duplicated queries are computed twice and read once).
Each tile gathers the ``h`` consecutive group tokens that cover the union of its queries' windows: for a
neighborhood ``h = t + kernel - 1``; for a window the window itself. A (t, h) boolean mask says which of
those keys each query really sees. Axes combine as a Cartesian product: ``T = prod(n_tiles_a)`` tiles of
``Tq = prod(t_a)`` queries and ``Hk = prod(h_a)`` keys.

Tiles whose masks are equal (all interior tiles, for instance) form a class; tiles are sorted by class, so
one SDPA call per class (and per chunk) runs a contiguous run of tiles with one shared (Tq, Hk) mask, or
with no mask at all where every query sees every key of its tile (unshifted windows): a class count of
about ``3 ** rank`` small masks replaces a (T, Tq, Hk) one. q/k/v are gathered into (tiles, B*heads, Tq|Hk,
d) and outputs are read back through an inverse index.

Memory beyond the inputs: gathered q and output ``B*heads*N*(d + 2 dv)`` and gathered k/v
``B*kv_heads*T*Hk*(d + dv)`` elements (divided by ``chunks`` when run in pieces) -- O(N * Hk), not O(N^2).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from neuroattn.attention.cache import ByteLRU
from neuroattn.attention.sdpa_backend import kernel_mask, sdpa
from neuroattn.attention.specs import AttentionSpec, Neighborhood, Window

TILING_CACHE = ByteLRU(max_bytes=1 << 30, max_items=32)


@dataclass(frozen=True)
class AxisTiling:
    """Tiles along one axis, in original coordinates."""

    q_index: torch.Tensor  # (n_tiles, t) query coordinates of each tile
    k_index: torch.Tensor  # (n_tiles, h) key coordinates of each tile
    classes: torch.Tensor  # (n_tiles,) index into class_masks
    class_masks: torch.Tensor  # (n_classes, t, h) bool: which of its tile's keys each query sees
    inverse: torch.Tensor  # (L,) tile * t + slot holding each query's output


@dataclass(frozen=True)
class Tiling:
    """Tiles of the flattened grid, sorted by mask class."""

    q_index: torch.Tensor  # (T * Tq,) flat token index of every query slot
    k_index: torch.Tensor  # (T * Hk,) flat token index of every key slot
    inverse: torch.Tensor  # (N,) query slot holding each token's output
    segments: tuple[tuple[int, int, torch.Tensor | None], ...]  # (first tile, end tile, (Tq, Hk) mask or None)
    n_tiles: int
    tile_q: int
    tile_k: int


def _mask_classes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes (n,), class_masks (u, t, h)) of per-tile masks (n, t, h)."""
    unique, classes = torch.unique(masks.reshape(masks.shape[0], -1), dim=0, return_inverse=True)
    return classes, unique.reshape(-1, *masks.shape[1:])


def neighborhood_axis_tiling(length: int, kernel: int, dilation: int, causal: bool, tile: int) -> AxisTiling:
    """Tiles of one axis for NATTEN-style neighborhoods (see ``Neighborhood``), built per dilation group."""
    group_lengths = [len(range(g, length, dilation)) for g in range(dilation)]
    t = max(1, min(tile, min(group_lengths)))
    h = min(t + kernel - 1, max(group_lengths))
    q_rows, k_rows, m_rows = [], [], []
    inverse = torch.empty(length, dtype=torch.long)
    offset = 0
    for g, group_length in enumerate(group_lengths):
        n_tiles = math.ceil(group_length / t)
        starts = torch.clamp(torch.arange(n_tiles) * t, max=group_length - t)  # (n,) last tile moved back
        q_pos = starts[:, None] + torch.arange(t)  # (n, t) positions inside the group
        if causal:
            w_start = (q_pos - kernel + 1).clamp(min=0)
            w_end = q_pos + 1
        else:
            w_start = (q_pos - kernel // 2).clamp(min=0).clamp(max=group_length - kernel)
            w_end = w_start + kernel
        # window starts never decrease along a tile, so the first query's start opens the halo
        k_start = w_start[:, 0].clamp(max=max(group_length - h, 0))
        k_pos = k_start[:, None] + torch.arange(h)  # (n, h); positions >= group_length fall outside every window
        mask = (k_pos[:, None, :] >= w_start[:, :, None]) & (k_pos[:, None, :] < w_end[:, :, None])  # (n, t, h)
        if not torch.equal(mask.sum(-1), w_end - w_start):
            raise RuntimeError("internal error: a neighborhood window does not fit its tile halo")
        q_rows.append(g + q_pos * dilation)
        k_rows.append(g + k_pos.clamp(max=group_length - 1) * dilation)
        m_rows.append(mask)
        pos = torch.arange(group_length)
        tile_of = (pos // t).clamp(max=n_tiles - 1)
        inverse[g + pos * dilation] = (offset + tile_of) * t + pos - starts[tile_of]
        offset += n_tiles
    classes, class_masks = _mask_classes(torch.cat(m_rows))
    return AxisTiling(torch.cat(q_rows), torch.cat(k_rows), classes, class_masks, inverse)


def window_axis_tiling(length: int, size: int, shift: int) -> AxisTiling:
    """Tiles of one axis for (shifted) windows: Swin's roll by -shift, window partition and region mask."""
    n_windows = length // size
    rolled = torch.arange(n_windows)[:, None] * size + torch.arange(size)  # (n, size) coordinates after rolling
    index = (rolled + shift) % length  # original coordinates of the rolled tokens
    region = torch.zeros(length, dtype=torch.long)  # Swin's slices (0, -size), (-size, -shift), (-shift, None)
    if shift > 0:
        region[length - size : length - shift] = 1
        region[length - shift :] = 2
    labels = region[rolled]  # (n, size)
    classes, class_masks = _mask_classes(labels[:, :, None] == labels[:, None, :])  # masks (n, size, size)
    inverse = torch.empty(length, dtype=torch.long)
    inverse[index.reshape(-1)] = torch.arange(length)
    return AxisTiling(index, index, classes, class_masks, inverse)


def _outer(values: list[torch.Tensor], positions: list[list[int]], ndim: int, combine) -> torch.Tensor:
    """Combine per-axis tensors placed on the given dimensions of an ``ndim`` grid (broadcasting)."""
    result = None
    for value, pos in zip(values, positions, strict=True):
        shape = [1] * ndim
        for p, size in zip(pos, value.shape, strict=True):
            shape[p] = size
        part = value.reshape(shape)
        result = part if result is None else combine(result, part)
    return result


def combine_tilings(axes: list[AxisTiling], spatial: tuple[int, ...]) -> Tiling:
    """Cartesian product of per-axis tilings over the row-major flattened grid, tiles sorted by mask class."""
    n = len(axes)
    strides = [math.prod(spatial[a + 1 :]) for a in range(n)]
    n_tiles = [ax.q_index.shape[0] for ax in axes]
    t = [ax.q_index.shape[1] for ax in axes]
    h = [ax.k_index.shape[1] for ax in axes]
    n_classes = [ax.class_masks.shape[0] for ax in axes]
    total, tq, hk = math.prod(n_tiles), math.prod(t), math.prod(h)
    pairs = [[a, n + a] for a in range(n)]
    q_index = _outer([ax.q_index * s for ax, s in zip(axes, strides, strict=True)], pairs, 2 * n, torch.add)
    k_index = _outer([ax.k_index * s for ax, s in zip(axes, strides, strict=True)], pairs, 2 * n, torch.add)
    class_strides = [math.prod(n_classes[a + 1 :]) for a in range(n)]
    tile_class = _outer(
        [ax.classes * cs for ax, cs in zip(axes, class_strides, strict=True)], [[a] for a in range(n)], n, torch.add
    ).reshape(total)  # (T,)
    order = torch.argsort(tile_class, stable=True)  # tiles of one class become a contiguous run
    rank = torch.empty_like(order)
    rank[order] = torch.arange(total)
    tile_strides = [math.prod(n_tiles[a + 1 :]) for a in range(n)]
    slot_strides = [math.prod(t[a + 1 :]) for a in range(n)]
    tile_of = _outer(
        [(ax.inverse // ta) * ts for ax, ta, ts in zip(axes, t, tile_strides, strict=True)],
        [[a] for a in range(n)],
        n,
        torch.add,
    )  # (L_1..L_n) unsorted tile of each token
    slot_of = _outer(
        [(ax.inverse % ta) * ss for ax, ta, ss in zip(axes, t, slot_strides, strict=True)],
        [[a] for a in range(n)],
        n,
        torch.add,
    )
    inverse = rank[tile_of.reshape(-1)] * tq + slot_of.reshape(-1)
    segments = []
    sorted_class = tile_class[order]
    values, counts = torch.unique_consecutive(sorted_class, return_counts=True)
    start = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        per_axis = [(value // cs) % nc for cs, nc in zip(class_strides, n_classes, strict=True)]
        parts = [ax.class_masks[c] for ax, c in zip(axes, per_axis, strict=True)]
        mask = _outer(parts, pairs, 2 * n, torch.logical_and).reshape(tq, hk)  # (Tq, Hk)
        segments.append((start, start + count, None if bool(mask.all()) else mask))
        start += count
    return Tiling(
        q_index=q_index.reshape(total, tq)[order].reshape(-1),
        k_index=k_index.reshape(total, hk)[order].reshape(-1),
        inverse=inverse,
        segments=tuple(segments),
        n_tiles=total,
        tile_q=tq,
        tile_k=hk,
    )


# Cost of a tiling per query, in units of one query-key score: Hk scores, Hk / Tq gathered key copies and a
# per-tile overhead, fitted on single-threaded CPU SDPA (head_dim 32); larger on CUDA where small tiles
# leave the GPU idle.
GATHER_COST = 12.0
TILE_OVERHEAD = {
    "cpu": {1: 2000.0, 2: 5000.0, 3: 7000.0, 4: 8000.0},
    "cuda": {1: 20000.0, 2: 40000.0, 3: 60000.0, 4: 80000.0},
}


@functools.lru_cache(maxsize=256)
def choose_tile(spec: AttentionSpec, spatial: tuple[int, ...], device_type: str = "cpu") -> tuple[int, ...]:
    """Queries per tile along each axis, minimising ``Hk + GATHER_COST * Hk / Tq + overhead / Tq`` per query.

    Small tiles waste little compute on masked keys (a query scores all ``Hk`` keys of its tile, ``k^n``
    of them used) but gather more duplicate keys and pay more per-tile overhead; the cost model weighs the
    three over power-of-two tile sizes (and whole dilation groups) per axis. Windows are their own tiles.
    """
    if isinstance(spec, Window):
        return spec.resolve(spatial)[0]
    kernels, dilations, _ = spec.resolve(spatial)
    overhead = TILE_OVERHEAD.get(device_type, TILE_OVERHEAD["cuda"])[min(len(spatial), 4)]
    options = []
    for length, kernel, dilation in zip(spatial, kernels, dilations, strict=True):
        smallest, largest = length // dilation, math.ceil(length / dilation)  # dilation group lengths
        sizes = {min(2**i, smallest) for i in range(12)} | {smallest}
        options.append([(t, min(t + kernel - 1, largest)) for t in sorted(sizes)])
    best, best_cost = None, math.inf
    for combo in itertools.product(*options):
        tq = math.prod(t for t, _ in combo)
        hk = math.prod(h for _, h in combo)
        cost = hk + (GATHER_COST * hk + overhead) / tq
        if cost < best_cost:
            best, best_cost = tuple(t for t, _ in combo), cost
    return best


def tiling_shape(spec: AttentionSpec, spatial: tuple[int, ...], tile: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(T, Tq, Hk) of the tiling ``build_tiling`` makes, computed without building it (for memory planning)."""
    if isinstance(spec, Window):
        sizes, _ = spec.resolve(spatial)
        return math.prod(n // s for n, s in zip(spatial, sizes, strict=True)), math.prod(sizes), math.prod(sizes)
    if not isinstance(spec, Neighborhood):
        raise ValueError(f"the blocked backend does not serve {type(spec).__name__} attention")
    kernels, dilations, _ = spec.resolve(spatial)
    tile = tile or choose_tile(spec, spatial)
    n_tiles, tq, hk = 1, 1, 1
    for length, kernel, dilation, t in zip(spatial, kernels, dilations, tile, strict=True):
        group_lengths = [len(range(g, length, dilation)) for g in range(dilation)]
        t = max(1, min(t, min(group_lengths)))
        n_tiles *= sum(math.ceil(gl / t) for gl in group_lengths)
        tq *= t
        hk *= min(t + kernel - 1, max(group_lengths))
    return n_tiles, tq, hk


def build_tiling(spec: AttentionSpec, spatial: tuple[int, ...], tile: tuple[int, ...] | None) -> Tiling:
    """Tiling of ``spatial`` for ``spec`` on the CPU (uncached)."""
    if isinstance(spec, Neighborhood):
        kernels, dilations, causals = spec.resolve(spatial)
        tile = tile or choose_tile(spec, spatial)
        axes = [
            neighborhood_axis_tiling(n, k, d, c, t)
            for n, k, d, c, t in zip(spatial, kernels, dilations, causals, tile, strict=True)
        ]
    elif isinstance(spec, Window):
        sizes, shifts = spec.resolve(spatial)
        axes = [window_axis_tiling(n, s, sh) for n, s, sh in zip(spatial, sizes, shifts, strict=True)]
    else:
        raise ValueError(f"the blocked backend does not serve {type(spec).__name__} attention")
    return combine_tilings(axes, spatial)


def get_tiling(
    spec: AttentionSpec, spatial: tuple[int, ...], tile: tuple[int, ...] | None, device: torch.device
) -> Tiling:
    """Cached tiling with its index tensors on ``device``."""

    def make() -> Tiling:
        base = build_tiling(spec, spatial, tile)
        return Tiling(
            q_index=base.q_index.to(device),
            k_index=base.k_index.to(device),
            inverse=base.inverse.to(device),
            segments=tuple((lo, hi, None if m is None else m.to(device)) for lo, hi, m in base.segments),
            n_tiles=base.n_tiles,
            tile_q=base.tile_q,
            tile_k=base.tile_k,
        )

    return TILING_CACHE.get_or_create((spec, spatial, tile, str(device)), make)


def _segment_mask(tiling: Tiling, index: int, groups: int, dtype: torch.dtype, key: tuple) -> torch.Tensor | None:
    """The (1, 1, groups*Tq, Hk) mask of one class, in the form SDPA takes on this device (cached)."""
    mask = tiling.segments[index][2]
    if mask is None:
        return None
    rows = mask.repeat(groups, 1) if groups > 1 else mask  # folded query rows are (group, slot)
    return kernel_mask(rows[None, None], dtype, key=(*key, index, groups), convert_on_cpu=True)


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
    t_count, tq, hk = tiling.n_tiles, tiling.tile_q, tiling.tile_k
    bh = batch * kv_heads
    # head-major layouts: gathering along the token axis of a contiguous tensor is the fast index_select
    qf = q.reshape(bh, groups, n_tokens, head_dim)  # (B*kv_heads, g, N, d)
    kf = k.reshape(bh, n_tokens, head_dim)  # (B*kv_heads, N, d)
    vf = v.reshape(bh, n_tokens, value_dim)
    mask_key = ("blocked", spec, spatial, tile, str(q.device))

    def run_tiles(
        qf: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, lo: int, hi: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        n = hi - lo
        qt = qf.index_select(2, tiling.q_index[lo * tq : hi * tq])  # (B*kv_heads, g, n*Tq, d)
        qt = qt.reshape(bh, groups, n, tq, head_dim).permute(2, 0, 1, 3, 4).reshape(n, bh, groups * tq, head_dim)
        k_rows = tiling.k_index[lo * hk : hi * hk]
        kt = kf.index_select(1, k_rows).reshape(bh, n, hk, head_dim).transpose(0, 1)  # (n, B*kv_heads, Hk, d)
        vt = vf.index_select(1, k_rows).reshape(bh, n, hk, value_dim).transpose(0, 1)
        out = sdpa(qt, kt, vt, mask=mask, scale=scale)  # (n, B*kv_heads, g*Tq, dv)
        out = out.reshape(n, bh, groups, tq, value_dim).permute(1, 2, 0, 3, 4)  # (B*kv_heads, g, n, Tq, dv)
        return out.reshape(batch * heads, n * tq, value_dim)

    chunks = max(1, min(chunks, t_count))
    piece = math.ceil(t_count / chunks)  # tiles per SDPA call at most
    # training with several chunks: keep only each piece's output and recompute its tiles in backward
    recompute = chunks > 1 and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    outputs = []
    for index, (first, end, _) in enumerate(tiling.segments):
        mask = _segment_mask(tiling, index, groups, q.dtype, mask_key)
        for lo in range(first, end, piece):
            hi = min(lo + piece, end)
            if recompute:
                outputs.append(
                    torch.utils.checkpoint.checkpoint(run_tiles, qf, kf, vf, lo, hi, mask, use_reentrant=False)
                )
            else:
                outputs.append(run_tiles(qf, kf, vf, lo, hi, mask))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # (B*heads, T*Tq, dv)
    out = out.index_select(1, tiling.inverse)  # (B*heads, N, dv)
    return out.reshape(batch, heads, *spatial, value_dim)
