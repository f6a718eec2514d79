"""Brain-IT's transfer between subjects on the simulated 8-subject decoding data, at a chosen budget and device:
joint training, then new-subject adaptation against training that subject alone.

A GPU machine needs only a data folder's stimuli, cached CLIP features and ``simulation.json``; the subjects'
betas are simulated again in memory from its seed (the SHA-1 and mean |beta| of every subject are recorded, so
draws on two machines can be compared; ``--tuning-axes`` simulates cortex-like tuning shared across subjects
instead of the folder's setting). Then, with the package's own entry points (``train_brain_it``, ``adapt_new_subject``,
``BrainITDecoder``, ``top1_among``):

1. Brain-IT trained jointly on every subject but the last (or the first ``--joint-subjects``), its step count
   fitted to ``--budget-s`` from a timed probe; top-1 among the 300 test images of the first subject, both
   ways, and on 300 training images;
2. the last subject placed zero-shot from its voxels' profiles (on that fraction and on all its images), then
   added by training only its voxel embeddings on ``--adapt-fraction`` of its images,
   against Brain-IT trained on that subject alone on the same images for the same steps (``--joint-run`` starts
   here from a finished joint run).

Retrieval only: the low-level branch is off (``latent_channels 0``). Results are written after every stage, so a
run cut short still returns what it finished.

    python benchmarks/bench_brain_it_transfer.py --data bench_results/decoding8/data --device cuda --out OUT/bit.json
    python benchmarks/bench_brain_it_transfer.py --data bench_results/decoding8/data --quick --out bench_results/q.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.data.nsd import SubjectData
from neuroattn.data.nsd_simulation import NSDSimulationConfig, simulate_nsd
from neuroattn.data.stimuli import load_stimuli
from neuroattn.decode.brain_it import BrainITConfig
from neuroattn.decode.brain_it_training import (
    BrainITDecoder,
    BrainITSubject,
    adapt_new_subject,
    load_brain_it,
    place_subject,
    train_brain_it,
)
from neuroattn.decode.clip_features import ImageFeatures, retrieval_targets
from neuroattn.decode.data_bundle import FeatureSource, image_features
from neuroattn.decode.evaluation_run import train_retrieval
from neuroattn.decode.metrics import top1_among
from neuroattn.decode.runs import select_fraction
from neuroattn.decode.voxel_clusters import encoding_profiles
from neuroattn.io.atomic import atomic_write_text
from neuroattn.train import TrainConfig
from neuroattn.train.metrics import seconds_per_step


def simulated_subjects(root: Path, **overrides: Any) -> tuple[ImageFeatures, list[SubjectData], dict[str, Any]]:
    """The folder's CLIP features and its subjects simulated again from ``simulation.json``'s settings, with
    ``overrides`` of :class:`NSDSimulationConfig` fields."""
    stimuli = load_stimuli(root)
    features, clip_info = image_features(root, stimuli, FeatureSource())
    settings = json.loads((root / "simulation.json").read_text(encoding="utf-8"))["config"] | overrides
    sim = simulate_nsd(stimuli, features, NSDSimulationConfig(**settings))
    return features, sim.subjects, clip_info | {"simulation": settings}


def betas_sha1(subject: SubjectData) -> str:
    return hashlib.sha1(np.ascontiguousarray(subject.betas, dtype=np.float32).tobytes()).hexdigest()


def training_subject(subject: SubjectData, features: ImageFeatures, fraction: float = 1.0) -> BrainITSubject:
    """A subject's training trials (``fraction`` of its images, all repeats, seed 0 as the CLI) with CLIP tokens."""
    betas, ids = subject.trials(test=False)
    keep = select_fraction(ids, fraction, seed=0)
    return BrainITSubject(betas[keep], features.tokens[ids[keep]], None, None, subject.subject)


def scores(decoder: BrainITDecoder, subject: SubjectData, features: ImageFeatures,
           fraction: float = 1.0) -> dict[str, float]:
    """Top-1 among the 300 test images and among 300 of the trained-on images (both repeat-averaged, as
    ``decode evaluate``), both ways."""
    betas, ids = subject.averaged(test=True)
    test = top1_among(decoder.brain_embeddings(betas), retrieval_targets(features.subset(ids)))
    _, train_ids = subject.trials(test=False)
    keep = select_fraction(train_ids, fraction, seed=0)
    train = train_retrieval(decoder, *subject.averaged(test=False, keep=keep), features)
    return {"top1_brain_to_image": test["brain_to_image"], "top1_image_to_brain": test["image_to_brain"]} | train


def run_scores(run: Path, subject: SubjectData, features: ImageFeatures, device: str,
               fraction: float = 1.0) -> dict[str, float]:
    """:func:`scores` of ``subject``'s decoder in a finished run."""
    return scores(BrainITDecoder.load(run, subject.subject, device=device, batch_size=256), subject, features,
                  fraction)


def placed_scores(joint_dir: Path, item: BrainITSubject, subject: SubjectData, features: ImageFeatures,
                  device: str, fraction: float) -> dict[str, float]:
    """:func:`scores` of a new subject whose voxels are only placed from their profiles (zero-shot transfer)."""
    model, clusters, _ = load_brain_it(joint_dir)
    profiles = encoding_profiles(item.betas, item.tokens[:, 0], alpha=model.config.profile_alpha)
    place_subject(model, clusters, profiles, subject.subject)
    decoder = BrainITDecoder(model, subject.subject, trained=False, device=device, batch_size=256)
    return scores(decoder, subject, features, fraction)


def _train_config(out: Path, steps: int, args: argparse.Namespace, batch: int, lr: float,
                  warmup: int, log_every: int = 50) -> TrainConfig:
    return TrainConfig(out_dir=out, max_steps=steps, batch_size=batch, lr=lr, warmup_steps=min(warmup, steps // 4),
                       device=args.device, amp="auto", checkpoint_every=0, log_every=log_every, progress=False,
                       tensorboard=False)


def train_joint(args: argparse.Namespace, items: list[BrainITSubject], config: BrainITConfig, work: Path,
                result: dict[str, Any]) -> None:
    """Train Brain-IT on ``items`` in ``work / "joint"``; with ``--budget-s`` the step count comes from a probe."""
    steps = args.steps
    if args.budget_s:  # time a short probe run, then fit the step count into the budget
        probe = time.perf_counter()
        train_brain_it(items, config, _train_config(work / "probe", args.probe_steps, args, args.batch, args.lr, 0, 1))
        per_step = seconds_per_step(work / "probe", skip=args.probe_steps // 3)
        steps = int(min(args.steps, max(100, args.budget_s / per_step)))
        result |= {"probe_s": round(time.perf_counter() - probe, 1), "probe_s_per_step": round(per_step, 4)}
        print(f"probe: {per_step * 1000:.0f} ms/step -> {steps} steps", flush=True)
    epochs = steps * args.batch / sum(len(s.betas) for s in items)
    result["joint"] = {"subjects": [s.name for s in items], "steps": steps, "batch": args.batch, "lr": args.lr,
                       "epochs_per_subject": round(epochs, 1)}
    begin = time.perf_counter()
    train_brain_it(items, config, _train_config(work / "joint", steps, args, args.batch, args.lr, args.warmup))
    result["joint"]["train_s"] = round(time.perf_counter() - begin, 1)
    print(f"joint: {steps} steps in {result['joint']['train_s']} s", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="brain-it-transfer-"))
    result: dict[str, Any] = {
        "benchmark": "brain-it-transfer", "device": torch.cuda.get_device_name() if args.device == "cuda"
        else platform.processor() or "cpu", "torch": torch.__version__, "data": str(root), "stages": {},
        "clip": "UNTRAINED tiny random CLIP", "label": "UNTRAINED (targets from a random CLIP)",
    }

    def save() -> None:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")

    start = time.perf_counter()
    overrides = {} if args.tuning_axes is None else {"tuning_axes": args.tuning_axes}
    features, subjects, clip_info = simulated_subjects(root, **overrides)
    result["simulation"] = clip_info["simulation"]
    if clip_info.get("trained"):
        result["clip"], result["label"] = clip_info.get("source"), "trained CLIP targets"
    result["simulate_s"] = round(time.perf_counter() - start, 1)
    result["betas_sha1"] = {s.subject: betas_sha1(s) for s in subjects}
    result["betas_abs_mean"] = {s.subject: round(float(np.abs(s.betas).mean(dtype=np.float64)), 6) for s in subjects}
    print(f"simulated {len(subjects)} subjects in {result['simulate_s']} s", flush=True)
    n_joint = args.joint_subjects or len(subjects) - 1
    if not 1 <= n_joint < len(subjects):
        raise SystemExit(f"--joint-subjects must be 1 to {len(subjects) - 1}, got {n_joint}")
    joint, new = subjects[:n_joint], subjects[-1]
    n_tokens, clip_dim = features.tokens.shape[1:]
    config = BrainITConfig(n_clusters=args.clusters, embed_dim=args.embed_dim, dim=args.dim, heads=args.heads,
                           depth=args.depth, n_tokens=n_tokens, clip_dim=clip_dim, latent_channels=0,
                           contrastive_weight=args.contrastive_weight, mixup_fraction=args.mixup_fraction,
                           temperature=args.temperature, projector_dim=args.projector_dim,
                           global_readout=args.global_readout)
    result["config"] = config.to_dict()
    items = [training_subject(s, features) for s in joint]

    if args.joint_run:  # a finished joint run: only the new-subject stages
        joint_dir = Path(args.joint_run)
        config = load_brain_it(joint_dir)[0].config  # subject-alone runs use the joint run's architecture
        result["joint"] = {"run": str(joint_dir), "reused": True}
        result["config"] = config.to_dict()
    else:
        joint_dir = work / "joint"
        train_joint(args, items, config, work, result)
    result["joint"][joint[0].subject] = run_scores(joint_dir, joint[0], features, args.device)
    print(f"joint: {joint[0].subject}: {result['joint'][joint[0].subject]}", flush=True)
    save()

    few = training_subject(new, features, args.adapt_fraction)
    stages = [name.strip() for name in args.stages.split(",") if name.strip()]
    if "placed" in stages:  # zero-shot: voxels placed from their profiles, nothing trained
        for name, item, fraction in (("placed", few, args.adapt_fraction),
                                     ("placed_full", training_subject(new, features), 1.0)):
            result["stages"][name] = {"subject": new.subject, "fraction": fraction, "trials": len(item.betas),
                                      "steps": 0} | placed_scores(joint_dir, item, new, features, args.device, fraction)
            print(f"{name}: {result['stages'][name]}", flush=True)
        save()
    runs = {
        "adapted": lambda cfg: adapt_new_subject(joint_dir, few.betas, few.tokens, cfg, subject=new.subject),
        "alone": lambda cfg: train_brain_it([few], config, cfg),
    }
    for name, fit in runs.items():
        if name not in stages:
            continue
        begin = time.perf_counter()
        fit(_train_config(work / name, args.adapt_steps, args, args.adapt_batch, args.adapt_lr, 100))
        result["stages"][name] = {"subject": new.subject, "fraction": args.adapt_fraction,
                                  "trials": len(few.betas), "steps": args.adapt_steps,
                                  "train_s": round(time.perf_counter() - begin, 1)}
        result["stages"][name] |= run_scores(work / name, new, features, args.device, args.adapt_fraction)
        print(f"{name}: {result['stages'][name]}", flush=True)
        save()
    if {"adapted", "alone"} <= set(result["stages"]):
        both = ("top1_brain_to_image", "top1_image_to_brain")
        adapted, alone = result["stages"]["adapted"], result["stages"]["alone"]
        result["adaptation_beats_alone_top1_both"] = all(adapted[k] > alone[k] for k in both)
    result["total_s"] = round(time.perf_counter() - start, 1)
    save()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="decoding data folder (stimuli, features/, simulation.json)")
    p.add_argument("--out", required=True, help="JSON written after every stage")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", help="folder for the runs (default: a new temporary folder)")
    p.add_argument("--joint-run", help="a finished joint run to adapt from instead of training one")
    p.add_argument("--joint-subjects", type=int,
                   help="train the joint run on the first N subjects (default: every subject but the last)")
    p.add_argument("--tuning-axes", type=int, help="override the simulation's tuning_axes (shared tuning per ROI)")
    p.add_argument("--clusters", type=int, default=128)
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--contrastive-weight", type=float, default=4.0)
    p.add_argument("--mixup-fraction", type=float, default=0.33)
    p.add_argument("--temperature", type=float, default=0.05, help="SoftCLIP temperature (brain-it-small: 0.01)")
    p.add_argument("--projector-dim", type=int, default=0, help="retrieval projector width (brain-it-small: 256)")
    p.add_argument("--global-readout", type=int, default=0,
                   help="hidden width of the read-out from all cluster tokens (brain-it-small: 256; 0 = off)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--steps", type=int, default=100_000, help="joint steps (the most, with --budget-s)")
    p.add_argument("--budget-s", type=float, default=300.0, help="seconds of joint training; 0 = --steps as given")
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--stages", default="placed,adapted,alone",
                   help="new-subject stages: placed (zero-shot, at the fraction and on all images), adapted, alone")
    p.add_argument("--adapt-fraction", type=float, default=0.1)
    p.add_argument("--adapt-steps", type=int, default=1000)
    p.add_argument("--adapt-batch", type=int, default=64)
    p.add_argument("--adapt-lr", type=float, default=3e-3)
    p.add_argument("--quick", action="store_true", help="a few steps at a tiny size: checks the script on a CPU")
    args = p.parse_args()
    if args.quick:
        args.device, args.clusters, args.dim, args.depth, args.heads = "cpu", 8, 32, 1, 4
        args.embed_dim, args.budget_s, args.probe_steps, args.adapt_steps, args.batch = 8, 2.0, 9, 10, 32
    run(args)


if __name__ == "__main__":
    main()
