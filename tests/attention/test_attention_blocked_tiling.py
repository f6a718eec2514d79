"""Blocked backend internals: band halos reproduce NATTEN windows, shared masks, cached tables, inference writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from attention_helpers import qkv, rel_err

from neuroattn.attention import Neighborhood, Window, attend, clear_caches
from neuroattn.attention.blocked import TILING_CACHE, blocked_attention, get_tiling
from neuroattn.attention.tiling import build_tiling, neighborhood_axis_tiling, tiling_classes, uses_band

F64_TOL = 1e-12
F32_TOL = 1e-5


def natten_window(x: int, length: int, kernel: int, dilation: int, causal: bool) -> list[int]:
    """Keys of query ``x`` on one axis, written out from the ``Neighborhood`` docstring."""
    group, i = x % dilation, x // dilation
    group_length = len(range(group, length, dilation))
    if causal:
        positions = range(max(i - kernel + 1, 0), i + 1)
    else:
        start = min(max(i - kernel // 2, 0), group_length - kernel)
        positions = range(start, start + kernel)
    return [group + p * dilation for p in positions]


def _axis_cases():
    for length in range(1, 15):
        for kernel in (1, 2, 3, 4, 5, 7):
            for dilation in (1, 2, 3):
                if kernel * dilation > length:
                    continue
                for causal in (False, True):
                    if kernel % 2 == 0 and not causal:
                        continue
                    for tile in sorted({1, 2, 3, 4, 8, length}):
                        yield length, kernel, dilation, causal, tile


def test_every_axis_tiling_shows_each_query_exactly_its_window():
    """Band halos (wrap-padded axis) and masked halos alike: the keys under a query's mask row, with
    multiplicity, are its NATTEN window; and every query sits in the slot its inverse names."""
    n_band = 0
    for length, kernel, dilation, causal, tile in _axis_cases():
        axis = neighborhood_axis_tiling(length, kernel, dilation, causal, tile)
        n_band += uses_band(length, kernel, dilation, causal, tile)[0]
        t = axis.q_index.shape[1]
        for x in range(length):
            tile_id, slot = divmod(int(axis.inverse[x]), t)
            assert int(axis.q_index[tile_id, slot]) == x
            row = axis.class_masks[axis.classes[tile_id], slot]  # (h,)
            seen = sorted(axis.k_index[tile_id][row].tolist())
            assert seen == natten_window(x, length, kernel, dilation, causal), (length, kernel, dilation, causal, tile)
    assert n_band > 100  # the band halo is the common case, not an exception


def test_non_causal_neighborhoods_share_one_band_mask():
    tiling = build_tiling(Neighborhood(7), (16, 16, 16), (4, 4, 4))
    assert len(tiling.segments) == 1 and tiling.segments[0][2] is not None
    assert (tiling.n_tiles, tiling.tile_q, tiling.tile_k) == (64, 64, 10**3)
    mask = tiling.segments[0][2].reshape(4, 4, 4, 10, 10, 10)
    band = (torch.arange(10) >= torch.arange(4)[:, None]) & (torch.arange(10) < torch.arange(4)[:, None] + 7)
    expected = (
        band[:, None, None, :, None, None] & band[None, :, None, None, :, None] & band[None, None, :, None, None, :]
    )
    assert torch.equal(mask, expected)
    assert tiling.one_slot_per_query and not tiling.in_order
    # 1-D tiles dividing the axis keep tokens in order: queries are slices, outputs need no reordering
    assert build_tiling(Neighborhood(7), (40,), (8,)).in_order
    assert not build_tiling(Neighborhood(7), (40,), (16,)).one_slot_per_query  # last tile moved back
    # one key per query along an axis of tiles of one query: no mask at all
    assert build_tiling(Neighborhood(3), (9, 9), (1, 1)).segments[0][2] is None


@pytest.mark.parametrize(
    ("spec", "spatial", "tile"),
    [
        (Neighborhood(7), (16, 16, 16), None),
        (Neighborhood((3, 5), dilation=(2, 1), causal=(False, True)), (9, 10), (2, 3)),
        (Neighborhood(3, causal=True), (6, 7, 5), (2, 2, 2)),
        (Neighborhood((5, 3), dilation=(1, 3)), (7, 11), (4, 4)),
        (Window((3, 4), (1, 2)), (6, 8), None),
        (Window(4), (8, 8), None),
    ],
    ids=str,
)
def test_planned_class_count_bounds_the_masks_built(spec, spatial, tile):
    tiling = build_tiling(spec, spatial, tile)
    assert len(tiling.segments) <= tiling_classes(spec, spatial, tile)


@pytest.mark.parametrize(
    ("spatial", "spec", "tile", "chunks"),
    [
        ((8, 7, 6), Neighborhood(3), (4, 4, 4), 1),  # moved-back tiles on two axes
        ((8, 8, 8), Neighborhood(3), (4, 2, 4), 3),  # pieces of 6, 6 and 4 tiles share scratch buffers
        ((8, 12), Neighborhood((3, 5), causal=(True, False)), (4, 4), 3),  # one piece per mask class at least
        ((12, 10), Neighborhood((5, 3), dilation=(2, 3)), (3, 2), 4),
        ((9, 10), Neighborhood((3, 5), dilation=(2, 1), causal=(False, True)), (2, 3), 3),
        ((40,), Neighborhood(7), (8,), 2),
        ((6, 8), Window((3, 4), (1, 2)), None, 3),
    ],
    ids=str,
)
def test_inference_and_training_paths_match_reference(spatial, spec, tile, chunks):
    """Grouped-query heads and a value width of its own, without and with gradients."""
    q, _, _ = qkv((2, 4, *spatial, 8), seed=11)
    _, k, v = qkv((2, 2, *spatial, 8), value_dim=6, seed=12)
    ref = attend(q, k, v, spec, backend="reference")
    with torch.no_grad():
        out = blocked_attention(q, k, v, spec, tile=tile, chunks=chunks)
    assert out.shape == ref.shape and out.is_contiguous()
    assert rel_err(out, ref) < F64_TOL
    out32 = blocked_attention(q.float(), k.float(), v.float(), spec, tile=tile, chunks=chunks)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) < F32_TOL
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    out_grad = blocked_attention(q, k, v, spec, tile=tile, chunks=chunks)
    assert out_grad.is_contiguous() and rel_err(out_grad, ref) < F64_TOL
    grads = torch.autograd.grad(out_grad.square().sum(), (q, k, v))
    grads_ref = torch.autograd.grad(attend(q, k, v, spec, backend="reference").square().sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert rel_err(g, g_ref) < F64_TOL


def test_tables_and_masks_are_built_once_and_stay_small():
    clear_caches()
    spec, spatial = Neighborhood(3, causal=(True, False, False)), (8, 8, 8)
    q, k, v = qkv((1, 2, *spatial, 4), dtype=torch.float32, seed=13)
    with torch.no_grad():
        blocked_attention(q, k, v, spec, tile=(2, 2, 2), chunks=3)
        misses = TILING_CACHE.misses
        for _ in range(3):
            blocked_attention(q, k, v, spec, tile=(2, 2, 2), chunks=3)
    assert TILING_CACHE.misses == misses  # tiling and additive masks come from the cache every time
    tiling = get_tiling(spec, spatial, (2, 2, 2), q.device)
    assert tiling.k_index.dtype == torch.int32 and tiling.q_index.dtype == torch.int64
    assert len(tiling.segments) > 1  # causal axis: first / later tiles differ


def test_inference_memory_stays_near_the_output_size():
    """16^3 tokens, kernel 7, 4 heads of 32: the (N, N) boolean mask alone would be 16 MiB and its float copy
    64 MiB; the blocked forward needs its 2 MiB output plus a few MiB (one piece of tiles, cached tables)."""
    from neuroattn.bench.measure import PeakMemory

    clear_caches()
    spatial, spec = (16, 16, 16), Neighborhood(7)
    q, k, v = qkv((1, 4, *spatial, 32), dtype=torch.float32, seed=14)
    output_bytes = q.numel() * 4
    with torch.no_grad():
        attend(q, k, v, spec, backend="blocked")  # builds the cached tables
        cached = TILING_CACHE.total_bytes
        with PeakMemory(q.device) as mem:
            attend(q, k, v, spec, backend="blocked")
    assert cached < 1 << 20
    if mem.peak_bytes is None:
        pytest.skip("no resident-set high-water mark on this system")
    bool_mask_bytes = math.prod(spatial) ** 2
    assert mem.peak_bytes + cached < output_bytes + (6 << 20) <= bool_mask_bytes // 2


def test_band_halo_keeps_kernel_sized_windows_at_random_sizes():
    rng = np.random.default_rng(7)
    for _ in range(6):
        spatial = tuple(int(s) for s in rng.integers(7, 13, size=3))
        spec = Neighborhood(tuple(int(k) for k in rng.choice([3, 5, 7], size=3)))
        q, k, v = qkv((1, 2, *spatial, 4), seed=int(rng.integers(1000)))
        with torch.no_grad():
            out = attend(q, k, v, spec, backend="blocked")
        assert rel_err(out, attend(q, k, v, spec, backend="reference")) < F64_TOL
