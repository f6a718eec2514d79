"""BraInCoRL at a larger meta-training budget on a GPU: the test-time scaling curve against ridge.

Two steps, so the GPU machine needs only torch, himalaya and the package: ``export`` (here) writes the encoding
arrays of a data folder (embeddings, each subject's repeat-averaged train/test responses, noise ceilings) to one
``.npz``; ``run`` (on the GPU) meta-trains on every subject but the last and writes the curve as JSON.

    python benchmarks/gpu_encoding.py export --data bench_results/encoding/data --out .device/encoding.npz
    python benchmarks/gpu_encoding.py run --arrays .device/encoding.npz --device cuda --out OUT/encoding-cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def export(args: argparse.Namespace) -> None:
    from neuroattn.encode.runs import EncodeSettings

    data = EncodeSettings().open_data(args.data)
    arrays: dict[str, np.ndarray] = {"embeddings": data.features.values.astype(np.float32)}
    names = data.subject_names
    for name in names:
        s = data.subject(name)
        arrays |= {f"{name}/train_ids": s.train_ids, f"{name}/train": s.train_responses.astype(np.float16),
                   f"{name}/test_ids": s.test_ids, f"{name}/test": s.test_responses.astype(np.float16),
                   f"{name}/noise_ceiling": np.asarray(s.noise_ceiling, dtype=np.float32)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, subjects=np.array(names), **arrays)
    print(f"wrote {args.out}: {len(names)} subjects, embeddings {arrays['embeddings'].shape}")


def run(args: argparse.Namespace) -> None:
    from neuroattn.encode.braincorl import BraInCoRLConfig
    from neuroattn.encode.braincorl_training import InContextEncoder, in_context_curve

    npz = np.load(args.arrays, allow_pickle=False)
    names = [str(n) for n in npz["subjects"]]
    emb = npz["embeddings"]
    train = [(emb, npz[f"{n}/train"].astype(np.float32), npz[f"{n}/train_ids"]) for n in names[:-1]]
    weights = [np.clip(npz[f"{n}/noise_ceiling"] / 100.0, 0, 1) for n in names[:-1]]
    config = BraInCoRLConfig(embedding_dim=emb.shape[1], dim=args.dim, depth=args.depth, heads=args.heads,
                             n_registers=args.registers, moment_path=not args.prior_components,
                             prior_components=args.prior_components, prior_adapt_iters=args.prior_adapt_iters)
    encoder = InContextEncoder(config, k_min=10, k_max=args.k_max, n_query=100, voxels_per_episode=args.voxels,
                               episodes_per_step=args.episodes, lr=args.lr, device=args.device, progress=False,
                               voxel_batch=2048)
    steps = args.steps
    if args.budget_s:  # time a short probe run, then fit the step count into the budget
        probe = InContextEncoder(config, k_min=10, k_max=args.k_max, n_query=100, voxels_per_episode=args.voxels,
                                 episodes_per_step=args.episodes, lr=args.lr, device=args.device, progress=False)
        start = time.perf_counter()
        probe.meta_train(train, Path(args.work) / "probe", 40, voxel_weights=weights)
        per_step = (time.perf_counter() - start) / 40
        steps = int(min(args.steps, max(100, args.budget_s / per_step)))
        print(f"probe: {per_step * 1000:.0f} ms/step -> {steps} steps")
    start = time.perf_counter()
    encoder.meta_train(train, Path(args.work) / "meta", steps, voxel_weights=weights)
    meta_s = time.perf_counter() - start
    held = names[-1]
    start = time.perf_counter()
    curve = in_context_curve(encoder, emb, npz[f"{held}/train_ids"], npz[f"{held}/train"].astype(np.float32),
                             npz[f"{held}/test_ids"], npz[f"{held}/test"].astype(np.float32), ks=args.ks,
                             seeds=args.seeds, progress=False)
    result = {"benchmark": "encoding-braincorl-gpu", "device": torch.cuda.get_device_name()
              if args.device == "cuda" else platform.processor(), "torch": torch.__version__,
              "meta_subjects": names[:-1], "held_out": held, "steps": steps, "config": config.to_dict(),
              "episodes_per_step": args.episodes, "voxels_per_episode": args.voxels, "k_max": args.k_max,
              "lr": args.lr, "meta_train_s": round(meta_s, 1), "curve_s": round(time.perf_counter() - start, 1),
              "train_metrics": {k: float(v) for k, v in (encoder.train_metrics_ or {}).items()}, "curve": curve}
    for row in curve:
        print(f"k={row['k']:>4}  BraInCoRL EV {row['braincorl_ev']:.3f} r {row['braincorl_r']:.3f} | ridge(k) EV "
              f"{row['ridge_ev']:.3f} r {row['ridge_r']:.3f} | ridge(all) EV {row['ridge_full_ev']:.3f}")
    print(f"meta-training {meta_s:.0f} s for {steps} steps")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--data", required=True)
    ex.add_argument("--out", required=True)
    rn = sub.add_parser("run")
    rn.add_argument("--arrays", required=True)
    rn.add_argument("--out", required=True)
    rn.add_argument("--work", default="bench_results/gpu_encoding", help="Folder for the meta-training runs.")
    rn.add_argument("--device", default="cuda")
    rn.add_argument("--steps", type=int, default=3000)
    rn.add_argument("--budget-s", type=float, default=0.0, help="Seconds of meta-training (0: exactly --steps).")
    rn.add_argument("--dim", type=int, default=128)
    rn.add_argument("--depth", type=int, default=4)
    rn.add_argument("--heads", type=int, default=4)
    rn.add_argument("--registers", type=int, default=8)
    rn.add_argument("--prior-components", type=int, default=0,
                    help="Bayes path with this many mixture components (replaces the moment path); 0: off")
    rn.add_argument("--prior-adapt-iters", type=int, default=0, help="EM steps of the prior over the new subject")
    rn.add_argument("--k-max", type=int, default=500)
    rn.add_argument("--voxels", type=int, default=64)
    rn.add_argument("--episodes", type=int, default=16)
    rn.add_argument("--lr", type=float, default=3e-4)
    rn.add_argument("--seeds", type=int, default=5)
    rn.add_argument("--ks", type=int, nargs="+", default=[10, 25, 50, 100, 200, 500])
    args = parser.parse_args()
    export(args) if args.step == "export" else run(args)


if __name__ == "__main__":
    main()
