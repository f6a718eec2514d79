"""The fMRI efficiency benchmark: exact CPU memory accounting, the T search, targets and a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from neuroattn.bench.fmri_efficiency import (
    BASELINE,
    MODELS,
    add_baseline_ratios,
    evaluate_targets,
    measure_tokenizer,
    run_fmri_efficiency,
    search_largest,
    step_memory_and_time,
    tiny_preset,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROW_KEYS = {
    "model", "frames", "volume", "batch", "tokens", "params_M", "peak_MB", "activation_MB", "state_MB", "step_ms",
    "vs_baseline", "activation_vs_baseline", "memory_method", "status",
}  # fmt: skip
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fmri_eff")
    doc = run_fmri_efficiency(out, "tiny", "cpu", repeats=1, progress=False, echo=False)
    return out, doc


def test_cpu_accounting_matches_closed_form() -> None:
    """x (N, 5) → Linear(5, 7) → GELU → Linear(7, 3) → pow → mean: autograd keeps the GELU input, the second
    linear's input and the pow input (float32), i.e. N (7 + 7 + 3) x 4 bytes; AdamW state is 4 x parameter bytes."""
    torch.manual_seed(0)
    n = 11
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.GELU(), nn.Linear(7, 3, bias=False))
    x = torch.randn(n, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cost = step_memory_and_time(lambda: model(x).pow(2).mean(), opt, inputs=(x,), repeats=2)
    assert cost.method == "cpu-accounting"
    assert cost.activation_bytes == n * (7 + 7 + 3) * 4
    assert cost.state_bytes == (5 * 7 + 7 * 3) * 4 * 4  # weights, gradients, two moments
    assert cost.input_bytes == n * 5 * 4
    assert cost.peak_bytes == cost.activation_bytes + cost.state_bytes + cost.input_bytes
    assert cost.step_ms is not None and cost.step_ms > 0

    before = [p.detach().clone() for p in model.parameters()]
    probe = step_memory_and_time(lambda: model(x).pow(2).mean(), opt, inputs=(x,), memory_only=True)
    assert probe.peak_bytes == cost.peak_bytes and probe.step_ms is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # no update


@pytest.mark.parametrize("step", [1, 4, 8])
def test_search_largest_is_exact_against_brute_force(step: int) -> None:
    for limit in range(0, 140, 3):
        calls: list[int] = []

        def fits(t: int, limit: int = limit, calls: list[int] = calls) -> bool:
            calls.append(t)
            return t <= limit

        largest, capped = search_largest(fits, start=16, step=step, cap=128)
        want = min(128 // step * step, limit // step * step)
        assert largest == want, (limit, step)
        assert capped == (limit >= 128 // step * step)
        assert all(t % step == 0 and t <= 128 for t in calls)
        assert len(calls) <= 16  # doubling + bisection, not a scan


def test_search_largest_stops_at_resolution() -> None:
    largest, capped = search_largest(lambda t: t <= 100, start=8, step=1, cap=1000, resolution=10)
    assert 90 < largest <= 100 and not capped


def _row(model: str, frames: int, peak: float) -> dict:
    return {"model": model, "frames": frames, "peak_MB": peak, "status": "ok", "vs_baseline": None}


def test_targets_met_and_missed_with_shortfall() -> None:
    rows = [_row(BASELINE, 8, 100.0), _row(BASELINE, 16, 200.0), _row("tablet", 16, 60.0), _row("tablet", 8, 50.0),
            _row("slim_brain_drop", 16, 100.0)]  # fmt: skip
    add_baseline_ratios(rows)
    assert [r["vs_baseline"] for r in rows] == [1.0, 1.0, 0.3, 0.5, 0.5]
    capacity = {"tablet": {"largest_frames": 176, "x_reference": 11.0, "capped": False},
                "slim_brain_drop": {"largest_frames": 32, "x_reference": 2.0, "capped": False}}  # fmt: skip
    t = evaluate_targets(rows, capacity, reference_frames=16)
    assert t["tablet_peak_vs_baseline"]["met"] and t["tablet_peak_vs_baseline"]["ratio"] == 0.3
    assert t["tablet_peak_vs_baseline"]["ratio_by_frames"] == {"8": 0.5, "16": 0.3}
    slim = t["slim_brain_drop_peak_vs_baseline"]
    assert slim["met"] is False and slim["missed_by"].startswith("10.0 percentage points")
    assert "20.0% less" in slim["missed_by"]  # 0.4 / 0.5 of its memory
    assert t["slim_brain_peak_vs_baseline"]["met"] is None  # never measured
    assert t["tablet_frames_in_baseline_memory"]["met"] is True
    assert t["slim_brain_drop_frames_in_baseline_memory"]["met"] is False
    assert "32 fit" in t["slim_brain_drop_frames_in_baseline_memory"]["missed_by"]


def test_tiny_run_rows_and_json(tiny_doc) -> None:
    out, doc = tiny_doc
    assert json.loads((out / "fmri-efficiency-cpu.json").read_text()) == json.loads(json.dumps(doc))
    rows = doc["rows"]
    assert {(r["model"], r["frames"]) for r in rows} == {(m, t) for m in MODELS for t in tiny_preset().frames}
    for r in rows:
        assert set(r) >= ROW_KEYS, r
        assert r["status"] == "ok", r
        assert r["memory_method"] == "cpu-accounting" and r["step_ms"] > 0
        assert r["peak_MB"] == pytest.approx(r["activation_MB"] + r["state_MB"] + r["input_MB"], abs=0.02)
    assert set(doc["targets"]) >= {"tablet_peak_vs_baseline", "slim_brain_drop_peak_vs_baseline",
                                   "tablet_frames_in_baseline_memory"}  # fmt: skip
    assert all(isinstance(t["met"], bool) for t in doc["targets"].values())
    assert doc["scaling"][BASELINE]["frames"] == [4, 8]
    base = {r["frames"]: r for r in rows if r["model"] == BASELINE}
    for r in rows:
        assert r["vs_baseline"] == pytest.approx(r["peak_MB"] / base[r["frames"]]["peak_MB"], abs=1e-4)
        assert r["activation_vs_baseline"] == pytest.approx(
            r["activation_MB"] / base[r["frames"]]["activation_MB"], abs=1e-4
        )


def test_baseline_memory_grows_linearly_with_frames(tiny_doc) -> None:
    """Window attention keeps O(tokens) activations: twice the frames, twice the activations (and a higher peak)."""
    rows = {r["frames"]: r for r in tiny_doc[1]["rows"] if r["model"] == BASELINE}
    assert rows[8]["peak_MB"] > rows[4]["peak_MB"]
    assert 1.9 <= rows[8]["activation_MB"] / rows[4]["activation_MB"] <= 2.1
    assert 0.95 <= tiny_doc[1]["scaling"][BASELINE]["activation_exponent"] <= 1.05


def test_unit_dropping_saves_memory_in_proportion(tiny_doc) -> None:
    """Dropping mask units shrinks every tensor after the gather to the kept share; only the patch embedding
    of the full window stays, so the activation ratio sits just above kept / units."""
    rows = {(r["model"], r["frames"]): r for r in tiny_doc[1]["rows"]}
    for frames in tiny_preset().frames:
        full, drop = rows[("slim_brain", frames)], rows[("slim_brain_drop", frames)]
        kept = drop["units_kept"] / drop["units"]
        assert drop["units"] == full["units"] and drop["units_kept"] < drop["units"]
        assert drop["peak_MB"] < full["peak_MB"]
        assert kept <= drop["activation_MB"] / full["activation_MB"] <= kept + 0.1


def test_capacity_search_brackets_the_budget(tiny_doc) -> None:
    caps = tiny_doc[1]["capacity"]
    assert set(caps) == set(MODELS) - {BASELINE}
    for cap in caps.values():
        probes = {int(t): peak for t, peak in cap["probes_bytes"].items()}
        fitting = [t for t, peak in probes.items() if isinstance(peak, int) and peak <= cap["budget_bytes"]]
        assert max(fitting, default=0) == cap["largest_frames"]
        if not cap["capped"]:
            over = min(t for t in probes if t not in fitting)
            assert cap["largest_frames"] < over <= cap["largest_frames"] + cap["resolution_frames"]
    assert caps["tablet"]["largest_frames"] > caps["slim_brain"]["largest_frames"]


def test_cli_writes_json(tmp_path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_fmri_efficiency.py"), "--out", str(tmp_path),
           "--preset", "tiny", "--models", "tablet", "--frames", "4", "--repeats", "1", "--no-capacity",
           "--threads", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "fmri-efficiency-cpu.json").read_text())
    assert [(r["model"], r["frames"], r["status"]) for r in doc["rows"]] == [("swift", 4, "ok"), ("tablet", 4, "ok")]
    assert "tablet_peak_vs_baseline" in proc.stdout.replace("[target] ", "")


def test_tokenizer_timing_shape() -> None:
    pytest.importorskip("diffusers")
    pytest.importorskip("monai")
    out = measure_tokenizer(tiny_preset())
    assert out["status"] == "ok" and out["ms_per_frame"] > 0
    assert out["tokens_shape"] == [4, 2**3, 3 * 8 * 4]  # T, (16 / f)³ cells, 3 axes x f slices x c channels
    assert out["peak_MB"] is None  # CPU: no allocator statistics
