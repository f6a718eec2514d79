"""Whitened principal components: the shared feature basis of the simulated encoder and the encoding models."""

from __future__ import annotations

import numpy as np


class WhitenedPCA:
    """First ``k`` principal components of standardised columns, each score scaled to unit variance.

    Fitted on (N, F); :meth:`transform` applies the same centring, column scaling, projection and whitening to
    new rows, so images outside the fitting set land in the same space. Each component's sign is fixed (its
    largest loading positive), so a seeded simulation built on these scores is the same on every LAPACK build.
    """

    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, x: np.ndarray) -> WhitenedPCA:
        x = np.asarray(x, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        sd = (x - self.mean_).std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        z = (x - self.mean_) / self.scale_
        evals, evecs = np.linalg.eigh(z.T @ z)  # (F,), (F, F) ascending; cheaper than an SVD of (N, F)
        order = np.argsort(evals)[::-1]
        evals, evecs = evals[order], evecs[:, order]
        k = min(self.k, int((evals > 1e-8 * evals[0]).sum()))
        components = evecs[:, :k]  # (F, k), each column's sign arbitrary
        peak = components[np.argmax(np.abs(components), axis=0), np.arange(k)]  # (k,) largest loading of each
        self.components_ = components * np.where(peak < 0, -1.0, 1.0)
        scores = z @ self.components_  # (N, k)
        self.score_mean_, self.score_sd_ = scores.mean(axis=0), scores.std(axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whitened scores (M, k) float64 of rows ``x`` (M, F)."""
        scores = ((np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_) @ self.components_
        return (scores - self.score_mean_) / self.score_sd_

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)
