"""Attention benchmark: forward and forward+backward time and peak memory per pattern, grid size and backend."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from neuroattn.attention import (
    Axial,
    Dense,
    Linear,
    Neighborhood,
    Window,
    attend,
    available_backends,
    clear_caches,
    plan_attention,
)
from neuroattn.attention.errors import AttentionMemoryError, NeuroattnAttentionWarning
from neuroattn.bench.measure import PeakMemory, deadline, timed
from neuroattn.io.atomic import atomic_path, atomic_write_text

CPU_BUDGET_BYTES = 4 << 30  # the issue's CPU memory budget for one attention call
CPU_MAX_GFLOP = 600.0  # forward GFLOP above which a CPU case is skipped (32³ dense runs; 48³ would take hours)
KERNEL = 7  # neighborhood kernel per axis
FULL_SHAPES = {
    1: [(4096,), (8192,), (16384,), (32768,), (65536,)],
    2: [(64, 64), (128, 128), (256, 256)],
    3: [(16, 16, 16), (24, 24, 24), (32, 32, 32), (48, 48, 48)],
}
QUICK_SHAPES = {1: [(512,)], 2: [(16, 16)], 3: [(8, 8, 8)]}
PATTERN_BACKENDS = {  # candidate backends per pattern; unavailable ones are reported as skipped
    "dense": ("sdpa",),
    "neighborhood": ("sdpa", "blocked", "flex", "natten"),
    "window": ("blocked", "flex"),
    "axial": ("sdpa",),
    "linear": ("linear",),
}
QUICK_BACKENDS = {
    "dense": ("sdpa",),
    "neighborhood": ("sdpa", "blocked"),
    "window": ("blocked",),
    "linear": ("linear",),
}


@dataclass(frozen=True)
class Case:
    """One benchmark cell: a pattern on a grid with a backend."""

    pattern: str
    shape: tuple[int, ...]
    backend: str
    batch: int = 1
    heads: int = 4
    head_dim: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    timing_s: float = 1.0  # repeat each timing until about this much time has passed (at most 5 runs)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def tokens(self) -> int:
        return math.prod(self.shape)


def make_spec(pattern: str, rank: int):
    """The attention spec benchmarked for ``pattern`` on a grid of ``rank`` axes."""
    if pattern == "dense":
        return Dense()
    if pattern == "neighborhood":
        return Neighborhood(KERNEL)
    if pattern == "window":
        return Window(64 if rank == 1 else 8)
    if pattern == "axial":
        return Axial()
    if pattern == "linear":
        return Linear()
    raise ValueError(f"'pattern' must be one of {list(PATTERN_BACKENDS)}. {pattern!r} was provided.")


def keys_per_query(case: Case) -> int:
    """Keys each query really needs (the useful work): N, kernel**rank, window**rank, sum of axes, head_dim."""
    spec = make_spec(case.pattern, case.rank)
    if isinstance(spec, Dense):
        return case.tokens
    if isinstance(spec, Neighborhood):
        return KERNEL**case.rank
    if isinstance(spec, Window):
        return math.prod(spec.resolve(case.shape)[0])
    if isinstance(spec, Axial):
        return sum(case.shape)
    return case.head_dim  # linear attention: a (d, d) state per head instead of keys


def useful_flops(case: Case) -> float:
    """Forward FLOPs of the pattern, ``4 · B · h · Nq · Nk_eff · d`` (two matmuls, 2 FLOPs per multiply-add)."""
    return 4.0 * case.batch * case.heads * case.tokens * keys_per_query(case) * case.head_dim


def executed_flops(case: Case) -> float:
    """Forward FLOPs the backend performs: a masked SDPA computes every query–key pair."""
    if case.backend == "sdpa" and case.pattern in ("dense", "neighborhood", "window"):
        return 4.0 * case.batch * case.heads * case.tokens**2 * case.head_dim
    return useful_flops(case)


def predicted_bytes(case: Case, budget: int) -> int | None:
    """Peak bytes the planner predicts for the case on its forced backend (forward + backward where it has one).

    None when the planner would not run that backend at all. Masked SDPA is predicted at least at its
    boolean (N, N) mask plus the additive float copy PyTorch's kernels make of it on every call (measured
    on CPU: 4 bytes per query–key pair at float32), so a case that cannot fit is never started.
    """
    spec = make_spec(case.pattern, case.rank)
    floor = 0
    if case.backend == "sdpa" and case.pattern in ("neighborhood", "window"):
        floor = case.tokens**2 * (1 + torch.empty((), dtype=getattr(torch, case.dtype)).element_size())
    for backward in (True, False):  # a backend without a backward pass on the device is planned forward-only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NeuroattnAttentionWarning)  # the fallback is detected below
            try:
                plan = plan_attention(
                    case.shape, spec, getattr(torch, case.dtype), torch.device(case.device),
                    batch=case.batch, heads=case.heads, head_dim=case.head_dim, memory_budget_bytes=budget,
                    backend=case.backend, backward=backward,
                )  # fmt: skip
            except AttentionMemoryError as err:
                return max(err.estimated_bytes, floor)
        if plan.backend == case.backend:
            return max(plan.estimated_peak_bytes, floor)
    return None


# ----------------------------------------------------------------------------- one case


def cache_bytes() -> int:
    """Bytes held by the attention layer's mask, tiling and block-mask caches."""
    from neuroattn.attention import blocked, flex_backend, masks, sdpa_backend

    caches = (masks.MASK_CACHE, sdpa_backend.ADDITIVE_MASK_CACHE, blocked.TILING_CACHE, flex_backend.BLOCK_MASK_CACHE)
    return sum(cache.total_bytes for cache in caches)


def measure_case(case: Case) -> dict:
    """Time and measure one case in this process; returns fwd_ms, fwdbwd_ms, peak_mem_MB, peak_mem_fwdbwd_MB.

    A backend that would fall back to another one raises instead (its warning is turned into an error), so
    a row never reports another backend's numbers; a backend without a backward pass on the device gets
    ``fwdbwd_ms`` None and a note. Peak memory is the high-water mark of a warm call plus what the case
    left in the attention caches (masks, tilings, block masks), which start empty.
    """
    clear_caches()
    device, dtype = torch.device(case.device), getattr(torch, case.dtype)
    spec = make_spec(case.pattern, case.rank)
    gen = torch.Generator(device).manual_seed(0)
    size = (case.batch, case.heads, *case.shape, case.head_dim)  # (B, h, *S, d)
    q, k, v = (torch.randn(size, generator=gen, device=device, dtype=dtype) for _ in range(3))
    grad = torch.randn(size, generator=gen, device=device, dtype=dtype)
    to_mb = lambda b: None if b is None else round(b / 2**20, 2)  # noqa: E731

    def forward() -> torch.Tensor:
        return attend(q, k, v, spec, backend=case.backend)

    def step() -> None:
        forward().backward(grad)
        for t in (q, k, v):
            t.grad = None

    result: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", NeuroattnAttentionWarning)
        with torch.no_grad():
            forward()  # warm-up: compilation, mask and tiling caches
            with PeakMemory(device) as fwd_mem:
                forward()
            result["fwd_ms"] = round(timed(forward, device, case.timing_s), 3)
        cached = cache_bytes()
        result["cache_MB"] = to_mb(cached)
        result["peak_mem_MB"] = to_mb(None if fwd_mem.peak_bytes is None else fwd_mem.peak_bytes + cached)
        for t in (q, k, v):
            t.requires_grad_(True)
        try:
            step()
        except NeuroattnAttentionWarning as note:
            result["note"] = f"no backward: {' '.join(str(note).split())[:160]}"
            return result
        with PeakMemory(device) as bwd_mem:
            step()
        result["fwdbwd_ms"] = round(timed(step, device, case.timing_s), 3)
        cached = cache_bytes()
        result["peak_mem_fwdbwd_MB"] = to_mb(None if bwd_mem.peak_bytes is None else bwd_mem.peak_bytes + cached)
    return result


def _measure_isolated(case: Case, timeout_s: float) -> dict:
    """Run ``measure_case`` in a fresh interpreter so memory high-water marks belong to this case alone."""
    payload = json.dumps(asdict(case))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "neuroattn.bench.attention", "--child", payload],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": f"skipped: ran over {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        kind = "oom" if proc.returncode in (-9, 137) else "error"
        return {"status": f"{kind}: {tail[:200]}"}
    return json.loads(lines[-1])


def _run_one(case: Case, *, budget: int, max_gflop: float, isolate: bool, timeout_s: float) -> dict:
    row = {
        "pattern": case.pattern,
        "rank": case.rank,
        "tokens": case.tokens,
        "shape": "x".join(map(str, case.shape)),
        "backend": case.backend,
        "dtype": case.dtype,
        "device": case.device,
        "spec": repr(make_spec(case.pattern, case.rank)),
        "gflop_fwd": round(useful_flops(case) / 1e9, 3),
        "fwd_ms": None,
        "fwdbwd_ms": None,
        "peak_mem_MB": None,
        "peak_mem_fwdbwd_MB": None,
        "tflops_fwd": None,
        "predicted_peak_MB": None,
        "note": None,
        "status": "ok",
    }
    availability = available_backends(torch.device(case.device)).get(case.backend, "unknown backend")
    if availability != "available":
        row["status"] = f"skipped: {case.backend} {availability}"
        return row
    try:
        spec = make_spec(case.pattern, case.rank)
        if isinstance(spec, Neighborhood | Window):
            spec.resolve(case.shape)
    except ValueError as err:
        row["status"] = f"skipped: {err}"
        return row
    estimate = predicted_bytes(case, budget)
    if estimate is not None:
        row["predicted_peak_MB"] = round(estimate / 2**20, 1)
        if estimate > budget:
            row["status"] = "oom-predicted"
            return row
    if executed_flops(case) / 1e9 > max_gflop:
        row["status"] = f"skipped: {executed_flops(case) / 1e9:.0f} GFLOP forward > {max_gflop:.0f} on {case.device}"
        return row
    try:
        if isolate:
            result = _measure_isolated(case, timeout_s)
        else:
            with deadline(timeout_s):
                result = measure_case(case)
    except TimeoutError as err:
        result = {"status": f"skipped: {err}"}
    except torch.cuda.OutOfMemoryError:
        result = {"status": "oom"}
    except (RuntimeError, ValueError, MemoryError, NeuroattnAttentionWarning) as err:
        result = {"status": f"error: {' '.join(str(err).split())[:200]}"}
    finally:
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()
    row.update(result)
    if row["status"] == "ok" and row["fwd_ms"]:
        row["tflops_fwd"] = round(useful_flops(case) / (row["fwd_ms"] / 1000.0) / 1e12, 4)
    return row


def _progress(cases: list[Case], enabled: bool):
    """tqdm over the cases when it is installed (GPU machines may carry torch alone)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return cases
    return tqdm(cases, desc="attention bench", disable=not enabled)


def build_cases(
    *,
    quick: bool,
    device: str,
    dtype: torch.dtype,
    patterns: Sequence[str] | None = None,
    backends: dict[str, Sequence[str]] | None = None,
    shapes: dict[int, Sequence[tuple[int, ...]]] | None = None,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 32,
) -> list[Case]:
    """Every (pattern, shape, backend) cell of the table, ordered by rank, size and pattern."""
    shapes = shapes or (QUICK_SHAPES if quick else FULL_SHAPES)
    table = backends or (QUICK_BACKENDS if quick else PATTERN_BACKENDS)
    chosen = list(patterns or table)
    dtype_name = str(dtype).removeprefix("torch.")
    timing_s = 0.1 if quick else 1.0
    return [
        Case(pattern, shape, backend, batch, heads, head_dim, device, dtype_name, timing_s)
        for rank in sorted(shapes)
        for shape in shapes[rank]
        for pattern in chosen
        for backend in table.get(pattern, PATTERN_BACKENDS[pattern])
        if not (pattern == "axial" and rank == 1)  # one axis: axial attention is dense attention
    ]


def compute_ratios(rows: list[dict], budget: int = CPU_BUDGET_BYTES) -> dict:
    """Neighborhood (kernel 7) backends vs SDPA with a mask on every 3-D grid measured, and the issue's targets."""
    ok = {(r["pattern"], r["shape"], r["backend"]): r for r in rows if r["status"] == "ok"}
    ratios: dict = {}
    for r in rows:
        if r["pattern"] != "neighborhood" or r["rank"] != 3 or r["backend"] == "sdpa" or r["status"] != "ok":
            continue
        base = ok.get(("neighborhood", r["shape"], "sdpa"))
        entry = {"backend": r["backend"], "baseline": "sdpa with boolean mask", "peak_mem_MB": r["peak_mem_MB"]}
        if base is not None:
            entry["fwd_speedup"] = round(base["fwd_ms"] / r["fwd_ms"], 2)
            if base["peak_mem_MB"] and r["peak_mem_MB"]:
                entry["peak_mem_ratio"] = round(base["peak_mem_MB"] / r["peak_mem_MB"], 2)
        ratios[f"neighborhood_k{KERNEL}_{r['shape']}_{r['backend']}"] = entry
    target = ratios.get(f"neighborhood_k{KERNEL}_16x16x16_blocked")
    if target is not None and "fwd_speedup" in target:
        ratios["target_16^3"] = {
            "fwd_speedup": target["fwd_speedup"],
            "peak_mem_ratio": target.get("peak_mem_ratio"),
            "met": target["fwd_speedup"] >= 3.0 and (target.get("peak_mem_ratio") or 0) >= 10.0,
            "wanted": "fwd_speedup >= 3 and peak_mem_ratio >= 10",
        }
    big = [r for r in rows if r["shape"] == "32x32x32" and r["pattern"] in ("neighborhood", "dense")]
    if big:
        blocked = next((r for r in big if r["pattern"] == "neighborhood" and r["backend"] == "blocked"), None)
        dense = [r for r in big if r["backend"] == "sdpa"]
        peak = blocked["peak_mem_fwdbwd_MB"] if blocked and blocked["status"] == "ok" else None
        ratios["target_32^3"] = {
            "blocked_status": blocked["status"] if blocked else "not run",
            "blocked_peak_MB": peak,
            "blocked_within_budget": peak is not None and peak * 2**20 <= budget,
            "dense_statuses": {f"{r['pattern']}/{r['backend']}": r["status"] for r in dense},
            "budget_MB": budget / 2**20,
        }
    return ratios


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of the rows."""
    header = (
        f"{'pattern':<13}{'rank':>4} {'tokens':>8} {'shape':>11} {'backend':>8} {'fwd ms':>10} {'fwd+bwd ms':>11} "
        f"{'peak MB':>9} {'TFLOP/s':>8}  status"
    )
    lines = [header]
    fmt = lambda v, spec: format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['pattern']:<13}{r['rank']:>4} {r['tokens']:>8} {r['shape']:>11} {r['backend']:>8} "
            f"{fmt(r['fwd_ms'], '10.2f')} {fmt(r['fwdbwd_ms'], '11.2f')} {fmt(r['peak_mem_MB'], '9.1f')} "
            f"{fmt(r['tflops_fwd'], '8.3f')}  {r['status'][:70]}"
        )
    return "\n".join(lines)


def plot_rows(rows: list[dict], path: Path) -> Path | None:
    """Forward ms vs tokens (log-log), one panel per rank, one line per pattern/backend; written atomically.

    Returns None (and writes nothing) where matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = sorted({r["rank"] for r in rows})
    fig, axes = plt.subplots(1, len(ranks), figsize=(5 * len(ranks), 4), squeeze=False)
    for ax, rank in zip(axes[0], ranks, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["rank"] == rank and r["status"] == "ok":
                series.setdefault(f"{r['pattern']}/{r['backend']}", []).append((r["tokens"], r["fwd_ms"]))
        for label, points in sorted(series.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="forward ms", title=f"{rank}-D")
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_results(rows: list[dict], json_path: Path, *, meta: dict, budget: int) -> dict:
    """Write the rows, ratios and run metadata as JSON (atomically) and the plot beside it; return the document."""
    doc = {"benchmark": "attention", **meta, "rows": rows, "ratios": compute_ratios(rows, budget)}
    atomic_write_text(json_path, json.dumps(doc, indent=2) + "\n")
    plot_rows(rows, json_path.with_suffix(".png"))
    return doc


def run_attention_benchmark(
    out_dir: Path,
    quick: bool = False,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    patterns: Sequence[str] | None = None,
    backends: dict[str, Sequence[str]] | None = None,
    shapes: dict[int, Sequence[tuple[int, ...]]] | None = None,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 32,
    memory_budget_bytes: int | None = None,
    max_gflop: float | None = None,
    isolate: bool | None = None,
    case_timeout_s: float = 600.0,
    progress: bool = True,
    echo: bool = True,
) -> list[dict]:
    """Benchmark attention patterns and backends; print a table, write ``attention.json`` and ``attention.png``.

    Parameters
    ----------
    out_dir : folder receiving ``attention.json`` (rows, ratios, metadata) and ``attention.png``.
    quick : a tiny subset (one small grid per rank) for smoke tests.
    device, dtype : where and in which precision q, k, v live.
    patterns, backends : restrict the patterns, or map pattern → backends to run.
    shapes : rank → grids to run instead of the default sizes.
    batch, heads, head_dim : q/k/v are ``(batch, heads, *shape, head_dim)``.
    memory_budget_bytes : cases predicted above it are marked ``oom-predicted`` (default 4 GiB on CPU,
        80 % of the free GPU memory on CUDA).
    max_gflop : forward GFLOP above which a case is skipped (default 600 on CPU, unlimited on CUDA).
    isolate : run each case in a fresh interpreter (default: on CPU outside quick mode) so the resident-set
        high-water mark belongs to that case alone.
    case_timeout_s : per-case wall-clock limit.

    Returns
    -------
    The rows: pattern, rank, tokens, shape, backend, dtype, fwd_ms, fwdbwd_ms, peak_mem_MB, status, ...
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dev = torch.device(device)
    if memory_budget_bytes is None:
        memory_budget_bytes = int(0.8 * torch.cuda.mem_get_info(dev)[0]) if dev.type == "cuda" else CPU_BUDGET_BYTES
    if max_gflop is None:
        max_gflop = math.inf if dev.type == "cuda" else CPU_MAX_GFLOP
    isolate = (dev.type == "cpu" and not quick) if isolate is None else isolate
    cases = build_cases(
        quick=quick, device=device, dtype=dtype, patterns=patterns, backends=backends, shapes=shapes,
        batch=batch, heads=heads, head_dim=head_dim,
    )  # fmt: skip
    rows = []
    for case in _progress(cases, progress):
        rows.append(
            _run_one(case, budget=memory_budget_bytes, max_gflop=max_gflop, isolate=isolate, timeout_s=case_timeout_s)
        )
    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "heads": heads,
        "head_dim": head_dim,
        "budget_MB": memory_budget_bytes / 2**20,
        "quick": quick,
        "memory": (
            "peak extra memory above the inputs of a warm call (CUDA allocator peak, or CPU resident-set "
            "high-water mark) plus the masks/tilings/block masks the case left in the attention caches; "
            "one-time transients while building them (and compilation) are not included"
        ),
    }
    out_dir = Path(out_dir)
    doc = write_results(rows, out_dir / "attention.json", meta=meta, budget=memory_budget_bytes)
    if echo:
        print(format_table(rows))
        print(json.dumps(doc["ratios"], indent=2))
        print(f"wrote {out_dir / 'attention.json'} and {out_dir / 'attention.png'}")
    return rows


def _child_main(payload: str) -> None:
    """Entry point of an isolated case: measure it and print the result as one JSON line."""
    case_fields = json.loads(payload)
    case = Case(**{**case_fields, "shape": tuple(case_fields["shape"])})
    print(json.dumps(measure_case(case)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child_main(sys.argv[2])
    else:
        sys.exit("usage: python -m neuroattn.bench.attention --child CASE_JSON (use `neuroattn bench attention`)")
