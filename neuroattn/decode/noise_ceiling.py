"""NSD's noise ceiling from repeated trials: per-voxel ncsnr and the ceiling for averages of n trials."""

from __future__ import annotations

import numpy as np

from neuroattn.errors import InvalidInputError


def _repeat_groups(image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique image ids, their inverse index and their repeat counts."""
    ids, inverse, counts = np.unique(np.asarray(image_ids), return_inverse=True, return_counts=True)
    return ids, inverse, counts


def ncsnr(betas: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Noise-ceiling signal-to-noise ratio per voxel, from trials of images shown at least twice.

    ``sd_noise**2`` is the mean over images of the across-repeat variance (ddof=1); the signal variance is the
    total trial variance minus it, floored at 0: ``ncsnr = sqrt(max(var_total - var_noise, 0)) / sd_noise``.

    Parameters
    ----------
    betas : np.ndarray
        (n_trials, V) single-trial responses.
    image_ids : np.ndarray
        (n_trials,) image shown on each trial.

    Returns
    -------
    np.ndarray
        (V,) float64 ncsnr.
    """
    betas = np.asarray(betas, dtype=np.float64)
    image_ids = np.asarray(image_ids)
    if betas.ndim != 2 or len(betas) != len(image_ids):
        raise InvalidInputError(f"betas {betas.shape} and image_ids {image_ids.shape} do not match as (n_trials, V)")
    _, inverse, counts = _repeat_groups(image_ids)
    keep = counts[inverse] >= 2
    if not keep.any():
        raise InvalidInputError("no image was shown more than once; the noise ceiling needs repeated trials")
    betas, inverse = betas[keep], inverse[keep]
    _, inverse = np.unique(inverse, return_inverse=True)
    n_img = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n_img).astype(np.float64)  # (n_img,)
    sums = np.zeros((n_img, betas.shape[1]))
    np.add.at(sums, inverse, betas)
    means = sums / counts[:, None]  # (n_img, V)
    sq = np.zeros_like(sums)
    np.add.at(sq, inverse, (betas - means[inverse]) ** 2)
    var_noise = (sq / (counts[:, None] - 1)).mean(axis=0)  # (V,)
    var_total = betas.var(axis=0, ddof=1)
    var_signal = np.maximum(var_total - var_noise, 0.0)
    return np.sqrt(var_signal) / np.sqrt(np.maximum(var_noise, 1e-30))


def noise_ceiling_from_ncsnr(snr: np.ndarray, n_average: float | np.ndarray = 1) -> np.ndarray:
    """Percent of variance explainable in responses averaged over ``n_average`` trials: 100 s^2 / (s^2 + 1/n).

    ``n_average`` may be an array of repeat counts per image; then 1/n is replaced by its mean, as NSD does
    for images with unequal numbers of repeats.
    """
    inv_n = float(np.mean(1.0 / np.asarray(n_average, dtype=np.float64)))
    s2 = np.asarray(snr, dtype=np.float64) ** 2
    return 100.0 * s2 / (s2 + inv_n)


def noise_ceiling(betas: np.ndarray, image_ids: np.ndarray, n_average: float | np.ndarray | None = None) -> np.ndarray:
    """Per-voxel noise ceiling (percent, (V,)) for responses averaged over ``n_average`` trials.

    ``n_average`` defaults to the repeat counts of the images in ``image_ids`` (the ceiling of the
    repeat-averaged betas of exactly those trials); 1 gives the single-trial ceiling.
    """
    if n_average is None:
        _, _, counts = _repeat_groups(image_ids)
        n_average = counts
    return noise_ceiling_from_ncsnr(ncsnr(betas, image_ids), n_average)
