"""Pattern semantics, on every CPU backend: NATTEN borders/dilation/causality by hand, and exact identities."""

from __future__ import annotations

import math

import pytest
import torch
from attention_helpers import masked_attention64, qkv, rel_err

from neuroattn.attention import Axial, Dense, Linear, Neighborhood, Window, attend
from neuroattn.attention.masks import neighborhood_keys_1d
from neuroattn.attention.registry import REGISTRY, Backend

LOCAL_BACKENDS = ["reference", "sdpa", "blocked", "flex"]
F64 = 1e-12  # float64 agreement (relative)


def visible_keys(spec, spatial, backend):
    """Which keys each query sees, read off the output: zero queries spread weight evenly over visible keys."""
    n = math.prod(spatial)
    q = torch.zeros(1, 1, *spatial, 4, dtype=torch.float64)
    k = torch.randn(1, 1, *spatial, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.eye(n, dtype=torch.float64).reshape(1, 1, *spatial, n)  # value of key j = one-hot j
    with torch.no_grad():
        out = attend(q, k, v, spec, backend=backend).reshape(n, n)
    sets = [sorted(torch.nonzero(row > 1e-9).flatten().tolist()) for row in out]
    for row, keys in zip(out, sets, strict=True):  # uniform weights over exactly those keys
        assert torch.allclose(row[keys], torch.full((len(keys),), 1.0 / len(keys), dtype=torch.float64))
    return sets


# hand-computed neighborhoods (NATTEN: window shifted at borders; dilation groups = index mod d)
HAND_CASES = [
    (7, 3, 1, False, [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [4, 5, 6]]),
    (
        10,
        3,
        3,
        False,
        [[0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [3, 6, 9], [1, 4, 7], [2, 5, 8], [3, 6, 9]],
    ),
    (
        9,
        5,
        1,
        False,
        [[0, 1, 2, 3, 4]] * 3 + [[1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [3, 4, 5, 6, 7]] + [[4, 5, 6, 7, 8]] * 3,
    ),
    (5, 3, 1, True, [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]),
    (6, 3, 2, True, [[0], [1], [0, 2], [1, 3], [0, 2, 4], [1, 3, 5]]),
    (6, 2, 1, True, [[0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]),
]


@pytest.mark.parametrize(("length", "kernel", "dilation", "causal", "expected"), HAND_CASES)
def test_natten_neighborhoods_by_hand(length, kernel, dilation, causal, expected):
    assert neighborhood_keys_1d(length, kernel, dilation, causal) == expected
    spec = Neighborhood(kernel, dilation=dilation, causal=causal)
    for backend in LOCAL_BACKENDS:
        assert visible_keys(spec, (length,), backend) == expected, backend


def test_neighborhood_2d_is_product_of_axes():
    spec = Neighborhood((3, 5), dilation=(2, 1), causal=(True, False))
    rows = neighborhood_keys_1d(7, 3, 2, True)
    cols = neighborhood_keys_1d(6, 5, 1, False)
    expected = [sorted(r * 6 + c for r in rows[i] for c in cols[j]) for i in range(7) for j in range(6)]
    for backend in LOCAL_BACKENDS:
        assert visible_keys(spec, (7, 6), backend) == expected, backend


def test_every_noncausal_query_sees_exactly_kernel_keys():
    for backend in ("blocked", "flex"):
        sets = visible_keys(Neighborhood((3, 5), dilation=(2, 1)), (9, 7), backend)
        assert {len(s) for s in sets} == {15}


@pytest.mark.parametrize("backend", ["sdpa", "blocked", "flex"])
@pytest.mark.parametrize(("spatial", "kernel"), [((9,), 9), ((5, 7), (5, 7)), ((3, 5, 3), (3, 5, 3))])
def test_full_kernel_equals_dense(backend, spatial, kernel):
    q, k, v = qkv((2, 3, *spatial, 8))
    with torch.no_grad():
        out = attend(q, k, v, Neighborhood(kernel), backend=backend)
        dense = attend(q, k, v, Dense(), backend="reference")
    assert rel_err(out, dense) < F64


@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
@pytest.mark.parametrize(("spatial", "size"), [((12,), 4), ((4, 6), (2, 3)), ((4, 4, 2), 2), ((4, 2, 2, 4), 2)])
def test_unshifted_window_equals_block_diagonal_dense(backend, spatial, size):
    q, k, v = qkv((1, 2, *spatial, 8), seed=3)
    sizes = size if isinstance(size, tuple) else (size,) * len(spatial)
    grids = torch.meshgrid(*[torch.arange(n) for n in spatial], indexing="ij")
    coords = torch.stack(grids, -1).reshape(-1, len(spatial))  # (N, n_axes)
    window_id = coords // torch.tensor(sizes)  # (N, n_axes)
    block_diag = (window_id[:, None, :] == window_id[None, :, :]).all(-1)  # (N, N)
    expected = masked_attention64(q.flatten(2, -2), k.flatten(2, -2), v.flatten(2, -2), block_diag)
    with torch.no_grad():
        out = attend(q, k, v, Window(size), backend=backend)
    assert rel_err(out.flatten(2, -2), expected) < F64


def swin_shifted_window(q, k, v, size, shift):
    """Swin's procedure: roll by -shift, label regions, attend per window with the region mask, roll back."""
    spatial = q.shape[2:-1]
    axes = tuple(range(2, 2 + len(spatial)))
    q, k, v = (torch.roll(x, shifts=[-shift] * len(spatial), dims=axes) for x in (q, k, v))
    labels = torch.zeros(spatial, dtype=torch.long)
    for a, n in enumerate(spatial):
        region = torch.zeros(n, dtype=torch.long)
        region[n - size : n - shift] = 1
        region[n - shift :] = 2
        labels = labels * 3 + region.reshape([-1 if i == a else 1 for i in range(len(spatial))])
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for start in torch.cartesian_prod(*[torch.arange(0, n, size) for n in spatial]).reshape(-1, len(spatial)):
        index = tuple(slice(int(s), int(s) + size) for s in start)
        sel = (slice(None), slice(None), *index)
        lab = labels[index].reshape(-1)
        mask = lab[:, None] == lab[None, :]
        window = masked_attention64(q[sel].flatten(2, -2), k[sel].flatten(2, -2), v[sel].flatten(2, -2), mask)
        out[sel] = window.reshape(out[sel].shape)
    return torch.roll(out, shifts=[shift] * len(spatial), dims=axes)


@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
@pytest.mark.parametrize(
    ("spatial", "size", "shift"), [((8,), 4, 2), ((6, 6), 3, 1), ((4, 4, 4), 2, 1), ((4, 4, 2, 2), 2, 1)]
)
def test_shifted_window_matches_swin_roll_and_region_mask(backend, spatial, size, shift):
    q, k, v = qkv((1, 2, *spatial, 4), seed=4)
    with torch.no_grad():
        out = attend(q, k, v, Window(size, shift), backend=backend)
    assert rel_err(out, swin_shifted_window(q, k, v, size, shift)) < F64


@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
@pytest.mark.parametrize("kernel", [1, 2, 4, 7])
def test_causal_1d_neighborhood_is_banded_causal_mask(backend, kernel):
    n = 12
    q, k, v = qkv((2, 2, n, 8), seed=kernel)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    band = (i - j >= 0) & (i - j < kernel)
    expected = masked_attention64(q, k, v, band)
    with torch.no_grad():
        out = attend(q, k, v, Neighborhood(kernel, causal=True), backend=backend)
    assert rel_err(out, expected) < F64


def test_axial_is_mean_of_per_axis_full_attention():
    q, k, v = qkv((1, 2, 3, 4, 5, 6), seed=5)
    expected = torch.zeros_like(q)
    for axis in range(3):
        qa, ka, va = (x.movedim(2 + axis, -2) for x in (q, k, v))  # (B, h, *others, L, d)
        scores = (qa @ ka.transpose(-1, -2)) / math.sqrt(6)
        expected += (scores.softmax(-1) @ va).movedim(-2, 2 + axis) / 3
    for backend in ("reference", "sdpa"):
        with torch.no_grad():
            assert rel_err(attend(q, k, v, Axial(), backend=backend), expected) < F64


def test_axial_on_one_axis_is_dense():
    q, k, v = qkv((2, 2, 10, 4), seed=6)
    with torch.no_grad():
        assert rel_err(attend(q, k, v, Axial()), attend(q, k, v, Dense(), backend="reference")) < F64


def test_linear_matches_explicit_formula_and_scale_semantics():
    q, k, v = qkv((2, 2, 9, 4), (2, 2, 7, 4), value_dim=3, seed=7)  # cross-attention: 9 queries, 7 keys
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1 written out  # noqa: E731
    for scale in (None, 0.5):
        qs = q if scale is None else q * scale
        weights = phi(qs) @ phi(k).transpose(-1, -2)  # (B, h, N, M)
        expected = (weights / weights.sum(-1, keepdim=True)) @ v
        for backend in ("reference", "linear"):
            with torch.no_grad():
                assert rel_err(attend(q, k, v, Linear(), backend=backend, scale=scale), expected) < F64


SPECS_FOR_GQA = [Dense(), Dense(causal=True), Neighborhood(3, dilation=(1, 2)), Window(2, 1), Axial(), Linear()]
GQA_CASES = [
    pytest.param(spec, backend, id=f"{backend}-{spec}")
    for spec in SPECS_FOR_GQA
    for backend in ("reference", "sdpa", "blocked", "flex", "linear")
    if isinstance(spec, REGISTRY[Backend(backend)].specs)
]


@pytest.mark.parametrize(("spec", "backend"), GQA_CASES)
def test_grouped_query_attention_equals_repeated_kv_heads(spec, backend):
    q, _, _ = qkv((2, 6, 4, 6, 8), seed=8)
    _, k, v = qkv((2, 2, 4, 6, 8), value_dim=5, seed=9)
    with torch.no_grad():
        grouped = attend(q, k, v, spec, backend=backend)
        repeated = attend(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), spec, backend="reference")
    assert grouped.shape == (2, 6, 4, 6, 5)
    assert rel_err(grouped, repeated) < F64


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask_equals_dropping_padded_keys(backend, causal):
    n = 10
    q, k, v = qkv((3, 2, n, 8), seed=10)
    keep = torch.rand(3, n, generator=torch.Generator().manual_seed(11)) > 0.4
    keep[:, 0] = True
    with torch.no_grad():
        out = attend(q, k, v, Dense(causal=causal), backend=backend, key_padding_mask=keep)
    for b in range(3):
        kept = keep[b].nonzero().flatten()
        if causal:  # query i keeps the kept keys j <= i
            mask = kept[None, :] <= torch.arange(n)[:, None]
            expected = masked_attention64(q[b : b + 1], k[b : b + 1, :, kept], v[b : b + 1, :, kept], mask)
        else:
            expected = masked_attention64(
                q[b : b + 1], k[b : b + 1, :, kept], v[b : b + 1, :, kept], torch.ones(n, len(kept), dtype=torch.bool)
            )
        assert rel_err(out[b : b + 1], expected) < F64


def test_dense_cross_attention_with_spatial_queries():
    q, _, _ = qkv((2, 2, 3, 4, 8), seed=12)
    _, k, v = qkv((2, 2, 7, 8), value_dim=6, seed=13)
    expected = masked_attention64(q.flatten(2, -2), k, v, torch.ones(12, 7, dtype=torch.bool))
    for backend in ("reference", "sdpa", "flex"):
        with torch.no_grad():
            out = attend(q, k, v, Dense(), backend=backend)
        assert out.shape == (2, 2, 3, 4, 6)
        assert rel_err(out.flatten(2, -2), expected) < F64


@pytest.mark.parametrize(
    ("spec", "backend"),
    [
        (Neighborhood(3), "blocked"),
        (Window(2, 1), "blocked"),
        (Neighborhood(3), "sdpa"),
        (Axial(), "sdpa"),
        (Linear(), "linear"),
        (Dense(), "sdpa"),
    ],
    ids=str,
)
def test_non_contiguous_inputs_from_a_fused_projection(spec, backend):
    """q/k/v sliced out of one (B, X, Y, 3, heads, d) projection are strided views; results must not change."""
    fused = torch.randn(2, 4, 6, 3, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    q, k, v = (fused[..., i, :, :].permute(0, 3, 1, 2, 4) for i in range(3))  # (B, heads, X, Y, d) views
    assert not q.is_contiguous()
    with torch.no_grad():
        out = attend(q, k, v, spec, backend=backend)
        ref = attend(q.contiguous(), k.contiguous(), v.contiguous(), spec, backend="reference")
    assert rel_err(out, ref) < F64
