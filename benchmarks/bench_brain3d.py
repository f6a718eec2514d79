"""Seconds per Brain3D object per stage (conditioning, stage 1, refine, export, turntable) at a pipeline config.

    python benchmarks/bench_brain3d.py                      # small.yaml on the CPU, a tiny simulated data folder
    python benchmarks/bench_brain3d.py --device cuda        # field, renderer and guidance on the GPU

Without ``--checkpoint`` a tiny data folder (``pipelines/decode/simulate-tiny.yaml``) and a ridge run are made in
a temporary folder first (not timed). Writes ``benchmarks/results/brain3d-<device>.json`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PIPELINES = HERE.parent / "pipelines"
STAGES = ("conditioning", "guidance_load", "stage1", "refine", "export", "turntable", "total")


def make_run(root: Path) -> tuple[Path, Path]:
    """A tiny simulated data folder and a ridge decoding run inside ``root``."""
    from neuroattn.cli import main

    assert main(["decode", "simulate", "--config", str(PIPELINES / "decode" / "simulate-tiny.yaml"), "--out",
                 str(root / "data"), "--no-progress"]) == 0
    assert main(["decode", "train", "--data", str(root / "data"), "--model", "ridge", "--out", str(root / "ridge"),
                 "--no-progress"]) == 0
    return root / "data", root / "ridge"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=PIPELINES / "brain3d" / "small.yaml")
    parser.add_argument("--checkpoint", type=Path, default=None, help="decoding run (default: a tiny one is made)")
    parser.add_argument("--objects", type=int, default=3, help="test trials turned into objects (after 1 warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (where the field, renderer and guidance run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from neuroattn.brain3d.pipeline import Brain3DSettings, make_conditioning, prepare_inputs, run_brain3d
    from neuroattn.data.nsd import load_subject
    from neuroattn.pipelines import load_pipeline_config

    settings = replace(load_pipeline_config(args.config, Brain3DSettings), device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = args.checkpoint or make_run(root)[1]
        from neuroattn.decode.runs import read_run_info

        info = read_run_info(checkpoint)
        raw = load_subject(info["data_root"], info["subjects"][0], zscore=False)
        trials = raw.betas[raw.is_test][: args.objects + 1]
        per_object = []
        for k, trial in enumerate(trials):
            np.save(root / "trial.npy", trial)
            inputs = prepare_inputs(fmri=root / "trial.npy", checkpoint=checkpoint)
            start = time.perf_counter()
            cond = make_conditioning(inputs, settings, seed=settings.seed)
            pre = {"conditioning": time.perf_counter() - start}
            result = run_brain3d(settings, root / f"obj{k}", cond, inputs, progress=False, pre_timings=pre)
            if k > 0:  # the first object pays one-off imports and model loading
                per_object.append(result.record["timings_s"])
                mesh = result.record["mesh"]
    rows = {s: float(np.mean([t[s] for t in per_object])) for s in STAGES}
    print(f"Brain3D {args.config.name} on {args.device} ({args.threads} thread(s)), mean of {len(per_object)} "
          "objects after a warm-up")
    print(f"{'stage':<14} {'seconds':>8}")
    for stage in STAGES:
        print(f"{stage:<14} {rows[stage]:8.2f}")
    print(f"last mesh: {mesh['vertices']} vertices, {mesh['faces']} faces, watertight {mesh['watertight']}")
    report = {"benchmark": "brain3d", "config": args.config.name, "device": args.device, "threads": args.threads,
              "objects": len(per_object), "seconds_per_object": rows, "per_object": per_object,
              "settings": asdict(settings), "data": "pipelines/decode/simulate-tiny.yaml (32 px stimuli), ridge run"
              if args.checkpoint is None else str(args.checkpoint), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "last_mesh": mesh}
    out = args.out or HERE / "results" / f"brain3d-{args.device}.json"
    from neuroattn.io.atomic import atomic_write_json

    atomic_write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
