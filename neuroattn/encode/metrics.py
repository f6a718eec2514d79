"""Voxelwise scores of an encoding model on held-out images: Pearson r, explained variance, Spearman rho."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _check(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.ndim == 1:
        pred, true = pred[:, None], true[:, None] if true.ndim == 1 else true
    if pred.shape != true.shape or pred.ndim != 2 or len(pred) < 2:
        raise ValueError(f"predictions {pred.shape} and responses {true.shape} must be equal (n >= 2, V) arrays")
    return pred, true


def voxelwise_pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r between predicted and measured responses over the n images, per voxel: (V,); 0 for constants."""
    pred, true = _check(pred, true)
    pc, tc = pred - pred.mean(axis=0), true - true.mean(axis=0)
    denom = np.sqrt((pc**2).sum(axis=0) * (tc**2).sum(axis=0))
    return np.divide((pc * tc).sum(axis=0), denom, out=np.zeros(pred.shape[1]), where=denom > 0)


def explained_variance(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Coefficient of determination ``1 - SSE / SST`` over the n images, per voxel: (V,); can be negative."""
    pred, true = _check(pred, true)
    sst = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    sse = ((true - pred) ** 2).sum(axis=0)
    return np.divide(sst - sse, sst, out=np.zeros(pred.shape[1]), where=sst > 0)


def voxelwise_spearman(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Spearman rho (Pearson r of average ranks) per voxel: (V,)."""
    pred, true = _check(pred, true)
    return voxelwise_pearson(rankdata(pred, axis=0), rankdata(true, axis=0))
