"""Attention patterns and backends: forward / forward+backward ms and peak memory per grid size (CPU by default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from neuroattn.bench.attention import run_attention_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--quick", action="store_true", help="one small grid per rank (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    run_attention_benchmark(
        args.out, quick=args.quick, device=args.device, dtype=args.dtype, progress=not args.no_progress
    )


if __name__ == "__main__":
    main()
