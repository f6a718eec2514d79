"""Radiomic features (IBSI-style first-order + GLCM texture) per tissue ROI, and ICC reproducibility across sites.

Definitions follow the IBSI reference manual (Zwanenburg et al., Radiology 2020): first-order statistics on the
raw ROI intensities (variance with 1/N, excess kurtosis, energy = sum of squares), intensity-histogram
entropy (log2) and uniformity after fixed-bin-number discretization, and GLCM features from 2-D axial
slices (distance 1, the 4 in-plane directions, symmetric), computed per slice and direction and averaged.
GLCM properties come from ``skimage.feature.graycoprops``; the co-occurrence counts of all slices are built
in one vectorized pass that equals ``skimage.feature.graycomatrix`` slice by slice (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from skimage.feature import graycoprops

from neuroattn.errors import InvalidInputError

N_BINS = 32  # fixed bin number for histogram features and GLCM quantization
FIRST_ORDER = (
    "mean",
    "std",
    "skewness",
    "kurtosis",
    "entropy",
    "energy",
    "p10",
    "p90",
    "iqr",
    "range",
    "mad",
    "rms",
    "uniformity",
)
GLCM_FEATURES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
# In-plane (row, col) offsets of skimage's angles 0, pi/4, pi/2, 3pi/4 at distance 1: (round(sin), round(cos)).
GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))
TISSUE_ROIS = {1: "csf", 2: "gm", 3: "wm"}
ICC_KINDS = ("icc2_1", "icc3_1")


def discretize(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """IBSI fixed-bin-number discretization to ``1..n_bins``: ``floor(n (x - min) / (max - min)) + 1``, max -> n.

    A constant input maps to bin 1. Returns int64 of the input's shape.
    """
    x = np.asarray(values, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.ones(x.shape, dtype=np.int64)
    return np.minimum(np.floor(n_bins * (x - lo) / (hi - lo)).astype(np.int64) + 1, n_bins)


def first_order_features(values: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    """IBSI-style first-order features of the ROI intensities ``values`` (any shape, flattened).

    ``std`` is the square root of the 1/N variance, ``kurtosis`` is excess kurtosis (0 for a Gaussian),
    ``mad`` the mean absolute deviation from the mean, ``energy`` the sum of squares; ``entropy`` (bits) and
    ``uniformity`` use the ``n_bins`` fixed-bin-number histogram.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise InvalidInputError("first-order features need a non-empty ROI.")
    mu = x.mean()
    d = x - mu
    m2 = float(np.mean(d**2))
    p10, p25, p75, p90 = np.percentile(x, (10, 25, 75, 90))
    p = np.bincount(discretize(x, n_bins), minlength=n_bins + 1)[1:] / x.size
    nz = p[p > 0]
    return {
        "mean": float(mu),
        "std": float(np.sqrt(m2)),
        "skewness": float(np.mean(d**3) / m2**1.5) if m2 > 0 else 0.0,
        "kurtosis": float(np.mean(d**4) / m2**2 - 3.0) if m2 > 0 else 0.0,
        "entropy": float(-(nz * np.log2(nz)).sum()),
        "energy": float(np.sum(x**2)),
        "p10": float(p10),
        "p90": float(p90),
        "iqr": float(p75 - p25),
        "range": float(x.max() - x.min()),
        "mad": float(np.mean(np.abs(d))),
        "rms": float(np.sqrt(np.mean(x**2))),
        "uniformity": float((p**2).sum()),
    }


def glcm_per_slice(levels: np.ndarray, n_levels: int, offsets: Sequence[tuple[int, int]] = GLCM_OFFSETS) -> np.ndarray:
    """Symmetric co-occurrence counts of every axial slice of a quantized volume.

    Parameters
    ----------
    levels : ndarray of int, shape (X, Y, Z)
        Gray levels ``1..n_levels`` inside the ROI and 0 outside; pairs touching a 0 are not counted.
    offsets : (row, col) in-plane steps, rows along X and columns along Y of each slice ``levels[:, :, z]``.

    Returns
    -------
    ndarray, int64 ``(n_levels, n_levels, Z, len(offsets))``: ``P[i, j, z, a]`` counts level pairs
    ``(i + 1, j + 1)`` at offset ``a`` in slice ``z``, plus the reversed pairs (symmetric), as
    ``skimage.feature.graycomatrix(slice, [1], angles, levels=n_levels + 1, symmetric=True)[1:, 1:]``.
    """
    lv = np.asarray(levels, dtype=np.int64)
    nx, ny, nz = lv.shape
    z_index = np.broadcast_to(np.arange(nz), lv.shape)
    out = np.zeros((len(offsets), nz, n_levels, n_levels), dtype=np.int64)
    for a, (dr, dc) in enumerate(offsets):
        src = (slice(max(0, -dr), nx - max(0, dr)), slice(max(0, -dc), ny - max(0, dc)))
        dst = (slice(max(0, dr), nx - max(0, -dr)), slice(max(0, dc), ny - max(0, -dc)))
        i, j, z = lv[src], lv[dst], z_index[src]
        both = (i > 0) & (j > 0)
        flat = (z[both] * n_levels + (i[both] - 1)) * n_levels + (j[both] - 1)
        counts = np.bincount(flat, minlength=nz * n_levels * n_levels).reshape(nz, n_levels, n_levels)
        out[a] = counts + counts.transpose(0, 2, 1)
    return out.transpose(2, 3, 1, 0)  # (L, L, Z, A)


def glcm_features(volume: np.ndarray, roi: np.ndarray, n_bins: int = N_BINS, min_pairs: int = 10) -> dict[str, float]:
    """GLCM texture features of ``volume`` within ``roi`` (both ``(X, Y, Z)``), averaged over slices and angles.

    The ROI intensities are discretized to ``n_bins`` levels over the ROI's range (one range for the whole
    volume); slices whose GLCM (one direction) holds fewer than ``min_pairs`` pairs are left out of the mean.
    """
    roi = np.asarray(roi, dtype=bool)
    if not roi.any():
        raise InvalidInputError("GLCM features need a non-empty ROI.")
    lv = np.zeros(roi.shape, dtype=np.int64)
    lv[roi] = discretize(np.asarray(volume)[roi], n_bins)
    p = glcm_per_slice(lv, n_bins)  # (L, L, Z, A)
    enough = p.sum(axis=(0, 1)) >= min_pairs  # (Z, A)
    keep = enough.all(axis=1)
    if not keep.any():
        return dict.fromkeys(GLCM_FEATURES, float("nan"))
    p = p[:, :, keep, :].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {name: float(np.nanmean(graycoprops(p, name))) for name in GLCM_FEATURES}


def radiomic_features(
    volume: np.ndarray,
    dseg: np.ndarray,
    rois: Mapping[int, str] = TISSUE_ROIS,
    n_bins: int = N_BINS,
) -> dict[str, float]:
    """First-order and GLCM features of every tissue ROI, keyed ``"<roi>/firstorder_<name>"``, ``"<roi>/glcm_<name>"``.

    ``dseg`` ``(X, Y, Z)`` holds the ROI labels (default 1 CSF, 2 GM, 3 WM); a label absent from ``dseg``
    raises :class:`InvalidInputError`.
    """
    volume = np.asarray(volume)
    dseg = np.asarray(dseg)
    if volume.shape != dseg.shape:
        raise InvalidInputError(f"volume shape {volume.shape} differs from label shape {dseg.shape}.")
    out: dict[str, float] = {}
    for label, name in rois.items():
        roi = dseg == label
        if not roi.any():
            raise InvalidInputError(f"ROI label {label} ({name}) does not occur in the label volume.")
        vals = volume[roi]
        if not np.isfinite(vals).all():
            raise InvalidInputError(f"the volume has NaN or infinite values inside ROI {name}.")
        out.update({f"{name}/firstorder_{k}": v for k, v in first_order_features(vals, n_bins).items()})
        out.update({f"{name}/glcm_{k}": v for k, v in glcm_features(volume, roi, n_bins).items()})
    return out


def icc(ratings: np.ndarray, kind: str = "icc2_1") -> float:
    """Intraclass correlation of a ``(n_targets, k_raters)`` matrix (Shrout & Fleiss 1979).

    ``"icc2_1"``: ICC(2,1), two-way random effects, absolute agreement, single rater
    ``(MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)``.
    ``"icc3_1"``: ICC(3,1), two-way mixed effects, consistency, single rater ``(MSR - MSE) / (MSR + (k-1) MSE)``.
    NaN when the denominator is 0 (e.g. every rating equal).
    """
    if kind not in ICC_KINDS:
        raise InvalidInputError(f"'kind' must be one of {list(ICC_KINDS)}. {kind!r} was provided.")
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise InvalidInputError(f"ICC needs a (targets >= 2, raters >= 2) matrix; got shape {x.shape}.")
    if not np.isfinite(x).all():
        return float("nan")
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_err = float(((x - grand) ** 2).sum()) - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + (k * (msc - mse) / n if kind == "icc2_1" else 0.0)
    return float((msr - mse) / denom) if denom > 0 else float("nan")


def radiomic_reproducibility(
    features_by_site: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, float]]:
    """ICC(2,1) and ICC(3,1) of every feature across sites, treating sites as raters of the same subjects.

    Parameters
    ----------
    features_by_site : ``{site: {subject: {feature: value}}}``
        Traveling subjects: the subjects present at every site are the targets; features present for all of
        them are scored.

    Returns
    -------
    ``{feature: {"icc2_1": float, "icc3_1": float}}`` (NaN where the ICC is undefined).
    """
    sites = sorted(features_by_site)
    if len(sites) < 2:
        raise InvalidInputError(f"radiomic reproducibility needs at least 2 sites; got {sites}.")
    subjects = sorted(set.intersection(*(set(features_by_site[s]) for s in sites)))
    if len(subjects) < 2:
        raise InvalidInputError(
            f"radiomic reproducibility needs at least 2 subjects seen at every site; got {subjects}."
        )
    names = sorted(set.intersection(*(set(features_by_site[s][j]) for s in sites for j in subjects)))
    out = {}
    for name in names:
        m = np.array([[features_by_site[s][j][name] for s in sites] for j in subjects])  # (subjects, sites)
        out[name] = {kind: icc(m, kind) for kind in ICC_KINDS}
    return out


def summarize_icc(per_feature: Mapping[str, Mapping[str, float]], threshold: float = 0.75) -> dict[str, dict]:
    """Median ICC and the fraction of features above ``threshold`` (good reliability, Koo & Li 2016), per kind."""
    out = {}
    for kind in ICC_KINDS:
        vals = np.array([v[kind] for v in per_feature.values()], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[kind] = {
            "median": float(np.median(vals)) if vals.size else float("nan"),
            f"fraction_above_{threshold:g}": float(np.mean(vals > threshold)) if vals.size else float("nan"),
            "n_features": int(vals.size),
        }
    return out


__all__ = [
    "FIRST_ORDER",
    "GLCM_FEATURES",
    "GLCM_OFFSETS",
    "ICC_KINDS",
    "N_BINS",
    "TISSUE_ROIS",
    "discretize",
    "first_order_features",
    "glcm_features",
    "glcm_per_slice",
    "icc",
    "radiomic_features",
    "radiomic_reproducibility",
    "summarize_icc",
]
