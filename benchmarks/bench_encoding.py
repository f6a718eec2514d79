"""Encoding targets on simulated data: BraInCoRL vs ridge as in-context images grow; LaVCa captions vs top image.

Simulates the encoding data folder (``pipelines/encode/simulate.yaml``, or reuses ``--data``), meta-trains
BraInCoRL on every subject but the last, and for the held-out subject compares, on its 300 test images:
BraInCoRL given k of its training images in context, ridge fit on the same k images, and ridge fit on all of
them (k = 10 ... 500, several random draws). A Gaussian prior on voxel weights per ROI, learned from the
other subjects' ridge weights (``neuroattn.encode.gaussian_prior``), reads the same support draws: what a
prior from other subjects gives at small k, the reference for BraInCoRL's curve. When BraInCoRL's Bayes path
adapts its prior to the new subject (EM over its voxels), its curve is also drawn without that step. Then
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


def curve_without_adaptation(run: Any, data: EncodingData, ks: list[int], seeds: int, progress: bool
                             ) -> list[dict[str, Any]] | None:
    """BraInCoRL's curve on the same support draws with its prior's EM over the new subject switched off.

    None when the run's model has no Bayes path or does not adapt it.
    """
    hyper = InContextEncoder.load(run.encoder.info["meta_run"], device=run.settings.device, progress=False)
    config = hyper.model_.config
    if not config.prior_components or not config.prior_adapt_iters:
        return None
    config.prior_adapt_iters = 0
    held = run.subject
    rows = in_context_curve(hyper, data.features.values, held.train_ids, held.train_responses, held.test_ids,
                            held.test_responses, ks, seeds, name="no_em", progress=progress)  # fmt: skip
    return [{key: r[key] for key in ("k", "no_em_ev", "no_em_r")} for r in rows]


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
        bc_source = {"from": "this run", "device": args.device, "steps": base.meta_steps, "config": base.braincorl}
        start = time.perf_counter()
        no_em = curve_without_adaptation(open_run(bc_run), data, base.ks, args.seeds, args.progress)
        if no_em is not None:
            bc_source["curve_without_prior_em"] = no_em
            timings["braincorl_curve_without_em_s"] = round(time.perf_counter() - start, 1)

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
    no_em = {row["k"]: row["no_em_ev"] for row in result["braincorl"]["source"].get("curve_without_prior_em") or []}
    for row in result["braincorl"]["curve"]:
        print(f"{row['k']:>5} | {row['braincorl_ev']:>12.3f} | {prior.get(row['k'], float('nan')):>8.3f} | "
              f"{row['ridge_ev']:>11.3f} | {row['ridge_full_ev']:>13.3f} | {row['braincorl_r']:>11.3f} | "
              f"{row['ridge_r']:>10.3f}" + (f" | without prior EM {no_em[row['k']]:.3f}" if row["k"] in no_em else ""))
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
