"""Training throughput (samples/s) and peak memory of MindEye and Brain-IT at their published sizes.

Random voxels and targets of the published shapes (15,724 nsdgeneral voxels; MindEye: 257 x 768 CLIP tokens and
4 x 64 x 64 VAE latents; Brain-IT: 256 x 1280 tokens) run through the real training entry points
(``train_mindeye``, ``train_brain_it``) for a few steps; throughput comes from the trainer's summary of the timed
steps after warm-up. Needs only torch, scikit-learn and diffusers; ``--tiny`` checks the script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neuroattn.decode.brain_it import BrainITConfig
from neuroattn.decode.brain_it_training import train_brain_it
from neuroattn.decode.lowlevel import LowLevelConfig
from neuroattn.decode.mindeye import MindEyeConfig
from neuroattn.decode.mindeye_training import train_mindeye
from neuroattn.io.atomic import atomic_write_text
from neuroattn.train import TrainConfig
from neuroattn.train.metrics import seconds_per_step


def _train_config(out: Path, steps: int, batch: int, device: str, amp: str) -> TrainConfig:
    return TrainConfig(out_dir=out, max_steps=steps, batch_size=batch, lr=1e-4, device=device, amp=amp,
                       checkpoint_every=0, log_every=1, progress=False, tensorboard=False)


def _timed(fn, device: str) -> tuple[float, float]:
    """Seconds and peak GPU memory (MB, 0 on CPU) of ``fn()``."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
    return time.perf_counter() - start, peak


def bench_mindeye(args: argparse.Namespace, work: Path) -> dict:
    rng = np.random.default_rng(0)
    v, (n_tok, dim), lat = (300, (17, 32), (4, 8)) if args.tiny else (15724, (257, 768), (4, 64))
    n = args.trials
    betas = rng.standard_normal((n, v), dtype=np.float32)
    tokens = rng.standard_normal((n, n_tok, dim), dtype=np.float32)
    latents = rng.standard_normal((n, lat[0], lat[1], lat[1]), dtype=np.float32)
    config = (MindEyeConfig.tiny(v, n_tok, dim) if args.tiny else MindEyeConfig(n_voxels=v, n_tokens=n_tok,
                                                                                clip_dim=dim))
    low = (LowLevelConfig.tiny(v, lat[0], lat[1]) if args.tiny else LowLevelConfig(n_voxels=v, latent_channels=lat[0],
                                                                                   latent_size=lat[1]))
    run = work / "mindeye"
    _, peak = _timed(lambda: train_mindeye(
        betas, tokens, latents, config, _train_config(run, args.warmup + args.steps, args.batch, args.device, args.amp),
        lowlevel_config=low, clip_trained=False, vae_trained=False), args.device)
    return _row("mindeye", seconds_per_step(run, args.warmup), peak, args,
                {"voxels": v, "tokens": [n_tok, dim], "latents": [lat[0], lat[1], lat[1]]})


def bench_brain_it(args: argparse.Namespace, work: Path) -> dict:
    rng = np.random.default_rng(1)
    v = 300 if args.tiny else 15724
    config = BrainITConfig.tiny() if args.tiny else BrainITConfig()
    n = args.trials
    betas = rng.standard_normal((n, v), dtype=np.float32)
    tokens = rng.standard_normal((n, config.n_tokens, config.clip_dim), dtype=np.float32)
    latents = rng.standard_normal((n, config.latent_channels, config.latent_size, config.latent_size),
                                  dtype=np.float32)
    run = work / "brain-it"
    _, peak = _timed(lambda: train_brain_it(
        [(betas, tokens, latents, None, "subj01")], config,
        _train_config(run, args.warmup + args.steps, args.batch, args.device, args.amp)), args.device)
    return _row("brain-it", seconds_per_step(run, args.warmup), peak, args,
                {"voxels": v, "tokens": [config.n_tokens, config.clip_dim], "clusters": config.n_clusters})


def _row(name: str, step_s: float, peak: float, args: argparse.Namespace, shapes: dict) -> dict:
    """One table row: step time after warm-up, samples per second and peak memory of the whole run."""
    return {"model": name, "batch": args.batch, "step_ms": round(1e3 * step_s, 1),
            "samples_per_s": round(args.batch / step_s, 1) if step_s > 0 else None, "peak_mb": round(peak, 1),
            **shapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/decoding-throughput.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="small shapes to check the script on a CPU")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bench in (bench_mindeye, bench_brain_it):
            rows.append(bench(args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result = {"benchmark": "decoding-training-throughput", "device": device, "torch": torch.__version__,
              "amp": args.amp, "rows": rows, "data": "random tensors of the published shapes (timing only)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
