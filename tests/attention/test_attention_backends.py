"""Every spec x CPU backend against the float64 reference: forward and q/k/v gradients, float64 and float32."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from attention_helpers import qkv, rel_err

from neuroattn.attention import (
    Axial,
    Dense,
    Linear,
    Neighborhood,
    NeuroattnAttentionWarning,
    Window,
    attend,
    available_backends,
)
from neuroattn.attention.blocked import blocked_attention, build_tiling, choose_tile, tiling_shape
from neuroattn.attention.registry import REGISTRY, Backend

F32_TOL = 1e-5  # float32 vs float64 reference, relative
F64_TOL = 1e-12


def _random_neighborhood(rng: np.random.Generator, rank: int):
    """A random valid neighborhood on a random small grid (kernel odd unless causal, kernel*dilation <= axis)."""
    spatial, kernels, dilations, causals = [], [], [], []
    for _ in range(rank):
        causal = bool(rng.random() < 0.3)
        kernel = int(rng.integers(2, 5)) if causal else int(rng.choice([3, 5]))
        dilation = int(rng.choice([1, 1, 2, 3] if rank < 3 else [1, 1, 2]))
        spatial.append(int(rng.integers(kernel * dilation, kernel * dilation + 4)))
        kernels.append(kernel)
        dilations.append(dilation)
        causals.append(causal)
    return tuple(spatial), Neighborhood(tuple(kernels), dilation=tuple(dilations), causal=tuple(causals))


def _cases():
    rng = np.random.default_rng(2024)
    cases = []
    for rank in (1, 1, 2, 2, 2, 3, 3):
        cases.append(_random_neighborhood(rng, rank))
    cases += [
        ((12,), Window(4, 1)),
        ((6, 8), Window((3, 4), (1, 2))),
        ((4, 4, 4), Window(2, 1)),
        ((4, 2, 2, 4), Window(2, 1)),  # 4-D space-time windows
        ((20,), Dense()),
        ((4, 5), Dense(causal=True)),
        ((3, 4, 5), Axial()),
        ((6, 7), Axial()),
        ((30,), Linear()),
        ((4, 5, 3), Linear()),
    ]
    params = []
    for i, (spatial, spec) in enumerate(cases):
        for backend in ("sdpa", "blocked", "flex", "linear"):
            if isinstance(spec, REGISTRY[Backend(backend)].specs):
                params.append(pytest.param(spatial, spec, backend, i, id=f"{backend}-{spec}-{spatial}"))
    return params


CASES = _cases()


def _heads(case_index: int) -> tuple[int, int, int]:
    """(batch, heads, kv_heads) varied over cases, some with grouped-query heads."""
    return [(1, 1, 1), (2, 2, 2), (1, 4, 2), (2, 3, 1)][case_index % 4]


def _run(q, k, v, spec, backend, grad_out):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NeuroattnAttentionWarning)  # the requested backend must serve the call
        out = attend(q, k, v, spec, backend=backend)
    if grad_out is None:
        return out, None
    return out, torch.autograd.grad(out, (q, k, v), grad_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("spatial", "spec", "backend", "index"), CASES)
def test_backend_matches_reference(spatial, spec, backend, index, dtype):
    batch, heads, kv_heads = _heads(index)
    head_dim, value_dim = 8, [8, 5][index % 2]
    with_grad = backend != "flex"  # FlexAttention has no backward on the CPU (see test below)
    q, k, v = qkv(
        (batch, heads, *spatial, head_dim),
        (batch, kv_heads, *spatial, head_dim),
        value_dim,
        seed=index,
        requires_grad=with_grad,
    )
    grad_out = (
        torch.randn(
            batch, heads, *spatial, value_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + index)
        )
        if with_grad
        else None
    )
    ref, ref_grads = _run(q, k, v, spec, "reference", grad_out)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    qc, kc, vc = (x.detach().to(dtype).requires_grad_(with_grad) for x in (q, k, v))
    out, grads = _run(qc, kc, vc, spec, backend, None if grad_out is None else grad_out.to(dtype))
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel_err(out, ref) <= tol
    if with_grad:
        for name, g, g_ref in zip("qkv", grads, ref_grads, strict=True):
            assert rel_err(g, g_ref) <= tol, f"d{name}"


def test_flex_without_cpu_backward_falls_back_with_warning():
    q, k, v = qkv((1, 2, 9, 8), requires_grad=True)
    with pytest.warns(NeuroattnAttentionWarning, match="'flex' cannot serve .* no backward pass on cpu"):
        out = attend(q, k, v, Neighborhood(3), backend="flex")
    out.sum().backward()
    ref = attend(q.detach(), k.detach(), v.detach(), Neighborhood(3), backend="reference")
    assert rel_err(out, ref) < F64_TOL and q.grad is not None


@pytest.mark.parametrize(
    ("backend", "spec", "match"),
    [
        ("natten", Neighborhood(3), "'natten' cannot serve .*cuda only"),
        ("blocked", Dense(), "'blocked' cannot serve Dense"),
        ("linear", Window(3), "'linear' cannot serve Window"),
        ("sdpa", Linear(), "'sdpa' cannot serve Linear"),
    ],
)
def test_unservable_requests_fall_back_with_a_warning_and_stay_correct(backend, spec, match):
    q, k, v = qkv((1, 2, 9, 8), seed=3)
    with pytest.warns(NeuroattnAttentionWarning, match=match):
        out = attend(q, k, v, spec, backend=backend)
    assert rel_err(out, attend(q, k, v, spec, backend="reference")) < F64_TOL


def test_flex_refuses_padding_mask_and_falls_back():
    q, k, v = qkv((2, 1, 6, 8), seed=4)
    keep = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with pytest.warns(NeuroattnAttentionWarning, match="key_padding_mask"):
        out = attend(q, k, v, Dense(), backend="flex", key_padding_mask=keep)
    ref = attend(q, k, v, Dense(), backend="reference", key_padding_mask=keep)
    assert rel_err(out, ref) < F64_TOL


@pytest.mark.parametrize("spec", [Neighborhood((3, 5), dilation=(2, 1)), Window((2, 4), (1, 3))], ids=str)
def test_blocked_chunks_recompute_gives_same_values_and_gradients(spec):
    q, k, v = qkv((2, 2, 8, 8, 4), requires_grad=True, seed=5)
    out1 = blocked_attention(q, k, v, spec, chunks=1)
    grads1 = torch.autograd.grad(out1.square().sum(), (q, k, v))
    out5 = blocked_attention(q, k, v, spec, chunks=5)
    grads5 = torch.autograd.grad(out5.square().sum(), (q, k, v))
    assert rel_err(out5, out1) < F64_TOL
    for g5, g1 in zip(grads5, grads1, strict=True):
        assert rel_err(g5, g1) < F64_TOL


@pytest.mark.parametrize("tile", [None, (1, 1), (2, 3), (4, 4), (9, 9)])
def test_blocked_tiling_is_exact_for_any_tile(tile):
    spec = Neighborhood((3, 5), dilation=(2, 1), causal=(False, True))
    spatial = (9, 10)
    tiling = build_tiling(spec, spatial, tile)
    assert (tiling.n_tiles, tiling.tile_q, tiling.tile_k) == tiling_shape(spec, spatial, tile)
    # every token's output slot holds that very token
    assert torch.equal(tiling.q_index[tiling.inverse], torch.arange(90))
    q, k, v = qkv((1, 2, *spatial, 4), seed=6)
    out = blocked_attention(q, k, v, spec, tile=tile)
    assert rel_err(out, attend(q, k, v, spec, backend="reference")) < F64_TOL


def test_tiles_share_few_masks_and_tile_choice_is_sane():
    spec, spatial = Neighborhood(7), (32, 32, 32)
    tile = choose_tile(spec, spatial)
    assert all(1 <= t <= 16 for t in tile)
    tiling = build_tiling(spec, spatial, tile)
    # one small mask per class of tiles (first, interior, last along each axis), not one per tile
    assert len(tiling.segments) <= 3**3 < tiling.n_tiles
    assert sum(end - start for start, end, _ in tiling.segments) == tiling.n_tiles
    # the chosen tile scores far fewer keys per query than dense attention
    assert tiling.tile_k < math.prod(spatial) / 3
    assert choose_tile(Window(4, 2), (8, 8)) == (4, 4)
    unshifted = build_tiling(Window(4), (8, 8), None)
    assert [mask for _, _, mask in unshifted.segments] == [None]  # no mask at all: plain (flash) SDPA


def test_half_precision_runs_close_to_reference():
    q, k, v = qkv((1, 2, 6, 6, 16), seed=7)
    ref = attend(q, k, v, Neighborhood(3), backend="reference")
    for backend in ("sdpa", "blocked"):
        out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), Neighborhood(3), backend=backend)
        assert out.dtype == torch.bfloat16
        assert rel_err(out, ref) < 2e-2  # bf16 keeps 8 mantissa bits


def test_available_backends_reports_reasons_with_install_hints():
    report = available_backends("cpu")
    assert set(report) == {b.value for b in Backend if b != Backend.AUTO}
    assert report["reference"] == report["sdpa"] == report["blocked"] == report["linear"] == "available"
    assert "cuda only" in report["natten"]
    if report["natten"].count("not importable"):
        assert "pip install natten" in report["natten"]


def test_natten_mapping_uses_heads_last_layout_and_spec_arguments(monkeypatch):
    """A stand-in ``natten`` module (same signature, heads-last layout) checks the argument/layout plumbing."""
    import sys
    import types

    from neuroattn.attention import natten_backend

    calls = []

    def fake_na2d(query, key, value, kernel_size, dilation, is_causal, scale):
        calls.append((tuple(query.shape), kernel_size, dilation, is_causal, scale))
        spec = Neighborhood(kernel_size, dilation=dilation, causal=is_causal)
        # heads-last (B, X, Y, h, d) -> heads-first for the reference and back
        out = attend(
            query.movedim(-2, 1), key.movedim(-2, 1), value.movedim(-2, 1), spec, backend="reference", scale=scale
        )
        return out.movedim(1, -2)

    monkeypatch.setitem(sys.modules, "natten", types.SimpleNamespace(na2d=fake_na2d))
    spec = Neighborhood((3, 5), dilation=(2, 1), causal=(True, False))
    q, _, _ = qkv((2, 4, 7, 6, 8), seed=8)
    _, k, v = qkv((2, 2, 7, 6, 8), seed=9)
    out = natten_backend.natten_attention(q, k, v, spec, scale=0.3)
    assert calls == [((2, 7, 6, 4, 8), (3, 5), (2, 1), (True, False), 0.3)]
    assert rel_err(out, attend(q, k, v, spec, backend="reference", scale=0.3)) < F64_TOL


@pytest.mark.skipif(
    not bool(int(__import__("os").environ.get("NEUROATTN_TEST_FLEX_COMPILE", "0"))),
    reason="compiling flex_attention on a CPU takes ~15 s per shape; set NEUROATTN_TEST_FLEX_COMPILE=1 to run",
)
def test_compiled_flex_matches_reference():
    from neuroattn.attention.flex_backend import set_flex_compile

    set_flex_compile(True)
    q, k, v = qkv((1, 2, 6, 6, 16), dtype=torch.float32, seed=10)
    with torch.no_grad():
        out = attend(q, k, v, Neighborhood(3, dilation=2), backend="flex")
        ref = attend(q, k, v, Neighborhood(3, dilation=2), backend="reference")
    assert rel_err(out, ref) <= F32_TOL
