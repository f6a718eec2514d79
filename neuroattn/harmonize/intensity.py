"""Intensity-normalization baselines mapped onto the target site's scale: raw, z-score, WhiteStripe, Nyúl."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.harmonize.base import BaseHarmonizer, register_harmonizer
from neuroattn.harmonize.inputs import HarmonizationData

# Each method maps a whole volume through one intensity function estimated from its brain-masked voxels
# (background goes through the same function, so the image stays one image), then expresses the result on the
# target site's scale, so outputs compare with target-site scans voxel by voxel. Modalities are handled
# independently; none of these methods needs a volume's site at transform time.
NYUL_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
PEAK_RULES = ("last", "largest")


def _masked(data: HarmonizationData, i: int) -> np.ndarray:
    """In-mask voxel values of volume ``i`` as float64 ``(N,)``."""
    return data.arrays[i][data.masks[i]].astype(np.float64)


def _per_modality(values: dict[str, np.ndarray], modalities: list[str]) -> np.ndarray:
    """Stack per-modality vectors in ``modalities`` order: ``(M, K)``."""
    return np.stack([np.asarray(values[m], dtype=np.float64) for m in modalities])


def _unstack(arr: torch.Tensor, modalities: list[str]) -> dict[str, np.ndarray]:
    table = arr.numpy().astype(np.float64)  # (M, K)
    return {m: table[k] for k, m in enumerate(modalities)}


@register_harmonizer("raw")
class RawHarmonizer(BaseHarmonizer):
    """No harmonization: returns the volumes unchanged ("raw" in comparison tables)."""

    def _fit(self, data: HarmonizationData) -> None:
        pass

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        return data.arrays[i].copy()


@register_harmonizer("zscore")
class ZScoreHarmonizer(BaseHarmonizer):
    """Per-volume z-score inside the brain mask, then the target site's pooled mean and std put back.

    ``y = (x - mean_v) / std_v * std_t + mean_t`` with ``mean_v, std_v`` over the volume's in-mask voxels and
    ``mean_t, std_t`` over all in-mask voxels of the target site's volumes of that modality.

    Attributes
    ----------
    target_stats_ : dict[str, numpy.ndarray]
        Per modality ``(2,)``: pooled target mean and standard deviation.
    """

    def _fit(self, data: HarmonizationData) -> None:
        self.target_stats_ = {}
        for m in self.modalities_:
            pooled = np.concatenate([_masked(data, i) for i in data.indices(site=self.target_site_, modality=m)])
            self.target_stats_[m] = np.array([pooled.mean(), pooled.std()])

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        values = _masked(data, i)
        mean, std = values.mean(), values.std()
        if std == 0:
            raise InvalidInputError(f"{data.where(i)} is constant inside its mask; cannot z-score it")
        t_mean, t_std = self.target_stats_[data.modalities[i]]
        return (data.arrays[i] - mean) / std * t_std + t_mean

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"target_stats": _per_modality(self.target_stats_, self.modalities_)}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        self.target_stats_ = _unstack(arrays["target_stats"], self.modalities_)


# -- WhiteStripe ------------------------------------------------------------------------------------------


def default_peak_rule(modality: str) -> str:
    """Which histogram peak is white matter: ``"last"`` for T1-weighted names (and unnamed), else ``"largest"``.

    On T1w, WM is the brightest large tissue class, so its peak is the right-most major one. On T2w the
    largest peak is WM in adult brains (Shinohara et al. 2014); on FLAIR the largest peak may be GM, which
    still normalizes consistently across sites as long as the same tissue is picked everywhere.
    """
    return "last" if modality == "" or modality.strip().lower().startswith("t1") else "largest"


def smoothed_histogram(
    values: np.ndarray, *, bins: int = 512, upper_quantile: float = 0.99
) -> tuple[np.ndarray, np.ndarray]:
    """Binned Gaussian KDE of ``values`` below their ``upper_quantile`` (the bright tail is dropped).

    Bandwidth by Silverman's rule, ``0.9 * min(std, IQR / 1.34) * n ** (-1/5)``. Returns bin centres and
    density, both ``(bins,)``. Range and bandwidth follow the data, so an increasing affine change of the
    intensities moves the density with it.
    """
    lo, hi = np.quantile(values, [0.0, upper_quantile])
    if hi <= lo:
        raise InvalidInputError("intensities inside the mask are (nearly) constant; no histogram peak to find")
    kept = values[values <= hi]
    counts, edges = np.histogram(kept, bins=bins, range=(lo, hi))
    q25, q75 = np.quantile(kept, [0.25, 0.75])
    spread = min(kept.std(), (q75 - q25) / 1.34) or kept.std()
    bandwidth = 0.9 * spread * kept.size ** (-0.2)
    width = edges[1] - edges[0]
    density = gaussian_filter1d(counts.astype(np.float64), sigma=max(bandwidth / width, 0.5), mode="constant")
    return (edges[:-1] + edges[1:]) / 2, density


def find_tissue_mode(
    values: np.ndarray, rule: str = "last", *, peak_fraction: float = 0.2, bins: int = 512,
    upper_quantile: float = 0.99,
) -> float:
    """Intensity of the white-matter peak of ``values`` (in-mask voxels, ``(N,)``).

    Peaks are local maxima of :func:`smoothed_histogram` at least ``peak_fraction`` of the highest one
    ("major" peaks). ``rule="last"`` takes the right-most major peak, ``"largest"`` the highest. The
    position is refined by a parabola through the peak bin and its neighbours.
    """
    if rule not in PEAK_RULES:
        raise ConfigError(f"'peak' must be one of {list(PEAK_RULES)}. {rule!r} was provided.")
    centres, d = smoothed_histogram(values, bins=bins, upper_quantile=upper_quantile)
    inner = np.flatnonzero((d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:])) + 1
    major = inner[d[inner] >= peak_fraction * d.max()]
    if major.size == 0:  # monotone density: the highest bin is the mode
        k = int(np.argmax(d))
        return float(centres[k])
    k = int(major[-1]) if rule == "last" else int(major[np.argmax(d[major])])
    curvature = d[k - 1] - 2 * d[k] + d[k + 1]
    shift = 0.5 * (d[k - 1] - d[k + 1]) / curvature if curvature < 0 else 0.0
    return float(centres[k] + shift * (centres[1] - centres[0]))


def white_stripe(values: np.ndarray, mode: float, width: float = 0.05) -> np.ndarray:
    """The white stripe: in-mask values whose quantile lies within ``±width`` of the mode's quantile, ``(K,)``."""
    q = float(np.mean(values < mode))
    lo, hi = np.quantile(values, [max(q - width, 0.0), min(q + width, 1.0)])
    return values[(values >= lo) & (values <= hi)]


@register_harmonizer("whitestripe")
class WhiteStripeHarmonizer(BaseHarmonizer):
    """WhiteStripe (Shinohara et al. 2014): normalize by the mean and std of normal-appearing white matter.

    Per volume: find the WM mode (:func:`find_tissue_mode`, rule per modality from ``peak``), take the white
    stripe (voxels within ``±width`` quantile of the mode), ``z = (x - mean_ws) / std_ws``; then
    ``y = z * std_t + mean_t`` with the target site's average white-stripe mean and std.

    Parameters
    ----------
    width
        Half-width of the stripe in quantile units (τ = 0.05 as in the paper).
    peak
        ``"auto"`` (:func:`default_peak_rule` per modality), ``"last"``, ``"largest"``, or a mapping from
        modality to rule.
    peak_fraction
        Minimum height of a "major" peak relative to the highest one.

    Attributes
    ----------
    target_stats_ : dict[str, numpy.ndarray]
        Per modality ``(2,)``: average white-stripe mean and std of the target site's volumes.
    """

    def __init__(
        self, target_site: str | None = None, width: float = 0.05, peak: str | Mapping[str, str] = "auto",
        peak_fraction: float = 0.2, progress: bool = True,
    ) -> None:
        super().__init__(target_site=target_site, progress=progress)
        self.width = width
        self.peak = peak
        self.peak_fraction = peak_fraction

    def peak_rule(self, modality: str) -> str:
        """The peak rule used for ``modality``."""
        if isinstance(self.peak, Mapping):
            return self.peak.get(modality, default_peak_rule(modality))
        return default_peak_rule(modality) if self.peak == "auto" else str(self.peak)

    def stripe_stats(self, values: np.ndarray, modality: str) -> tuple[float, float, float]:
        """``(mean, std, mode)`` of the white stripe of in-mask ``values``."""
        mode = find_tissue_mode(values, self.peak_rule(modality), peak_fraction=self.peak_fraction)
        stripe = white_stripe(values, mode, self.width)
        return float(stripe.mean()), float(stripe.std()), mode

    def _fit(self, data: HarmonizationData) -> None:
        if not 0 < float(self.width) < 0.5:
            raise ConfigError(f"'width' must be in (0, 0.5). {self.width!r} was provided.")
        self.target_stats_ = {}
        for m in self.modalities_:
            stats = [self.stripe_stats(_masked(data, i), m)[:2]
                     for i in data.indices(site=self.target_site_, modality=m)]
            self.target_stats_[m] = np.mean(np.array(stats), axis=0)

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        m = data.modalities[i]
        mean, std, _ = self.stripe_stats(_masked(data, i), m)
        if std == 0:
            raise InvalidInputError(f"{data.where(i)} has a constant white stripe; cannot normalize it")
        t_mean, t_std = self.target_stats_[m]
        return (data.arrays[i] - mean) / std * t_std + t_mean

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"target_stats": _per_modality(self.target_stats_, self.modalities_)}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        self.target_stats_ = _unstack(arrays["target_stats"], self.modalities_)


# -- Nyúl ---------------------------------------------------------------------------------------------------


def intensity_landmarks(values: np.ndarray, percentiles: Sequence[float] = NYUL_PERCENTILES) -> np.ndarray:
    """Percentile landmarks of in-mask ``values`` (linear interpolation), float64 ``(K,)``."""
    return np.percentile(values, np.asarray(percentiles, dtype=np.float64))


def piecewise_linear_map(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``x`` so that ``source[k] -> target[k]``, linearly between landmarks, with the end segments' slopes beyond.

    ``source`` must be non-decreasing and ``target`` non-decreasing (then the map is monotone); tied source
    landmarks are merged (their targets averaged). Returns float64 of ``x``'s shape.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    src, inverse = np.unique(source, return_inverse=True)
    dst = np.bincount(inverse, weights=target) / np.bincount(inverse)
    if src.size < 2:
        raise InvalidInputError("all intensity landmarks are equal (constant image inside the mask)")
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1)  # (N,)
    y = np.interp(flat, src, dst)
    lo_slope = (dst[1] - dst[0]) / (src[1] - src[0])
    hi_slope = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    below, above = flat < src[0], flat > src[-1]
    y[below] = dst[0] + (flat[below] - src[0]) * lo_slope
    y[above] = dst[-1] + (flat[above] - src[-1]) * hi_slope
    return y.reshape(x.shape)


@register_harmonizer("nyul")
class NyulHarmonizer(BaseHarmonizer):
    """Nyúl & Udupa (2000) histogram standardization onto the target site's landmarks.

    Fit: the standard scale of each modality is the average, over the target site's volumes, of the
    in-mask intensity landmarks at ``percentiles``. Transform: each volume is mapped piecewise-linearly from
    its own landmarks to the standard ones (monotone; linear extrapolation beyond the end landmarks).

    Attributes
    ----------
    standard_scale_ : dict[str, numpy.ndarray]
        Per modality ``(K,)`` standard landmarks, K = ``len(percentiles)``.
    """

    def __init__(
        self, target_site: str | None = None, percentiles: Sequence[float] = NYUL_PERCENTILES, progress: bool = True
    ) -> None:
        super().__init__(target_site=target_site, progress=progress)
        self.percentiles = percentiles

    def _fit(self, data: HarmonizationData) -> None:
        p = np.asarray(self.percentiles, dtype=np.float64)
        if p.ndim != 1 or p.size < 2 or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 100:
            raise ConfigError(f"'percentiles' must be at least 2 increasing values in [0, 100]. "
                              f"{self.percentiles!r} was provided.")
        self.standard_scale_ = {}
        for m in self.modalities_:
            marks = [intensity_landmarks(_masked(data, i), p) for i in data.indices(site=self.target_site_, modality=m)]
            self.standard_scale_[m] = np.mean(np.stack(marks), axis=0)  # (K,)

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        source = intensity_landmarks(_masked(data, i), self.percentiles)
        if source[-1] <= source[0]:
            raise InvalidInputError(f"{data.where(i)} is constant inside its mask; no histogram to standardize")
        return piecewise_linear_map(data.arrays[i], source, self.standard_scale_[data.modalities[i]])

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"standard_scale": _per_modality(self.standard_scale_, self.modalities_)}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        self.standard_scale_ = _unstack(arrays["standard_scale"], self.modalities_)


__all__ = [
    "NYUL_PERCENTILES",
    "NyulHarmonizer",
    "RawHarmonizer",
    "WhiteStripeHarmonizer",
    "ZScoreHarmonizer",
    "default_peak_rule",
    "find_tissue_mode",
    "intensity_landmarks",
    "piecewise_linear_map",
    "smoothed_histogram",
    "white_stripe",
]
