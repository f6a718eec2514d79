"""Judge harmonization methods side by side: site shift, site predictability, ground-truth fidelity, anatomy, radiomics.

Every method is given as ``{(subject, site, modality): harmonized RAS array}`` on one voxel grid per subject
(the ``"raw"`` method holds the unharmonized scans). All methods must cover the same scans. What is
measured, per method:

- ``mmd``: unbiased MMD^2 between the reference site's scans and each other site's (one sample = one scan,
  paired by subject), RBF kernel at the median heuristic and multi-bandwidth (median x 0.25..4), paired
  permutation p-values (within-subject swaps; exact enumeration for up to log2(n_permutations) subjects); on
  intensity features (in-mask + per-tissue quantiles) and on random-conv features (untrained); per
  modality and on all modalities concatenated per visit. Features are z-scored with pooled statistics.
- ``domain_classifier``: a site classifier retrained on this method's output (per-slice features,
  logistic regression, folds grouped by subject), scan-level accuracy/AUC with subject-bootstrap CIs.
- ``distances``: KS and Wasserstein-1 between sites' pooled in-mask intensities, per tissue, per pair of
  sites (at most ``max_voxels`` values per site and tissue, seeded subsample).
- ``ground_truth``: PSNR and SSIM inside the mask of every non-reference scan against the ground truth
  (data range: in-mask p0.5..p99.5 span of the ground truth), and against the method's own output for the
  subject's reference-site scan (fair to methods whose output scale differs from the scanner's).
- ``dice``: GMM tissue segmentation of each non-reference scan vs the same segmentation of the ground truth,
  and vs the true tissue labels.
- ``radiomics``: IBSI-style first-order + GLCM features per tissue ROI, ICC(2,1)/ICC(3,1) across sites.

Tissue ROIs come from ``dsegs`` when given, else from a GMM segmentation of the ground truth (a T1-like
modality first), else from one of the reference-site scans of the first method (``"raw"`` if present).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.domain import cross_validate_domain, slice_features
from neuroattn.harmonize.metrics import (
    MULTI_BANDWIDTH_FACTORS,
    ROBUST_RANGE_PERCENTILES,
    distribution_distances,
    intensity_features,
    learned_features,
    mmd_test,
    psnr_in_mask,
    robust_range,
    ssim_in_mask,
    tissue_values,
)
from neuroattn.harmonize.radiomics import N_BINS, radiomic_features, radiomic_reproducibility, summarize_icc
from neuroattn.harmonize.segmentation import dice_per_class, segment_tissues, tissue_order
from neuroattn.io.atomic import atomic_path, atomic_write_text

Key = tuple[str, str, str]  # (subject, site, modality)
TISSUES = {1: "csf", 2: "gm", 3: "wm"}
ICC_THRESHOLD = 0.75


# ------------------------------------------------------------------------------------------------- inputs


def _cohort(methods: Mapping[str, Mapping[Key, np.ndarray]], reference_site: str) -> tuple[list, list, list]:
    """Subjects, sites (reference first) and modalities of a complete grid shared by every method."""
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
    missing = [k for k in itertools.product(subjects, sites, modalities) if k not in keys]
    if missing:
        raise InvalidInputError(f"every subject needs every site and modality; missing {missing[:5]}.")
    if reference_site not in sites:
        raise InvalidInputError(f"'reference_site' must be one of {sites}. {reference_site!r} was provided.")
    if len(sites) < 2:
        raise InvalidInputError(f"evaluation needs at least 2 sites; got {sites}.")
    if len(subjects) < 2:
        raise InvalidInputError(f"evaluation needs at least 2 subjects; got {subjects}.")
    sites = [reference_site] + [s for s in sites if s != reference_site]
    return subjects, sites, modalities


def _check_arrays(methods, masks, ground_truth, dsegs, subjects, modalities) -> dict[str, np.ndarray]:
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
    for s, mod in itertools.product(subjects, modalities) if ground_truth is not None else ():
        if (s, mod) not in ground_truth:
            raise InvalidInputError(f"no ground truth for subject {s!r}, modality {mod!r}.")
        if np.asarray(ground_truth[(s, mod)]).shape != out[s].shape:
            raise InvalidInputError(f"ground truth {s}/{mod} has another shape than the mask.")
    for s in subjects if dsegs is not None else ():
        if s not in dsegs or np.asarray(dsegs[s]).shape != out[s].shape:
            raise InvalidInputError(f"no tissue labels of the mask's shape for subject {s!r}.")
    return out


def _pick_modality(modalities: list[str]) -> str:
    for mod in modalities:
        try:
            if tissue_order(mod) == (1, 2, 3):  # T1-like: best tissue contrast for one-channel GMM
                return mod
        except InvalidInputError:
            continue
    return modalities[0]


# ---------------------------------------------------------------------------------------------- summaries


def _mean_sd(values) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def _nanmean(values) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


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


# ------------------------------------------------------------------------------------------ method blocks


@dataclass
class _Context:
    """What every method is judged against: the cohort, masks, tissue ROIs, ground truth and settings."""

    subjects: list[str]
    sites: list[str]  # reference first
    modalities: list[str]
    masks: dict[str, np.ndarray]  # subject -> bool (X, Y, Z)
    labels: dict[str, np.ndarray]  # subject -> tissue ROIs (X, Y, Z), 0 outside the mask
    ground_truth: Mapping[tuple[str, str], np.ndarray] | None
    gt_seg: dict[tuple[str, str], np.ndarray] | None  # (subject, modality) -> GMM labels of the ground truth
    dsegs: dict[str, np.ndarray] | None
    s: dict  # settings

    @property
    def reference(self) -> str:
        return self.sites[0]

    @property
    def others(self) -> list[str]:
        return self.sites[1:]


def _mmd_block(feats: dict[Key, np.ndarray], ctx: _Context) -> dict:
    out: dict[str, dict] = {}
    for mod in [*ctx.modalities, "all"]:
        mods = ctx.modalities if mod == "all" else [mod]

        def sample(site: str, mods: list[str] = mods) -> np.ndarray:
            return np.stack([np.concatenate([feats[(s, site, m)] for m in mods]) for s in ctx.subjects])

        x = sample(ctx.reference)
        out[mod] = {
            site: {
                kernel: mmd_test(
                    x,
                    sample(site),
                    kernel=kernel,
                    n_permutations=ctx.s["n_permutations"],
                    seed=ctx.s["seed"],
                    paired=True,  # row i of both samples is subject i (traveling subjects)
                ).to_dict()
                for kernel in ("median", "multi")
            }
            for site in ctx.others
        }
    return out


def _domain_block(scans: Mapping[Key, np.ndarray], ctx: _Context) -> dict:
    per_scan = {k: slice_features(v, ctx.masks[k[0]])[0] for k, v in scans.items()}  # (S, F) each
    out = {}
    for mod in [*ctx.modalities, "all"]:
        mods = ctx.modalities if mod == "all" else [mod]
        feats, labels, groups, scan_ids = [], [], [], []
        for s, site in itertools.product(ctx.subjects, ctx.sites):
            f = np.concatenate([per_scan[(s, site, m)] for m in mods], axis=1)  # (S, F * len(mods))
            feats.append(f)
            labels += [site] * len(f)
            groups += [s] * len(f)
            scan_ids += [f"{s}|{site}"] * len(f)
        res = cross_validate_domain(
            np.concatenate(feats),
            labels,
            groups,
            scan_ids,
            classifier=ctx.s["classifier"],
            n_bootstrap=ctx.s["n_bootstrap"],
            n_label_permutations=ctx.s["n_label_permutations"] if mod == "all" else 0,
            seed=ctx.s["seed"],
        )
        out[mod] = res.to_dict()
    return out


def _distance_block(scans: Mapping[Key, np.ndarray], ctx: _Context) -> dict:
    out: dict[str, dict] = {}
    for mod in ctx.modalities:
        pooled = {}
        for site in ctx.sites:
            parts = [tissue_values(scans[(s, site, mod)], ctx.masks[s], ctx.labels[s]) for s in ctx.subjects]
            pooled[site] = {t: np.concatenate([p[t] for p in parts]) for t in ["all", *TISSUES.values()]}
        for a, b in itertools.combinations(ctx.sites, 2):
            both = np.concatenate([pooled[a]["all"], pooled[b]["all"]])
            scale = float(both.std())
            pair = out.setdefault(f"{a}-vs-{b}", {})
            pair[mod] = {
                t: distribution_distances(
                    pooled[a][t], pooled[b][t], scale=scale, max_samples=ctx.s["max_voxels"], seed=ctx.s["seed"]
                )
                for t in ["all", *TISSUES.values()]
            }
    return out


def _ground_truth_block(scans: Mapping[Key, np.ndarray], ctx: _Context) -> dict:
    rows = []
    for s, site, mod in itertools.product(ctx.subjects, ctx.others, ctx.modalities):
        pred, mask, own_ref = scans[(s, site, mod)], ctx.masks[s], scans[(s, ctx.reference, mod)]
        row = {"modality": mod, "site": site}
        if ctx.ground_truth is not None:
            gt = ctx.ground_truth[(s, mod)]
            r = robust_range(gt, mask)
            row.update(psnr=psnr_in_mask(pred, gt, mask, r), ssim=ssim_in_mask(pred, gt, mask, r))
        r = robust_range(own_ref, mask)
        row.update(
            psnr_vs_method_reference=psnr_in_mask(pred, own_ref, mask, r),
            ssim_vs_method_reference=ssim_in_mask(pred, own_ref, mask, r),
        )
        rows.append(row)
    metrics = [k for k in rows[0] if k not in ("modality", "site")]
    out = {mod: {k: _mean_sd(r[k] for r in rows if r["modality"] == mod) for k in metrics} for mod in ctx.modalities}
    out["all"] = {k: _mean_sd(r[k] for r in rows) for k in metrics}
    return out


def _dice_summary(rows: list[dict[int, float]]) -> dict:
    out = {TISSUES[t]: _mean_sd(r[t] for r in rows) for t in TISSUES}
    out["mean"] = _mean_sd(_nanmean(r.values()) for r in rows)
    return out


def _dice_block(scans: Mapping[Key, np.ndarray], ctx: _Context) -> dict:
    vs_gt: dict[str, list] = {m: [] for m in ctx.modalities}
    vs_dseg: dict[str, list] = {m: [] for m in ctx.modalities}
    for s, site, mod in itertools.product(ctx.subjects, ctx.others, ctx.modalities):
        seg = segment_tissues(scans[(s, site, mod)], ctx.masks[s], mod, seed=ctx.s["seed"])
        if ctx.gt_seg is not None:
            vs_gt[mod].append(dice_per_class(seg, ctx.gt_seg[(s, mod)]))
        if ctx.dsegs is not None:
            vs_dseg[mod].append(dice_per_class(seg, ctx.dsegs[s]))
    out = {}
    for name, table in (("vs_ground_truth", vs_gt), ("vs_dseg", vs_dseg)):
        if any(table.values()):
            block = {mod: _dice_summary(rows) for mod, rows in table.items()}
            block["all"] = _dice_summary([r for rows in table.values() for r in rows])
            out[name] = block
    return out


def _radiomics_block(scans: Mapping[Key, np.ndarray], ctx: _Context) -> dict:
    by_site: dict[str, dict[str, dict[str, float]]] = {site: {} for site in ctx.sites}
    for s, site, mod in itertools.product(ctx.subjects, ctx.sites, ctx.modalities):
        feats = radiomic_features(scans[(s, site, mod)], ctx.labels[s], TISSUES, ctx.s["radiomics_bins"])
        by_site[site].setdefault(s, {}).update({f"{mod}/{k}": v for k, v in feats.items()})
    per_feature = radiomic_reproducibility(by_site)
    return {"summary": summarize_icc(per_feature, ICC_THRESHOLD), "per_feature": per_feature}


def _headline(block: dict, ctx: _Context) -> dict[str, float]:
    h: dict[str, float] = {}
    for space in ("intensity", "learned"):
        per_site = block["mmd"][space]["all"]
        for kernel, suffix in (("median", ""), ("multi", "_multi")):
            h[f"mmd_{space}{suffix}"] = _nanmean(per_site[s][kernel]["mmd2"] for s in ctx.others)
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
    h["ks"] = _nanmean(c["ks"] for c in tissue_cells)
    h["wasserstein_normalized"] = _nanmean(c["wasserstein_normalized"] for c in tissue_cells)
    gt = block["ground_truth"]["all"]
    for k in ("psnr", "ssim", "psnr_vs_method_reference", "ssim_vs_method_reference"):
        if k in gt:
            h[k] = gt[k]["mean"]
    for k in ("vs_ground_truth", "vs_dseg"):
        if k in block["dice"]:
            h[f"dice_{k}"] = block["dice"][k]["all"]["mean"]["mean"]
    icc = block["radiomics"]["summary"]
    h["icc_median"] = icc["icc2_1"]["median"]
    h[f"icc_fraction_above_{ICC_THRESHOLD:g}"] = icc["icc2_1"][f"fraction_above_{ICC_THRESHOLD:g}"]
    h["icc3_median"] = icc["icc3_1"]["median"]
    return h


def _relative(h: dict[str, float], raw: dict[str, float]) -> dict[str, float | None]:
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


def _mmd_stage(scans: Mapping[Key, np.ndarray], ctx: _Context) -> dict:
    keys = list(itertools.product(ctx.subjects, ctx.sites, ctx.modalities))
    feats = {k: intensity_features(scans[k], ctx.masks[k[0]], ctx.labels[k[0]]) for k in keys}
    learned = learned_features([scans[k] for k in keys], [ctx.masks[k[0]] for k in keys], seed=ctx.s["seed"])
    return {"intensity": _mmd_block(feats, ctx), "learned": _mmd_block(dict(zip(keys, learned, strict=True)), ctx)}


_STAGES = {  # output key -> stage; each gets (scans, ctx)
    "mmd": _mmd_stage,
    "domain_classifier": _domain_block,
    "distances": _distance_block,
    "ground_truth": _ground_truth_block,
    "dice": _dice_block,
    "radiomics": _radiomics_block,
}


def _run_stages(methods: Mapping, ctx: _Context, results: dict, runtime: dict, progress: bool) -> None:
    """Run every stage on every method, filling ``results`` and ``runtime`` (seconds per stage)."""
    bar = tqdm(total=len(methods) * len(_STAGES), desc="evaluating", unit="step", disable=not progress)
    for name, scans in methods.items():
        block, runtime[name] = {}, {}
        for key, fn in _STAGES.items():
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
        ``relative_to_raw``. Every method must hold every (subject, site, modality).
    masks : ``{subject: ndarray (X, Y, Z)}`` brain masks (non-zero = brain).
    ground_truth : ``{(subject, modality): ndarray (X, Y, Z)}``, optional
        The subject scanned at the reference site (traveling subjects); enables PSNR/SSIM and Dice vs GT.
    dsegs : ``{subject: ndarray (X, Y, Z)}``, optional
        True tissue labels (0 background, 1 CSF, 2 GM, 3 WM); tissue ROIs and Dice vs the true labels.
    reference_site : the site every other site is compared with (the harmonization target).
    n_permutations, n_bootstrap : MMD permutations and domain-classifier bootstrap resamples (both seeded).
    n_label_permutations : if > 0, the all-modality site classifier is rerun on this many within-subject
        site-label shuffles for a p-value of its accuracy (costs that many extra cross-validations).
    max_voxels : KS/Wasserstein use at most this many pooled voxels per site and tissue (seeded subsample).

    Returns
    -------
    dict with ``settings``, ``cohort``, ``reference`` (segmentation ceiling), ``methods`` (every block per
    method), ``headline`` (one flat dict of headline numbers per method), ``relative_to_raw`` and
    ``runtime_s``. NaN and infinities are stored as None.
    """
    subjects, sites, modalities = _cohort(methods, reference_site)
    bool_masks = _check_arrays(methods, masks, ground_truth, dsegs, subjects, modalities)
    settings = {
        "seed": seed,
        "n_permutations": n_permutations,
        "n_bootstrap": n_bootstrap,
        "n_label_permutations": n_label_permutations,
        "classifier": classifier,
        "max_voxels": max_voxels,
        "radiomics_bins": radiomics_bins,
        "mmd": "unbiased MMD^2, one sample per scan, paired by subject (cross term skips same-subject pairs; null = "
        "within-subject site swaps, exact when 2^n_subjects <= n_permutations), features z-scored with pooled "
        "statistics; kernels: "
        f"'median' = RBF at the median pairwise distance, 'multi' = sum of RBFs at median x {MULTI_BANDWIDTH_FACTORS}",
        "learned_features": "random-conv features (untrained): seeded 3-layer CNN on axial slices, pooled per scan",
        "domain_classifier": "per-axial-slice features, folds grouped by subject, scan level = mean slice "
        "probability; accuracy/AUC on pooled out-of-fold predictions, 95% CI by subject bootstrap",
        "data_range": "PSNR/SSIM data range = in-mask p{}..p{} span of the comparison target".format(
            *ROBUST_RANGE_PERCENTILES
        ),
        "subsampling": f"KS/Wasserstein: at most {max_voxels} pooled voxels per site, modality and tissue (seeded); "
        "GMM segmentation fitted on 20000 in-mask voxels (seeded), applied to all",
        "icc": "ICC(2,1) two-way random, absolute agreement (headline); ICC(3,1) consistency also given",
    }
    dseg_arrays = None if dsegs is None else {s: np.asarray(dsegs[s]).astype(np.int64) for s in subjects}
    gt_seg = None
    if ground_truth is not None:
        gt_seg = {
            (s, m): segment_tissues(ground_truth[(s, m)], bool_masks[s], m, seed=seed)
            for s, m in itertools.product(subjects, modalities)
        }
    if dseg_arrays is not None:
        labels, source = dseg_arrays, "dsegs (true tissue labels)"
    elif gt_seg is not None:
        mod = _pick_modality(modalities)
        labels, source = {s: gt_seg[(s, mod)] for s in subjects}, f"GMM segmentation of the ground truth ({mod})"
    else:
        first = "raw" if "raw" in methods else next(iter(methods))
        mod = _pick_modality(modalities)
        labels = {s: segment_tissues(methods[first][(s, reference_site, mod)], bool_masks[s], mod) for s in subjects}
        source = f"GMM segmentation of {first!r} {reference_site} {mod} scans"
    labels = {s: np.where(bool_masks[s], labels[s], 0) for s in subjects}
    ctx = _Context(subjects, sites, modalities, bool_masks, labels, ground_truth, gt_seg, dseg_arrays, settings)

    reference: dict = {}
    if gt_seg is not None and dseg_arrays is not None:
        reference["dice_ground_truth_segmentation_vs_dseg"] = {
            mod: _dice_summary([dice_per_class(gt_seg[(s, mod)], dseg_arrays[s]) for s in subjects])
            for mod in modalities
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
                "subjects": subjects,
                "sites": sites,
                "modalities": modalities,
                "reference_site": reference_site,
                "tissue_labels": source,
                "n_scans": len(subjects) * len(sites) * len(modalities),
                "shape": list(bool_masks[subjects[0]].shape),
            },
            "reference": reference,
            "methods": results,
            "headline": headline,
            "relative_to_raw": relative,
            "runtime_s": runtime,
        }
    )


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
