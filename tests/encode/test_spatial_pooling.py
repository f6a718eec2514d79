"""Spatial pooling of voxel encoders: exact group-bounded smoothing, and gains on a planted smooth-tuning world."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuroattn.encode.metrics import explained_variance
from neuroattn.encode.spatial_pooling import (
    TRUNCATE,
    SpatialPooling,
    VoxelLayout,
    pool_weights,
    smooth_within_groups,
)
from neuroattn.errors import ConfigError, InvalidInputError

VOXEL_MM = 3.0
D = 12


def _grid_layout(shape=(10, 10, 4), split: bool = True) -> VoxelLayout:
    """Every voxel of a small grid; with ``split``, two groups (x below / above the middle)."""
    ijk = np.argwhere(np.ones(shape, dtype=bool))
    groups = (ijk[:, 0] >= shape[0] // 2).astype(np.int64) if split else None
    return VoxelLayout.from_affine(ijk, np.diag([VOXEL_MM] * 3 + [1.0]), groups)


def _reference_smooth(values: np.ndarray, layout: VoxelLayout, sigma_mm: float) -> np.ndarray:
    """Brute force in float64: each voxel's average over its group, separable truncated Gaussian weights."""
    sigma = sigma_mm / layout.voxel_size
    radius = (TRUNCATE * sigma + 0.5).astype(np.int64)  # scipy's per-axis kernel radius
    out = np.empty_like(values)
    for v in range(layout.n_voxels):
        delta = layout.ijk - layout.ijk[v]  # (V, 3)
        inside = (np.abs(delta) <= radius).all(axis=1) & (layout.groups == layout.groups[v])
        weight = np.exp(-0.5 * ((delta / sigma) ** 2).sum(axis=1)) * inside
        out[v] = weight @ values / weight.sum()
    return out


def test_smoothing_equals_brute_force_reference_and_keeps_groups_apart() -> None:
    rng = np.random.default_rng(0)
    layout = _grid_layout()
    values = rng.standard_normal((layout.n_voxels, 3))
    for sigma in (2.0, 4.5):
        expected = _reference_smooth(values, layout, sigma)
        np.testing.assert_allclose(smooth_within_groups(values, layout, sigma), expected, rtol=1e-10, atol=1e-12)
    constant = np.where(layout.groups[:, None] == 0, 5.0, -2.0) * np.ones((1, 2))  # one value per group
    np.testing.assert_allclose(smooth_within_groups(constant, layout, 9.0), constant, rtol=1e-12)
    np.testing.assert_array_equal(smooth_within_groups(values, layout, 0.0), values)


def test_layout_and_settings_are_validated() -> None:
    with pytest.raises(InvalidInputError, match=r"\(V, 3\)"):
        VoxelLayout.from_affine(np.zeros((4, 2)), np.eye(4))
    with pytest.raises(InvalidInputError, match="group labels"):
        VoxelLayout.from_affine(np.zeros((4, 3)), np.eye(4), np.zeros(3))
    with pytest.raises(ConfigError, match="folds"):
        SpatialPooling(folds=1)
    with pytest.raises(ConfigError, match="mixes"):
        SpatialPooling(mixes=(1.5,))
    assert SpatialPooling(sigmas_mm=(0, 3), mixes=(0.5, 1)).candidates == [(0.0, 0.0), (3.0, 0.5), (3.0, 1.0)]


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel ridge on centred data: weights (D, V) and bias (V,); stands in for an in-context encoder."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, ym - xm @ w


def _planted_world(layout: VoxelLayout, smooth_mm: float | None, seed: int = 0, n_img: int = 400, noise: float = 2.0):
    """Unit tuning directions smooth within each group (``smooth_mm``; None: independent per voxel), log-normal
    gains, noisy responses. Returns images (n, D), true weights (D, V) and responses (n, V)."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((layout.n_voxels, D))
    if smooth_mm is not None:
        raw = _reference_smooth(raw, layout, smooth_mm)
    directions = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    gains = np.exp(0.4 * rng.standard_normal(layout.n_voxels))
    w = (directions * gains[:, None]).T  # (D, V)
    x = rng.standard_normal((n_img, D))
    y = x @ w + 1.5 + noise * rng.standard_normal((n_img, layout.n_voxels))
    return x, w, y


def test_pooling_recovers_smooth_tuning_and_cv_picks_it() -> None:
    """With tuning smooth over 6 mm, pooled encoders from 40 images predict held-out images far better, and
    cross-validation over those 40 images picks a kernel."""
    layout = _grid_layout()
    x, w_true, y = _planted_world(layout, smooth_mm=6.0, noise=1.0)
    support, test = slice(0, 40), slice(100, 400)
    w, b = _ridge(x[support], y[support])
    (sigma, mix), table = SpatialPooling(folds=5).select(_ridge, x[support], y[support], layout)
    pw, pb = pool_weights(w, b, x[support], y[support], layout, sigma, mix)
    ev_plain = explained_variance(x[test] @ w + b, y[test]).mean()
    ev_pooled = explained_variance(x[test] @ pw + pb, y[test]).mean()
    ev_true = explained_variance(x[test] @ w_true + 1.5, y[test]).mean()
    print(f"chose sigma {sigma} mm, mix {mix}: EV {ev_pooled:.3f} vs unpooled {ev_plain:.3f} (truth {ev_true:.3f})")
    assert sigma > 0 and mix > 0 and len(table) == 16
    assert ev_pooled >= ev_plain + 0.05
    assert ev_pooled >= 0.85 * ev_true
    cos = lambda a, c: np.abs((a * c).sum(0)) / np.linalg.norm(a, axis=0) / np.linalg.norm(c, axis=0)  # noqa: E731
    assert np.median(cos(pw, w_true)) > np.median(cos(w, w_true)) + 0.05


def test_cv_declines_pooling_when_neighbours_do_not_share_tuning() -> None:
    layout = _grid_layout()
    x, _, y = _planted_world(layout, smooth_mm=None, seed=1, noise=1.0)
    (sigma, mix), table = SpatialPooling().select(_ridge, x[:60], y[:60], layout)
    errors = {(row["sigma_mm"], row["mix"]): row["cv_error"] for row in table}
    print(f"chose {sigma}, {mix}; CV errors {errors}")
    assert (sigma, mix) == (0.0, 0.0)
    assert errors[(6.0, 1.0)] > errors[(0.0, 0.0)] * 1.3


def test_gains_are_refit_exactly_and_missing_pairs_are_skipped() -> None:
    """Exact directions with noiseless responses give back the planted gains and bias, even with NaN pairs."""
    layout = _grid_layout(split=False)
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(D)
    direction /= np.linalg.norm(direction)
    gains = rng.uniform(0.5, 2.0, layout.n_voxels)
    w_true = direction[:, None] * gains  # (D, V): one shared direction, so pooling keeps it exactly
    x = rng.standard_normal((30, D))
    y = x @ w_true + 0.7
    y[3, 5] = y[7, 9] = np.nan
    guess = w_true * rng.uniform(0.1, 3.0, layout.n_voxels)  # right directions, wrong gains
    pw, pb = pool_weights(guess, np.zeros(layout.n_voxels), x, y, layout, 4.5, 1.0)
    np.testing.assert_allclose(pw, w_true, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pb, 0.7, rtol=1e-10)
    same_w, same_b = pool_weights(guess, np.ones(layout.n_voxels), x, y, layout, 0.0, 1.0)
    np.testing.assert_array_equal(same_w, guess)
    np.testing.assert_array_equal(same_b, 1.0)


def test_smoothing_matches_scipy_on_a_full_grid() -> None:
    """Away from every edge the normalised convolution is the plain Gaussian filter."""
    layout = _grid_layout(shape=(12, 12, 12), split=False)
    values = np.random.default_rng(3).standard_normal((layout.n_voxels, 1))
    grid = values[:, 0].reshape(12, 12, 12)
    plain = ndi.gaussian_filter(grid, 1.0, mode="constant", truncate=TRUNCATE)
    ours = smooth_within_groups(values, layout, VOXEL_MM)[:, 0].reshape(12, 12, 12)
    np.testing.assert_allclose(ours[4:8, 4:8, 4:8], plain[4:8, 4:8, 4:8], rtol=1e-10)


def test_encode_settings_build_the_pooling_and_name_unknown_keys() -> None:
    from neuroattn.encode.runs import EncodeSettings

    settings = EncodeSettings(model="braincorl", spatial_pooling={"sigmas_mm": [0, 3], "folds": 3}, seed=4)
    pooling = settings.pooling()
    assert pooling is not None and (pooling.folds, pooling.seed) == (3, 4)
    assert pooling.candidates == [(0.0, 0.0), (3.0, 0.5), (3.0, 0.75), (3.0, 1.0)]
    assert EncodeSettings(model="braincorl").pooling() is None
    with pytest.raises(ConfigError, match="sigma_mm"):
        EncodeSettings(model="braincorl", spatial_pooling={"sigma_mm": 3}).pooling()
