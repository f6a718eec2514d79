"""NSD-like layout round trip and the real NSD release reader on a miniature fake tree."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from neuroattn.data.nsd import list_subjects, load_nsd_images, load_nsd_subject, load_subject
from neuroattn.data.nsd_simulation import NSDSimulationConfig, load_simulation_truth, save_simulated_nsd, simulate_nsd
from neuroattn.data.stimuli import build_stimulus_set, load_stimuli
from neuroattn.decode.clip_features import ImageFeatures
from neuroattn.errors import InvalidInputError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    stimuli = build_stimulus_set(n_images=60, seed=2)
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((60, 5, 8)).astype(np.float32)  # stand-in CLIP features (2x2 grid)
    features = ImageFeatures(tokens=tokens, pooled=tokens[:, 0])
    config = NSDSimulationConfig(n_subjects=2, n_voxels=80, test_images=15, n_semantic=4, n_lowlevel=4, seed=5)
    sim = simulate_nsd(stimuli, features, config)
    root = tmp_path_factory.mktemp("nsdlike")
    save_simulated_nsd(sim, stimuli, root)
    return stimuli, sim, root


def test_layout_round_trip(saved):
    stimuli, sim, root = saved
    assert list_subjects(root) == ["subj01", "subj02"]
    summary = json.loads((root / "simulation.json").read_text())
    assert summary["test_image_ids"] == sim.design.test_image_ids.tolist()
    for subject, truth in zip(sim.subjects, sim.truth, strict=True):
        raw = load_subject(root, subject.subject, zscore=False)
        np.testing.assert_array_equal(raw.betas, subject.betas)
        np.testing.assert_array_equal(raw.image_ids, subject.image_ids)
        np.testing.assert_array_equal(raw.is_test, subject.is_test)
        np.testing.assert_array_equal(raw.voxel_ijk, subject.voxel_ijk)
        np.testing.assert_array_equal(raw.roi, subject.roi)
        np.testing.assert_allclose(raw.affine, subject.affine)
        assert raw.mask_shape == subject.mask_shape and raw.roi_names == subject.roi_names
        zscored = load_subject(root, subject.subject)
        np.testing.assert_allclose(zscored.betas, subject.betas, atol=1e-4)
        loaded_truth, design = load_simulation_truth(root, subject.subject)
        np.testing.assert_array_equal(loaded_truth.concept, truth.concept)
        np.testing.assert_allclose(loaded_truth.noise_ceiling, truth.noise_ceiling)
        np.testing.assert_allclose(design.semantic, sim.design.semantic, atol=1e-6)
        assert design.concepts == sim.design.concepts
    loaded = load_stimuli(root)
    np.testing.assert_array_equal(loaded.images, stimuli.images)
    assert loaded.descriptions == stimuli.descriptions
    # the betas file is zero outside the mask and holds one volume per trial
    betas = nib.load(str(root / "subj01" / "betas.nii.gz"))
    mask = np.asarray(nib.load(str(root / "subj01" / "nsdgeneral.nii.gz")).dataobj) > 0
    data = np.asarray(betas.dataobj)
    assert data.shape == (*mask.shape, sim.subjects[0].n_trials)
    assert not data[~mask].any()


def test_layout_errors_name_the_file(saved, tmp_path):
    _, _, root = saved
    with pytest.raises(InvalidInputError, match="subj09"):
        load_subject(root, "subj09")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root / "subj01", copy / "subj01")
    (copy / "subj01" / "trials.csv").write_text("trial,image_id,repeat,split\n0,1,0,train\n")
    with pytest.raises(InvalidInputError, match=r"betas\.nii\.gz"):
        load_subject(copy, "subj01")


GRID = (4, 5, 3)
N_SESSIONS = 2
TRIALS = 750


def _write_fake_nsd(root, *, nan=False, mask_shape=GRID):
    """Miniature NSD tree: 8 subjects x 20 images, 2 sessions of 750 trials on a 4x5x3 grid (LPI affine)."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    design = root / "nsddata" / "experiments" / "nsd"
    design.mkdir(parents=True)
    masterordering = rng.integers(1, 21, size=(1, N_SESSIONS * TRIALS))  # 1-based into subjectim columns
    subjectim = np.stack([rng.permutation(np.arange(1, 101))[:20] for _ in range(8)])  # 1-based 73k ids
    sharedix = subjectim[0, :5][None]  # first five images of subject 1 are "shared"
    savemat(
        design / "nsd_expdesign.mat", {"masterordering": masterordering, "subjectim": subjectim, "sharedix": sharedix}
    )
    affine = np.diag([-1.8, 1.8, 1.8, 1.0])
    roi_dir = root / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi"
    roi_dir.mkdir(parents=True)
    mask = -np.ones(mask_shape, dtype=np.int16)
    mask[1:3, 1:4, 1] = 1
    mask[0, 0, 0] = 0
    nib.save(nib.Nifti1Image(mask, affine), roi_dir / "nsdgeneral.nii.gz")
    beta_dir = root / "nsddata_betas" / "ppdata" / "subj01" / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"
    beta_dir.mkdir(parents=True)
    truth = []
    for s in range(N_SESSIONS):
        values = rng.normal(0, 2, size=(*GRID, TRIALS))
        stored = np.round(values * 300).astype(np.int16)
        truth.append(stored.astype(np.float64) / 300)
        if nan:
            img = nib.Nifti1Image(np.where(rng.random(stored.shape) < 0.01, np.nan, stored).astype(np.float32), affine)
        else:
            img = nib.Nifti1Image(stored, affine)
        nib.save(img, beta_dir / f"betas_session{s + 1:02d}.nii.gz")
    images = rng.integers(0, 256, size=(100, 40, 40, 3), dtype=np.uint8)
    stim_dir = root / "nsddata_stimuli" / "stimuli" / "nsd"
    stim_dir.mkdir(parents=True)
    import h5py

    with h5py.File(stim_dir / "nsd_stimuli.hdf5", "w") as fh:
        fh.create_dataset("imgBrick", data=images)
    return masterordering[0], subjectim, sharedix[0], mask == 1, truth, images


def test_fake_nsd_tree_loads(tmp_path):
    order, subjectim, sharedix, mask, truth, images = _write_fake_nsd(tmp_path)
    subject = load_nsd_subject(tmp_path, 1, zscore=False)
    assert subject.subject == "subj01" and subject.n_voxels == int(mask.sum()) == 6
    assert subject.betas.shape == (N_SESSIONS * TRIALS, 6)
    expected_ids = subjectim[0, order - 1] - 1
    np.testing.assert_array_equal(subject.image_ids, expected_ids)
    np.testing.assert_array_equal(subject.is_test, np.isin(expected_ids, sharedix - 1))
    assert subject.is_test.any() and (~subject.is_test).any()
    expected = np.concatenate([t[mask].T for t in truth])  # (n_trials, V), voxels in C order of file indices
    np.testing.assert_allclose(subject.betas, expected, atol=1e-6)
    np.testing.assert_array_equal(subject.voxel_ijk, np.argwhere(mask))
    one = load_nsd_subject(tmp_path, 1, sessions=[2], zscore=False)
    np.testing.assert_allclose(one.betas, truth[1][mask].T, atol=1e-6)
    np.testing.assert_array_equal(one.image_ids, expected_ids[TRIALS:])
    zscored = load_nsd_subject(tmp_path, 1)
    train = zscored.betas[~zscored.is_test]
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-4)
    picked = load_nsd_images(tmp_path, np.array([7, 3, 7]), image_size=40)
    np.testing.assert_array_equal(picked, images[[7, 3, 7]])
    assert load_nsd_images(tmp_path, np.array([3]), image_size=20).shape == (1, 20, 20, 3)


def test_fake_nsd_errors(tmp_path):
    with pytest.raises(InvalidInputError, match=r"nsd_expdesign\.mat"):
        load_nsd_subject(tmp_path, 1)
    nan_root = tmp_path / "nan"
    _write_fake_nsd(nan_root, nan=True)
    with pytest.raises(InvalidInputError, match=r"betas_session01.nii.gz.*NaN"):
        load_nsd_subject(nan_root, 1)
    bad_root = tmp_path / "shape"
    _write_fake_nsd(bad_root, mask_shape=(4, 5, 4))
    with pytest.raises(InvalidInputError, match=r"betas_session01.nii.gz.*does not match"):
        load_nsd_subject(bad_root, 1)
    with pytest.raises(InvalidInputError, match=r"betas_session05\.nii\.gz: file not found"):
        load_nsd_subject(bad_root, 1, sessions=[5])
