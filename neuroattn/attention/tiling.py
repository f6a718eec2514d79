"""Tilings for the blocked backend: query tiles, the key halo each one gathers, and the masks they share.

Per spatial axis the queries are cut into tiles of ``t`` consecutive tokens of one dilation group (the last
tile of a group is moved back so it stays full; its duplicated queries are computed twice and read once).
Each tile gathers ``h`` keys that cover its queries' windows. Axes combine as a Cartesian product:
``T = prod(n_tiles_a)`` tiles of ``Tq = prod(t_a)`` queries and ``Hk = prod(h_a)`` keys, and a (Tq, Hk)
boolean mask says which keys each query sees. Tiles with equal masks form a class, sorted into a run.

Non-causal neighborhood axes use one mask for every tile, the band ``slot j sees halo slots j .. j+k-1``.
NATTEN's border-shifted window of a query at group position ``i`` is exactly the centred window
``i - k//2 .. i + k//2`` on the axis padded by ``k//2`` on each side with ``P[u] = u + k`` (u < 0) and
``P[u] = u - k`` (u >= L): near the start the keys ``k//2 + i + 1 .. k - 1`` come back through the left
pad, so every query still sees each of the ``k`` keys of its shifted window once. A tile starting at ``s``
gathers ``P[s - k//2 .. s + t - 1 + k//2]`` (``h = t + k - 1``). Causal axes (windows of varying length)
and tiles spanning almost the whole axis use per-class masks over an unpadded halo instead.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch

from neuroattn.attention.specs import AttentionSpec, Neighborhood, Window


@dataclass(frozen=True)
class AxisTiling:
    """Tiles along one axis, in original coordinates."""

    q_index: torch.Tensor  # (n_tiles, t) query coordinates of each tile
    k_index: torch.Tensor  # (n_tiles, h) key coordinates of each tile (may repeat a key)
    classes: torch.Tensor  # (n_tiles,) index into class_masks
    class_masks: torch.Tensor  # (n_classes, t, h) bool: which of its tile's key slots each query sees
    inverse: torch.Tensor  # (L,) tile * t + slot holding each query's output


@dataclass(frozen=True)
class Tiling:
    """Tiles of the flattened grid, sorted by mask class."""

    q_index: torch.Tensor  # (T * Tq,) int64 flat token index of every query slot
    k_index: torch.Tensor  # (T * Hk,) flat token index of every key slot (int32 once on a device)
    inverse: torch.Tensor  # (N,) query slot holding each token's output
    segments: tuple[tuple[int, int, torch.Tensor | None], ...]  # (first tile, end tile, (Tq, Hk) mask or None)
    n_tiles: int
    tile_q: int
    tile_k: int
    in_order: bool = False  # slot i holds token i (q_index is 0 .. N-1): q and outputs need no reordering

    @property
    def one_slot_per_query(self) -> bool:
        """Every token is the query of exactly one slot (no tile was moved back over its neighbour)."""
        return self.n_tiles * self.tile_q == self.inverse.shape[0]


def _mask_classes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes (n,), class_masks (u, t, h)) of per-tile masks (n, t, h)."""
    unique, classes = torch.unique(masks.reshape(masks.shape[0], -1), dim=0, return_inverse=True)
    return classes, unique.reshape(-1, *masks.shape[1:])


def uses_band(length: int, kernel: int, dilation: int, causal: bool, tile: int) -> tuple[bool, int, int]:
    """(band halo?, t, h) of one neighborhood axis; the band needs a centred window and ``h <=`` every group."""
    group_lengths = [len(range(g, length, dilation)) for g in range(dilation)]
    t = max(1, min(tile, min(group_lengths)))
    band = not causal and kernel % 2 == 1 and t + kernel - 1 <= min(group_lengths)
    return band, t, min(t + kernel - 1, max(group_lengths))


def neighborhood_axis_tiling(length: int, kernel: int, dilation: int, causal: bool, tile: int) -> AxisTiling:
    """Tiles of one axis for NATTEN-style neighborhoods (see ``Neighborhood``), built per dilation group."""
    group_lengths = [len(range(g, length, dilation)) for g in range(dilation)]
    band, t, h = uses_band(length, kernel, dilation, causal, tile)
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
        if band:
            pad_pos = starts[:, None] - kernel // 2 + torch.arange(h)  # (n, h) positions on the padded axis
            k_pos = torch.where(pad_pos < 0, pad_pos + kernel, pad_pos)
            k_pos = torch.where(pad_pos >= group_length, pad_pos - kernel, k_pos)
            slot = torch.arange(h)
            mask = (slot >= torch.arange(t)[:, None]) & (slot < torch.arange(t)[:, None] + kernel)  # (t, h)
            mask = mask.expand(n_tiles, t, h)
            seen = k_pos[:, None, :].expand(n_tiles, t, h)[mask].reshape(n_tiles, t, kernel).sort(-1).values
            if not torch.equal(seen, w_start[..., None] + torch.arange(kernel)):
                raise RuntimeError("internal error: a band halo does not hold each window key exactly once")
        else:
            # window starts never decrease along a tile, so the first query's start opens the halo
            k_start = w_start[:, 0].clamp(max=max(group_length - h, 0))
            k_pos = k_start[:, None] + torch.arange(h)  # (n, h); positions >= group_length fall outside windows
            mask = (k_pos[:, None, :] >= w_start[:, :, None]) & (k_pos[:, None, :] < w_end[:, :, None])  # (n, t, h)
            if not torch.equal(mask.sum(-1), w_end - w_start):
                raise RuntimeError("internal error: a neighborhood window does not fit its tile halo")
            k_pos = k_pos.clamp(max=group_length - 1)
        q_rows.append(g + q_pos * dilation)
        k_rows.append(g + k_pos * dilation)
        m_rows.append(mask)
        pos = torch.arange(group_length)
        tile_of = (pos // t).clamp(max=n_tiles - 1)
        inverse[g + pos * dilation] = (offset + tile_of) * t + pos - starts[tile_of]
        offset += n_tiles
    masks = torch.cat(m_rows)
    if band:  # one mask for all tiles
        classes, class_masks = torch.zeros(masks.shape[0], dtype=torch.long), masks[:1].clone()
    else:
        classes, class_masks = _mask_classes(masks)
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
    q_index = q_index.reshape(total, tq)[order].reshape(-1)
    return Tiling(
        q_index=q_index,
        k_index=k_index.reshape(total, hk)[order].reshape(-1),
        inverse=inverse,
        segments=tuple(segments),
        n_tiles=total,
        tile_q=tq,
        tile_k=hk,
        in_order=torch.equal(q_index, torch.arange(math.prod(spatial))),
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
    kernels, dilations, causals = spec.resolve(spatial)
    tile = tile or choose_tile(spec, spatial)
    n_tiles, tq, hk = 1, 1, 1
    for length, kernel, dilation, causal, t in zip(spatial, kernels, dilations, causals, tile, strict=True):
        _, t, h = uses_band(length, kernel, dilation, causal, t)
        n_tiles *= sum(math.ceil(len(range(g, length, dilation)) / t) for g in range(dilation))
        tq *= t
        hk *= h
    return n_tiles, tq, hk


def tiling_classes(spec: AttentionSpec, spatial: tuple[int, ...], tile: tuple[int, ...] | None) -> int:
    """Upper bound on the distinct (Tq, Hk) masks of the tiling (for memory planning).

    Per axis: one for a band halo; at most first / interior / last tile per dilation-group length (two
    lengths at most) otherwise; Swin's three shifted regions for a window axis.
    """
    if isinstance(spec, Window):
        sizes, shifts = spec.resolve(spatial)
        return math.prod(min(n // s, 3) if sh else 1 for n, s, sh in zip(spatial, sizes, shifts, strict=True))
    if not isinstance(spec, Neighborhood):
        raise ValueError(f"the blocked backend does not serve {type(spec).__name__} attention")
    kernels, dilations, causals = spec.resolve(spatial)
    tile = tile or choose_tile(spec, spatial)
    classes = 1
    for length, kernel, dilation, causal, t in zip(spatial, kernels, dilations, causals, tile, strict=True):
        band, t, _ = uses_band(length, kernel, dilation, causal, t)
        n_tiles = sum(math.ceil(len(range(g, length, dilation)) / t) for g in range(dilation))
        classes *= 1 if band else min(n_tiles, 6)
    return classes


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
