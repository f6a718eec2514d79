"""The harmonization report: one self-contained HTML page with slices, histograms and the metrics table."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from neuroattn.harmonize.evaluate import metrics_table
from neuroattn.io.atomic import atomic_path
from neuroattn.viz import mid_slices, robust_window

Key = tuple[str, str, str]  # (subject, site, modality)

HEADLINE_COLUMNS = (  # (column in metrics_table, label, format)
    ("mmd_intensity", "MMD² intensity", "{:.4f}"),
    ("mmd_intensity_reduction_percent", "MMD reduction %", "{:.1f}"),
    ("mmd_learned_multi_reduction_percent", "MMD (learned, multi-bw) reduction %", "{:.1f}"),
    ("domain_accuracy", "domain clf. accuracy", "{:.3f}"),
    ("domain_auc", "domain clf. AUC", "{:.3f}"),
    ("ks", "KS", "{:.3f}"),
    ("psnr", "PSNR vs GT (dB)", "{:.2f}"),
    ("ssim", "SSIM vs GT", "{:.3f}"),
    ("dice_vs_ground_truth", "tissue Dice vs GT", "{:.3f}"),
    ("icc_median", "radiomics ICC(2,1) median", "{:.3f}"),
)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def slices_figure(
    methods: Mapping[str, Mapping[Key, np.ndarray]],
    subject: str,
    modality: str,
    sites: Sequence[str],
    ground_truth: np.ndarray | None,
) -> str:
    """Axial mid-slices of one subject: a row per method, a column per site (+ ground truth); base64 PNG."""
    plt = _pyplot()
    names = list(methods)
    cols = len(sites) + (ground_truth is not None)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.1 * cols, 2.2 * len(names)), squeeze=False)
    window = robust_window(ground_truth) if ground_truth is not None else None
    for r, name in enumerate(names):
        for c, site in enumerate(sites):
            ax = axes[r, c]
            shown = subject if (subject, site, modality) in methods[name] else next(
                (s for (s, st, m) in sorted(methods[name]) if st == site and m == modality), subject)
            vol = methods[name].get((shown, site, modality))
            if vol is not None:
                lo, hi = window or robust_window(vol)
                ax.imshow(mid_slices(vol)[2], cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(f"{name} · {site}" + ("" if shown == subject else f" ({shown})"), fontsize=7)
        if ground_truth is not None:
            lo, hi = window
            axes[r, -1].imshow(mid_slices(ground_truth)[2], cmap="gray", vmin=lo, vmax=hi, origin="lower")
            axes[r, -1].set_title("ground truth", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{subject} · {modality} (shared intensity window of the ground truth)", fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def histogram_figure(
    methods: Mapping[str, Mapping[Key, np.ndarray]],
    masks: Mapping[str, np.ndarray],
    modality: str,
    sites: Sequence[str],
) -> str:
    """In-mask intensity histograms per site (pooled over subjects), one panel per method; base64 PNG."""
    plt = _pyplot()
    names = list(methods)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        pooled = {}
        for site in sites:
            values = [v[masks[s]] for (s, st, m), v in methods[name].items() if st == site and m == modality]
            if values:
                pooled[site] = np.concatenate(values)
        if not pooled:
            continue
        lo = min(np.percentile(v, 0.5) for v in pooled.values())
        hi = max(np.percentile(v, 99.5) for v in pooled.values())
        for site, values in pooled.items():
            ax.hist(values, bins=80, range=(lo, hi), histtype="step", density=True, label=site)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.suptitle(f"{modality}: brain intensities per site", fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _fmt(value: object, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, int | float) and np.isfinite(value) else "–"


def _table_html(metrics: Mapping) -> str:
    table = metrics_table(metrics)
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in HEADLINE_COLUMNS)
    rows = []
    for method, values in table.iterrows():
        cells = []
        for column, _, fmt in HEADLINE_COLUMNS:
            cells.append(f"<td>{_fmt(values.get(column), fmt)}</td>")
        rows.append(f"<tr><th>{html.escape(str(method))}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def write_report(
    path: str | Path,
    metrics: Mapping,
    methods: Mapping[str, Mapping[Key, np.ndarray]],
    masks: Mapping[str, np.ndarray],
    *,
    ground_truth: Mapping[tuple[str, str], np.ndarray] | None = None,
    reference_site: str,
    title: str = "neuroattn harmonization report",
    notes: Sequence[str] = (),
    ablation: Mapping[str, str] | None = None,
) -> Path:
    """Write a self-contained HTML report (figures embedded) of an evaluation; returns its path.

    ``methods`` are the same (subject, site, modality) → volume maps that were evaluated; ``ablation`` maps a
    variant label (e.g. "with attention", "no attention") to the method name it was evaluated under.
    """
    keys = sorted({k for vols in methods.values() for k in vols})
    subjects = sorted({k[0] for k in keys})
    modalities = list(dict.fromkeys(k[2] for k in keys))
    sites = [reference_site, *sorted({k[1] for k in keys} - {reference_site})]
    sections = [f"<h1>{html.escape(title)}</h1>"]
    untrained = [name for name, block in metrics.get("methods", {}).items() if block.get("trained") is False]
    if untrained:
        sections.append(f"<p class='warn'>Untrained models (outputs are not harmonized): {', '.join(untrained)}</p>")
    for note in notes:
        sections.append(f"<p>{html.escape(note)}</p>")
    cohort = metrics.get("cohort", {})
    sections.append(f"<p>Reference (target) site: <b>{html.escape(reference_site)}</b> · "
                    f"{len(subjects)} subjects · sites {', '.join(map(html.escape, sites))} · "
                    f"modalities {', '.join(map(html.escape, modalities))}</p>")
    sections.append("<h2>Metrics, all methods side by side</h2>" + _table_html(metrics))
    sections.append("<p class='small'>MMD² and KS: lower is closer to the reference site; domain-classifier "
                    "accuracy near chance means the sites can no longer be told apart (subject-grouped "
                    "cross-validation, retrained on each method's output); PSNR/SSIM/Dice against ground truth "
                    "(the reference-site scan of traveling subjects) where the cohort has it.</p>")
    if ablation:
        parts = ["<h2>Attention ablation</h2><table><tr><th>variant</th>"]
        parts += [f"<th>{html.escape(label)}</th>" for _, label, _ in HEADLINE_COLUMNS] + ["</tr>"]
        relative = metrics.get("relative_to_raw", {})
        for variant, method in ablation.items():
            values = {**metrics["headline"].get(method, {}), **relative.get(method, {})}
            cells = "".join(f"<td>{_fmt(values.get(c), fmt)}</td>" for c, _, fmt in HEADLINE_COLUMNS)
            parts.append(f"<tr><th>{html.escape(variant)} ({html.escape(method)})</th>{cells}</tr>")
        sections.append("".join(parts) + "</table>")
    subject = subjects[0]
    for modality in modalities:
        gt = ground_truth.get((subject, modality)) if ground_truth else None
        sections.append(f"<h2>Before / after — {html.escape(modality)}</h2>")
        sections.append(f"<img src='data:image/png;base64,{slices_figure(methods, subject, modality, sites, gt)}'>")
        sections.append(f"<img src='data:image/png;base64,{histogram_figure(methods, masks, modality, sites)}'>")
    settings = json.dumps(metrics.get("settings", {}), indent=2)
    sections.append("<h2>Settings</h2><pre>" + html.escape(settings) + "</pre>")
    sections.append("<h2>Cohort</h2><pre>" + html.escape(json.dumps(cohort, indent=2)[:5000]) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}img{max-width:100%}.warn{color:#a00;font-weight:bold}.small{font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


__all__ = ["histogram_figure", "slices_figure", "write_report"]
