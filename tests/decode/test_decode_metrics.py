"""Decoding metrics against float64 hand computations, perfect and chance inputs."""

from __future__ import annotations

import numpy as np
import pytest

from neuroattn.decode.metrics import (
    chance_levels,
    permutation_chance,
    pixcorr,
    ssim,
    top1_among,
    topk_in_pool,
    two_way_identification,
)


def test_top1_among_perfect_and_random():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((400, 64))
    perfect = top1_among(images, images, pool_size=300, n_draws=10, seed=0)
    assert perfect["brain_to_image"] == 1.0 and perfect["image_to_brain"] == 1.0
    rand = rng.standard_normal((6000, 32))
    res = top1_among(rand, rng.standard_normal((6000, 32)), pool_size=300, n_draws=100, seed=1)
    # chance 1/300 = 0.0033; 30000 item-draws over 6000 items: sd of the mean about 0.0004
    assert res["chance"] == pytest.approx(1 / 300)
    assert abs(res["brain_to_image"] - 1 / 300) < 0.0015
    assert abs(res["image_to_brain"] - 1 / 300) < 0.0015


def test_top1_among_matches_hand_computation():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((20, 8))
    brain = images + 1.5 * rng.standard_normal((20, 8))
    res = top1_among(brain, images, pool_size=20, n_draws=1, seed=0)  # pool = everything: no sampling effect
    b = brain / np.linalg.norm(brain, axis=1, keepdims=True)
    i = images / np.linalg.norm(images, axis=1, keepdims=True)
    sim = b @ i.T
    assert res["brain_to_image"] == pytest.approx(np.mean(sim.argmax(axis=1) == np.arange(20)))
    assert res["image_to_brain"] == pytest.approx(np.mean(sim.argmax(axis=0) == np.arange(20)))
    assert 0 < res["brain_to_image"] < 1


def test_topk_in_pool_with_distractors():
    rng = np.random.default_rng(4)
    images = rng.standard_normal((30, 16))
    brain = images + 1.0 * rng.standard_normal((30, 16))
    distract = rng.standard_normal((70, 16))
    res = topk_in_pool(brain, images, ks=(1, 5), distractors=distract)
    pool = np.concatenate([images, distract])
    sim = (brain / np.linalg.norm(brain, axis=1, keepdims=True)) @ (pool / np.linalg.norm(pool, axis=1)[:, None]).T
    order = np.argsort(-sim, axis=1)
    rank = np.array([np.where(order[r] == r)[0][0] for r in range(30)])
    assert res["top1"] == pytest.approx(np.mean(rank < 1))
    assert res["top5"] == pytest.approx(np.mean(rank < 5))
    assert res["pool"] == 100 and res["top5_chance"] == pytest.approx(0.05)


def test_two_way_identification_hand_perfect_and_chance():
    rng = np.random.default_rng(5)
    true = rng.standard_normal((12, 10))
    pred = true + 1.2 * rng.standard_normal((12, 10))
    r = np.corrcoef(pred, true)[:12, 12:]  # float64 reference: r[i, j] = corr(pred_i, true_j)
    expected = np.mean([(np.delete(r[i], i) < r[i, i]).mean() for i in range(12)])
    assert two_way_identification(pred, true) == pytest.approx(expected, abs=1e-12)
    assert two_way_identification(true, true) == 1.0
    chance = two_way_identification(rng.standard_normal((300, 50)), rng.standard_normal((300, 50)))
    assert abs(chance - 0.5) < 0.03  # sd of the mean of 300 nearly independent rates: ~0.017
    assert chance_levels(1000)["two_way"] == 0.5


def test_pixcorr_self_negative_and_hand():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, size=(3, 16, 16, 3)).astype(np.uint8)
    assert pixcorr(img, img) == pytest.approx(1.0)
    assert pixcorr(255 - img, img) == pytest.approx(-1.0)
    other = rng.integers(0, 256, size=(3, 16, 16, 3)).astype(np.uint8)
    expected = np.mean([np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]
                        for a, b in zip(other, img, strict=True)])
    assert pixcorr(other, img) == pytest.approx(expected, abs=1e-12)
    assert abs(permutation_chance(pixcorr, other, img, n_perm=3)) < 0.1


def test_ssim_matches_skimage_and_bounds():
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(7)
    seen = rng.integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    noisy = np.clip(seen.astype(int) + rng.integers(-40, 40, size=seen.shape), 0, 255).astype(np.uint8)
    assert ssim(seen, seen) == pytest.approx(1.0)
    expected = np.mean([
        structural_similarity(rgb2gray(a / 255.0), rgb2gray(b / 255.0), gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0)
        for a, b in zip(noisy, seen, strict=True)
    ])
    assert ssim(noisy, seen) == pytest.approx(expected)
    assert 0.2 < ssim(noisy, seen) < 0.99
