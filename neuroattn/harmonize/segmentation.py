"""Tissue segmentation (CSF/GM/WM) by a Gaussian mixture on in-mask intensities, and per-class Dice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.mixture import GaussianMixture

from neuroattn.errors import InvalidInputError

# dseg labels (1 CSF, 2 GM, 3 WM) from darkest to brightest tissue in each contrast.
TISSUE_ORDER: dict[str, tuple[int, ...]] = {
    "t1": (1, 2, 3),  # CSF < GM < WM
    "t2": (3, 2, 1),  # WM < GM < CSF
    "flair": (1, 3, 2),  # CSF (suppressed) < WM < GM
}
_MODALITY_FAMILY = {
    "t1": "t1",
    "t1w": "t1",
    "t1ce": "t1",
    "t1gd": "t1",
    "t1c": "t1",
    "mprage": "t1",
    "t2": "t2",
    "t2w": "t2",
    "pd": "t2",  # proton density: CSF > GM > WM, like T2
    "pdw": "t2",
    "flair": "flair",
    "t2flair": "flair",
}


def tissue_order(modality: str) -> tuple[int, ...]:
    """Tissue labels ordered from darkest to brightest in ``modality`` (case-insensitive; T1ce counts as T1)."""
    key = modality.lower().replace("-", "").replace("_", "")
    if key not in _MODALITY_FAMILY:
        raise InvalidInputError(
            f"'modality' must be one of {sorted(_MODALITY_FAMILY)} (any case). {modality!r} was provided."
        )
    return TISSUE_ORDER[_MODALITY_FAMILY[key]]


def _kmeans_1d(x: np.ndarray, k: int, n_iter: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd's k-means on a 1-D sample from quantile starts; returns centres, weights and variances ``(K,)``."""
    xs = np.sort(x)
    centres = np.quantile(xs, (np.arange(k) * 2 + 1) / (2 * k))
    for _ in range(n_iter):
        cuts = np.searchsorted(xs, (centres[1:] + centres[:-1]) / 2.0)  # in 1-D clusters are runs of sorted x
        parts = np.split(xs, cuts)
        new = np.array([p.mean() if p.size else c for p, c in zip(parts, centres, strict=True)])
        if np.allclose(new, centres):
            break
        centres = new
    parts = np.split(xs, np.searchsorted(xs, (centres[1:] + centres[:-1]) / 2.0))
    weights = np.array([max(p.size, 1) for p in parts], dtype=np.float64) / xs.size
    variances = np.array([p.var() if p.size > 1 else 1.0 for p in parts])
    return centres, weights / weights.sum(), variances


def segment_tissues(
    volume: np.ndarray,
    mask: np.ndarray,
    modality: str = "T1w",
    n_classes: int = 3,
    seed: int = 0,
    max_samples: int = 20_000,
) -> np.ndarray:
    """Label in-mask voxels with a 1-D Gaussian mixture on their intensities.

    The mixture (one variance per class, initialised from a 1-D k-means whose centres start at the
    1/6, 3/6, 5/6 quantiles) is fitted on at most ``max_samples`` in-mask voxels drawn by a seeded
    generator, then every in-mask voxel gets its most probable component. With ``n_classes=3`` the
    components are named by the contrast's known tissue order (:func:`tissue_order`): T1 CSF < GM < WM,
    T2 reversed, FLAIR CSF < WM < GM. With another ``n_classes`` labels are ``1..n_classes`` from darkest
    to brightest. Intensities are z-scored before the fit, so the labels do not depend on the scale.

    Parameters
    ----------
    volume, mask : ndarray, shape (X, Y, Z)

    Returns
    -------
    ndarray, uint8 ``(X, Y, Z)``: 0 outside the mask, else 1 CSF, 2 GM, 3 WM (for 3 classes).
    """
    volume = np.asarray(volume)
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape:
        raise InvalidInputError(f"volume shape {volume.shape} differs from mask shape {mask.shape}.")
    order = tissue_order(modality) if n_classes == 3 else tuple(range(1, n_classes + 1))
    vals = volume[mask].astype(np.float64)
    if not np.isfinite(vals).all():
        raise InvalidInputError("the volume has NaN or infinite values inside the brain mask.")
    if vals.size < 10 * n_classes:
        raise InvalidInputError(f"too few in-mask voxels ({vals.size}) to fit {n_classes} tissue classes.")
    scale = float(vals.std()) or 1.0  # fit on a unit scale so GMM's variance floor means the same everywhere
    z = (vals - vals.mean()) / scale
    rng = np.random.default_rng(seed)
    fit = z if z.size <= max_samples else rng.choice(z, size=max_samples, replace=False)
    means, weights, variances = _kmeans_1d(fit, n_classes)
    gmm = GaussianMixture(
        n_classes,
        covariance_type="diag",  # one variance per class; in 1-D the same model as "full", without BLAS calls
        means_init=means[:, None],  # (K, 1)
        weights_init=weights,
        precisions_init=(1.0 / np.maximum(variances, 1e-4))[:, None],  # (K, 1)
        random_state=seed,
        reg_covar=1e-4,
    )
    gmm.fit(fit[:, None])
    comp = gmm.predict(z[:, None])  # (V,)
    rank = np.empty(n_classes, dtype=np.int64)
    rank[np.argsort(gmm.means_[:, 0])] = np.arange(n_classes)  # component -> brightness rank
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[mask] = np.asarray(order, dtype=np.uint8)[rank[comp]]
    return labels


def dice_per_class(a: np.ndarray, b: np.ndarray, labels: Sequence[int] = (1, 2, 3)) -> dict[int, float]:
    """Dice ``2|A∩B| / (|A| + |B|)`` of each label between two label volumes (NaN if absent from both)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InvalidInputError(f"label volumes differ in shape: {a.shape} and {b.shape}.")
    out = {}
    for lab in labels:
        x, y = a == lab, b == lab
        denom = int(x.sum()) + int(y.sum())
        out[int(lab)] = 2.0 * int((x & y).sum()) / denom if denom else float("nan")
    return out


__all__ = ["TISSUE_ORDER", "dice_per_class", "segment_tissues", "tissue_order"]
