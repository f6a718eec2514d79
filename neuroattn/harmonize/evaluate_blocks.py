"""The per-method blocks of a harmonization evaluation (MMD, site classifier, distances, ground truth, Dice, ICC)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from neuroattn.harmonize.domain import cross_validate_domain, slice_features
from neuroattn.harmonize.metrics import (
    distribution_distances,
    intensity_features,
    learned_features,
    mmd_test,
    psnr_in_mask,
    robust_range,
    ssim_in_mask,
    tissue_values,
)
from neuroattn.harmonize.radiomics import radiomic_features, radiomic_reproducibility, summarize_icc
from neuroattn.harmonize.segmentation import dice_per_class, segment_tissues

Key = tuple[str, str, str]  # (subject, site, modality)
TISSUES = {1: "csf", 2: "gm", 3: "wm"}
ICC_THRESHOLD = 0.75
PAIRED = "paired traveling subjects"
UNPAIRED = "unpaired"


# ---------------------------------------------------------------------------------------------- summaries


def mean_sd(values) -> dict[str, float]:
    """Mean, sample sd and count of the finite values (None and NaN skipped)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def nanmean(values) -> float:
    """Mean of the finite values (None and NaN skipped); NaN if there are none."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def dice_summary(rows: list[dict[int, float]]) -> dict:
    """Per-tissue and mean Dice (mean, sd, n) over rows of ``{label: dice}``."""
    out = {TISSUES[t]: mean_sd(r[t] for r in rows) for t in TISSUES}
    out["mean"] = mean_sd(nanmean(r.values()) for r in rows)
    return out


# ---------------------------------------------------------------------------------------------- context


@dataclass
class EvalContext:
    """What every method is judged against: the cohort, masks, tissue ROIs, ground truth and settings."""

    subjects: list[str]
    sites: list[str]  # reference first
    modalities: list[str]
    present: dict[str, list[str]]  # site -> its subjects (in ``subjects`` order); all of them when paired
    masks: dict[str, np.ndarray]  # subject -> bool (X, Y, Z)
    labels: dict[str, np.ndarray]  # subject -> tissue ROIs (X, Y, Z), 0 outside the mask
    ground_truth: Mapping[tuple[str, str], np.ndarray] | None  # only subjects with every modality's ground truth
    gt_seg: dict[tuple[str, str], np.ndarray] | None  # (subject, modality) -> GMM labels of the ground truth
    dsegs: dict[str, np.ndarray] | None  # subject -> true tissue labels (subjects that have them)
    s: dict  # settings

    @property
    def reference(self) -> str:
        return self.sites[0]

    @property
    def others(self) -> list[str]:
        return self.sites[1:]

    @property
    def paired(self) -> bool:
        """Every subject scanned at every site (traveling subjects)."""
        return all(len(self.present[site]) == len(self.subjects) for site in self.sites)

    @property
    def visits(self) -> list[tuple[str, str]]:
        """Scanned (subject, site) pairs, subject-major (the order of ``itertools.product(subjects, sites)``)."""
        at = {site: set(subs) for site, subs in self.present.items()}
        return [(s, site) for s, site in itertools.product(self.subjects, self.sites) if s in at[site]]

    @property
    def common_subjects(self) -> list[str]:
        """Subjects scanned at every site."""
        return [s for s in self.subjects if all(s in self.present[site] for site in self.sites)]


# ------------------------------------------------------------------------------------------------ blocks


def _mmd_block(feats: dict[Key, np.ndarray], ctx: EvalContext) -> dict:
    out: dict[str, dict] = {}
    for mod in [*ctx.modalities, "all"]:
        mods = ctx.modalities if mod == "all" else [mod]

        def sample(site: str, mods: list[str] = mods) -> np.ndarray:
            return np.stack([np.concatenate([feats[(s, site, m)] for m in mods]) for s in ctx.present[site]])

        x = sample(ctx.reference)
        out[mod] = {
            site: {
                kernel: mmd_test(
                    x,
                    sample(site),
                    kernel=kernel,
                    n_permutations=ctx.s["n_permutations"],
                    seed=ctx.s["seed"],
                    # paired: row i of both samples is subject i (within-subject swaps); else scans permuted freely
                    paired=ctx.paired,
                ).to_dict()
                for kernel in ("median", "multi")
            }
            for site in ctx.others
        }
    return out


def mmd_stage(scans: Mapping[Key, np.ndarray], ctx: EvalContext) -> dict:
    """MMD between the reference site and every other site, on intensity and on random-conv features."""
    keys = [(s, site, m) for s, site in ctx.visits for m in ctx.modalities]
    feats = {k: intensity_features(scans[k], ctx.masks[k[0]], ctx.labels[k[0]]) for k in keys}
    learned = learned_features([scans[k] for k in keys], [ctx.masks[k[0]] for k in keys], seed=ctx.s["seed"])
    return {"intensity": _mmd_block(feats, ctx), "learned": _mmd_block(dict(zip(keys, learned, strict=True)), ctx)}


def domain_block(scans: Mapping[Key, np.ndarray], ctx: EvalContext) -> dict:
    """Site classifier retrained on the scans (per-slice features, folds grouped by subject), per modality."""
    per_scan = {k: slice_features(v, ctx.masks[k[0]])[0] for k, v in scans.items()}  # (S, F) each
    out = {}
    for mod in [*ctx.modalities, "all"]:
        mods = ctx.modalities if mod == "all" else [mod]
        feats, labels, groups, scan_ids = [], [], [], []
        for s, site in ctx.visits:
            f = np.concatenate([per_scan[(s, site, m)] for m in mods], axis=1)  # (S, F * len(mods))
            feats.append(f)
            labels += [site] * len(f)
            groups += [s] * len(f)
            scan_ids += [f"{s}|{site}"] * len(f)
        # The label-permutation null shuffles sites among one subject's scans: defined for traveling subjects only.
        n_perm = ctx.s["n_label_permutations"] if mod == "all" and ctx.paired else 0
        res = cross_validate_domain(
            np.concatenate(feats),
            labels,
            groups,
            scan_ids,
            classifier=ctx.s["classifier"],
            n_bootstrap=ctx.s["n_bootstrap"],
            n_label_permutations=n_perm,
            seed=ctx.s["seed"],
        )
        out[mod] = res.to_dict()
    return out


def distance_block(scans: Mapping[Key, np.ndarray], ctx: EvalContext) -> dict:
    """KS and Wasserstein-1 between each pair of sites' pooled in-mask intensities (own subjects), per tissue."""
    out: dict[str, dict] = {}
    for mod in ctx.modalities:
        pooled = {}
        for site in ctx.sites:
            parts = [tissue_values(scans[(s, site, mod)], ctx.masks[s], ctx.labels[s]) for s in ctx.present[site]]
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


def ground_truth_block(scans: Mapping[Key, np.ndarray], ctx: EvalContext) -> dict | None:
    """PSNR/SSIM of non-reference scans vs the ground truth (subjects that have it) and, for traveling
    subjects, vs the method's own reference-site scan; None when neither applies to any scan."""
    rows = []
    gt = ctx.ground_truth or {}
    for s, site in ctx.visits:
        if site == ctx.reference:
            continue
        for mod in ctx.modalities:
            pred, mask = scans[(s, site, mod)], ctx.masks[s]
            row = {"modality": mod, "site": site}
            if (s, mod) in gt:
                target = gt[(s, mod)]
                r = robust_range(target, mask)
                row.update(psnr=psnr_in_mask(pred, target, mask, r), ssim=ssim_in_mask(pred, target, mask, r))
            if ctx.paired:  # needs the same subject at the reference site
                own_ref = scans[(s, ctx.reference, mod)]
                r = robust_range(own_ref, mask)
                row.update(
                    psnr_vs_method_reference=psnr_in_mask(pred, own_ref, mask, r),
                    ssim_vs_method_reference=ssim_in_mask(pred, own_ref, mask, r),
                )
            if len(row) > 2:
                rows.append(row)
    if not rows:
        return None
    metrics = list(dict.fromkeys(k for r in rows for k in r if k not in ("modality", "site")))
    out = {
        mod: {k: mean_sd(r.get(k) for r in rows if r["modality"] == mod) for k in metrics} for mod in ctx.modalities
    }
    out["all"] = {k: mean_sd(r.get(k) for r in rows) for k in metrics}
    return out


def dice_block(scans: Mapping[Key, np.ndarray], ctx: EvalContext) -> dict:
    """Tissue Dice of each non-reference scan's GMM segmentation vs the ground truth's and vs the true labels."""
    vs_gt: dict[str, list] = {m: [] for m in ctx.modalities}
    vs_dseg: dict[str, list] = {m: [] for m in ctx.modalities}
    gt_seg, dsegs = ctx.gt_seg or {}, ctx.dsegs or {}
    for s, site in ctx.visits:
        has_truth = s in dsegs or any((s, m) in gt_seg for m in ctx.modalities)
        if site == ctx.reference or not has_truth:
            continue
        for mod in ctx.modalities:
            seg = segment_tissues(scans[(s, site, mod)], ctx.masks[s], mod, seed=ctx.s["seed"])
            if (s, mod) in gt_seg:
                vs_gt[mod].append(dice_per_class(seg, gt_seg[(s, mod)]))
            if s in dsegs:
                vs_dseg[mod].append(dice_per_class(seg, dsegs[s]))
    out = {}
    for name, table in (("vs_ground_truth", vs_gt), ("vs_dseg", vs_dseg)):
        if any(table.values()):
            block = {mod: dice_summary(rows) for mod, rows in table.items()}
            block["all"] = dice_summary([r for rows in table.values() for r in rows])
            out[name] = block
    return out


def radiomics_block(scans: Mapping[Key, np.ndarray], ctx: EvalContext) -> dict | None:
    """ICC across sites of radiomic features of the subjects scanned at every site; None with fewer than 2."""
    subjects = ctx.common_subjects
    if len(subjects) < 2:
        return None
    by_site: dict[str, dict[str, dict[str, float]]] = {site: {} for site in ctx.sites}
    for s, site, mod in itertools.product(subjects, ctx.sites, ctx.modalities):
        feats = radiomic_features(scans[(s, site, mod)], ctx.labels[s], TISSUES, ctx.s["radiomics_bins"])
        by_site[site].setdefault(s, {}).update({f"{mod}/{k}": v for k, v in feats.items()})
    per_feature = radiomic_reproducibility(by_site)
    return {"summary": summarize_icc(per_feature, ICC_THRESHOLD), "per_feature": per_feature}


STAGES = {  # output key -> stage; each gets (scans, ctx)
    "mmd": mmd_stage,
    "domain_classifier": domain_block,
    "distances": distance_block,
    "ground_truth": ground_truth_block,
    "dice": dice_block,
    "radiomics": radiomics_block,
}


__all__ = [
    "ICC_THRESHOLD",
    "PAIRED",
    "STAGES",
    "TISSUES",
    "UNPAIRED",
    "EvalContext",
    "dice_block",
    "dice_summary",
    "distance_block",
    "domain_block",
    "ground_truth_block",
    "mean_sd",
    "mmd_stage",
    "nanmean",
    "radiomics_block",
]
