"""GPU attention table in bf16: dense SDPA (flash) vs neighborhood via NATTEN (or FlexAttention), blocked, masked SDPA.

Needs torch only, with the repository root importable (this script puts it on sys.path). Every case runs in
try/except with a time limit after a warm-up (compilation, caches) and with CUDA synchronisation around each
timing; achieved TFLOP/s count the useful forward work, 4 · B · h · Nq · Nk_eff · d.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from neuroattn.bench.attention import (
    build_cases,
    compute_ratios,
    format_table,
    run_attention_benchmark,
)


def gpu_backends() -> dict[str, tuple[str, ...]]:
    """Backends per pattern: NATTEN for neighborhoods when it imports, FlexAttention otherwise."""
    local = "natten" if importlib.util.find_spec("natten") is not None else "flex"
    return {
        "dense": ("sdpa",),
        "neighborhood": ("sdpa", "blocked", local),
        "window": ("blocked", "flex"),
        "axial": ("sdpa",),
        "linear": ("linear",),
    }


def tflops_summary(rows: list[dict]) -> str:
    """Per grid: each backend's achieved TFLOP/s next to dense SDPA's on the same grid."""
    dense = {r["shape"]: r for r in rows if r["pattern"] == "dense" and r["status"] == "ok"}
    header = f"{'shape':>11} {'pattern/backend':<22} {'TFLOP/s':>8} {'dense SDPA TFLOP/s':>19}"
    lines = [header + f" {'fwd ms':>9} {'dense ms':>9}"]
    for r in rows:
        if r["status"] != "ok" or r["pattern"] == "dense":
            continue
        d = dense.get(r["shape"])
        lines.append(
            f"{r['shape']:>11} {r['pattern'] + '/' + r['backend']:<22} {r['tflops_fwd']:>8.2f} "
            f"{(d['tflops_fwd'] if d else float('nan')):>19.2f} {r['fwd_ms']:>9.2f} "
            f"{(d['fwd_ms'] if d else float('nan')):>9.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention_gpu.json"), help="JSON path")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available; nothing to run", file=sys.stderr)
        return 2
    backends = gpu_backends()
    n_cases = len(build_cases(quick=args.quick, device="cuda", dtype=getattr(torch, args.dtype), backends=backends))
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}: {n_cases} cases, backends {backends}", flush=True)
    out_dir = args.out.parent
    rows = run_attention_benchmark(
        out_dir,
        quick=args.quick,
        device="cuda",
        dtype=args.dtype,
        backends=backends,
        heads=args.heads,
        head_dim=args.head_dim,
        isolate=False,
        case_timeout_s=args.timeout,
        echo=False,
    )
    written = out_dir / "attention.json"
    if written != args.out:
        written.replace(args.out)
        png = written.with_suffix(".png")
        if png.exists():
            png.replace(args.out.with_suffix(".png"))
    print(format_table(rows))
    print(tflops_summary(rows))
    print(json.dumps(compute_ratios(rows), indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
