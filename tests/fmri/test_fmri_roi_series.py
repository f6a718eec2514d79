"""ROI series: nilearn sphere/label extraction against planted signals, standardization, segments, FC features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroattn.data.fmri_atlas import load_coordinate_atlas
from neuroattn.errors import InvalidInputError
from neuroattn.fmri.roi_series import (
    cut_segments,
    extract_atlas_series,
    extract_label_series,
    extract_sphere_series,
    fc_features,
    functional_connectivity,
    segment_frames,
    standardize_rois,
)
from neuroattn.io.nifti import load_volume, save_volume, to_nifti_image, volume_from_array


def _planted_bold(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, X, Y, Z) = (30, 10, 10, 10) noise with two 3x3x3 blocks carrying signals; returns (bold, signals)."""
    signals = rng.standard_normal((30, 2)) * np.array([2.0, 5.0]) + np.array([10.0, -3.0])  # (T, 2)
    bold = rng.standard_normal((30, 10, 10, 10))
    bold[:, 2:5, 2:5, 2:5] = signals[:, 0, None, None, None]
    bold[:, 6:9, 5:8, 1:4] = signals[:, 1, None, None, None]
    return bold.astype(np.float32), signals


def test_standardize_rois():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)) * [1.0, 3.0, 0.1, 1.0] + [0.0, 5.0, -2.0, 0.0]
    x[:, 3] = 7.0
    z = standardize_rois(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, :3].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[:, :3].std(axis=0), 1.0, rtol=1e-5)
    assert np.array_equal(z[:, 3], np.zeros(50, np.float32))
    x[3, 0] = np.nan
    with pytest.raises(InvalidInputError):
        standardize_rois(x)


def test_segments_from_seconds():
    assert segment_frames(15.0, 0.72) == 21 and segment_frames(15.0, 2.0) == 8 and segment_frames(0.5, 2.0) == 1
    x = np.arange(22, dtype=np.float32).reshape(11, 2)  # (T, R); x[t, r] = 2t + r
    seg = cut_segments(x, 3)  # 3 whole segments, the 2-frame tail dropped
    assert seg.shape == (3, 2, 3)
    for s in range(3):
        for r in range(2):
            np.testing.assert_array_equal(seg[s, r], x[3 * s : 3 * s + 3, r])
    with pytest.raises(InvalidInputError):
        cut_segments(x, 12)


def test_fc_features_match_fisher_z_of_pearson():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 5)) @ rng.standard_normal((5, 5))
    fc = functional_connectivity(x)
    np.testing.assert_allclose(fc, np.corrcoef(x.T), atol=1e-6)
    feats = fc_features(x)
    rows, cols = np.triu_indices(5, k=1)
    assert feats.shape == (10,)
    np.testing.assert_allclose(feats, np.arctanh(np.corrcoef(x.T)[rows, cols]), atol=1e-5)


def test_sphere_series_recover_planted_signals():
    bold, signals = _planted_bold(np.random.default_rng(2))
    # identity affine (1 mm voxels): world mm = voxel index; radius 1.5 mm stays inside each 3x3x3 block
    raw = extract_sphere_series(bold, [(3, 3, 3), (7, 6, 2)], radius=1.5, standardize=False)
    assert raw.data.shape == (30, 2) and raw.roi_names == ("roi_000", "roi_001")
    np.testing.assert_allclose(raw.data, signals, rtol=1e-5)
    z = extract_sphere_series(bold, [(3, 3, 3), (7, 6, 2)], radius=1.5)
    np.testing.assert_allclose(z.data, (signals - signals.mean(0)) / signals.std(0), atol=1e-4)
    with pytest.raises(InvalidInputError):
        extract_sphere_series(bold[0], [(3, 3, 3)])


def test_label_series_from_a_nifti_atlas_file(tmp_path):
    bold, signals = _planted_bold(np.random.default_rng(3))
    labels = np.zeros((10, 10, 10), np.float32)
    labels[2:5, 2:5, 2:5] = 4
    labels[6:9, 5:8, 1:4] = 9
    path = save_volume(volume_from_array(labels), tmp_path / "atlas.nii.gz")
    out = extract_label_series(bold, path, standardize=False)
    assert out.roi_names == ("label_4", "label_9")
    np.testing.assert_allclose(out.data, signals, rtol=1e-5)


def test_atlas_spheres_on_an_mni_grid():
    # an 8 mm MNI grid whose value at every voxel and frame is (t + 1) * its world x coordinate
    shape, origin = (23, 28, 23), np.array([-90.0, -126.0, -72.0])
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = origin
    x_mm = origin[0] + 8.0 * np.arange(shape[0])
    bold = (np.arange(1, 5)[:, None, None, None] * x_mm[None, :, None, None]) * np.ones((4, *shape))  # (T, X, Y, Z)
    out = extract_atlas_series(bold.astype(np.float32), "dosenbach_2010", radius=5.0, affine=affine, standardize=False)
    atlas = load_coordinate_atlas("dosenbach_2010")
    assert out.data.shape == (4, len(atlas.coords)) and out.roi_names == atlas.roi_names
    assert np.abs(out.data[0] - atlas.coords[:, 0]).max() <= 4.0  # within half a voxel of each ROI's x
    np.testing.assert_allclose(out.data[3], 4 * out.data[0], rtol=1e-5)


def test_real_bold_from_nitime(tmp_path):
    nitime = pytest.importorskip("nitime")
    path = Path(nitime.__file__).parent / "data" / "fmri1.nii.gz"
    vol = load_volume(path, ndim=4)  # RAS (X, Y, Z, T) = (10, 18, 10, 40)
    ijk = np.array([[2, 4, 3], [5, 9, 5], [7, 14, 6]])
    coords = ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3]  # voxel centres in world mm
    spheres = extract_sphere_series(path, coords, radius=3.0)
    assert spheres.data.shape == (40, 3) and spheres.tr == pytest.approx(1.35)
    assert np.isfinite(spheres.data).all() and np.allclose(spheres.data.std(0), 1.0, atol=1e-4)
    labels = np.zeros(vol.shape[:3], np.float32)
    labels[:5] = 1
    labels[5:] = 2
    atlas = to_nifti_image(vol.with_data(labels))  # on the file's own voxel grid, so nothing is resampled
    out = extract_label_series(path, atlas, standardize=False)
    manual = np.stack([vol.data[labels == k].mean(axis=0) for k in (1, 2)], axis=1)  # (T, 2)
    np.testing.assert_allclose(out.data, manual, rtol=1e-4)
