"""Encoding basics: voxelwise metrics vs scipy, ridge encoder vs planted weights, embeddings and their text bridge."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from neuroattn.data.pca import WhitenedPCA
from neuroattn.decode.clip_features import ImageFeatures
from neuroattn.encode.features import encoding_features
from neuroattn.encode.metrics import explained_variance, voxelwise_pearson, voxelwise_spearman
from neuroattn.encode.ridge_encoder import RidgeEncoder
from neuroattn.errors import InvalidInputError


def test_metrics_match_scipy_per_voxel():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((40, 5))
    pred = true * rng.uniform(0, 1, 5) + rng.standard_normal((40, 5))
    pred[:3, 2] = pred[3, 2]  # ties for the ranks
    for v in range(5):
        assert voxelwise_pearson(pred, true)[v] == pytest.approx(pearsonr(pred[:, v], true[:, v])[0], abs=1e-12)
        assert voxelwise_spearman(pred, true)[v] == pytest.approx(spearmanr(pred[:, v], true[:, v])[0], abs=1e-12)
    ev = explained_variance(pred, true)
    ref = 1 - ((true - pred) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(ev, ref, atol=1e-12)
    assert explained_variance(true, true) == pytest.approx(np.ones(5))
    assert voxelwise_pearson(np.ones((4, 1)), rng.standard_normal((4, 1)))[0] == 0.0  # constant prediction


def test_ridge_encoder_recovers_planted_weights_and_picks_alpha_per_voxel(tmp_path):
    rng = np.random.default_rng(1)
    n, d = 400, 12
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 3))
    noise_sd = np.array([0.1, 0.1, 30.0])  # the third voxel is almost pure noise
    y = x @ w + 2.0 + noise_sd * rng.standard_normal((n, 3))
    enc = RidgeEncoder(cv=5).fit(x, y)
    np.testing.assert_allclose(enc.coef_[:, :2], w[:, :2], atol=0.02)
    np.testing.assert_allclose(enc.intercept_[:2], 2.0, atol=0.02)
    assert enc.alphas_[2] > 100 * enc.alphas_[0]  # the noisy voxel gets a much larger penalty
    x_test = rng.standard_normal((50, d))
    np.testing.assert_allclose(enc.predict(x_test)[:, 0], x_test @ w[:, 0] + 2.0, atol=0.1)
    loaded = RidgeEncoder.load(enc.save(tmp_path / "ridge"))
    np.testing.assert_array_equal(loaded.predict(x_test), enc.predict(x_test))
    with pytest.raises(InvalidInputError):
        enc.predict(x_test[:, :3])
    with pytest.raises(InvalidInputError):
        RidgeEncoder().fit(x[:2], y[:2])


def test_whitened_pca_transform_extends_to_new_rows():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 10))  # rank 6
    pca = WhitenedPCA(8).fit(x)
    scores = pca.transform(x)
    assert scores.shape == (200, 6)  # capped at the rank
    np.testing.assert_allclose(np.cov(scores.T, bias=True), np.eye(6), atol=1e-8)
    np.testing.assert_allclose(pca.transform(x[:5]), scores[:5], atol=1e-10)


def test_whitened_pca_scores_do_not_depend_on_the_eigensolvers_signs(monkeypatch):
    """LAPACK builds may return any eigenvector's negation; the scores (and the simulations on them) must not move."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((150, 9)) @ rng.standard_normal((9, 9))
    reference = WhitenedPCA(5).fit_transform(x)
    eigh = np.linalg.eigh
    flips = np.where(rng.random(9) < 0.5, -1.0, 1.0)
    flips[[0, -1]] = -1.0  # the two largest components are flipped at least

    def flipped_eigh(a):
        values, vectors = eigh(a)
        return values, vectors * flips

    monkeypatch.setattr(np.linalg, "eigh", flipped_eigh)
    np.testing.assert_allclose(WhitenedPCA(5).fit_transform(x), reference, rtol=0, atol=1e-10)


def test_encoding_features_and_exact_text_bridge_for_pooled_space():
    rng = np.random.default_rng(3)
    n, length, dim = 120, 5, 8
    tokens = rng.standard_normal((n, length, dim)).astype(np.float32)
    pooled = tokens[:, 0]
    images = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    feats = ImageFeatures(tokens=tokens, pooled=pooled)
    grid = encoding_features(feats, images, kind="clip-grid+lowlevel", n_clip=10, n_lowlevel=4)
    assert grid.values.shape == (n, 14) and grid.info == {"kind": "clip-grid+lowlevel", "n_clip": 10, "n_lowlevel": 4}
    np.testing.assert_allclose(grid.values.std(0), 1, atol=1e-4)
    pooled_kind = encoding_features(feats, images, kind="clip-pooled", n_clip=dim)
    # unit-norm pooled rows map linearly onto PCs of raw pooled rows only approximately; on unit rows it is exact
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    exact = encoding_features(ImageFeatures(tokens=unit[:, None, :], pooled=unit), images, kind="clip-pooled",
                              n_clip=dim)
    np.testing.assert_allclose(exact.text_features(unit * 3.0), exact.values, atol=1e-2)
    assert pooled_kind.text_features(pooled[:2]).shape == (2, dim)
