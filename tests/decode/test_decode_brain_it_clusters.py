"""Voxel encoding profiles (closed-form ridge) and the diagonal Gaussian mixture of shared voxel clusters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.linear_model import Ridge
from sklearn.metrics import adjusted_rand_score

from neuroattn.decode.voxel_clusters import VoxelClusters, encoding_profiles, fit_voxel_clusters
from neuroattn.errors import ConfigError, InvalidInputError


@pytest.mark.parametrize(("n", "f"), [(60, 10), (12, 30)])  # primal and dual forms
def test_encoding_profiles_match_sklearn_ridge(n: int, f: int) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, f)) * rng.uniform(0.5, 3.0, size=f) + 2.0
    betas = rng.normal(size=(n, 7))
    alpha = 0.3
    profiles = encoding_profiles(betas, features, alpha=alpha)
    standard = (features - features.mean(0)) / features.std(0)
    reference = Ridge(alpha=alpha * n, fit_intercept=True, solver="svd").fit(standard, betas).coef_  # (V, F)
    assert profiles.shape == (7, f) and profiles.dtype == np.float32
    np.testing.assert_allclose(profiles, reference, rtol=1e-4, atol=1e-6)


def test_encoding_profiles_recover_planted_weights() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 6))
    standard = (features - features.mean(0)) / features.std(0)
    weights = rng.normal(size=(6, 5))
    profiles = encoding_profiles(standard @ weights + 4.0, features, alpha=1e-6)
    np.testing.assert_allclose(profiles, weights.T, atol=1e-4)
    with pytest.raises(InvalidInputError, match="same N"):
        encoding_profiles(np.zeros((5, 2)), np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="alpha"):
        encoding_profiles(np.ones((5, 2)), np.ones((5, 3)), alpha=0.0)


def test_log_likelihood_matches_scipy_and_assign_takes_the_argmax() -> None:
    rng = np.random.default_rng(2)
    k, p = 3, 4
    clusters = VoxelClusters(
        mean=np.zeros(p), components=np.eye(p), scale=np.ones(p), means=rng.normal(size=(k, p)),
        variances=rng.uniform(0.2, 2.0, size=(k, p)), weights=np.array([0.2, 0.5, 0.3]),
    )
    points = rng.normal(size=(20, p))
    reference = np.stack([np.log(clusters.weights[j]) + multivariate_normal(clusters.means[j],
                          np.diag(clusters.variances[j])).logpdf(points) for j in range(k)], axis=1)
    np.testing.assert_allclose(clusters.log_likelihood(points), reference, rtol=1e-10)
    np.testing.assert_array_equal(clusters.assign(points), reference.argmax(1))


def test_clusters_are_shared_across_subjects_and_round_trip() -> None:
    rng = np.random.default_rng(3)
    centres = np.linalg.qr(rng.normal(size=(12, 12)))[0][:4]  # 4 orthonormal tuning directions in 12 features
    profiles, truth = [], []
    for n_vox in (50, 70):  # two subjects with different voxel counts, same four functional types
        types = rng.integers(0, 4, size=n_vox)
        gain = rng.uniform(0.5, 3.0, size=(n_vox, 1))  # profile length varies; the direction is the type
        profiles.append(gain * (centres[types] + 0.08 * rng.normal(size=(n_vox, 12))))
        truth.append(types)
    clusters, labels = fit_voxel_clusters(profiles, 4, seed=0, n_components=4)
    assert [len(lab) for lab in labels] == [50, 70]
    assert adjusted_rand_score(np.concatenate(truth), np.concatenate(labels)) == pytest.approx(1.0)
    for prof, lab in zip(profiles, labels, strict=True):
        np.testing.assert_array_equal(clusters.predict(prof), lab)
    emb = clusters.embed(np.concatenate(profiles))
    np.testing.assert_allclose(emb.std(0, ddof=1), 1.0, rtol=1e-4)  # whitened PCA scores
    again = VoxelClusters.from_state(clusters.state_tensors())
    np.testing.assert_array_equal(again.predict(profiles[1]), labels[1])
    np.testing.assert_array_equal(again.embed(profiles[0]), clusters.embed(profiles[0]))
    with pytest.raises(ConfigError, match="n_clusters"):
        fit_voxel_clusters(profiles, 500)
    with pytest.raises(InvalidInputError, match="one F"):
        fit_voxel_clusters([np.ones((4, 3)), np.ones((4, 5))], 2)


def test_noisy_voxels_are_placed_by_the_deconvolved_mixture() -> None:
    """Embeddings from few images: the noise variance is recovered, labels stop collapsing into the broad cluster,
    and the posterior-mean start is closer to the true embeddings than the noisy ones."""
    rng = np.random.default_rng(7)
    k, p, noise = 4, 8, 2.0
    means = 2.0 * rng.normal(size=(k, p))
    variances = np.full((k, p), 0.3)
    variances[0] = 2.5  # one broad cluster, as voxels of mixed tuning form
    clusters = VoxelClusters(mean=np.zeros(p), components=np.eye(p), scale=np.ones(p), means=means,
                             variances=variances, weights=np.full(k, 0.25))  # fmt: skip
    label = rng.integers(0, k, size=4000)
    true = means[label] + np.sqrt(variances[label]) * rng.normal(size=(4000, p))
    noisy = true + np.sqrt(noise) * rng.normal(size=true.shape)
    np.testing.assert_allclose(clusters.excess_variance(noisy), noise, rtol=0.15)
    assert clusters.excess_variance(true).max() < 0.3  # the clusters' own voxels carry (almost) none
    plain = clusters.assign(noisy)
    placed, start = clusters.place_noisy(noisy)
    plain_acc, placed_acc = (plain == label).mean(), (placed == label).mean()
    print(f"label accuracy plain {plain_acc:.3f} vs deconvolved {placed_acc:.3f}; share in the broad cluster "
          f"{(plain == 0).mean():.3f} vs {(placed == 0).mean():.3f} (true 0.25)")
    assert placed_acc > plain_acc + 0.05
    assert abs((placed == 0).mean() - 0.25) < abs((plain == 0).mean() - 0.25)
    err_noisy, err_start = ((noisy - true) ** 2).mean(), ((start - true) ** 2).mean()
    assert start.shape == (4000, p) and start.dtype == np.float32
    assert err_start < 0.6 * err_noisy


def test_posterior_matches_numerical_integration() -> None:
    """Mean and variance of ``posterior`` equal the moments of the exact 1-D posterior of a two-cluster mixture
    under Gaussian estimation noise, integrated on a fine grid in float64."""
    rng = np.random.default_rng(3)
    means, variances, weights = np.array([[-1.5], [2.0]]), np.array([[0.4], [1.2]]), np.array([0.3, 0.7])
    clusters = VoxelClusters(mean=np.zeros(1), components=np.eye(1), scale=np.ones(1), means=means,
                             variances=variances, weights=weights)  # fmt: skip
    label = rng.choice(2, p=weights, size=3000)
    noisy = means[label] + np.sqrt(variances[label]) * rng.normal(size=(3000, 1)) + rng.normal(size=(3000, 1))
    noise = clusters.excess_variance(noisy)[0]  # what posterior() assumes: estimated from all the voxels given
    assert 0.7 < noise < 1.3
    labels, mean, variance = (a[:25] for a in clusters.posterior(noisy))
    grid = np.linspace(-12, 12, 48001)
    prior = sum(w * np.exp(-((grid - m) ** 2) / (2 * v)) / np.sqrt(2 * np.pi * v)
                for w, m, v in zip(weights, means[:, 0], variances[:, 0], strict=True))
    for i, e in enumerate(noisy[:25, 0]):
        density = prior * np.exp(-((e - grid) ** 2) / (2 * noise))
        density /= density.sum()
        ref_mean = (density * grid).sum()
        ref_var = (density * (grid - ref_mean) ** 2).sum()
        np.testing.assert_allclose(mean[i, 0], ref_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variance[i, 0], ref_var, rtol=1e-4)
    _, start = clusters.place_noisy(noisy)
    np.testing.assert_array_equal(start[:25], mean)  # place_noisy is the posterior mean
    joint = np.log(weights) - 0.5 * ((noisy[:25] - means.T) ** 2 / (variances.T + noise)
                                     + np.log(variances.T + noise))  # fmt: skip
    np.testing.assert_array_equal(labels, joint.argmax(axis=1))
