"""Memory planning, the budget refusal, backend switching and the logged choice."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from attention_helpers import qkv, rel_err

from neuroattn.attention import (
    AttentionMemoryError,
    Axial,
    Backend,
    Dense,
    Linear,
    Neighborhood,
    Window,
    attend,
    clear_caches,
    get_default_backend,
    memory_budget,
    plan_attention,
    set_default_backend,
    use_backend,
)
from neuroattn.attention import masks as masks_module
from neuroattn.attention.planner import BUDGET_ENV
from neuroattn.errors import NeuroattnError

GIB = 1 << 30


def test_huge_dense_request_raises_before_allocating():
    # meta tensors have shapes but no storage: nothing can be allocated, so only the planner can refuse
    q = torch.empty(1, 8, 1 << 18, 64, device="meta")
    with pytest.raises(AttentionMemoryError) as info:
        attend(q, q, q, Dense(), backend="reference", memory_budget_bytes=8 * GIB)
    err = info.value
    assert isinstance(err, NeuroattnError) and isinstance(err, MemoryError)
    message = str(err)
    assert "262,144 tokens" in message and "GiB" in message and "budget" in message
    assert "Neighborhood" in message  # the suggestion
    # the estimate is at least the float64 score matrix itself: 8 heads x N^2 x 8 bytes
    assert err.estimated_bytes >= 8 * (1 << 36) * 8 and err.budget_bytes == 8 * GIB


def test_env_budget_refuses_mask_based_sdpa_without_building_the_mask(monkeypatch):
    clear_caches()
    monkeypatch.setenv(BUDGET_ENV, "0.001")  # 1 MiB
    built = []
    monkeypatch.setattr(masks_module, "combine_axis_masks", lambda m: built.append(m))
    q, k, v = qkv((1, 1, 32, 32, 8), dtype=torch.float32)  # (N, N) mask alone = 1 MiB
    with pytest.raises(AttentionMemoryError, match=r"1,024 tokens .* 'sdpa' backend .*boolean mask"):
        attend(q, k, v, Neighborhood(3), backend="sdpa")
    assert built == [] and len(masks_module.MASK_CACHE) == 0
    # the blocked backend fits the same budget: O(N * halo), not O(N^2)
    out = attend(q, k, v, Neighborhood(3), backend="blocked")
    assert rel_err(out, attend(q, k, v, Neighborhood(3), backend="reference", memory_budget_bytes=GIB)) < 1e-5


def test_plan_predicts_dense_mask_and_blocked_memory():
    spatial, spec = (32, 32, 32), Neighborhood(7)
    n = math.prod(spatial)
    dense = plan_attention(spatial, spec, backend="sdpa", heads=4, head_dim=32, memory_budget_bytes=4 * GIB)
    blocked = plan_attention(spatial, spec, heads=4, head_dim=32, memory_budget_bytes=4 * GIB)
    assert dense.backend == "sdpa" and blocked.backend == "blocked"
    assert dense.estimated_peak_bytes >= n * n  # the (N, N) boolean mask
    assert blocked.tile is not None and blocked.chunks >= 1
    assert blocked.estimated_peak_bytes * 10 < dense.estimated_peak_bytes
    assert blocked.fits and blocked.budget_bytes == 4 * GIB
    assert "Neighborhood" in blocked.reason or "blocked" in blocked.reason


def test_blocked_plan_chunks_to_fit_a_tight_budget():
    spatial, spec = (24, 24, 24), Neighborhood(5)
    loose = plan_attention(spatial, spec, heads=4, head_dim=32, memory_budget_bytes=64 * GIB, backward=True)
    assert loose.chunks == 1  # training runs all tiles at once unless the budget says otherwise
    tight = plan_attention(
        spatial, spec, heads=4, head_dim=32, backward=True, memory_budget_bytes=int(loose.estimated_peak_bytes * 0.8)
    )
    assert tight.chunks > 1 and tight.fits
    impossible = plan_attention(spatial, spec, heads=4, head_dim=32, memory_budget_bytes=1 << 20)
    assert not impossible.fits


def test_plan_backward_costs_more_than_forward():
    fwd = plan_attention((64, 64), Window(8), heads=2, head_dim=16)
    bwd = plan_attention((64, 64), Window(8), heads=2, head_dim=16, backward=True)
    assert bwd.estimated_peak_bytes > fwd.estimated_peak_bytes


def test_memory_budget_sources(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "2.5")
    assert memory_budget("cpu") == int(2.5 * GIB)
    assert memory_budget("cpu", override=123) == 123
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=BUDGET_ENV):
        memory_budget("cpu")
    monkeypatch.delenv(BUDGET_ENV)
    budget = memory_budget("cpu")
    assert budget is None or 0 < budget < 1 << 50


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(Dense(), "sdpa"), (Neighborhood(3), "blocked"), (Window(4), "blocked"), (Axial(), "sdpa"), (Linear(), "linear")],
)
def test_auto_choice_on_cpu(spec, expected):
    assert plan_attention((8, 8), spec).backend == expected


def test_use_backend_and_default_switch_the_auto_choice(caplog):
    q, k, v = qkv((1, 1, 6, 4), seed=1)
    clear_caches()
    assert get_default_backend() == Backend.AUTO
    with caplog.at_level(logging.INFO, logger="neuroattn.attention"):
        with use_backend("reference"):
            assert get_default_backend() == Backend.REFERENCE
            attend(q, k, v, Dense())
            with use_backend("sdpa"):
                attend(q, k, v, Dense(causal=True))
        attend(q, k, v, Window(3))
    messages = [r.getMessage() for r in caplog.records]
    assert any("backend 'reference'" in m and "requested" in m for m in messages)
    assert any("Dense(causal=True)" in m and "backend 'sdpa'" in m for m in messages)
    assert any("Window" in m and "backend 'blocked'" in m and "windows are independent" in m for m in messages)
    assert get_default_backend() == Backend.AUTO
    try:
        set_default_backend("reference")
        assert plan_attention((8,), Neighborhood(3)).backend == "reference"
        assert plan_attention((8,), Neighborhood(3), backend="blocked").backend == "blocked"
    finally:
        set_default_backend("auto")
    with pytest.raises(ValueError, match="must be one of"):
        set_default_backend("fastest")
