"""Gaussian-mixture weight prior: exact posterior against float64 references, EM over voxels, BraInCoRL's Bayes path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from neuroattn.encode.braincorl import BraInCoRL, BraInCoRLConfig
from neuroattn.encode.mixture_prior import MixturePrior, fit_mixture
from neuroattn.errors import InvalidInputError


def _random_prior(d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 0.8, (c, d))
    factors = rng.normal(0.0, 0.5, (c, d, d))
    covs = factors @ factors.transpose(0, 2, 1) + 0.2 * np.eye(d)
    return means, covs, rng.dirichlet(np.ones(c) * 2.0)


def _prior(means, covs, weights, noise: float) -> MixturePrior:
    prior = MixturePrior(means.shape[1], len(means), 0.5).double()
    prior.initialise(means, covs, weights, noise)
    return prior


def test_initialise_round_trips_the_components() -> None:
    means, covs, weights = _random_prior(5, 3, 0)
    prior = _prior(means, covs, weights, 0.3)
    with torch.no_grad():
        factor = prior.factor()
        np.testing.assert_allclose(torch.linalg.inv(factor @ factor.mT).numpy(), covs, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(prior.mean.numpy(), means)
        np.testing.assert_allclose(prior.mix_logit.softmax(0).numpy(), weights, rtol=1e-12)
        assert float(prior.noise) == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize("shared", [False, True])  # own support set per voxel, or one set read by both
@pytest.mark.parametrize("k", [4, 12])  # fewer and more support images than dimensions
def test_posterior_equals_the_float64_reference(k: int, shared: bool) -> None:
    """Per-component posterior means, responsibilities from exact marginal likelihoods, and their mixture."""
    d, c, s2 = 6, 3, 0.4
    means, covs, weights = _random_prior(d, c, 1)
    prior = _prior(means, covs, weights, s2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, k, d))
    if shared:
        x[1] = x[0]
    z = rng.standard_normal((2, k))
    got_w, got_r = prior.posterior(torch.from_numpy(x), torch.from_numpy(z))
    for b in range(2):
        xb, zb = x[b], z[b]
        log_joint = np.array([np.log(weights[j]) + multivariate_normal.logpdf(
            zb, xb @ means[j], xb @ covs[j] @ xb.T + s2 * np.eye(k)) for j in range(c)])  # fmt: skip
        resp = np.exp(log_joint - log_joint.max())
        resp /= resp.sum()
        post = np.stack([np.linalg.solve(xb.T @ xb / s2 + np.linalg.inv(covs[j]),
                                         xb.T @ zb / s2 + np.linalg.solve(covs[j], means[j])) for j in range(c)])
        np.testing.assert_allclose(got_r[b].detach().numpy(), resp, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(got_w[b].detach().numpy(), post, rtol=1e-8, atol=1e-10)
        mixed = prior.posterior_mean(torch.from_numpy(x), torch.from_numpy(z))[b].detach().numpy()
        np.testing.assert_allclose(mixed, resp @ post, rtol=1e-8, atol=1e-10)


def test_posterior_is_differentiable_in_every_prior_parameter() -> None:
    prior = _prior(*_random_prior(4, 2, 3), 0.5)
    x, z = torch.randn(3, 6, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    prior.posterior_mean(x, z).square().sum().backward()
    for name, param in prior.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def _two_cluster_voxels(n_vox: int, k: int, d: int, seed: int):
    """Standardised responses of voxels whose weights come from two planted, well separated Gaussians."""
    rng = np.random.default_rng(seed)
    centres = np.stack([np.full(d, 1.0), np.r_[np.full(d // 2, -1.0), np.full(d - d // 2, 1.0)]])
    label = rng.integers(0, 2, n_vox)
    w = centres[label] + 0.2 * rng.standard_normal((n_vox, d))  # (V, D)
    x = rng.standard_normal((k, d))
    y = x @ w.T + 1.0 * rng.standard_normal((k, n_vox))  # (k, V)
    xc = x - x.mean(0)
    z = (y - y.mean(0)) / y.std(0)
    return xc, z, w / y.std(0)[:, None], label


def test_em_over_voxels_climbs_the_evidence_and_recovers_planted_components() -> None:
    d, k = 6, 8
    xc, z, w_true, label = _two_cluster_voxels(3000, k, d, 4)
    prior = _prior(np.zeros((2, d)) + np.r_[0.1, -0.1][:, None], np.stack([np.eye(d)] * 2), np.r_[0.5, 0.5], 0.3)
    xt, zt = torch.from_numpy(xc), torch.from_numpy(z)

    def error() -> float:
        w = prior.posterior_mean(xt.expand(z.shape[1], k, d), zt.T).detach().numpy()
        return float(((w - w_true) ** 2).sum(1).mean())

    before = error()
    history = prior.adapt(xt, zt, iters=25)
    assert len(history) == 26
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(history))  # EM never lowers it
    assert history[-1] > history[0] + 0.5
    after = error()
    assert after < 0.5 * before  # k = 8 < D + 2: the learned prior carries most of the estimate
    # the two learned means sit near the planted ones (in standardised units, up to the label swap)
    planted = np.stack([w_true[label == j].mean(0) for j in (0, 1)])
    learned = prior.mean.detach().numpy()
    dist = min(np.abs(learned - planted).max(), np.abs(learned[::-1] - planted).max())
    assert dist < 0.15


def test_em_leaves_an_empty_component_alone() -> None:
    d, k = 4, 10
    xc, z, _, _ = _two_cluster_voxels(500, k, d, 5)
    far = np.stack([np.zeros(d), np.full(d, 50.0)])
    tight = 0.01 * (np.eye(d) + 0.3 * np.ones((d, d)))  # correlated, so a transposed factor would show
    prior = _prior(far, np.stack([np.eye(d), tight]), np.r_[0.999, 0.001], 0.3)
    prior.adapt(torch.from_numpy(xc), torch.from_numpy(z), iters=3)
    np.testing.assert_allclose(prior.mean[1].detach().numpy(), far[1], rtol=1e-9)
    with torch.no_grad():
        factor = prior.factor()[1]
        np.testing.assert_allclose(torch.linalg.inv(factor @ factor.T).numpy(), tight, atol=1e-12)


def test_fit_mixture_and_its_errors() -> None:
    rng = np.random.default_rng(6)
    w = np.concatenate([rng.normal(-3, 0.3, (200, 3)), rng.normal(3, 0.3, (100, 3))])
    means, covs, weights = fit_mixture(w, 2)
    order = np.argsort(means[:, 0])
    np.testing.assert_allclose(means[order, 0], [-3, 3], atol=0.1)
    np.testing.assert_allclose(weights[order], [2 / 3, 1 / 3], atol=0.01)
    assert np.all(np.linalg.eigvalsh(covs) > 0)
    with pytest.raises(InvalidInputError):
        fit_mixture(w[:3], 2)
    with pytest.raises(InvalidInputError):
        fit_mixture(np.full((20, 3), np.nan), 2)


def test_braincorl_bayes_path_at_initialisation_is_the_posterior_in_response_units() -> None:
    """Zero read-out head: weights = std * posterior mean of the standardised support, bias = ridge-like."""
    d, k = 5, 9
    torch.manual_seed(0)
    model = BraInCoRL(BraInCoRLConfig(embedding_dim=d, dim=16, depth=1, heads=2, n_registers=2, head_hidden=16,
                                      moment_path=False, prior_components=2)).double().eval()  # fmt: skip
    means, covs, weights = _random_prior(d, 2, 7)
    model.prior.initialise(means, covs, weights, 0.35)
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((3, k, d)), 4.0 * rng.standard_normal((3, k)) + 2.0
    got_w, got_b = model(torch.from_numpy(x), torch.from_numpy(y))
    reference = _prior(means, covs, weights, 0.35)
    for b in range(3):
        xc = x[b] - x[b].mean(0)
        z = (y[b] - y[b].mean()) / y[b].std()
        w = reference.posterior_mean(torch.from_numpy(xc[None]), torch.from_numpy(z[None]))[0].detach().numpy()
        np.testing.assert_allclose(got_w[b].detach().numpy(), y[b].std() * w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_b[b].item(), y[b].mean() - x[b].mean(0) @ (y[b].std() * w), rtol=1e-9)
