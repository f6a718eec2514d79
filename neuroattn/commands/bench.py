"""``neuroattn bench …``: speed and memory benchmarks that print a table and write JSON (+ a plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks: tables on screen, JSON and PNG under --out.", no_args_is_help=True)


@bench_app.command("attention")
def attention(
    out: Annotated[Path, typer.Option("--out", help="Folder for attention.json and attention.png.")] = Path(
        "bench_results"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="One small grid per rank (seconds).")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16")] = "float32",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Dense / neighborhood / window / axial / linear attention: forward and backward ms, peak memory."""
    from neuroattn.bench.attention import run_attention_benchmark

    run_attention_benchmark(out, quick=quick, device=device, dtype=dtype, progress=progress)
    typer.echo(f"wrote {out / 'attention.json'} and {out / 'attention.png'}")
