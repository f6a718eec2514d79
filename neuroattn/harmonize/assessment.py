"""Evaluate harmonized NIfTI outputs on disk against the raw cohort: metrics.json, metrics.csv, report.html."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.evaluate import evaluate_harmonization, write_metrics_csv, write_metrics_json
from neuroattn.harmonize.report import write_report
from neuroattn.io.manifest import Manifest, load_manifest
from neuroattn.io.nifti import load_volume

Key = tuple[str, str, str]  # (subject, site, modality)


@dataclass
class LoadedEvaluation:
    """Every method's volumes keyed by (subject, site, modality), plus masks, ground truth and tissue labels."""

    methods: dict[str, dict[Key, np.ndarray]]
    masks: dict[str, np.ndarray]
    ground_truth: dict[tuple[str, str], np.ndarray] | None
    dsegs: dict[str, np.ndarray] | None
    reference_site: str


@dataclass
class EvaluationFiles:
    """Where an evaluation wrote its outputs, with the metrics it computed."""

    metrics_json: Path
    metrics_csv: Path
    report_html: Path
    metrics: dict


def load_for_evaluation(
    manifest: Manifest,
    harmonized: Mapping[str, str | Path],
    *,
    reference_site: str | None = None,
    subjects: Sequence[str] | None = None,
) -> LoadedEvaluation:
    """Load raw scans (from the manifest) and each method's outputs (same relative layout under its folder).

    Masks come from the manifest's ``mask`` column (one per subject), ground truth from ``ground_truth`` and
    tissue labels from ``dseg_path`` when present. Volumes of one subject must share a grid across sites
    (traveling subjects, or co-registered data). Cohorts with different subjects at each site (e.g. one
    BraTS-style dataset per site) are evaluated as unpaired (see :func:`evaluate_harmonization`).
    """
    rows = [r for r in manifest if subjects is None or r.subject in set(subjects)]
    if not rows:
        raise InvalidInputError("no manifest rows left to evaluate", manifest.source)
    reference = reference_site or manifest.sites[0]
    methods: dict[str, dict[Key, np.ndarray]] = {"raw": {}}
    methods.update({name: {} for name in harmonized})
    masks: dict[str, np.ndarray] = {}
    ground_truth: dict[tuple[str, str], np.ndarray] = {}
    dsegs: dict[str, np.ndarray] = {}
    for row in rows:
        key = (row.subject, row.site, row.modality or "scan")
        methods["raw"][key] = load_volume(row.path, ndim=3).data
        for name, folder in harmonized.items():
            out = Path(folder) / row.output_relpath()
            if not out.is_file():
                raise InvalidInputError(f"no '{name}' output for {row.relative_path} (was apply run on it?)", out)
            methods[name][key] = load_volume(out, ndim=3).data
        if row.subject not in masks:
            if row.extras.get("mask"):
                masks[row.subject] = load_volume(row.extras["mask"], ndim=3).data > 0.5
            else:
                raw = methods["raw"][key]
                masks[row.subject] = raw > 0.1 * np.percentile(raw, 99)
        if row.extras.get("ground_truth") and (row.subject, key[2]) not in ground_truth:
            ground_truth[(row.subject, key[2])] = load_volume(row.extras["ground_truth"], ndim=3).data
        if row.extras.get("dseg_path") and row.subject not in dsegs:
            dsegs[row.subject] = np.rint(load_volume(row.extras["dseg_path"], ndim=3).data).astype(np.int16)
    return LoadedEvaluation(methods, masks, ground_truth or None, dsegs or None, reference)


def evaluate_outputs(
    manifest_path: str | Path | Manifest,
    harmonized: Mapping[str, str | Path],
    out: str | Path,
    *,
    reference_site: str | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
    n_permutations: int = 1000,
    ablation: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    trained: Mapping[str, bool] | None = None,
    progress: bool = True,
) -> EvaluationFiles:
    """Evaluate raw + every harmonized folder; write ``metrics.json`` (at ``out``), ``metrics.csv`` and
    ``report.html`` beside it. ``trained`` flags methods whose model was untrained (shown in the report);
    ``ablation`` maps variant labels to evaluated method names for the report's ablation table."""
    out = Path(out)
    metrics_json = out if out.suffix == ".json" else out / "metrics.json"
    manifest = manifest_path if isinstance(manifest_path, Manifest) else load_manifest(manifest_path)
    loaded = load_for_evaluation(manifest, harmonized, reference_site=reference_site,
                                 subjects=subjects)
    metrics = evaluate_harmonization(
        loaded.methods, masks=loaded.masks, ground_truth=loaded.ground_truth, dsegs=loaded.dsegs,
        reference_site=loaded.reference_site, seed=seed, n_permutations=n_permutations, progress=progress,
    )
    for name, flag in (trained or {}).items():
        metrics["methods"].setdefault(name, {})["trained"] = bool(flag)
    write_metrics_json(metrics, metrics_json)
    metrics_csv = write_metrics_csv(metrics, metrics_json.with_suffix(".csv"))
    report = write_report(
        metrics_json.parent / "report.html", metrics, loaded.methods, loaded.masks,
        ground_truth=loaded.ground_truth, reference_site=loaded.reference_site, ablation=ablation, notes=notes,
    )
    return EvaluationFiles(metrics_json, metrics_csv, report, metrics)
