"""Evaluate a BrainDecoder on test responses: retrieval, identification and image metrics, JSON + HTML report."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.decode.base import BrainDecoder, as_betas
from neuroattn.decode.clip_features import ImageFeatures, lowlevel_features, retrieval_targets
from neuroattn.decode.metrics import (
    permutation_chance,
    pixcorr,
    ssim,
    top1_among,
    topk_in_pool,
    two_way_identification,
)
from neuroattn.decode.report import image_grid, write_report
from neuroattn.decode.retrieval import EmbeddingIndex
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_write_text


def _untrained_parts(decoder: BrainDecoder, features_trained: bool, reconstructions_trained: bool | None) -> list[str]:
    parts = []
    if not decoder.trained:
        parts.append(f"decoder '{decoder.name}'")
    if not features_trained:
        parts.append("CLIP features")
    if reconstructions_trained is False:
        parts.append("reconstruction models")
    return parts


def evaluate_decoder(
    decoder: BrainDecoder,
    betas_test: np.ndarray,
    image_ids: np.ndarray,
    stimuli_images: np.ndarray,
    features: ImageFeatures,
    reconstructions: np.ndarray | None = None,
    noise_ceiling: float | None = None,
    out_dir: str | Path | None = None,
    extra_metrics: Mapping[str, float] | None = None,
    *,
    features_trained: bool = False,
    reconstructions_trained: bool | None = None,
    distractors: ImageFeatures | None = None,
    pool_size: int = 300,
    n_draws: int = 30,
    top_k: int = 5,
    n_examples: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``decoder`` on test responses and (with ``out_dir``) write ``metrics.json`` and ``report.html``.

    Parameters
    ----------
    decoder : BrainDecoder
    betas_test : (N, V) float32
        Test responses, best repeat-averaged (one row per test image).
    image_ids : (N,) int
        Stimulus id of each row; indexes ``stimuli_images`` and ``features``.
    stimuli_images : (M, H, W, 3) uint8
        The stimulus set, indexed by image id.
    features : ImageFeatures
        CLIP features of the stimulus set (M items), indexed by image id.
    reconstructions : (M, H, W, 3) uint8, optional
        Reconstructions of the first M <= N rows; adds PixCorr, SSIM and low-level 2-way identification on them.
    noise_ceiling : float, optional
        Shown beside the metrics (e.g. mean voxel noise ceiling of the test responses).
    extra_metrics : mapping, optional
        Further scalar metrics to record (e.g. CLIP 2-way of reconstructions computed by the caller).
    features_trained, reconstructions_trained : bool
        Whether CLIP and the reconstruction models have trained weights; False marks the results UNTRAINED.
    distractors : ImageFeatures, optional
        Extra images added to the top-k pool (never correct).

    Returns
    -------
    dict with ``decoder``, ``trained``, ``untrained_parts``, ``metrics``, ``chance``, ``noise_ceiling`` and the
    retrieval settings.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    betas = as_betas(betas_test)
    stimuli_images = np.asarray(stimuli_images)
    if len(image_ids) != len(betas):
        raise InvalidInputError(f"{len(betas)} test rows but {len(image_ids)} image ids")
    if len(features) != len(stimuli_images):
        raise InvalidInputError(f"features cover {len(features)} images, the stimulus set has {len(stimuli_images)}")
    if image_ids.min() < 0 or image_ids.max() >= len(stimuli_images):
        raise InvalidInputError(
            f"image ids must lie in [0, {len(stimuli_images)}), got {image_ids.min()}..{image_ids.max()}"
        )
    seen = stimuli_images[image_ids]  # (N, H, W, 3)
    test_feats = features.subset(image_ids)
    image_emb = retrieval_targets(test_feats)  # (N, L*D)
    brain_emb = decoder.brain_embeddings(betas)  # (N, L*D)

    metrics: dict[str, float] = {}
    chance: dict[str, float] = {}
    among = top1_among(brain_emb, image_emb, pool_size=pool_size, n_draws=n_draws, seed=seed)
    metrics["top1_brain_to_image"] = among["brain_to_image"]
    metrics["top1_image_to_brain"] = among["image_to_brain"]
    chance["top1_brain_to_image"] = chance["top1_image_to_brain"] = among["chance"]
    extra = None if distractors is None else retrieval_targets(distractors)
    pooled = topk_in_pool(brain_emb, image_emb, ks=(1, top_k), distractors=extra)
    for k in (1, top_k):
        metrics[f"top{k}_all_test"] = pooled[f"top{k}"]
        chance[f"top{k}_all_test"] = pooled[f"top{k}_chance"]
    pred_pooled = decoder.predict_clip(betas)[:, 0]  # (N, D): the predicted CLS token
    metrics["two_way_clip_predicted"] = two_way_identification(pred_pooled, test_feats.pooled)
    chance["two_way_clip_predicted"] = 0.5

    if reconstructions is not None:
        recon = np.asarray(reconstructions)
        if len(recon) > len(seen) or recon.shape[1:] != seen.shape[1:]:
            raise InvalidInputError(f"reconstructions {recon.shape} do not match the seen images {seen.shape}")
        seen_r = seen[: len(recon)]  # reconstructions cover the first M test rows
        metrics["pixcorr"] = pixcorr(recon, seen_r)
        chance["pixcorr"] = permutation_chance(pixcorr, recon, seen_r, seed=seed)
        metrics["ssim"] = ssim(recon, seen_r)
        chance["ssim"] = permutation_chance(ssim, recon, seen_r, n_perm=2, seed=seed)
        metrics["two_way_lowlevel"] = two_way_identification(lowlevel_features(recon), lowlevel_features(seen_r))
        chance["two_way_lowlevel"] = 0.5
    for name, value in (extra_metrics or {}).items():
        metrics[str(name)] = float(value)

    untrained = _untrained_parts(decoder, features_trained, reconstructions_trained if reconstructions is not None
                                 else None)
    result: dict[str, Any] = {
        "decoder": decoder.name,
        "trained": not untrained,
        "label": "UNTRAINED" if untrained else "trained",
        "untrained_parts": untrained,
        "n_test": len(betas),
        "n_reconstructed": 0 if reconstructions is None else len(reconstructions),
        "pool_size": among["pool_size"],
        "n_draws": n_draws,
        "metrics": metrics,
        "chance": chance,
        "noise_ceiling": None if noise_ceiling is None else float(noise_ceiling),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        n_show = min(n_examples, len(betas), len(betas) if reconstructions is None else len(reconstructions))
        k = min(top_k, len(betas))
        _, ids = EmbeddingIndex.build(image_emb, "exact").search(brain_emb[:n_show], k)  # (E, k) rows of the test set
        grid = image_grid(seen[:n_show], seen[ids], ids == np.arange(n_show)[:, None],
                          None if reconstructions is None else np.asarray(reconstructions)[:n_show])
        write_report(out_dir / "report.html", result, grid, untrained)
    return result


def compare_decoders(
    results: Sequence[Mapping[str, Any]], out_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """Decoders side by side: one row per result of :func:`evaluate_decoder`, a column per metric.

    With ``out_dir``, writes ``comparison.csv`` and ``comparison.json`` (atomically). A ``chance`` row closes the
    table so every number can be read against it.
    """
    names: list[str] = []
    for r in results:
        names += [m for m in r["metrics"] if m not in names]
    rows = []
    for r in results:
        row: dict[str, Any] = {"decoder": r["decoder"], "label": r.get("label", "")}
        row.update({m: r["metrics"].get(m) for m in names})
        row["noise_ceiling"] = r.get("noise_ceiling")
        rows.append(row)
    chance_row: dict[str, Any] = {"decoder": "chance", "label": ""}
    for m in names:
        chance_row[m] = next((r["chance"][m] for r in results if m in r.get("chance", {})), None)
    chance_row["noise_ceiling"] = None
    rows.append(chance_row)
    if out_dir is not None:
        out_dir = Path(out_dir)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out_dir / "comparison.csv", buffer.getvalue())
        atomic_write_text(out_dir / "comparison.json", json.dumps(rows, indent=2) + "\n")
    return rows
