"""Spatial pooling of voxel encoders: tuning directions pooled over neighbouring voxels, each voxel its own gain.

Neighbouring voxels of visual cortex share tuning (what they respond to) far more than gain (how strongly): gain
follows vascular and partial-volume factors that change from voxel to voxel. With few images each voxel's
weights are noisy, so the unit direction of its weights is replaced by a mix with the average direction of its
neighbours (Gaussian in distance, weighted by each neighbour's reliability), never across a group (ROI) boundary,
and its gain is refit by least squares on the support images. The kernel width and the mix are chosen by
cross-validation over those same support images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from neuroattn.errors import ConfigError, InvalidInputError

Fitter = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(embeddings (k, D), responses (k, V)) -> (weights (D, V), bias (V,))``: an unpooled per-voxel encoder fit."""

TRUNCATE = 3.0  # kernel radius in sigmas


@dataclass(frozen=True)
class VoxelLayout:
    """Where the encoded voxels sit: grid indices ``ijk`` (V, 3), voxel size (3,) in mm, group label (V,).

    Pooling never mixes voxels of different groups (ROI codes; all zeros = one group).
    """

    ijk: np.ndarray
    voxel_size: np.ndarray
    groups: np.ndarray

    @classmethod
    def from_affine(cls, ijk: np.ndarray, affine: np.ndarray, groups: np.ndarray | None = None) -> VoxelLayout:
        """Layout of voxels at grid indices ``ijk`` of a volume with 4x4 ``affine`` (voxel size = column norms)."""
        ijk = np.asarray(ijk, dtype=np.int64)
        if ijk.ndim != 2 or ijk.shape[1] != 3:
            raise InvalidInputError(f"voxel indices must be (V, 3), got {ijk.shape}", None)
        size = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
        labels = np.zeros(len(ijk), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        if labels.shape != (len(ijk),):
            raise InvalidInputError(f"{labels.shape} group labels for {len(ijk)} voxels", None)
        if not (size > 0).all():
            raise InvalidInputError(f"affine has a zero voxel size {size.tolist()}", None)
        return cls(ijk, size, labels)

    @property
    def n_voxels(self) -> int:
        return len(self.ijk)


def smooth_within_groups(values: np.ndarray, layout: VoxelLayout, sigma_mm: float) -> np.ndarray:
    """Gaussian-weighted average ``(V, C)`` of ``values`` (V, C) over each voxel's neighbours in its own group.

    Normalised convolution on the voxel grid: ``G * (v 1_group) / G * 1_group``, so a voxel at a group's edge
    averages only over that group's voxels. ``sigma_mm`` 0 returns ``values`` unchanged.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] != layout.n_voxels:
        raise InvalidInputError(f"{values.shape[0]} value rows for {layout.n_voxels} voxels", None)
    if sigma_mm <= 0:
        return values.copy()
    sigma = sigma_mm / layout.voxel_size  # (3,) voxels
    pad = np.ceil(TRUNCATE * sigma).astype(np.int64) + 1
    out = np.empty_like(values)
    for label in np.unique(layout.groups):
        rows = np.flatnonzero(layout.groups == label)
        ijk = layout.ijk[rows]
        lo = ijk.min(axis=0) - pad
        shape = tuple(int(s) for s in ijk.max(axis=0) - lo + pad + 1)
        loc = tuple((ijk - lo).T)
        grid = np.zeros((*shape, values.shape[1] + 1))  # (X, Y, Z, C + 1): values, then the group's indicator
        grid[(*loc, slice(None, -1))] = values[rows]
        grid[(*loc, -1)] = 1.0
        smoothed = ndi.gaussian_filter(grid, (*sigma, 0.0), mode="constant", truncate=TRUNCATE)[loc]  # (V_g, C + 1)
        out[rows] = smoothed[:, :-1] / smoothed[:, -1:]
    return out


class _Pooler:
    """One set of unpooled encoders and their support set, pooled at any kernel width and mix.

    Directions, reliabilities and the support statistics are computed once; each width's neighbour average once.
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, embeddings: np.ndarray, responses: np.ndarray,
                 layout: VoxelLayout) -> None:
        self.weights, self.bias = np.asarray(weights, dtype=np.float64), np.asarray(bias, dtype=np.float64)
        self.x, self.layout = np.asarray(embeddings, dtype=np.float64), layout
        y = np.asarray(responses, dtype=np.float64)
        w = self.weights.T  # (V, D)
        norm = np.linalg.norm(w, axis=1)
        self.directions = np.divide(w, norm[:, None], out=np.zeros_like(w), where=norm[:, None] > 0)  # (V, D)
        self.mask = np.isfinite(y)  # (k, V)
        count = np.maximum(self.mask.sum(axis=0), 1)  # (V,)
        self.x_mean = (self.mask.T.astype(np.float64) @ self.x) / count[:, None]  # (V, D) over each voxel's pairs
        self.y_mean = np.where(self.mask, y, 0.0).sum(axis=0) / count  # (V,)
        self.y_centred = np.where(self.mask, y - self.y_mean, 0.0)  # (k, V), 0 where missing
        sd = np.sqrt((self.y_centred**2).sum(axis=0) / count)  # (V,) support response sd
        self.reliability = np.divide(norm, sd, out=np.zeros(len(w)), where=sd > 0) ** 2  # (V,)
        self._neighbours: dict[float, np.ndarray] = {}

    def neighbours(self, sigma_mm: float) -> np.ndarray:
        """Reliability-weighted mean direction of each voxel's neighbours in its group, ``(V, D)``."""
        if sigma_mm not in self._neighbours:
            r = self.reliability[:, None]
            both = smooth_within_groups(np.concatenate([self.directions * r, r], axis=1), self.layout, sigma_mm)
            total = both[:, -1:]  # (V, 1) summed reliability
            self._neighbours[sigma_mm] = np.divide(both[:, :-1], total, out=self.directions.copy(), where=total > 0)
        return self._neighbours[sigma_mm]

    def pooled(self, sigma_mm: float, mix: float) -> tuple[np.ndarray, np.ndarray]:
        """``(weights (D, V), bias (V,))`` pooled at one kernel width and mix (unchanged at 0 for either)."""
        if not 0.0 <= mix <= 1.0:
            raise ConfigError(f"'mix' must be in [0, 1]. {mix!r} was provided.")
        if sigma_mm <= 0 or mix == 0:
            return self.weights, self.bias
        pooled = (1.0 - mix) * self.directions + mix * self.neighbours(sigma_mm)  # (V, D)
        pred = np.where(self.mask, self.x @ pooled.T - (self.x_mean * pooled).sum(axis=1), 0.0)  # (k, V), centred
        denom = (pred**2).sum(axis=0)
        gain = np.divide((pred * self.y_centred).sum(axis=0), denom, out=np.zeros(len(denom)), where=denom > 0)
        out = pooled * gain[:, None]  # (V, D)
        return out.T, self.y_mean - (self.x_mean * out).sum(axis=1)


def pool_weights(weights: np.ndarray, bias: np.ndarray, embeddings: np.ndarray, responses: np.ndarray,
                 layout: VoxelLayout, sigma_mm: float, mix: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatially pooled encoders from unpooled ``weights`` (D, V), ``bias`` (V,) and the support set they came from.

    Each voxel's direction becomes ``(1 - mix) d_v + mix * mean of neighbours' d``, the mean weighting each
    neighbour by its reliability, the squared norm of its weights in units of its support response sd (the
    Bayes path shrinks noisy voxels' weights towards 0, so their directions count less); its gain is the
    least-squares scale of that direction's predictions to its centred support ``responses`` (k, V) (NaN =
    missing), and its bias makes the prediction at its support images' mean embedding equal their mean response.
    ``sigma_mm`` or ``mix`` 0 returns the encoders unchanged. Returns ``(weights (D, V), bias (V,))``.
    """
    return _Pooler(weights, bias, embeddings, responses, layout).pooled(sigma_mm, mix)


@dataclass
class SpatialPooling:
    """Which kernel widths (mm, 0 = no pooling) and mixes to try, and the cross-validation folds choosing them."""

    sigmas_mm: Sequence[float] = (0.0, 1.5, 2.25, 3.0, 4.5, 6.0)
    mixes: Sequence[float] = (0.5, 0.75, 1.0)
    folds: int = 5
    within_rois: bool = True  # never pool across ROI boundaries (needs the subject's ROI labels)
    seed: int = 0
    candidates: list[tuple[float, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"'folds' must be >= 2. {self.folds!r} was provided.")
        if any(s < 0 for s in self.sigmas_mm) or not self.sigmas_mm:
            raise ConfigError(f"'sigmas_mm' must be non-empty and >= 0. {list(self.sigmas_mm)!r} was provided.")
        if any(not 0.0 <= m <= 1.0 for m in self.mixes) or not self.mixes:
            raise ConfigError(f"'mixes' must be non-empty and in [0, 1]. {list(self.mixes)!r} was provided.")
        pairs = {(0.0, 0.0) if s == 0 else (float(s), float(m)) for s in self.sigmas_mm for m in self.mixes}
        self.candidates = sorted(pairs)

    def select(self, fit: Fitter, embeddings: np.ndarray, responses: np.ndarray, layout: VoxelLayout
               ) -> tuple[tuple[float, float], list[dict[str, float]]]:
        """The ``(sigma_mm, mix)`` with the least held-out error in K-fold cross-validation over the support set.

        In each fold ``fit`` builds unpooled encoders from the other images, every candidate pools them and
        predicts the fold's images. The error is summed over voxels in units of each voxel's support variance,
        so every voxel counts alike (as in mean explained variance). Returns the choice and a table per candidate.
        """
        x = np.asarray(embeddings, dtype=np.float64)
        y = np.asarray(responses, dtype=np.float64)
        k = len(x)
        folds = min(self.folds, k // 2)
        if folds < 2:
            return (0.0, 0.0), []
        scale = np.nanvar(y, axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)  # (V,)
        order = np.random.default_rng(self.seed).permutation(k)
        sse = np.zeros(len(self.candidates))
        for held in np.array_split(order, folds):
            train = np.setdiff1d(order, held)
            pooler = _Pooler(*fit(x[train], y[train]), x[train], y[train], layout)
            for c, (sigma, mix) in enumerate(self.candidates):
                pw, pb = pooler.pooled(sigma, mix)
                err = (x[held] @ pw + pb - y[held]) ** 2 / scale  # (k_held, V)
                sse[c] += float(np.nansum(err))
        table = [{"sigma_mm": s, "mix": m, "cv_error": float(e / np.isfinite(y).sum())}
                 for (s, m), e in zip(self.candidates, sse, strict=True)]
        return self.candidates[int(np.argmin(sse))], table
