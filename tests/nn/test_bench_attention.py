"""The attention benchmark's quick mode writes a complete table, ratios and plot; its memory probe sees allocations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neuroattn.bench.attention import (
    Case,
    compute_ratios,
    executed_flops,
    run_attention_benchmark,
    useful_flops,
)
from neuroattn.bench.measure import PeakMemory

ROW_KEYS = {
    "pattern", "rank", "tokens", "shape", "backend", "dtype", "fwd_ms", "fwdbwd_ms", "peak_mem_MB", "status",
}  # fmt: skip


def test_quick_benchmark_schema(tmp_path) -> None:
    patterns = ["dense", "neighborhood", "linear"]  # window and axial run the same code path
    rows = run_attention_benchmark(tmp_path, quick=True, patterns=patterns, progress=False, echo=False)
    doc = json.loads((tmp_path / "attention.json").read_text())
    assert doc["rows"] == rows and doc["benchmark"] == "attention"
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["rank"] for r in rows} == {1, 2, 3}
    for r in rows:
        assert set(r) >= ROW_KEYS, r
        assert r["tokens"] == math.prod(int(s) for s in r["shape"].split("x"))
        assert r["status"] == "ok" or r["status"].startswith(("skipped: ", "oom-predicted")), r
        if r["status"] == "ok":
            assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["peak_mem_MB"] is not None
    ok = {(r["pattern"], r["backend"]) for r in rows if r["status"] == "ok"}
    assert {("dense", "sdpa"), ("neighborhood", "sdpa"), ("neighborhood", "blocked"), ("linear", "linear")} <= ok
    assert "fwd_speedup" in doc["ratios"]["neighborhood_k7_8x8x8_blocked"]


def test_tiny_budget_marks_dense_oom_predicted(tmp_path) -> None:
    rows = run_attention_benchmark(
        tmp_path, quick=True, patterns=["dense"], memory_budget_bytes=1 << 10, progress=False, echo=False
    )
    assert rows and all(r["status"] == "oom-predicted" and r["fwd_ms"] is None for r in rows)


def test_ratios_from_planted_rows() -> None:
    def row(backend: str, shape: str, fwd: float, mem: float, status: str = "ok") -> dict:
        return {"pattern": "neighborhood", "rank": 3, "shape": shape, "backend": backend, "fwd_ms": fwd,
                "peak_mem_MB": mem, "peak_mem_fwdbwd_MB": mem and 2 * mem, "status": status}  # fmt: skip

    rows = [
        row("sdpa", "16x16x16", 120.0, 300.0),
        row("blocked", "16x16x16", 30.0, 20.0),
        row("sdpa", "32x32x32", None, None, "oom-predicted"),
        row("blocked", "32x32x32", 250.0, 150.0),
    ]
    ratios = compute_ratios(rows, budget=4 << 30)
    assert ratios["neighborhood_k7_16x16x16_blocked"]["fwd_speedup"] == 4.0
    assert ratios["neighborhood_k7_16x16x16_blocked"]["peak_mem_ratio"] == 15.0
    assert ratios["target_16^3"]["met"] is True
    assert ratios["target_32^3"]["blocked_within_budget"] is True
    assert ratios["target_32^3"]["dense_statuses"] == {"neighborhood/sdpa": "oom-predicted"}


def test_flop_counts() -> None:
    case = Case("neighborhood", (16, 16, 16), "blocked", batch=2, heads=4, head_dim=32)
    assert useful_flops(case) == 4 * 2 * 4 * 4096 * 343 * 32
    masked = Case("neighborhood", (16, 16, 16), "sdpa", batch=2, heads=4, head_dim=32)
    assert executed_flops(masked) == 4 * 2 * 4 * 4096 * 4096 * 32


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_probe_sees_a_200_mb_allocation() -> None:
    with PeakMemory(torch.device("cpu")) as probe:
        block = torch.ones(50_000_000)  # 200 MB, touched
        del block
    assert 190 <= probe.peak_bytes / 1e6 <= 260
    with PeakMemory(torch.device("cpu")) as idle:
        pass
    assert idle.peak_bytes / 1e6 < 20
