"""Empirical-Bayes voxel encoders: a Gaussian prior on linear voxel weights, one per ROI, learned from other
subjects; a new subject's weights are the posterior mean given its k support images.

The linear-Gaussian counterpart of BraInCoRL's meta-learned prior: it reads the same support sets and shows
how much of a new subject's encoding a prior learned from other subjects can give at small k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint

PRIOR_CLASS = "GaussianWeightPrior"


@dataclass
class WeightPrior:
    """Per-group Gaussian prior ``w ~ N(mean[g], cov[g])`` on voxel weights (D,), and the noise share of responses."""

    groups: list[str]
    mean: np.ndarray  # (G, D)
    cov: np.ndarray  # (G, D, D)
    noise_fraction: float  # share of a voxel's response variance treated as noise in the posterior

    def index(self, name: str) -> int:
        if name not in self.groups:
            raise InvalidInputError(f"no prior for group {name!r}; known: {self.groups}")
        return self.groups.index(name)

    def save(self, directory: str | Path, info: dict[str, Any] | None = None) -> Path:
        """Write the prior as a safetensors checkpoint (mean, cov) with its groups and noise share in JSON."""
        state = {"mean": torch.from_numpy(np.ascontiguousarray(self.mean)),
                 "cov": torch.from_numpy(np.ascontiguousarray(self.cov))}
        config = {"groups": list(self.groups), "noise_fraction": self.noise_fraction, "info": info or {}}
        return save_checkpoint(directory, state, config, model_class=PRIOR_CLASS, trained=True)

    @classmethod
    def load(cls, directory: str | Path) -> WeightPrior:
        """Read a prior written by :meth:`save`."""
        ckpt = load_checkpoint(directory, expected_class=PRIOR_CLASS)
        try:
            groups = [str(g) for g in ckpt.config["groups"]]
            mean, cov = ckpt.state_dict["mean"].double().numpy(), ckpt.state_dict["cov"].double().numpy()
            noise = float(ckpt.config["noise_fraction"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{directory}: bad {PRIOR_CLASS} checkpoint ({exc})") from None
        if mean.shape[0] != len(groups) or cov.shape != (len(groups), mean.shape[1], mean.shape[1]):
            raise CheckpointError(f"{directory}: prior arrays {mean.shape} / {cov.shape} do not match "
                                  f"{len(groups)} groups")
        return cls(groups, mean, cov, noise)


def learn_weight_prior(weights: Sequence[np.ndarray], groups: Sequence[np.ndarray], *, noise_fraction: float,
                       shrinkage: float = 1e-3) -> WeightPrior:
    """Fit one Gaussian per group to voxel weights pooled over subjects.

    Parameters
    ----------
    weights : per subject, ``(D, V_s)`` linear weights (e.g. ridge on all of that subject's images).
    groups : per subject, ``(V_s,)`` group name of each voxel (e.g. its ROI).
    noise_fraction : share of response variance left unexplained (e.g. ``1 - mean CV R^2`` of those fits).
    shrinkage : ridge added to each covariance, relative to its mean variance (keeps it invertible).
    """
    if not 0.0 < noise_fraction < 1.0:
        raise ConfigError(f"'noise_fraction' must be in (0, 1). {noise_fraction!r} was provided.")
    if len(weights) != len(groups) or not weights:
        raise InvalidInputError("weights and groups must be non-empty and one per subject")
    pooled: dict[str, list[np.ndarray]] = {}
    for w, g in zip(weights, groups, strict=True):
        w, g = np.asarray(w, dtype=np.float64), np.asarray(g)
        if w.ndim != 2 or w.shape[1] != len(g):
            raise InvalidInputError(f"weights {w.shape} must be (D, V) with V = {len(g)} group labels")
        for name in np.unique(g):
            pooled.setdefault(str(name), []).append(w[:, g == name].T)  # (V_g, D)
    names = sorted(pooled)
    means, covs = [], []
    for name in names:
        rows = np.concatenate(pooled[name])  # (V, D)
        if len(rows) < 2:
            raise InvalidInputError(f"group {name!r} has one voxel; a covariance needs at least two")
        cov = np.cov(rows, rowvar=False)
        means.append(rows.mean(0))
        covs.append(cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov)))
    return WeightPrior(names, np.stack(means), np.stack(covs), float(noise_fraction))


def roi_groups(subject: Any) -> np.ndarray:
    """ROI name (V,) of every voxel of an :class:`~neuroattn.encode.data.EncodingSubject` ("none" outside ROIs)."""
    return np.array([subject.roi_names.get(int(c), "none") for c in subject.roi])


def prior_from_subjects(data: Any, names: Sequence[str], *, alphas: Sequence[float] | None = None,
                        seed: int = 0) -> WeightPrior:
    """Per-ROI weight prior from other subjects: ridge on all their training images (CV penalty per voxel).

    The noise share is ``1 - mean CV R^2`` of those fits (clipped to [0, 1] per voxel): the part of a voxel's
    response a linear encoder did not explain in subjects with plenty of data.
    """
    from neuroattn.encode.ridge_encoder import RidgeEncoder

    if not names:
        raise ConfigError("a weight prior needs at least one other subject to learn from")
    emb = data.features.values
    subjects = [data.subject(n) for n in names]
    fits = [RidgeEncoder(alphas=alphas, seed=seed).fit(emb[s.train_ids], s.train_responses) for s in subjects]
    noise = 1.0 - float(np.mean([np.clip(f.cv_scores_, 0.0, 1.0).mean() for f in fits]))
    return learn_weight_prior([f.weights_ for f in fits], [roi_groups(s) for s in subjects],
                              noise_fraction=float(np.clip(noise, 1e-3, 1 - 1e-3)))


def posterior_weights(prior: WeightPrior, x: np.ndarray, y: np.ndarray, groups: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior-mean weights ``(D, V)`` and intercepts ``(V,)`` of voxels ``y`` (k, V) on support images ``x`` (k, D).

    Centred on the support means, each voxel's weights are ``mu + S Xc^T (Xc S Xc^T + s2 I)^-1 (yc - Xc mu)``
    (the posterior mean under ``w ~ N(mu, S)`` and noise variance ``s2 = noise_fraction * var(y_v)``), solved for
    all voxels of a group with one eigendecomposition of the k x k kernel.
    """
    x, y, groups = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(groups)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or y.shape[1] != len(groups):
        raise InvalidInputError(f"support {x.shape}, responses {y.shape} and {len(groups)} groups disagree")
    if len(x) < 2:
        raise InvalidInputError(f"a posterior needs at least 2 support images, got {len(x)}")
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    noise = np.maximum(prior.noise_fraction * y.var(0), 1e-12)  # (V,)
    coef = np.empty((x.shape[1], y.shape[1]))
    for name in np.unique(groups):
        g = prior.index(str(name))
        cols = np.flatnonzero(groups == name)
        mu, cov = prior.mean[g], prior.cov[g]
        lam, vecs = np.linalg.eigh(xc @ cov @ xc.T)  # (k,), (k, k)
        resid = yc[:, cols] - (xc @ mu)[:, None]  # (k, V_g)
        alpha = vecs @ ((vecs.T @ resid) / (lam[:, None] + noise[None, cols]))  # (k, V_g)
        coef[:, cols] = mu[:, None] + cov @ xc.T @ alpha
    return coef, y_mean - x_mean @ coef


class PriorEncoder:
    """In-context encoder from a :class:`WeightPrior`: ``fit(x, y)`` on a support set, ``predict(x)`` for new images.

    ``groups`` (V,) names each voxel's prior group; the same voxels, in order, must be passed to ``fit``.
    """

    name = "gaussian-prior"
    status = "trained"  # the prior is estimated from data (other subjects), not random

    def __init__(self, prior: WeightPrior, groups: np.ndarray) -> None:
        self.prior = prior
        self.groups = np.asarray(groups)

    def fit(self, x: np.ndarray, y: np.ndarray) -> PriorEncoder:
        self.coef_, self.intercept_ = posterior_weights(self.prior, x, y, self.groups)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise RuntimeError("PriorEncoder is not fitted; call fit() first")
        return (np.asarray(x, dtype=np.float64) @ self.coef_ + self.intercept_).astype(np.float32)
