"""fMRI efficiency: peak memory and time per training step of TABLeT, SLIM-Brain and the 4-D window baseline vs T."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from neuroattn.bench.fmri_efficiency import MODELS, PRESETS, run_fmri_efficiency


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for the JSON")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS), help="sizes (default: cpu, 48³ x T 8-32)")
    parser.add_argument("--published", action="store_true", help="the published sizes (96³, T up to 256; a GPU)")
    parser.add_argument("--device", default=None, help="default: cuda with --published when available, else cpu")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="models besides the baseline")
    parser.add_argument("--frames", nargs="+", type=int, help="T values instead of the preset's")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (median)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--no-capacity", action="store_true", help="skip the largest-T search")
    parser.add_argument("--tokenizer", action="store_true", help="also time TABLeT's frozen tokenizer (diffusers)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    preset = "published" if args.published else args.preset
    device = args.device or ("cuda" if preset == "published" and torch.cuda.is_available() else "cpu")
    if preset == "published" and device == "cpu":
        print("note: the published sizes on a CPU take hours; pass --device cuda on a GPU", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_fmri_efficiency(
        args.out, preset, device, models=args.models, frames=args.frames, repeats=args.repeats, amp=args.amp,
        capacity=not args.no_capacity, tokenizer=args.tokenizer, case_timeout_s=args.timeout,
        progress=not args.no_progress,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
