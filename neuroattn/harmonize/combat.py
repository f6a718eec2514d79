"""Voxel-wise ComBat (Johnson et al. 2007; Fortin et al. 2018) within the brain mask, target site as reference batch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.harmonize.base import BaseHarmonizer, SingleSubjectSiteWarning, register_harmonizer
from neuroattn.harmonize.inputs import HarmonizationData

# Implemented here rather than wrapping the ``neuroCombat`` package: its reference-batch path calls ``np.int``
# (removed in numpy 2) and its apply-to-new-data function ignores the new subjects' covariates. The estimators
# follow neuroCombat / R ``sva::ComBat`` with ``ref.batch``: location/scale model, parametric empirical-Bayes
# priors, reference-batch intercept and pooled variance, reference data returned unchanged.
ESTIMATE_NAMES = ("stand_mean", "var_pooled", "beta", "gamma_star", "delta_star")


@dataclass
class ComBatEstimates:
    """What ComBat learned for F features and B batches (rows of absent batches are NaN).

    ``stand_mean`` and ``var_pooled`` are ``(F,)`` (reference-batch intercept and residual variance),
    ``beta`` is ``(Q, F)`` (covariate effects), ``gamma_star`` and ``delta_star`` are ``(B, F)`` (batch
    location shift and scale in standardized units; the reference batch has 0 and 1).
    """

    stand_mean: np.ndarray
    var_pooled: np.ndarray
    beta: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray
    ref: int


def _postmean(g_hat: np.ndarray, g_bar: float, n: float, d_star: np.ndarray | float, t2: float) -> np.ndarray:
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _eb_parametric(
    s: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, *, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Parametric EB shrinkage of one batch: normal prior on gamma, inverse-gamma prior on delta.

    ``s`` is the batch's standardized data ``(n, F)``; returns ``(gamma_star, delta_star)``, each ``(F,)``.
    """
    n = s.shape[0]
    g_bar, t2 = float(g_hat.mean()), float(g_hat.var(ddof=1))
    m, s2 = float(d_hat.mean()), float(d_hat.var(ddof=1))
    if not s2 > 1e-12 * m * m:
        # An inverse-gamma prior with vanishing spread pins delta to its mean m (the a, b -> inf limit).
        delta = np.full_like(d_hat, m)
        return _postmean(g_hat, g_bar, n, delta, t2), delta
    a = (2 * s2 + m * m) / s2
    b = (m * s2 + m**3) / s2
    g_old, d_old = g_hat.copy(), d_hat.copy()
    sum_s, sum_s2 = s.sum(axis=0), (s * s).sum(axis=0)  # sum_i (s_i - g)^2 = sum_s2 - 2 g sum_s + n g^2
    for _ in range(max_iter):
        g_new = _postmean(g_hat, g_bar, n, d_old, t2)
        sum2 = np.maximum(sum_s2 - 2 * g_new * sum_s + n * g_new * g_new, 0.0)
        d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            g_change = np.where(g_old != 0, np.abs(g_new - g_old) / np.abs(g_old), np.abs(g_new - g_old))
        change = max(float(g_change.max()), float((np.abs(d_new - d_old) / d_old).max()))
        g_old, d_old = g_new, d_new
        if change <= tol:
            break
    return g_old, d_old


def combat_fit(
    data: np.ndarray,
    batch: np.ndarray,
    n_batches: int,
    ref: int,
    covariates: np.ndarray | None = None,
    *,
    eb: bool = True,
    mean_only: bool = False,
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> ComBatEstimates:
    """Estimate ComBat with reference batch ``ref``.

    Parameters
    ----------
    data
        ``(n, F)`` samples by features (here: volumes by in-mask voxels).
    batch
        ``(n,)`` integer batch of each sample in ``[0, n_batches)``.
    covariates
        ``(n, Q)`` design columns of covariates to preserve (numeric; categorical ones already one-hot).
    eb, mean_only
        Empirical-Bayes shrinkage; location-only adjustment (delta = 1).
    """
    data = np.asarray(data, dtype=np.float64)
    n, n_feat = data.shape
    cov = np.zeros((n, 0)) if covariates is None else np.asarray(covariates, dtype=np.float64).reshape(n, -1)
    present = [b for b in range(n_batches) if np.any(batch == b)]
    onehot = (batch[:, None] == np.array(present)[None, :]).astype(np.float64)  # (n, B_present)
    onehot[:, present.index(ref)] = 1.0  # reference batch column = intercept
    design = np.hstack([onehot, cov])  # (n, B_present + Q)
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise InvalidInputError("ComBat design is rank deficient: covariates are constant or confounded with site")
    coef = np.linalg.lstsq(design, data, rcond=None)[0]  # (B_present + Q, F)
    stand_mean = coef[present.index(ref)]
    beta = coef[len(present):]  # (Q, F)
    ref_rows = batch == ref
    var_pooled = ((data[ref_rows] - design[ref_rows] @ coef) ** 2).mean(axis=0)
    positive = var_pooled[var_pooled > 0]
    if positive.size == 0:
        raise InvalidInputError("ComBat needs at least 2 target-site volumes that differ, to estimate the "
                                "pooled variance")
    var_pooled[var_pooled <= 0] = np.median(positive)
    s = (data - stand_mean - cov @ beta) / np.sqrt(var_pooled)  # (n, F) standardized
    gamma = np.full((n_batches, n_feat), np.nan)
    delta = np.full((n_batches, n_feat), np.nan)
    for b in present:
        sb = s[batch == b]
        g_hat = sb.mean(axis=0)
        d_hat = sb.var(axis=0, ddof=1) if sb.shape[0] > 1 and not mean_only else np.ones(n_feat)
        d_hat[d_hat == 0] = 1.0
        if b == ref:
            gamma[b], delta[b] = 0.0, 1.0
        elif not eb:
            gamma[b], delta[b] = g_hat, d_hat
        elif mean_only:
            gamma[b] = _postmean(g_hat, float(g_hat.mean()), 1.0, 1.0, float(g_hat.var(ddof=1)))
            delta[b] = 1.0
        else:
            gamma[b], delta[b] = _eb_parametric(sb, g_hat, d_hat, tol=tol, max_iter=max_iter)
    return ComBatEstimates(stand_mean=stand_mean, var_pooled=var_pooled, beta=beta, gamma_star=gamma,
                           delta_star=delta, ref=ref)


def combat_apply(
    data: np.ndarray, batch: np.ndarray, est: ComBatEstimates, covariates: np.ndarray | None = None
) -> np.ndarray:
    """Harmonize ``(n, F)`` samples of known batches with fitted estimates; reference-batch rows stay as given.

    ``y = (s - gamma*_b) / sqrt(delta*_b) * sqrt(var) + stand_mean + cov @ beta`` with
    ``s = (x - stand_mean - cov @ beta) / sqrt(var)``. The same formula serves training and new samples.
    """
    data = np.asarray(data, dtype=np.float64)
    n = data.shape[0]
    cov = np.zeros((n, 0)) if covariates is None else np.asarray(covariates, dtype=np.float64).reshape(n, -1)
    mean = est.stand_mean + cov @ est.beta  # (n, F)
    sd = np.sqrt(est.var_pooled)
    s = (data - mean) / sd
    out = (s - est.gamma_star[batch]) / np.sqrt(est.delta_star[batch]) * sd + mean
    ref_rows = batch == est.ref
    out[ref_rows] = data[ref_rows]
    return out


def covariate_design(
    frame: pd.DataFrame, continuous: Sequence[str], categorical: Sequence[str],
    levels: dict[str, list[str]] | None = None,
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Covariate design columns ``(n, Q)``: continuous columns as numbers, categorical ones one-hot without their
    first level. ``levels`` (from fit) fixes the categories; None learns them (sorted). Returns design and levels.
    """
    missing = [c for c in (*continuous, *categorical) if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"covariate column(s) {missing} missing; have {list(frame.columns)}")
    columns, learned = [], {}
    for c in continuous:
        values = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise InvalidInputError(f"covariate '{c}' has missing or non-numeric values")
        columns.append(values[:, None])
    for c in categorical:
        text = frame[c].astype(str).str.strip()
        if (text == "").any() or frame[c].isna().any():
            raise InvalidInputError(f"covariate '{c}' has missing values")
        known = sorted(set(text)) if levels is None else list(levels[c])
        unknown = sorted(set(text) - set(known))
        if unknown:
            raise InvalidInputError(f"covariate '{c}' has level(s) {unknown} not seen during fit; known: {known}")
        learned[c] = known
        columns.append((text.to_numpy()[:, None] == np.array(known[1:])[None, :]).astype(np.float64))
    design = np.hstack(columns) if columns else np.zeros((len(frame), 0))
    return design, learned


@register_harmonizer("combat")
class ComBatHarmonizer(BaseHarmonizer):
    """Voxel-wise ComBat within the brain mask; requires co-registered volumes on one voxel grid.

    Each in-mask voxel is one ComBat feature (features = voxels inside the intersection of the fit masks of a
    modality; modalities are fitted separately). The target site is the reference batch, so its volumes come
    back unchanged; other sites get the empirical-Bayes location/scale correction onto it. Covariates listed
    in ``continuous``/``categorical`` (age, sex ...) keep their effects. Estimates are stored per site, so
    :meth:`transform` also harmonizes new subjects from sites seen at fit. Voxels outside the fit mask (or
    outside a volume's own mask) are left as they are.

    Parameters
    ----------
    continuous, categorical
        Covariate columns to preserve (from ``covariates=`` or a manifest's extra columns).
    eb
        Empirical-Bayes shrinkage (parametric priors); False uses the per-site estimates as they are.
    mean_only
        Correct location only (scale factor 1).

    Attributes
    ----------
    shape_ : tuple[int, int, int]
        Voxel grid every volume must share.
    mask_ : dict[str, numpy.ndarray]
        Per modality, bool ``(X, Y, Z)``: the voxels harmonized.
    estimates_ : dict[str, ComBatEstimates]
        Per modality; batch rows follow ``sites_``.
    levels_ : dict[str, list[str]]
        Categories of each categorical covariate.
    """

    requires_known_sites = True

    def __init__(
        self, target_site: str | None = None, continuous: Sequence[str] = (), categorical: Sequence[str] = (),
        eb: bool = True, mean_only: bool = False, progress: bool = True,
    ) -> None:
        super().__init__(target_site=target_site, progress=progress)
        self.continuous = continuous
        self.categorical = categorical
        self.eb = eb
        self.mean_only = mean_only

    def _uses_covariates(self) -> bool:
        return bool(list(self.continuous) or list(self.categorical))

    def _design(self, data: HarmonizationData, rows: list[int], levels: dict[str, list[str]] | None) -> tuple:
        if not self._uses_covariates():
            return None, {}
        if data.covariates is None:
            raise InvalidInputError(f"{type(self).__name__} preserves covariates "
                                    f"{[*self.continuous, *self.categorical]}; pass covariates= with those columns")
        return covariate_design(data.covariates.iloc[rows], list(self.continuous), list(self.categorical), levels)

    def _check_grid(self, data: HarmonizationData, shape: tuple[int, ...]) -> None:
        for i, arr in enumerate(data.arrays):
            if arr.shape != shape:
                raise InvalidInputError(f"{data.where(i)} has shape {arr.shape} but others have {shape}; voxel-wise "
                                        "ComBat needs co-registered volumes on one voxel grid")

    def _fit(self, data: HarmonizationData) -> None:
        overlap = set(self.continuous) & set(self.categorical)
        if overlap:
            raise ConfigError(f"covariate(s) {sorted(overlap)} listed as both continuous and categorical")
        shape = data.arrays[0].shape
        self._check_grid(data, shape)
        self.shape_ = tuple(int(v) for v in shape)
        _, self.levels_ = self._design(data, list(range(len(data))), None)
        self.mask_, self.estimates_ = {}, {}
        ref = self.sites_.index(self.target_site_)
        for m in self.modalities_:
            rows = data.indices(modality=m)
            mask = np.logical_and.reduce([data.masks[i] for i in rows])
            if not mask.any():
                raise InvalidInputError(f"the brain masks of modality '{m}' do not overlap; nothing to harmonize")
            batch = np.array([self.sites_.index(data.sites[i]) for i in rows])
            for b in np.unique(batch):
                if b != ref and np.sum(batch == b) == 1 and not self.mean_only:
                    warnings.warn(f"site '{self.sites_[b]}' has one volume of modality '{m}'; ComBat corrects its "
                                  "location only (scale left at 1)", SingleSubjectSiteWarning, stacklevel=4)
            values = np.stack([data.arrays[i][mask] for i in rows])  # (n, F)
            design, _ = self._design(data, rows, self.levels_)
            self.mask_[m] = mask
            self.estimates_[m] = combat_fit(values, batch, len(self.sites_), ref, design, eb=self.eb,
                                            mean_only=self.mean_only)

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        self._check_grid(data, self.shape_)
        arr, m, site = data.arrays[i], data.modalities[i], data.sites[i]
        if site == self.target_site_:
            return arr.copy()
        b = self.sites_.index(site)
        est = self.estimates_[m]
        if np.isnan(est.gamma_star[b, 0]):
            raise InvalidInputError(f"site '{site}' had no volume of modality '{m}' during fit; cannot harmonize "
                                    f"{data.where(i)}")
        design, _ = self._design(data, [i], self.levels_)
        mask = self.mask_[m]
        values = arr[mask]  # (F,)
        adjusted = combat_apply(values[None], np.array([b]), est, design)[0]
        out = arr.astype(np.float64)
        out[mask] = np.where(data.masks[i][mask], adjusted, values)
        return out

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        for k, m in enumerate(self.modalities_):
            arrays[f"modality{k}.mask"] = self.mask_[m].astype(np.uint8)
            for name in ESTIMATE_NAMES:
                arrays[f"modality{k}.{name}"] = getattr(self.estimates_[m], name)
        meta = {"shape": list(self.shape_), "levels": self.levels_,
                "ref": self.sites_.index(self.target_site_)}
        return meta, arrays

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        self.shape_ = tuple(int(v) for v in meta["shape"])
        self.levels_ = {k: list(v) for k, v in meta["levels"].items()}
        self.mask_, self.estimates_ = {}, {}
        for k, m in enumerate(self.modalities_):
            self.mask_[m] = arrays[f"modality{k}.mask"].numpy().astype(bool)
            values = {name: arrays[f"modality{k}.{name}"].numpy().astype(np.float64) for name in ESTIMATE_NAMES}
            self.estimates_[m] = ComBatEstimates(**values, ref=int(meta["ref"]))


__all__ = ["ComBatEstimates", "ComBatHarmonizer", "combat_apply", "combat_fit", "covariate_design"]
