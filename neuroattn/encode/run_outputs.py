"""What an encoding run writes: predicted responses and text-query maps, voxel captions, and its evaluation.

Every output is a file a person can open: NIfTI voxel maps (plus surface figures), captions CSV, metrics
JSON/CSV and plots. Anything computed from untrained weights says so in its file and figure titles.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.encode.maps import plot_voxel_map, save_voxel_map, voxel_volume
from neuroattn.encode.metrics import explained_variance, voxelwise_pearson
from neuroattn.encode.runs import EncodeRun
from neuroattn.io.atomic import atomic_path, atomic_write_csv, atomic_write_json


def _label(run: EncodeRun) -> str:
    parts = run.untrained_parts()
    return f" [UNTRAINED: {', '.join(parts)}]" if parts else ""


def _is_mni(run: EncodeRun) -> bool:
    return run.data.decoding.simulation() is not None  # simulated subjects live in MNI space


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "query"


def full_map(run: EncodeRun, values: np.ndarray) -> np.ndarray:
    """Values of the run's voxels (V_run, ...) placed among all the subject's voxels (0 elsewhere)."""
    out = np.zeros((run.subject.n_voxels, *np.shape(values)[1:]), dtype=np.float32)
    out[run.encoder.voxels] = values
    return out


def text_selectivity(run: EncodeRun, texts: list[str]) -> np.ndarray:
    """Predicted response (M, V_run) of every voxel to each text query (CLIP text -> embedding -> encoder)."""
    return run.encoder.predict(run.data.text_features(texts))


def write_predictions(run: EncodeRun, out: str | Path, texts: list[str] | None = None, *,
                      figures: bool = True) -> dict[str, Any]:
    """Predicted responses to the subject's test images (4-D NIfTI + image ids) and one map per text query."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = run.subject.test_ids
    pred = run.encoder.predict(run.data.features.values[ids])  # (n_test, V_run)
    written: dict[str, Any] = {"predictions": str(save_voxel_map(run.subject, full_map(run, pred.T),
                                                                 out / "predicted_test_responses.nii.gz"))}
    atomic_write_csv(out / "predicted_test_images.csv",
                     [{"volume": i, "image_id": int(image)} for i, image in enumerate(ids)])
    queries = []
    for text, values in zip(texts or [], text_selectivity(run, texts) if texts else [], strict=True):
        path = save_voxel_map(run.subject, full_map(run, values), out / f"selectivity_{_slug(text)}.nii.gz")
        entry = {"text": text, "map": str(path)}
        if figures:
            entry["figure"] = str(plot_voxel_map(voxel_volume(run.subject, full_map(run, values)),
                                                 path.with_suffix("").with_suffix(".png"),
                                                 f"'{text}'{_label(run)}", mni=_is_mni(run)))
        queries.append(entry)
    written["queries"] = queries
    atomic_write_json(out / "predict.json", {"model": run.encoder.model, "untrained": run.untrained_parts(),
                                             **written})
    return written


def describe_voxels(run: EncodeRun, voxels: np.ndarray | None = None, *, progress: bool = False) -> Any:
    """LaVCa captions of the run's voxels (columns of its encoder; all when None), test images kept out."""
    from neuroattn.encode.captioners import LocalCaptioner, StimulusCaptioner
    from neuroattn.encode.keywords import KeywordComposer, LocalLanguageModelComposer
    from neuroattn.encode.lavca import ImagePool, LaVCa, LavcaConfig

    settings = run.settings
    stimuli = run.data.stimuli
    captioner = StimulusCaptioner(stimuli) if settings.captioner is None else LocalCaptioner(settings.captioner)
    composer = KeywordComposer() if settings.composer is None else LocalLanguageModelComposer(settings.composer)
    pool = ImagePool(ids=np.arange(len(stimuli)), features=run.data.features.values, images=stimuli.images,
                     clip_embeddings=run.data.decoding.features.pooled)
    lavca = LaVCa(run.encoder, captioner, composer, clip=run.data.clip, config=LavcaConfig(**settings.lavca))
    return lavca.describe(pool, voxels=voxels, exclude_ids=run.subject.test_ids, progress=progress)


def write_captions(run: EncodeRun, out: str | Path, *, progress: bool = False) -> Any:
    """captions.csv (one row per voxel: sentence, keywords, top images, ROI) and a top-images montage PNG."""
    from neuroattn.decode.report import save_retrieval_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    captions = describe_voxels(run, progress=progress)
    roi_names = run.subject.roi_names
    rows = []
    for row, voxel in zip(captions.to_rows(), run.encoder.voxels, strict=True):
        rows.append({"subject_voxel": int(voxel), "roi": roi_names.get(int(run.subject.roi[voxel]), ""),
                     **row, "untrained": "; ".join(run.untrained_parts())})
    atomic_write_csv(out / "captions.csv", rows)
    order = _reliable_voxels(run, 16)
    save_retrieval_grid(run.data.stimuli.images, captions.top_ids[order], None, out / "captions_top_images.png",
                        untrained=bool(run.untrained_parts()))
    return captions


def _reliable_voxels(run: EncodeRun, n: int) -> np.ndarray:
    """Columns of the n voxels with the highest noise ceiling (first n when unknown)."""
    nc = run.subject.noise_ceiling
    if nc is None:
        return np.arange(min(n, len(run.encoder.voxels)))
    return np.argsort(-nc[run.encoder.voxels], kind="stable")[:n]


def _roi_table(run: EncodeRun, r: np.ndarray, ev: np.ndarray) -> list[dict[str, Any]]:
    """Mean r, EV and noise-ceiling-normalised EV per ROI and overall."""
    roi = run.subject.roi[run.encoder.voxels]
    nc = None if run.subject.noise_ceiling is None else run.subject.noise_ceiling[run.encoder.voxels] / 100.0
    groups = [("all", np.ones(len(roi), dtype=bool))] + [
        (name, roi == code) for code, name in sorted(run.subject.roi_names.items()) if (roi == code).any()]
    rows = []
    for name, keep in groups:
        row = {"roi": name, "n_voxels": int(keep.sum()), "pearson_r": float(r[keep].mean()),
               "explained_variance": float(ev[keep].mean())}
        if nc is not None:
            row["noise_ceiling"] = float(nc[keep].mean())
            row["ev_of_ceiling"] = float(ev[keep].mean() / max(nc[keep].mean(), 1e-9))
        rows.append(row)
    return rows


IN_CONTEXT_MODELS = {"braincorl": "BraInCoRL", "prior": "Gaussian prior"}  # run model -> label in curves


def _plot_curve(rows: list[dict[str, Any]], path: Path, title: str, model: str = "braincorl") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ks = [row["k"] for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(ks, [row[f"{model}_ev"] for row in rows], "o-", label=f"{IN_CONTEXT_MODELS[model]} (k images in context)")
    ax.plot(ks, [row["ridge_ev"] for row in rows], "s-", label="ridge on the same k images")
    ax.axhline(rows[0]["ridge_full_ev"], color="k", ls="--", label=f"ridge on all {rows[0]['n_train']} images")
    ax.set_xscale("log")
    ax.set_xlabel("in-context images k")
    ax.set_ylabel("mean explained variance (test images)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _hypernetwork(run: EncodeRun):  # -> InContextEncoder
    """The meta-trained BraInCoRL model a run's encoder was written by."""
    from neuroattn.encode.braincorl_training import InContextEncoder

    return InContextEncoder.load(run.encoder.info["meta_run"], device=run.settings.device, progress=False)


def in_context_rows(run: EncodeRun, *, progress: bool = False) -> list[dict[str, Any]]:
    """The run's in-context model (BraInCoRL, or the Gaussian prior) vs ridge at each k of the settings, and ridge
    on all the subject's training images; columns are named after the model (``braincorl_ev``, ``prior_ev``)."""
    from neuroattn.encode.braincorl_training import in_context_curve

    s, voxels = run.subject, run.encoder.voxels
    layout = None
    if run.encoder.model == "prior":
        from neuroattn.encode.gaussian_prior import PriorEncoder, WeightPrior, roi_groups

        model: Any = PriorEncoder(WeightPrior.load(run.encoder.info["meta_run"]), roi_groups(s)[voxels])
    else:
        model = _hypernetwork(run)
        model.pooling, layout = run.settings.pooling(), run.settings.layout(s, voxels)
    return in_context_curve(model, run.data.features.values, s.train_ids, s.train_responses[:, voxels], s.test_ids,
                            s.test_responses[:, voxels], ks=run.settings.ks, seeds=run.settings.curve_seeds,
                            name=run.encoder.model, layout=layout, progress=progress)


def support_attention_rows(run: EncodeRun, top: int = 5) -> list[dict[str, Any]]:
    """BraInCoRL runs: per voxel, the ``top`` support images its registers attend to most, with their shares.

    The run's hypernetwork re-reads the run's own support set (``support_ids``); shares of one voxel sum to 1
    over all its support images, so the listed ones show how concentrated its attention is.
    """
    hyper = _hypernetwork(run)
    s, voxels = run.subject, run.encoder.voxels
    row_of = {int(image): row for row, image in enumerate(s.train_ids)}
    support = np.asarray(run.encoder.info["support_ids"], dtype=np.int64)
    rows = np.array([row_of[int(image)] for image in support])
    hyper.fit(run.data.features.values[support], s.train_responses[rows][:, voxels])
    shares = hyper.support_attention(np.arange(len(voxels)))  # (V, k)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :top]
    out = []
    for i, voxel in enumerate(voxels):
        roi = s.roi_names.get(int(s.roi[voxel]), "")
        for rank, j in enumerate(order[i], start=1):
            out.append({"subject_voxel": int(voxel), "roi": roi, "rank": rank, "image_id": int(support[j]),
                        "attention_share": float(shares[i, j])})
    return out


def caption_scores(run: EncodeRun, *, progress: bool = False) -> dict[str, Any]:
    """LaVCa's Spearman vs the top-image-caption baseline and a shuffled control; planted-concept naming rate."""
    from neuroattn.encode.captioners import LocalCaptioner, StimulusCaptioner
    from neuroattn.encode.lavca import concept_naming_rate, evaluate_captions
    from neuroattn.encode.sentence_encoder import load_sentence_encoder

    captions = describe_voxels(run, progress=progress)
    settings = run.settings
    captioner = (StimulusCaptioner(run.data.stimuli) if settings.captioner is None
                 else LocalCaptioner(settings.captioner))
    test_ids = run.subject.test_ids
    test_captions = captioner.caption(test_ids, run.data.stimuli.images[test_ids])
    scores = evaluate_captions(captions, load_sentence_encoder(settings.sentence_encoder), test_captions,
                               run.responses_test)
    summary = scores.summary()
    if run.subject.concept is not None and (run.subject.concept[run.encoder.voxels] >= 0).any():
        concept_voxels = run.subject.concept[run.encoder.voxels] >= 0
        for name in ("lavca", "baseline", "shuffled"):
            summary[f"{name}_mean_concept_voxels"] = float(np.mean(getattr(scores, name)[concept_voxels]))
    out: dict[str, Any] = {"spearman": summary, "n_voxels": len(captions),
                           "clip_filter_weight": captions.clip_weight, "clip_trained": captions.clip_trained}
    concepts = run.data.concepts
    if run.subject.concept is not None and concepts:
        planted = run.subject.concept[run.encoder.voxels]
        out["concept_naming_rate"] = concept_naming_rate(captions, planted, concepts)
        out["n_concept_voxels"] = int((planted >= 0).sum())
        out["concept_chance_rate"] = _chance_naming_rate(captions, planted, concepts)
        if run.subject.noise_ceiling is not None and (planted >= 0).any():
            nc = run.subject.noise_ceiling[run.encoder.voxels]
            selective = (planted >= 0) & (nc >= np.median(nc[planted >= 0]))  # the more reliable half
            out["concept_naming_rate_selective"] = concept_naming_rate(captions, np.where(selective, planted, -1),
                                                                       concepts)
    return out


def _chance_naming_rate(captions: Any, planted: np.ndarray, concepts: list[str]) -> float:
    """The naming rate when each concept voxel's sentence is scored against a random other planted concept."""
    from neuroattn.encode.lavca import concept_naming_rate

    rng = np.random.default_rng(0)
    shuffled = np.where(planted >= 0, rng.integers(0, len(concepts), size=len(planted)), -1)
    return concept_naming_rate(captions, shuffled, concepts)


def evaluate_encoding_run(run: EncodeRun, out: str | Path, *, curve: bool = True, captions: bool | None = None,
                          figures: bool = True, progress: bool = False) -> dict[str, Any]:
    """Score the run on the subject's held-out images and write metrics.json/csv, voxel maps and plots.

    ``captions`` (default: for LaVCa runs) adds the caption evaluation; ``curve`` (BraInCoRL and prior runs) the
    in-context scaling curve against ridge, and for BraInCoRL ``support_attention.csv`` (each voxel's most
    attended images).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = run.subject.test_ids
    pred = run.encoder.predict(run.data.features.values[ids])
    r, ev = voxelwise_pearson(pred, run.responses_test), explained_variance(pred, run.responses_test)
    table = _roi_table(run, r, ev)
    label = _label(run)
    metrics: dict[str, Any] = {"model": run.encoder.model, "subject": run.subject.name,
                               "untrained": run.untrained_parts(), "n_test_images": len(ids), "rois": table,
                               "maps": {}}
    for name, values in (("pearson_r", r), ("explained_variance", ev)):
        path = save_voxel_map(run.subject, full_map(run, values), out / f"{name}_map.nii.gz")
        metrics["maps"][name] = str(path)
        if figures:
            plot_voxel_map(voxel_volume(run.subject, full_map(run, values)), out / f"{name}_map.png",
                           f"{run.encoder.model} {name} (test){label}", mni=_is_mni(run))
    pooling = run.encoder.info.get("spatial_pooling")
    if pooling:  # BraInCoRL's spatial pooling of this run's encoders, as cross-validation chose it
        metrics["spatial_pooling"] = {key: pooling[key] for key in ("sigma_mm", "mix", "folds")}
    if curve and run.encoder.model in IN_CONTEXT_MODELS:
        rows = in_context_rows(run, progress=progress)
        metrics["in_context_curve"] = rows
        atomic_write_csv(out / "in_context_curve.csv", rows)
        if run.encoder.model == "braincorl":
            atomic_write_csv(out / "support_attention.csv", support_attention_rows(run))
        if figures:
            _plot_curve(rows, out / "in_context_curve.png", f"{run.subject.name}: test-time scaling{label}",
                        run.encoder.model)
    if captions if captions is not None else run.encoder.model == "lavca":
        metrics["captions"] = caption_scores(run, progress=progress)
    atomic_write_csv(out / "metrics.csv", table)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
