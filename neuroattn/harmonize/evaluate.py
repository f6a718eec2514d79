"""Judge harmonization methods side by side: site shift, site predictability, ground-truth fidelity, anatomy, radiomics.

Every method is given as ``{(subject, site, modality): harmonized RAS array}`` on one voxel grid per subject
(the ``"raw"`` method holds the unharmonized scans). All methods must cover the same scans. Two designs:

- paired traveling subjects: every subject scanned at every site (a complete (subject, site, modality) grid);
- unpaired: different subjects at each site (e.g. one public dataset per site). Every scanned (subject, site)
  needs every modality and every site at least 2 subjects.

What is measured, per method:

- ``mmd``: unbiased MMD^2 between the reference site's scans and each other site's (one sample = one scan),
  RBF kernel at the median heuristic and multi-bandwidth (median x 0.25..4); paired by subject with
  within-subject-swap permutation p-values (exact enumeration for up to log2(n_permutations) subjects), or,
  unpaired, each site's own subjects with a free permutation of scans between the two sites; on intensity
  features (in-mask + per-tissue quantiles) and on random-conv features (untrained); per modality and on
  all modalities concatenated per visit. Features are z-scored with pooled statistics.
- ``domain_classifier``: a site classifier retrained on this method's output (per-slice features,
  logistic regression, folds grouped by subject), scan-level accuracy/AUC with subject-bootstrap CIs.
- ``distances``: KS and Wasserstein-1 between sites' pooled in-mask intensities (each site's own
  subjects), per tissue, per pair of sites (at most ``max_voxels`` values per site and tissue, seeded).
- ``ground_truth``: PSNR and SSIM inside the mask of every non-reference scan against the ground truth of
  its subject where given (data range: in-mask p0.5..p99.5 span of the ground truth), and, for traveling
  subjects, against the method's own output for the subject's reference-site scan (fair to methods whose
  output scale differs from the scanner's). None when neither applies.
- ``dice``: GMM tissue segmentation of each non-reference scan vs the same segmentation of the ground truth,
  and vs the true tissue labels (subjects that have them).
- ``radiomics``: IBSI-style first-order + GLCM features per tissue ROI, ICC(2,1)/ICC(3,1) across sites on
  the subjects scanned at every site; None (not applicable) with fewer than 2 such subjects.

Tissue ROIs of a subject come from its ``dsegs`` entry when given, else from a GMM segmentation of its
ground truth (a T1-like modality first), else from its own scan of the first method (``"raw"`` if
present) at the reference site, or at its first site when it was not scanned at the reference site.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.evaluate_blocks import (
    ICC_THRESHOLD,
    PAIRED,
    STAGES,
    TISSUES,
    UNPAIRED,
    EvalContext,
    dice_summary,
    nanmean,
)
from neuroattn.harmonize.metrics import MULTI_BANDWIDTH_FACTORS, ROBUST_RANGE_PERCENTILES
from neuroattn.harmonize.radiomics import N_BINS
from neuroattn.harmonize.segmentation import dice_per_class, segment_tissues, tissue_order
from neuroattn.io.atomic import atomic_path, atomic_write_text
from neuroattn.progress import progress_bar

Key = tuple[str, str, str]  # (subject, site, modality)


# ------------------------------------------------------------------------------------------------- inputs


def _cohort(
    methods: Mapping[str, Mapping[Key, np.ndarray]], reference_site: str
) -> tuple[list[str], list[str], list[str], dict[str, list[str]]]:
    """Subjects, sites (reference first), modalities and each site's subjects, shared by every method.

    A complete (subject, site, modality) grid is the paired design; otherwise the cohort is unpaired and
    each scanned (subject, site) must hold every modality, each site at least 2 subjects.
    """
    if not methods:
        raise InvalidInputError("no methods to evaluate.")
    names = list(methods)
    keys = set(methods[names[0]])
    for name in names[1:]:
        if set(methods[name]) != keys:
            diff = sorted(set(methods[name]) ^ keys)[:5]
            raise InvalidInputError(f"method {name!r} covers other scans than {names[0]!r} (e.g. {diff}).")
    if not keys:
        raise InvalidInputError(f"method {names[0]!r} holds no scans.")
    subjects, sites, modalities = (sorted({k[i] for k in keys}) for i in range(3))
    visits = {(k[0], k[1]) for k in keys}
    paired = len(visits) == len(subjects) * len(sites)
    missing = [(s, site, m) for s, site in sorted(visits) for m in modalities if (s, site, m) not in keys]
    if missing:
        raise InvalidInputError(
            f"every scanned (subject, site) needs every modality {modalities}; missing {len(missing)} "
            f"(subject, site, modality): {missing[:10]}{' ...' if len(missing) > 10 else ''}."
        )
    if reference_site not in sites:
        raise InvalidInputError(f"'reference_site' must be one of {sites}. {reference_site!r} was provided.")
    if len(sites) < 2:
        raise InvalidInputError(f"evaluation needs at least 2 sites; got {sites}.")
    if len(subjects) < 2:
        raise InvalidInputError(f"evaluation needs at least 2 subjects; got {subjects}.")
    sites = [reference_site] + [s for s in sites if s != reference_site]
    present = {site: [s for s in subjects if (s, site) in visits] for site in sites}
    few = {site: subs for site, subs in present.items() if len(subs) < 2}
    if not paired and few:
        raise InvalidInputError(f"an unpaired evaluation needs at least 2 subjects per site; got {few}.")
    return subjects, sites, modalities, present


def _check_arrays(
    methods, masks, ground_truth, dsegs, subjects, modalities
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Boolean masks per subject, and the subjects with ground truth (every modality) and with tissue labels."""
    out = {}
    for s in subjects:
        if s not in masks:
            raise InvalidInputError(f"no brain mask for subject {s!r}.")
        m = np.asarray(masks[s]) > 0
        if m.ndim != 3 or not m.any():
            raise InvalidInputError(f"the brain mask of subject {s!r} must be a non-empty 3-D array; got {m.shape}.")
        out[s] = m
    for name, scans in methods.items():
        for (s, site, mod), arr in scans.items():
            arr = np.asarray(arr)
            if arr.shape != out[s].shape:
                raise InvalidInputError(f"{name} {s}/{site}/{mod}: shape {arr.shape} differs from the mask's.")
            if not np.isfinite(arr[out[s]]).all():
                raise InvalidInputError(f"{name} {s}/{site}/{mod}: NaN or infinite values inside the brain mask.")
    gt_subjects = []
    for s in subjects if ground_truth is not None else ():
        have = [m for m in modalities if (s, m) in ground_truth]
        if not have:
            continue
        for mod in modalities:
            if mod not in have:
                raise InvalidInputError(f"no ground truth for subject {s!r}, modality {mod!r} (it has {have}).")
            if np.asarray(ground_truth[(s, mod)]).shape != out[s].shape:
                raise InvalidInputError(f"ground truth {s}/{mod} has another shape than the mask.")
        gt_subjects.append(s)
    if ground_truth is not None and not gt_subjects:
        raise InvalidInputError(f"the ground truth covers none of the subjects {subjects} and modalities {modalities}.")
    dseg_subjects = [s for s in subjects if dsegs is not None and s in dsegs]
    for s in dseg_subjects:
        if np.asarray(dsegs[s]).shape != out[s].shape:
            raise InvalidInputError(f"no tissue labels of the mask's shape for subject {s!r}.")
    if dsegs is not None and not dseg_subjects:
        raise InvalidInputError(f"the tissue labels cover none of the subjects {subjects}.")
    return out, gt_subjects, dseg_subjects


def _pick_modality(modalities: list[str]) -> str:
    for mod in modalities:
        try:
            if tissue_order(mod) == (1, 2, 3):  # T1-like: best tissue contrast for one-channel GMM
                return mod
        except InvalidInputError:
            continue
    return modalities[0]


def _tissue_labels(methods: Mapping, ctx: EvalContext) -> tuple[dict[str, np.ndarray], str]:
    """Tissue ROIs per subject (true labels, else GMM of its ground truth, else GMM of its own scan), and
    where they came from."""
    mod = _pick_modality(ctx.modalities)
    first = "raw" if "raw" in methods else next(iter(methods))
    labels, sources = {}, {}
    for s in ctx.subjects:
        if ctx.dsegs is not None and s in ctx.dsegs:
            labels[s], sources[s] = ctx.dsegs[s], "dsegs (true tissue labels)"
        elif ctx.gt_seg is not None and (s, mod) in ctx.gt_seg:
            labels[s], sources[s] = ctx.gt_seg[(s, mod)], f"GMM segmentation of the ground truth ({mod})"
        else:
            site = next(site for site in ctx.sites if s in ctx.present[site])  # reference site when scanned there
            labels[s] = segment_tissues(methods[first][(s, site, mod)], ctx.masks[s], mod)
            sources[s] = f"GMM segmentation of {first!r} {site} {mod} scans"
    kinds = list(dict.fromkeys(sources.values()))
    counts = {k: sum(v == k for v in sources.values()) for k in kinds}
    source = kinds[0] if len(kinds) == 1 else "; ".join(f"{k} for {counts[k]} subjects" for k in kinds)
    return {s: np.where(ctx.masks[s], labels[s], 0) for s in ctx.subjects}, source


# ---------------------------------------------------------------------------------------------- summaries


def _jsonable(obj):
    """Plain-Python copy of ``obj``: numpy scalars/arrays unpacked, tuples as lists, NaN/inf as None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _headline(block: dict, ctx: EvalContext) -> dict[str, float | None]:
    """One flat dict of headline numbers; ground-truth keys only where measured, ICC None if not applicable."""
    h: dict[str, float | None] = {}
    for space in ("intensity", "learned"):
        per_site = block["mmd"][space]["all"]
        for kernel, suffix in (("median", ""), ("multi", "_multi")):
            h[f"mmd_{space}{suffix}"] = nanmean(per_site[s][kernel]["mmd2"] for s in ctx.others)
            h[f"mmd_{space}{suffix}_p"] = max(per_site[s][kernel]["p_value"] for s in ctx.others)
    dc = block["domain_classifier"]["all"]
    h.update(
        domain_accuracy=dc["accuracy"],
        domain_accuracy_ci_low=dc["accuracy_ci"][0],
        domain_accuracy_ci_high=dc["accuracy_ci"][1],
        domain_auc=dc["auc"],
        domain_chance=dc["chance"],
        domain_accuracy_p=dc["accuracy_p_value"],
    )
    tissue_cells = [cell[t] for pair in block["distances"].values() for cell in pair.values() for t in TISSUES.values()]
    h["ks"] = nanmean(c["ks"] for c in tissue_cells)
    h["wasserstein_normalized"] = nanmean(c["wasserstein_normalized"] for c in tissue_cells)
    gt = (block.get("ground_truth") or {}).get("all", {})
    for k in ("psnr", "ssim", "psnr_vs_method_reference", "ssim_vs_method_reference"):
        if k in gt:
            h[k] = gt[k]["mean"]
    for k in ("vs_ground_truth", "vs_dseg"):
        if k in (block.get("dice") or {}):
            h[f"dice_{k}"] = block["dice"][k]["all"]["mean"]["mean"]
    icc = (block.get("radiomics") or {}).get("summary")
    above = f"fraction_above_{ICC_THRESHOLD:g}"
    h["icc_median"] = icc["icc2_1"]["median"] if icc else None
    h[f"icc_{above}"] = icc["icc2_1"][above] if icc else None
    h["icc3_median"] = icc["icc3_1"]["median"] if icc else None
    return h


def _relative(h: dict[str, float | None], raw: dict[str, float | None]) -> dict[str, float | None]:
    """Changes vs the raw scans: % reductions for distances (None if raw's is <= 0), differences for scores.

    A method's negative MMD^2 estimate enters the reduction as 0 (``100 * (1 - max(mmd, 0) / mmd_raw)``).
    """

    def finite(key: str) -> bool:
        return h.get(key) is not None and raw.get(key) is not None and np.isfinite(h[key]) and np.isfinite(raw[key])

    out: dict[str, float | None] = {}
    for key, name in (
        ("mmd_intensity", "mmd_intensity_reduction_percent"),
        ("mmd_intensity_multi", "mmd_intensity_multi_reduction_percent"),
        ("mmd_learned", "mmd_learned_reduction_percent"),
        ("mmd_learned_multi", "mmd_learned_multi_reduction_percent"),
        ("ks", "ks_reduction_percent"),
        ("wasserstein_normalized", "wasserstein_reduction_percent"),
    ):
        # A negative unbiased MMD^2 (no detectable difference) counts as 0, so reductions stop at 100 %.
        out[name] = 100.0 * (1.0 - max(h[key], 0.0) / raw[key]) if finite(key) and raw[key] > 0 else None
    for key, name in (
        ("domain_accuracy", "domain_accuracy_change"),
        ("domain_auc", "domain_auc_change"),
        ("psnr", "psnr_change_db"),
        ("psnr_vs_method_reference", "psnr_vs_method_reference_change_db"),
        ("ssim", "ssim_change"),
        ("ssim_vs_method_reference", "ssim_vs_method_reference_change"),
        ("dice_vs_ground_truth", "dice_vs_ground_truth_change"),
        ("dice_vs_dseg", "dice_vs_dseg_change"),
        ("icc_median", "icc_median_change"),
    ):
        if key in h:
            out[name] = h[key] - raw[key] if finite(key) else None
    return out


def _run_stages(methods: Mapping, ctx: EvalContext, results: dict, runtime: dict, progress: bool) -> None:
    """Run every stage on every method, filling ``results`` and ``runtime`` (seconds per stage)."""
    bar = progress_bar(total=len(methods) * len(STAGES), desc="evaluating", unit="step", disable=not progress)
    for name, scans in methods.items():
        block, runtime[name] = {}, {}
        for key, fn in STAGES.items():
            bar.set_postfix_str(f"{name}: {key}")
            t0 = time.perf_counter()
            block[key] = fn(scans, ctx)
            runtime[name][key] = time.perf_counter() - t0
            bar.update(1)
        runtime[name]["total"] = sum(runtime[name].values())
        results[name] = block
    bar.close()


# ------------------------------------------------------------------------------------------------ public


def evaluate_harmonization(
    methods: Mapping[str, Mapping[Key, np.ndarray]],
    *,
    masks: Mapping[str, np.ndarray],
    ground_truth: Mapping[tuple[str, str], np.ndarray] | None = None,
    dsegs: Mapping[str, np.ndarray] | None = None,
    reference_site: str,
    seed: int = 0,
    n_permutations: int = 1000,
    n_bootstrap: int = 1000,
    n_label_permutations: int = 0,
    classifier: str = "logistic",
    max_voxels: int = 100_000,
    radiomics_bins: int = N_BINS,
    progress: bool = True,
) -> dict:
    """Evaluate every harmonization method on the same scans and return a JSON-ready nested dict.

    Parameters
    ----------
    methods : ``{method: {(subject, site, modality): ndarray (X, Y, Z)}}``
        Harmonized RAS volumes; ``"raw"`` (the unharmonized scans), if present, is the baseline of
        ``relative_to_raw``. Every method must hold the same scans: either every (subject, site, modality)
        (paired traveling subjects) or, unpaired, every modality of each scanned (subject, site) with at
        least 2 subjects per site.
    masks : ``{subject: ndarray (X, Y, Z)}`` brain masks (non-zero = brain).
    ground_truth : ``{(subject, modality): ndarray (X, Y, Z)}``, optional
        The subject scanned at the reference site; enables PSNR/SSIM and Dice vs GT for the subjects it
        covers (each with every modality; subjects without any are skipped).
    dsegs : ``{subject: ndarray (X, Y, Z)}``, optional
        True tissue labels (0 background, 1 CSF, 2 GM, 3 WM) of some or all subjects; their tissue ROIs and
        Dice vs the true labels.
    reference_site : the site every other site is compared with (the harmonization target).
    n_permutations, n_bootstrap : MMD permutations and domain-classifier bootstrap resamples (both seeded).
    n_label_permutations : if > 0, the all-modality site classifier is rerun on this many within-subject
        site-label shuffles for a p-value of its accuracy (costs that many extra cross-validations; paired
        design only).
    max_voxels : KS/Wasserstein use at most this many pooled voxels per site and tissue (seeded subsample).

    Returns
    -------
    dict with ``settings``, ``cohort``, ``reference`` (segmentation ceiling), ``methods`` (every block per
    method), ``headline`` (one flat dict of headline numbers per method), ``relative_to_raw`` and
    ``runtime_s``. NaN and infinities are stored as None.
    """
    subjects, sites, modalities, present = _cohort(methods, reference_site)
    bool_masks, gt_subjects, dseg_subjects = _check_arrays(methods, masks, ground_truth, dsegs, subjects, modalities)
    paired = all(len(present[site]) == len(subjects) for site in sites)
    settings = _settings(
        {
            "seed": seed,
            "n_permutations": n_permutations,
            "n_bootstrap": n_bootstrap,
            "n_label_permutations": n_label_permutations,
            "classifier": classifier,
            "max_voxels": max_voxels,
            "radiomics_bins": radiomics_bins,
        },
        paired,
    )
    dseg_arrays = {s: np.asarray(dsegs[s]).astype(np.int64) for s in dseg_subjects} if dseg_subjects else None
    gt, gt_seg = None, None
    if gt_subjects:
        gt = {(s, m): ground_truth[(s, m)] for s, m in itertools.product(gt_subjects, modalities)}
        gt_seg = {k: segment_tissues(v, bool_masks[k[0]], k[1], seed=seed) for k, v in gt.items()}
    ctx = EvalContext(subjects, sites, modalities, present, bool_masks, {}, gt, gt_seg, dseg_arrays, settings)
    ctx.labels, source = _tissue_labels(methods, ctx)
    common = ctx.common_subjects
    settings["radiomics_icc"] = (
        f"across sites on the {len(common)} subjects scanned at every site"
        if len(common) >= 2
        else f"not applicable: ICC across sites needs at least 2 subjects scanned at every site; {len(common)} are"
    )

    reference: dict = {}
    both = [s for s in gt_subjects if s in dseg_subjects]
    if both:
        reference["dice_ground_truth_segmentation_vs_dseg"] = {
            mod: dice_summary([dice_per_class(gt_seg[(s, mod)], dseg_arrays[s]) for s in both]) for mod in modalities
        }
    results, runtime = {}, {}
    with threadpool_limits(1):  # many small BLAS calls (classifier, GMM): one thread avoids contention
        _run_stages(methods, ctx, results, runtime, progress)
    headline = {name: _headline(block, ctx) for name, block in results.items()}
    relative = {name: _relative(h, headline["raw"]) for name, h in headline.items()} if "raw" in headline else {}
    return _jsonable(
        {
            "settings": settings,
            "cohort": {
                "design": PAIRED if paired else UNPAIRED,
                "subjects": subjects,
                "sites": sites,
                "subjects_per_site": present,
                "modalities": modalities,
                "reference_site": reference_site,
                "tissue_labels": source,
                "ground_truth_subjects": gt_subjects,
                "n_scans": sum(len(v) for v in present.values()) * len(modalities),
                "shape": list(bool_masks[subjects[0]].shape),
            },
            "reference": reference,
            "methods": results,
            "headline": headline,
            "relative_to_raw": relative,
            "runtime_s": runtime,
        }
    )


def _settings(args: Mapping, paired: bool) -> dict:
    """The evaluation's arguments ``args`` and a plain-words description of each measurement."""
    settings = dict(args)
    kernels = (f"kernels: 'median' = RBF at the median pairwise distance, 'multi' = sum of RBFs at median x "
               f"{MULTI_BANDWIDTH_FACTORS}")
    settings.update(
        mmd="unbiased MMD^2, one sample per scan, paired by subject (cross term skips same-subject pairs; null = "
        "within-subject site swaps, exact when 2^n_subjects <= n_permutations), features z-scored with pooled "
        "statistics; " + kernels
        if paired
        else "unbiased MMD^2, one sample per scan, each site's own subjects (unpaired; null = n_permutations random "
        "relabelings of the pooled scans; with n scans per site the smallest attainable p is about 2 / C(2n, n), "
        "0.1 for n = 3, 0.03 for n = 4), features z-scored with pooled statistics; " + kernels,
        learned_features="random-conv features (untrained): seeded 3-layer CNN on axial slices, pooled per scan",
        domain_classifier="per-axial-slice features, folds grouped by subject, scan level = mean slice "
        "probability; accuracy/AUC on pooled out-of-fold predictions, 95% CI by subject bootstrap",
        data_range="PSNR/SSIM data range = in-mask p{}..p{} span of the comparison target".format(
            *ROBUST_RANGE_PERCENTILES
        ),
        subsampling=f"KS/Wasserstein: at most {args['max_voxels']} pooled voxels per site, modality and tissue "
        "(seeded); GMM segmentation fitted on 20000 in-mask voxels (seeded), applied to all",
        icc="ICC(2,1) two-way random, absolute agreement (headline); ICC(3,1) consistency also given",
        design=PAIRED if paired else UNPAIRED,
    )
    if not paired:
        settings["unpaired"] = (
            "different subjects per site: MMD and KS/Wasserstein compare each site's own subjects; the domain "
            "classifier sees each scanned (subject, site), grouped by subject; no label-permutation p-value (its "
            "null shuffles sites within a subject); no PSNR/SSIM vs the method's own reference-site scan (needs the "
            "same subject there); PSNR/SSIM/Dice vs ground truth only for subjects that have it"
        )
    return settings


def write_metrics_json(metrics: Mapping, path: str | Path) -> Path:
    """Write ``metrics`` as strict JSON (NaN/inf become null) atomically; returns the path."""
    text = json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def metrics_table(metrics: Mapping) -> pd.DataFrame:
    """Methods as rows, headline metrics and their changes vs raw as columns (None -> NaN)."""
    rows = {}
    for name, h in metrics["headline"].items():
        rows[name] = {**h, **metrics.get("relative_to_raw", {}).get(name, {})}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table.astype(float)


def write_metrics_csv(metrics: Mapping, path: str | Path) -> Path:
    """Write :func:`metrics_table` as CSV atomically; returns the path."""
    target = Path(path)
    with atomic_path(target) as tmp:
        metrics_table(metrics).to_csv(tmp)
    return target


__all__ = ["evaluate_harmonization", "metrics_table", "write_metrics_csv", "write_metrics_json"]
