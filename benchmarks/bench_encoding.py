"""Encoding targets on simulated data: BraInCoRL vs ridge as in-context images grow; LaVCa captions vs top image.

Simulates the encoding data folder (``pipelines/encode/simulate.yaml``, or reuses ``--data``), meta-trains
BraInCoRL on every subject but the last, and for the held-out subject compares, on its 300 test images:
BraInCoRL given k of its training images in context, ridge fit on the same k images, and ridge fit on all of
them (k = 10 ... 500, several random draws). A Gaussian prior on voxel weights per ROI, learned from the
other subjects' ridge weights (``neuroattn.encode.gaussian_prior``), reads the same support draws: what a
prior from other subjects gives at small k, the reference for BraInCoRL's curve. When BraInCoRL's Bayes path
adapts its prior to the new subject (EM over its voxels), its curve is also drawn without that step, and
when its encoders are pooled over neighbouring voxels (``spatial_pooling``), without the pooling. Then
LaVCa describes the held-out subject's voxels (ridge encoder, stimulus descriptions as captions, keyword
composer), scored by Spearman against a top-image-caption baseline and a shuffled control, with the rate at
which a planted concept voxel's sentence names its concept. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.decode.pipeline import SimulateSettings, simulate_dataset
from neuroattn.encode.braincorl_training import InContextEncoder, in_context_curve
from neuroattn.encode.data import EncodingData
from neuroattn.encode.gaussian_prior import PriorEncoder, prior_from_subjects, roi_groups
from neuroattn.encode.run_outputs import evaluate_encoding_run
from neuroattn.encode.runs import EncodeSettings, fit_encoder, open_run
from neuroattn.io.atomic import atomic_write_text
from neuroattn.pipelines import load_pipeline_config

ROOT = Path(__file__).resolve().parents[1]
TARGET_EV_SHARE = 0.9  # BraInCoRL at k = 100 vs ridge on all of the subject's images


def _targets(curve: list[dict[str, Any]], captions: dict[str, Any]) -> dict[str, Any]:
    at_100 = next((row for row in curve if row["k"] == 100), None)
    small = [row for row in curve if row["k"] <= 100]
    share = None if at_100 is None else at_100["braincorl_ev"] / at_100["ridge_full_ev"]
    sp = captions["spearman"]
    return {
        "braincorl_k100_ev_share_of_full_ridge": share,
        "braincorl_k100_reaches_90pct": None if share is None else bool(share >= TARGET_EV_SHARE),
        "braincorl_beats_ridge_every_k_le_100": bool(all(r["braincorl_ev"] > r["ridge_ev"] for r in small)),
        "lavca_spearman_above_top_image": bool(sp["lavca_mean"] > sp["baseline_mean"]),
        "concept_naming_rate": captions.get("concept_naming_rate"),
        "concept_naming_rate_selective": captions.get("concept_naming_rate_selective"),
    }


def ablation_curves(run: Any, data: EncodingData, ks: list[int], seeds: int, progress: bool
                    ) -> dict[str, list[dict[str, Any]]]:
    """BraInCoRL's curve on the same support draws with parts of its in-context fit switched off.

    ``without_spatial_pooling``: the encoders straight from the model (prior EM kept), when the run pools;
    ``without_prior_em``: also without its prior's EM over the new subject, when the model adapts it.
    """
    out = {}
    held = run.subject

    def curve(name: str) -> list[dict[str, Any]]:
        hyper = InContextEncoder.load(run.encoder.info["meta_run"], device=run.settings.device, progress=False)
        if name == "no_em":
            hyper.model_.config.prior_adapt_iters = 0
        rows = in_context_curve(hyper, data.features.values, held.train_ids, held.train_responses, held.test_ids,
                                held.test_responses, ks, seeds, name=name, progress=progress)  # fmt: skip
        return [{key: r[key] for key in ("k", f"{name}_ev", f"{name}_r")} for r in rows]

    if run.settings.pooling() is not None:
        out["without_spatial_pooling"] = curve("no_pooling")
    config = InContextEncoder.load(run.encoder.info["meta_run"], device="cpu", progress=False).model_.config
    if config.prior_components and config.prior_adapt_iters:
        out["without_prior_em"] = curve("no_em")
    return out


def prior_curve(data: EncodingData, ks: list[int], seeds: int, progress: bool) -> dict[str, Any]:
    """In-context curve of the per-ROI Gaussian weight prior learned from every subject but the last."""
    emb = data.features.values
    names = data.subject_names
    prior = prior_from_subjects(data, names[:-1])
    held = data.subject(names[-1])
    rows = in_context_curve(PriorEncoder(prior, roi_groups(held)), emb, held.train_ids,
                            held.train_responses, held.test_ids, held.test_responses, ks, seeds, name="prior",
                            progress=progress)
    curve = [{key: r[key] for key in ("k", "prior_ev", "prior_r", "ridge_ev", "ridge_full_ev")} for r in rows]
    return {"learned_from": names[:-1], "groups": prior.groups, "noise_fraction": prior.noise_fraction,
            "curve": curve}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    data_dir = Path(args.data) if args.data else work / "data"
    timings: dict[str, float] = {}
    if not (data_dir / "stimuli.hdf5").is_file():
        start = time.perf_counter()
        settings = load_pipeline_config(ROOT / "pipelines" / "encode" / "simulate.yaml", SimulateSettings)
        settings.device = args.device
        simulate_dataset(data_dir, settings, progress=args.progress)
        timings["simulate_s"] = round(time.perf_counter() - start, 1)
    base = load_pipeline_config(ROOT / "pipelines" / "encode" / "braincorl-small.yaml", EncodeSettings)
    base.meta_steps = args.meta_steps or base.meta_steps
    base.meta_run = args.meta_run
    base.device, base.curve_seeds = args.device, args.seeds
    data = base.open_data(data_dir, progress=args.progress)

    if args.braincorl_curve:  # the curve measured on a GPU by benchmarks/gpu_encoding.py on this same data
        gpu = json.loads(Path(args.braincorl_curve).read_text())
        bc_metrics = {"rois": None, "in_context_curve": gpu["curve"]}
        bc_source = {"from": args.braincorl_curve, "device": gpu["device"], "steps": gpu["steps"],
                     "config": gpu["config"], "meta_train_s": gpu["meta_train_s"]}
    else:
        start = time.perf_counter()
        bc_run = fit_encoder(data, base, work / "braincorl", progress=args.progress)
        timings["braincorl_fit_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        bc_metrics = evaluate_encoding_run(open_run(bc_run), work / "braincorl-eval", figures=True,
                                           progress=args.progress)
        timings["braincorl_curve_s"] = round(time.perf_counter() - start, 1)
        bc_source = {"from": "this run", "device": args.device, "steps": base.meta_steps, "config": base.braincorl,
                     "meta_run": args.meta_run}
        bc_source["spatial_pooling"] = base.spatial_pooling
        start = time.perf_counter()
        for name, rows in ablation_curves(open_run(bc_run), data, base.ks, args.seeds, args.progress).items():
            bc_source[f"curve_{name}"] = rows
        timings["braincorl_ablation_curves_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    prior = prior_curve(data, [row["k"] for row in bc_metrics["in_context_curve"]], args.seeds, args.progress)
    timings["gaussian_prior_curve_s"] = round(time.perf_counter() - start, 1)

    lavca = load_pipeline_config(ROOT / "pipelines" / "encode" / "lavca.yaml", EncodeSettings)
    start = time.perf_counter()
    lavca_run = fit_encoder(data, lavca, work / "lavca", progress=args.progress)
    opened = open_run(lavca_run)
    lavca_metrics = evaluate_encoding_run(opened, work / "lavca-eval", curve=False, captions=True, figures=False,
                                          progress=args.progress)
    timings["lavca_fit_caption_evaluate_s"] = round(time.perf_counter() - start, 1)
    captions = lavca_metrics["captions"]
    return {
        "benchmark": "encoding",
        "command": "python benchmarks/bench_encoding.py " + " ".join(args.argv),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": args.device},
        "data": {"root": str(data_dir), "subjects": data.subject_names, "held_out": opened.subject.name,
                 "n_voxels": opened.subject.n_voxels, "n_train_images": len(opened.subject.train_ids),
                 "n_test_images": len(opened.subject.test_ids), "features": data.features.info,
                 "median_noise_ceiling_pct": float(np.median(opened.subject.noise_ceiling)),
                 "simulation": data.decoding.simulation()["config"] if data.decoding.simulation() else None},
        "untrained": opened.untrained_parts(),
        "braincorl": {"source": bc_source, "fit_k": base.k, "rois": bc_metrics["rois"],
                      "curve": bc_metrics["in_context_curve"]},
        "gaussian_prior": prior,
        "ridge_all_images": {"rois": lavca_metrics["rois"]},
        "lavca": captions,
        "targets": _targets(bc_metrics["in_context_curve"], captions),
        "timings_s": timings,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"held-out {result['data']['held_out']}: {result['data']['n_voxels']} voxels, median noise ceiling "
          f"{result['data']['median_noise_ceiling_pct']:.1f}%  [untrained: {', '.join(result['untrained']) or '-'}]")
    print(f"{'k':>5} | {'BraInCoRL EV':>12} | {'prior EV':>8} | {'ridge(k) EV':>11} | {'ridge(all) EV':>13} | "
          f"{'BraInCoRL r':>11} | {'ridge(k) r':>10}")
    prior = {row["k"]: row["prior_ev"] for row in result["gaussian_prior"]["curve"]}
    source = result["braincorl"]["source"]
    no_pool = {row["k"]: row["no_pooling_ev"] for row in source.get("curve_without_spatial_pooling") or []}
    no_em = {row["k"]: row["no_em_ev"] for row in source.get("curve_without_prior_em") or []}
    for row in result["braincorl"]["curve"]:
        k = row["k"]
        print(f"{k:>5} | {row['braincorl_ev']:>12.3f} | {prior.get(k, float('nan')):>8.3f} | "
              f"{row['ridge_ev']:>11.3f} | {row['ridge_full_ev']:>13.3f} | {row['braincorl_r']:>11.3f} | "
              f"{row['ridge_r']:>10.3f}" + (f" | without pooling {no_pool[k]:.3f}" if k in no_pool else "")
              + (f" | without pooling and prior EM {no_em[k]:.3f}" if k in no_em else ""))
    sp = result["lavca"]["spearman"]
    print(f"LaVCa Spearman {sp['lavca_mean']:.3f} | top-image caption {sp['baseline_mean']:.3f} | "
          f"shuffled {sp['shuffled_mean']:.3f}")
    lavca = result["lavca"]
    print(f"planted concept named: {lavca.get('concept_naming_rate')} of {lavca.get('n_concept_voxels')} concept "
          f"voxels (chance {lavca.get('concept_chance_rate')}; "
          f"reliable half {lavca.get('concept_naming_rate_selective')})")
    print(json.dumps(result["targets"], indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="bench_results/encoding", help="Folder for the data and runs.")
    parser.add_argument("--data", default=None, help="Reuse this data folder (default: simulate into --work).")
    parser.add_argument("--meta-steps", type=int, default=None,
                        help="BraInCoRL meta-training steps (default: pipelines/encode/braincorl-small.yaml's).")
    parser.add_argument("--meta-run", default=None, help="Reuse this BraInCoRL meta-training run (RUN/meta) "
                        "instead of meta-training here.")
    parser.add_argument("--seeds", type=int, default=3, help="Random support draws per k.")
    parser.add_argument("--braincorl-curve", default=None, help="Take BraInCoRL's curve from this JSON of "
                        "benchmarks/gpu_encoding.py (same data folder) instead of meta-training here.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/encoding.json")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    result = run(args)
    _print(result)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
