"""Functional voxel embeddings from encoding profiles, and the Gaussian-mixture clusters shared across subjects."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from neuroattn.decode.base import normalize_rows
from neuroattn.errors import ConfigError, InvalidInputError

_STATE_KEYS = ("mean", "components", "scale", "means", "variances", "weights")


def encoding_profiles(betas: np.ndarray, features: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """Each voxel's ridge encoding weights on image features: its functional response profile.

    Features are standardised per column and betas centred per voxel on these trials, then
    ``W = argmin ||Y - X W||^2 + alpha * N * ||W||^2`` in float64 (primal or dual form, whichever is smaller).
    Profiles of different subjects computed on the same feature space (e.g. CLIP pooled embeddings) are
    comparable, which is what lets one clustering serve every subject.

    Parameters
    ----------
    betas : ``(N, V)`` voxel responses of N training images.
    features : ``(N, F)`` features of the same images (CLIP pooled embeddings in Brain-IT).
    alpha : ridge penalty per training image (the penalty is ``alpha * N``).

    Returns
    -------
    float32 ``(V, F)`` encoding weights, one row per voxel.
    """
    y = np.asarray(betas, dtype=np.float64)
    x = np.asarray(features, dtype=np.float64)
    if y.ndim != 2 or x.ndim != 2 or y.shape[0] != x.shape[0]:
        raise InvalidInputError(f"need betas (N, V) and features (N, F) with the same N; got {y.shape} and {x.shape}")
    if y.shape[0] < 2:
        raise InvalidInputError(f"encoding profiles need at least 2 training images, got {y.shape[0]}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x))):
        raise InvalidInputError("betas or features contain NaN or infinite values")
    if not alpha > 0:
        raise ConfigError(f"'alpha' must be > 0. {alpha!r} was provided.")
    n = x.shape[0]
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)  # (N, F)
    y = y - y.mean(0)  # (N, V)
    lam = alpha * n
    if x.shape[1] <= n:
        weights = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)  # (F, V)
    else:  # dual form: W = X^T (X X^T + lam I)^-1 Y
        weights = x.T @ np.linalg.solve(x @ x.T + lam * np.eye(n), y)  # (F, V)
    return weights.T.astype(np.float32)  # (V, F)


@dataclass
class VoxelClusters:
    """A PCA of unit-norm voxel profiles (whitened) and a diagonal Gaussian mixture over the reduced profiles.

    Attributes
    ----------
    mean : ``(F,)`` mean of the unit-norm profiles.
    components : ``(P, F)`` principal axes.
    scale : ``(P,)`` standard deviation of the scores along each axis (embeddings are scores / scale).
    means, variances : ``(K, P)`` mixture component means and diagonal variances in embedding space.
    weights : ``(K,)`` mixture weights.
    """

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.components.shape[1])

    def embed(self, profiles: np.ndarray) -> np.ndarray:
        """Profiles ``(V, F)`` -> functional embeddings ``(V, P)`` float32 (unit-norm rows, PCA, whitened)."""
        profiles = np.asarray(profiles)
        if profiles.ndim != 2 or profiles.shape[1] != self.n_features:
            raise InvalidInputError(f"profiles must be (V, {self.n_features}), got shape {profiles.shape}")
        unit = normalize_rows(profiles).astype(np.float64)  # (V, F)
        scores = (unit - self.mean) @ self.components.T  # (V, P)
        return (scores / self.scale).astype(np.float32)

    def log_likelihood(self, embeddings: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Per-cluster joint log density ``log w_k + log N(e | mu_k, diag(var_k + noise))``, ``(V, K)`` float64.

        ``noise`` ``(P,)`` is the variance of the embeddings' own estimation error (0 when None).
        """
        e = np.asarray(embeddings, dtype=np.float64)[:, None, :]  # (V, 1, P)
        var = self.variances + (0.0 if noise is None else np.asarray(noise, dtype=np.float64))  # (K, P)
        quad = ((e - self.means[None]) ** 2 / var[None]).sum(-1)  # (V, K)
        log_det = np.log(2 * np.pi * var).sum(-1)  # (K,)
        return np.log(self.weights)[None] - 0.5 * (quad + log_det[None])

    def assign(self, embeddings: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The most likely cluster of each embedded voxel, ``(V,)`` int64 (``noise`` as in :meth:`log_likelihood`)."""
        return self.log_likelihood(embeddings, noise).argmax(axis=1).astype(np.int64)

    def predict(self, profiles: np.ndarray) -> np.ndarray:
        """Cluster of each voxel profile ``(V, F)`` -> ``(V,)`` int64 (a new subject's voxels included)."""
        return self.assign(self.embed(profiles))

    def excess_variance(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-axis variance of ``embeddings`` ``(V, P)`` beyond the mixture's own, ``(P,)`` >= 0.

        Profiles estimated from few images scatter more than the clusters do; the excess estimates the variance
        of that estimation noise (about 0 for the subjects the clusters were fitted on).
        """
        e = np.asarray(embeddings, dtype=np.float64)
        centre = self.weights @ self.means  # (P,)
        total = self.weights @ (self.variances + self.means**2) - centre**2  # (P,) the mixture's variance
        return np.maximum(e.var(axis=0) - total, 0.0)

    def place_noisy(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clusters and denoised embeddings for voxels whose embeddings carry estimation noise (few images).

        With the noise variance ``n`` from :meth:`excess_variance`, each voxel joins the cluster of highest
        likelihood under ``N(mu_k, var_k + n)`` (so noise does not pull voxels into the broadest cluster), and its
        embedding becomes the posterior mean ``mu_k + var_k / (var_k + n) * (e - mu_k)`` averaged over clusters by
        their posterior probabilities. Returns ``(V,)`` int64 labels and ``(V, P)`` float32 embeddings.
        """
        labels, mean, _ = self.posterior(embeddings)
        return labels, mean

    def posterior(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`place_noisy`'s labels and posterior means, plus the posterior variances ``(V, P)`` float32.

        The variance is the mixture's: the expected within-cluster posterior variance ``var_k n / (var_k + n)``
        plus the spread of the clusters' posterior means around the overall one, both weighted by the clusters'
        posterior probabilities.
        """
        e = np.asarray(embeddings, dtype=np.float64)
        noise = self.excess_variance(e)
        joint = self.log_likelihood(e, noise)  # (V, K)
        post = np.exp(joint - joint.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)  # (V, K)
        gain = self.variances / (self.variances + noise)  # (K, P)
        shrunk = self.means[None] + gain[None] * (e[:, None] - self.means[None])  # (V, K, P)
        mean = np.einsum("vk,vkp->vp", post, shrunk)  # (V, P)
        within = post @ (gain * noise)  # (V, P): var_k n / (var_k + n) = gain_k n
        between = np.einsum("vk,vkp->vp", post, (shrunk - mean[:, None]) ** 2)
        labels = joint.argmax(axis=1).astype(np.int64)
        return labels, mean.astype(np.float32), (within + between).astype(np.float32)

    def state_tensors(self) -> dict[str, Tensor]:
        """Float64 tensors for a safetensors checkpoint (keys: mean, components, scale, means, variances, weights)."""
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), dtype=np.float64)) for k in _STATE_KEYS}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor]) -> VoxelClusters:
        """Rebuild from :meth:`state_tensors`."""
        missing = [k for k in _STATE_KEYS if k not in tensors]
        if missing:
            raise InvalidInputError(f"voxel cluster state lacks {missing}")
        return cls(**{k: tensors[k].detach().cpu().double().numpy() for k in _STATE_KEYS})


def fit_voxel_clusters(
    profiles: Sequence[np.ndarray],
    n_clusters: int,
    seed: int = 0,
    *,
    n_components: int = 32,
    n_init: int = 4,
    reg_covar: float = 1e-3,
) -> tuple[VoxelClusters, list[np.ndarray]]:
    """Fit functional clusters shared across subjects on every subject's voxel profiles together.

    Each profile is scaled to unit norm (its direction is the voxel's tuning; its length mostly its SNR), the
    pooled profiles are reduced by PCA to ``n_components`` whitened scores, and a diagonal Gaussian mixture
    with ``n_clusters`` components (128 published) is fitted on them.

    Parameters
    ----------
    profiles : one ``(V_s, F)`` array per subject, all on the same F features (see :func:`encoding_profiles`).
    n_clusters : mixture components K.
    seed : seeds the mixture's k-means initialisation.
    n_components : PCA dimensions P (capped at F and at the number of voxels - 1).
    n_init : mixture restarts; the best likelihood is kept.
    reg_covar : variance floor added to the mixture's diagonal covariances (whitened units).

    Returns
    -------
    (clusters, labels) : the fitted :class:`VoxelClusters` and each subject's ``(V_s,)`` int64 cluster labels.
    """
    from sklearn.mixture import GaussianMixture

    if not profiles:
        raise InvalidInputError("fit_voxel_clusters needs the profiles of at least one subject")
    widths = {np.shape(p)[-1] for p in profiles}
    if len(widths) != 1 or any(np.ndim(p) != 2 for p in profiles):
        shapes = [np.shape(p) for p in profiles]
        raise InvalidInputError(f"profiles must all be (V_s, F) with one F; got shapes {shapes}")
    unit = np.concatenate([normalize_rows(p) for p in profiles]).astype(np.float64)  # (sum V, F)
    if n_clusters < 1 or n_clusters > unit.shape[0]:
        raise ConfigError(
            f"'n_clusters' must be in [1, {unit.shape[0]}] (the voxel count). {n_clusters!r} was provided."
        )
    dims = min(n_components, unit.shape[1], unit.shape[0] - 1)
    if dims < 1:
        raise ConfigError(f"'n_components' must be >= 1. {n_components!r} was provided.")
    mean = unit.mean(0)  # (F,)
    _, sing, vt = np.linalg.svd(unit - mean, full_matrices=False)  # vt: (min(V, F), F)
    components = vt[:dims] * np.sign(vt[:dims].sum(1, keepdims=True) + 1e-300)  # (P, F), sign fixed
    scale = np.maximum(sing[:dims] / np.sqrt(max(unit.shape[0] - 1, 1)), 1e-12)  # (P,)
    embedded = (unit - mean) @ components.T / scale  # (sum V, P)
    gmm = GaussianMixture(n_clusters, covariance_type="diag", reg_covar=reg_covar, n_init=n_init, random_state=seed)
    gmm.fit(embedded)
    clusters = VoxelClusters(
        mean=mean, components=components, scale=scale, means=gmm.means_.astype(np.float64),
        variances=gmm.covariances_.astype(np.float64), weights=gmm.weights_.astype(np.float64),
    )  # fmt: skip
    labels = clusters.assign(embedded)
    bounds = np.cumsum([0] + [len(p) for p in profiles])
    return clusters, [labels[a:b] for a, b in itertools.pairwise(bounds)]


__all__ = ["VoxelClusters", "encoding_profiles", "fit_voxel_clusters"]
