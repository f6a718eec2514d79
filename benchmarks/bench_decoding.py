"""Decoding targets on simulated data: ridge vs MindEye vs Brain-IT retrieval, new-subject adaptation, reconstructions.

Simulates a data folder of ``--subjects`` subjects (8, as NSD; or reuses ``--data``), trains ridge and MindEye on
subject 1 and Brain-IT jointly on every subject but the last, with the shipped CPU configs
(``pipelines/decode/*-small.yaml``: what ``decode train --config`` runs; ``--steps``/``--lr`` override them,
``--brain-it-steps`` the joint Brain-IT run alone), adapts Brain-IT to the last subject with ``--adapt-fraction``
of its training images and compares it with Brain-IT trained on that subject alone on the same images, then
evaluates every run (top-1 among 300 both ways, 2-way identification, PixCorr/SSIM of reconstructions against the
mean-image baseline). Prints a table and writes JSON (``--out``); training throughput (samples/s) comes from each run's
trainer summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from neuroattn.decode.data_bundle import open_decoding_data
from neuroattn.decode.evaluation_run import evaluate_run
from neuroattn.decode.pipeline import SimulateSettings, simulate_dataset
from neuroattn.decode.runs import DecodeSettings, adapt_brain_it, train_decoder
from neuroattn.io.atomic import atomic_write_text
from neuroattn.pipelines import load_pipeline_config

TARGET_TOP1 = 0.8


def _throughput(run: Path) -> float | None:
    """Training samples per second from the trainer's summary, when the run has one."""
    path = run / "train_summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    seconds = summary.get("seconds")
    samples = summary.get("steps", 0) * summary.get("config", {}).get("batch_size", 0)
    return None if not seconds or not samples else round(samples / seconds, 1)


def _reusable(folder: Path, plan: DecodeSettings) -> bool:
    """True when ``folder`` holds a finished run trained with exactly ``plan``'s settings (``--reuse``)."""
    info = folder / "decode_run.json"
    finished = (folder / "final").is_dir() or (folder / "model.safetensors").is_file()  # trained, or ridge's fit
    if not finished or not info.is_file():
        return False
    return json.loads(info.read_text()).get("settings") == json.loads(json.dumps(asdict(plan)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    data_dir = Path(args.data) if args.data else work / "data"
    timings: dict[str, float] = {}
    if not (data_dir / "stimuli.hdf5").is_file():
        start = time.perf_counter()
        simulate_dataset(data_dir, SimulateSettings(
            simulation={"n_subjects": args.subjects, "n_voxels": args.voxels, "voxel_size": args.voxel_size},
            autoencoder_steps=args.generator_steps, variation_steps=args.generator_steps, device=args.device,
        ), progress=args.progress)
        timings["simulate_s"] = round(time.perf_counter() - start, 1)
    data = open_decoding_data(data_dir, progress=args.progress)
    subjects = data.subject_names
    if len(subjects) < 3:
        raise SystemExit(f"{data_dir}: the benchmark needs at least 3 subjects, found {len(subjects)}")
    new = subjects[-1]  # the subject Brain-IT is adapted to; every other one trains it jointly
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    common = {"device": args.device, "batch_size": args.batch_size, "log_every": 50, "checkpoint_every": 10**9}

    def settings(model: str, config: Path | None, **extra: Any) -> DecodeSettings:
        base = asdict(load_pipeline_config(config, DecodeSettings)) if config else {"model": model}
        return DecodeSettings(**(base | common | overrides | extra))

    plans = {
        "ridge": settings("ridge", None, subjects=subjects[:1]),
        "mindeye": settings("mindeye", args.mindeye_config, subjects=subjects[:1]),
        "brain-it": settings("brain-it", args.brain_it_config, subjects=subjects[:-1],
                             **({"steps": args.brain_it_steps} if args.brain_it_steps else {})),
    }
    runs: dict[str, Path] = {}
    reused: list[str] = []

    def train(name: str, plan: DecodeSettings, fit: Any, reuse: bool = args.reuse) -> None:
        folder = work / "runs" / name
        if reuse and _reusable(folder, plan):
            runs[name] = folder
            reused.append(name)
            return
        if folder.exists():  # the benchmark's own run from other settings: train it again from scratch
            print(f"replacing {folder} (trained with other settings)")
            shutil.rmtree(folder)
        start = time.perf_counter()
        runs[name] = fit(folder)
        timings[f"train_{name}_s"] = round(time.perf_counter() - start, 1)

    for name, plan in plans.items():
        train(name, plan, lambda folder, plan=plan: train_decoder(data, plan, folder, progress=args.progress))
    few = {"train_fraction": args.adapt_fraction, "subjects": [new]}
    few |= {"steps": args.adapt_steps} if args.adapt_steps else {}  # the same images and steps for both
    few_plan = settings("brain-it", args.brain_it_config, **few)
    train("brain-it-adapted", few_plan, lambda folder: adapt_brain_it(data, runs["brain-it"], new, few_plan, folder,
                                                                      progress=args.progress),
          reuse=args.reuse and "brain-it" in reused)  # an adaptation is only as current as its base run
    train("brain-it-alone", few_plan, lambda folder: train_decoder(data, few_plan, folder, progress=args.progress))
    results = {}
    for name, folder in runs.items():
        start = time.perf_counter()
        subject = new if name.startswith("brain-it-a") else subjects[0]
        reconstruct = name in ("mindeye", "brain-it", "ridge")
        result = evaluate_run(folder, work / "eval" / name, subject=subject, reconstruct=reconstruct,
                              recon_limit=args.recon_limit, steps=args.recon_steps, progress=args.progress)
        timings[f"evaluate_{name}_s"] = round(time.perf_counter() - start, 1)
        results[name] = {"subject": subject, "label": result["label"], "untrained_parts": result["untrained_parts"],
                         "metrics": result["metrics"], "chance": result["chance"],
                         "noise_ceiling": result["noise_ceiling"], "train_samples_per_s": _throughput(folder)}
    m = {k: v["metrics"] for k, v in results.items()}
    both = ("top1_brain_to_image", "top1_image_to_brain")
    checks = {
        **{f"{model}_beats_ridge_top1_both": all(m[model][k] > m["ridge"][k] for k in both)
           for model in ("mindeye", "brain-it")},
        **{f"{model}_top1_both_ge_{TARGET_TOP1}": all(m[model][k] >= TARGET_TOP1 for k in both)
           for model in ("mindeye", "brain-it")},
        "adaptation_beats_alone_top1_both": all(m["brain-it-adapted"][k] > m["brain-it-alone"][k] for k in both),
        **{f"{model}_recon_above_mean_image": (m[model]["pixcorr"] > m[model]["pixcorr_mean_image_baseline"]
                                               and m[model]["ssim"] > m[model]["ssim_mean_image_baseline"])
           for model in ("mindeye", "brain-it", "ridge")},
    }
    return {
        "benchmark": "decoding",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "data": {"root": str(data_dir), "images": len(data.stimuli), "subjects": {s: data.subject(s).n_voxels
                                                                                for s in subjects},
                 "clip": "UNTRAINED tiny random CLIP" if not data.clip_trained else data.clip_info.get("source")},
        "settings": vars(args) | {"work": str(work)},
        "train_settings": {name: asdict(plan) for name, plan in plans.items()},
        "results": results,
        "reused_runs": reused,
        "targets": checks,
        "timings_s": timings,
    }


def _print(result: dict[str, Any]) -> None:
    cols = {"top1_brain_to_image": "top1 b->i", "top1_image_to_brain": "top1 i->b",
            "top1_brain_to_image_train": "train b->i", "top1_image_to_brain_train": "train i->b",
            "two_way_clip_predicted": "2-way CLIP", "pixcorr": "PixCorr", "ssim": "SSIM",
            "pixcorr_mean_image_baseline": "PixCorr mean", "ssim_mean_image_baseline": "SSIM mean"}
    print(f"{'decoder':18s}" + "".join(f"{label:>14s}" for label in cols.values()) + f"{'samples/s':>12s}")
    for name, r in result["results"].items():
        vals = [r["metrics"].get(c) for c in cols]
        print(f"{name:18s}" + "".join(f"{'' if v is None else f'{v:.3f}':>14s}" for v in vals)
              + f"{r['train_samples_per_s'] or '':>12}")
    for name, ok in result["targets"].items():
        print(f"[target] {name}: {'met' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decoding.json"))
    parser.add_argument("--work", default="bench_results/decoding", help="folder for data, runs and evaluations")
    parser.add_argument("--data", default=None, help="an existing decoding data folder (default: simulate one)")
    parser.add_argument("--subjects", type=int, default=8, help="subjects to simulate (NSD has 8)")
    parser.add_argument("--voxels", type=int, default=6000, help="voxels per simulated subject")
    parser.add_argument("--voxel-size", type=float, default=3.0, help="mm")
    parser.add_argument("--generator-steps", type=int, default=400)
    parser.add_argument("--mindeye-config", type=Path, default=Path("pipelines/decode/mindeye-small.yaml"))
    parser.add_argument("--brain-it-config", type=Path, default=Path("pipelines/decode/brain-it-small.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override the configs' optimizer steps")
    parser.add_argument("--brain-it-steps", type=int, default=None,
                        help="steps of the joint Brain-IT run (default: --steps, else its config's)")
    parser.add_argument("--adapt-steps", type=int, default=None,
                        help="steps of the new-subject runs, adapted and alone (default: the config's)")
    parser.add_argument("--adapt-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="override the configs' peak learning rate")
    parser.add_argument("--recon-limit", type=int, default=50)
    parser.add_argument("--recon-steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a run already in --work/runs whose recorded settings equal this plan's "
                             "(any other run there is trained again)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    result = run(args)
    result["total_s"] = round(time.perf_counter() - start, 1)
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out} ({result['total_s']} s)")


if __name__ == "__main__":
    main()
