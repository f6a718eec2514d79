"""Harmonization distribution metrics against closed forms and float64 brute force: MMD, KS/W1, PSNR, SSIM."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import structural_similarity

from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.metrics import (
    MULTI_BANDWIDTH_FACTORS,
    distribution_distances,
    intensity_features,
    learned_features,
    median_bandwidth,
    mmd2_unbiased,
    mmd_test,
    psnr_in_mask,
    robust_range,
    ssim_in_mask,
)


def brute_force_mmd2(x: np.ndarray, y: np.ndarray, bandwidths: list[float], paired: bool = False) -> float:
    """Unbiased MMD^2 by explicit double loops in float64 (paired: the cross term skips i == j)."""

    def k(a, b):
        d2 = float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
        return sum(np.exp(-d2 / (2.0 * s * s)) for s in bandwidths)

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    if paired:
        kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n) if i != j) / (m * (m - 1))
    else:
        kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2.0 * kxy


def gaussian_mmd2(dim: int, s: float, sigma: float, delta: float) -> float:
    """Population MMD^2 of N(0, s^2 I) vs N(delta e1, s^2 I) under exp(-|x-y|^2 / (2 sigma^2)).

    E k(x, x') = c = (sigma^2 / (sigma^2 + 2 s^2))^(dim/2); E k(x, y) = c exp(-delta^2 / (2 (sigma^2 + 2 s^2))).
    """
    c = (sigma**2 / (sigma**2 + 2 * s**2)) ** (dim / 2)
    return 2.0 * c * (1.0 - np.exp(-(delta**2) / (2.0 * (sigma**2 + 2 * s**2))))


def test_mmd2_equals_float64_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = rng.normal(0.4, 1.3, size=(9, 3)).astype(np.float32)
    for bw in ([0.7], [0.7, 1.9, 5.0]):
        assert mmd2_unbiased(x, y, bw) == pytest.approx(brute_force_mmd2(x, y, bw), rel=1e-10, abs=1e-12)
        yp = y[:7]
        expected = brute_force_mmd2(x, yp, bw, paired=True)
        assert mmd2_unbiased(x, yp, bw, paired=True) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_mmd2_is_unbiased_for_the_gaussian_closed_form() -> None:
    """Mean of 3000 small-sample estimates hits the population value; the biased V-statistic misses it."""
    dim, sigma, delta, n = 3, 2.0, 1.0, 8
    truth = gaussian_mmd2(dim, 1.0, sigma, delta)  # 0.0870
    rng = np.random.default_rng(1)
    est, v_stat = [], []
    for _ in range(3000):
        x = rng.normal(size=(n, dim))
        y = rng.normal(size=(n, dim))
        y[:, 0] += delta
        u = mmd2_unbiased(x, y, [sigma])
        est.append(u)
        # V-statistic adds the i = j terms (k = 1) back: u + (1 - mean offdiag Kxx)/n + (1 - mean offdiag Kyy)/n
        z = np.concatenate([x, y])
        k = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / (2 * sigma**2))
        v_stat.append(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est) - truth) < 4 * se
    assert np.mean(v_stat) - truth > 20 * se  # the test would catch a biased estimator


def test_median_bandwidth_and_multi_bandwidths() -> None:
    z = np.array([[0.0], [1.0], [3.0]])  # distances 1, 2, 3 -> median 2
    assert median_bandwidth(z) == pytest.approx(2.0)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 2)), rng.normal(size=(12, 2))
    multi = mmd_test(x, y, kernel="multi", n_permutations=0, standardize=False)
    med = median_bandwidth(np.concatenate([x, y]))
    assert multi.bandwidths == pytest.approx([med * f for f in MULTI_BANDWIDTH_FACTORS])
    assert multi.mmd2 == pytest.approx(brute_force_mmd2(x, y, multi.bandwidths), rel=1e-10, abs=1e-12)
    with pytest.raises(InvalidInputError, match="kernel"):
        mmd_test(x, y, kernel="fixed")


@pytest.mark.parametrize("kernel", ["median", "multi"])
def test_mmd_same_distribution_is_null_and_shift_is_detected(kernel: str) -> None:
    rng = np.random.default_rng(3)
    same = mmd_test(rng.normal(size=(40, 5)), rng.normal(size=(40, 5)), kernel=kernel, n_permutations=500, seed=0)
    assert same.p_value > 0.05
    x, y = rng.normal(size=(40, 5)), rng.normal(1.0, 1.0, size=(40, 5))
    shifted = mmd_test(x, y, kernel=kernel, n_permutations=500, seed=0)
    assert shifted.p_value < 0.01
    # Unstandardized, the estimate matches the Gaussian closed form at the chosen bandwidths (n = 40: +-20 %).
    raw = mmd_test(x, y, kernel=kernel, n_permutations=0, standardize=False)
    truth = sum(gaussian_mmd2(5, 1.0, b, np.sqrt(5.0)) for b in raw.bandwidths)
    assert 0.6 < raw.mmd2 / truth < 1.6
    assert abs(same.mmd2) < 0.1 * truth


def test_mmd_permutation_test_controls_false_positives() -> None:
    """Under the null, p < 0.05 happens at about the nominal rate (<= 4 of 30 draws; expected 1.5)."""
    rng = np.random.default_rng(4)
    ps = [
        mmd_test(rng.normal(size=(15, 4)), rng.normal(size=(15, 4)), n_permutations=200, seed=i).p_value
        for i in range(30)
    ]
    assert sum(p < 0.05 for p in ps) <= 4
    assert 0.3 < float(np.mean(ps)) < 0.7  # null p-values are ~uniform


def paired_scans(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Traveling subjects: a strong subject effect (sd 3) shared by both sites, scan noise sd 0.3."""
    subject = rng.normal(0, 3.0, size=(n, 4))
    return subject + rng.normal(0, 0.3, size=(n, 4)), subject + shift + rng.normal(0, 0.3, size=(n, 4))


def test_paired_mmd_is_exact_and_calibrated_for_traveling_subjects() -> None:
    rng = np.random.default_rng(9)
    x, y = paired_scans(rng, 8, 0.0)
    res = mmd_test(x, y, paired=True, n_permutations=1000)
    assert res.exact and res.n_permutations == 2**8
    assert res.p_value >= 2 / 2**8
    null = [mmd_test(*paired_scans(rng, 8, 0.0), paired=True, n_permutations=1000).p_value for _ in range(40)]
    assert sum(p < 0.05 for p in null) <= 5  # exact test: expected 2 of 40
    # A site shift (1.0) small next to the subject spread (sd 3) but large next to scan noise (0.3):
    # within-subject swaps see it (p = 0.008, measured); free relabelling of paired scans is swamped by the
    # subject spread and calls it null (p = 0.79), which would flatter a harmonizer.
    xs, ys = paired_scans(np.random.default_rng(10), 8, 1.0)
    assert mmd_test(xs, ys, paired=True, n_permutations=1000).p_value < 0.05
    assert mmd_test(xs, ys, paired=False, n_permutations=1000).p_value > 0.05
    with pytest.raises(InvalidInputError, match="paired"):
        mmd_test(x, y[:5], paired=True)


def test_mmd_test_is_seeded_and_scale_free() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 6)), rng.normal(0.5, 1.0, size=(12, 6))
    a = mmd_test(x, y, n_permutations=300, seed=7)
    assert a.to_dict() == mmd_test(x, y, n_permutations=300, seed=7).to_dict()
    scale = np.linspace(0.1, 100.0, 6)  # every feature in other units: pooled standardization undoes it
    b = mmd_test(x * scale + 3.0, y * scale + 3.0, n_permutations=300, seed=7)
    assert b.mmd2 == pytest.approx(a.mmd2, rel=1e-9)
    assert b.p_value == a.p_value
    assert a.p_value >= 1.0 / 301


def test_intensity_features_closed_form() -> None:
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[1:3, 1:4, 1:5] = True
    dseg = np.where(mask, 1 + (np.indices(vol.shape)[2] % 3), 0)
    f = intensity_features(vol, mask, dseg)
    assert f.shape == (99 + 3 * 19,)
    vals = vol[mask].astype(np.float64)
    np.testing.assert_allclose(f[:99], np.quantile(vals, np.arange(1, 100) / 100))
    gm = vol[mask & (dseg == 2)].astype(np.float64)
    np.testing.assert_allclose(f[99 + 19 : 99 + 38], np.quantile(gm, np.arange(5, 100, 5) / 100))
    assert intensity_features(vol, mask).shape == (99,)
    with pytest.raises(InvalidInputError, match="tissue label 3"):
        intensity_features(vol, mask, np.where(dseg == 3, 1, dseg))


def smooth_volumes(n: int, seed: int, gain: float = 1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((20, 20, 8), dtype=bool)
    mask[3:17, 3:17, 1:7] = True
    vols = [gain * (1.0 + ndi.gaussian_filter(rng.normal(size=mask.shape), 1.5) * 3) for _ in range(n)]
    return [v.astype(np.float32) for v in vols], [mask] * n


def test_learned_features_are_seeded_homogeneous_and_detect_a_gain() -> None:
    vols, masks = smooth_volumes(10, 0)
    f = learned_features(vols, masks, seed=0)
    assert f.shape == (10, 2 * (8 + 16 + 32))
    np.testing.assert_array_equal(f, learned_features(vols, masks, seed=0))
    assert not np.allclose(f, learned_features(vols, masks, seed=1))
    # Bias-free ReLU convs and masked mean/sd pooling are positively homogeneous: f(2 v) = 2 f(v).
    np.testing.assert_allclose(learned_features([2 * v for v in vols], masks, seed=0), 2 * f, rtol=1e-5, atol=1e-6)
    other, _ = smooth_volumes(10, 1)
    gained, _ = smooth_volumes(10, 2, gain=1.3)
    null = mmd_test(f, learned_features(other, masks), n_permutations=500)
    shift = mmd_test(f, learned_features(gained, masks), n_permutations=500)
    assert null.p_value > 0.05
    assert shift.p_value < 0.01


def test_distribution_distances_closed_forms() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=5000)
    d = distribution_distances(a, a + 0.7, scale=2.0)
    assert d["wasserstein"] == pytest.approx(0.7, abs=1e-9)  # W1 of a translate is the shift
    assert d["wasserstein_normalized"] == pytest.approx(0.35, abs=1e-9)
    assert distribution_distances(a, a)["ks"] == 0.0
    assert distribution_distances(a, a + 100.0)["ks"] == 1.0
    # Subsampling is seeded: KS of two large samples with a known shift is stable and repeatable.
    big = rng.normal(size=300_000)
    d1 = distribution_distances(big, big + 0.5, max_samples=50_000, seed=3)
    assert d1["ks"] == distribution_distances(big, big + 0.5, max_samples=50_000, seed=3)["ks"]
    assert d1["ks"] == pytest.approx(0.1974, abs=0.01)  # 2 * Phi(0.25) - 1


def test_psnr_in_mask_matches_known_mse() -> None:
    rng = np.random.default_rng(7)
    target = rng.uniform(0, 1, size=(10, 10, 10))
    mask = np.zeros(target.shape, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    pred = target + 0.05
    pred[~mask] = 1e6  # outside the mask never counts
    assert psnr_in_mask(pred, target, mask, data_range=1.0) == pytest.approx(20 * np.log10(1.0 / 0.05))
    r = robust_range(target, mask)
    assert r == pytest.approx(np.subtract(*np.percentile(target[mask], [99.5, 0.5])))
    assert psnr_in_mask(pred, target, mask) == pytest.approx(10 * np.log10(r**2 / 0.05**2))
    assert psnr_in_mask(target, target, mask) == float("inf")


def test_ssim_in_mask_equals_full_volume_map_and_orders_degradations() -> None:
    rng = np.random.default_rng(8)
    target = ndi.gaussian_filter(rng.normal(size=(30, 28, 26)), 2.0)
    mask = np.zeros(target.shape, dtype=bool)
    mask[6:22, 5:20, 8:21] = True
    noisy = target + rng.normal(0, 0.05, size=target.shape)
    r = robust_range(target, mask)
    _, full = structural_similarity(target, noisy, data_range=r, full=True)
    assert ssim_in_mask(noisy, target, mask) == pytest.approx(float(full[mask].mean()), rel=1e-9)
    assert ssim_in_mask(target, target, mask) == pytest.approx(1.0)
    noisier = target + rng.normal(0, 0.2, size=target.shape)
    assert 1.0 > ssim_in_mask(noisy, target, mask) > ssim_in_mask(noisier, target, mask)
