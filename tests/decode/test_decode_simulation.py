"""Simulated NSD: noise ceiling, encoding recoverable up to the ceiling, concept voxels, ROI layout."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from neuroattn.data.nsd_simulation import NSDSimulationConfig, simulate_nsd
from neuroattn.data.stimuli import build_stimulus_set
from neuroattn.decode.clip_features import load_clip
from neuroattn.decode.noise_ceiling import ncsnr, noise_ceiling, noise_ceiling_from_ncsnr
from neuroattn.errors import ConfigError

CONFIG = NSDSimulationConfig(n_subjects=2, n_voxels=300, test_images=120, n_semantic=8, n_lowlevel=8, voxel_size=4.0,
                              smoothness=8.0, seed=0)


@pytest.fixture(scope="module")
def data():
    stimuli = build_stimulus_set(n_images=360, seed=0)
    features = load_clip(seed=0).encode_images(stimuli.images)
    return stimuli, features, simulate_nsd(stimuli, features, CONFIG)


def _r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def test_noise_ceiling_closed_form():
    # one voxel, images A (1, 3) and B (5, 7): noise var = 2, total var = 20/3, signal var = 14/3
    betas = np.array([[1.0], [5.0], [3.0], [7.0]])
    ids = np.array([0, 1, 0, 1])
    snr = ncsnr(betas, ids)
    np.testing.assert_allclose(snr, np.sqrt((20 / 3 - 2) / 2))
    np.testing.assert_allclose(noise_ceiling(betas, ids), 100 * snr**2 / (snr**2 + 1 / 2))
    np.testing.assert_allclose(noise_ceiling_from_ncsnr(np.array([1.0]), 3), [75.0])
    # images with unequal repeats: 1/n averaged (NSD's formula)
    np.testing.assert_allclose(noise_ceiling_from_ncsnr(np.array([1.0]), np.array([1, 3])), [100 / (1 + 2 / 3)])
    # pure noise: signal variance floored at zero
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2000, 1))
    assert noise_ceiling(noise, np.repeat(np.arange(1000), 2))[0] < 5


def test_trial_structure(data):
    stimuli, _, sim = data
    test_ids = sim.design.test_image_ids
    assert len(test_ids) == CONFIG.test_images
    for subject in sim.subjects:
        counts = np.bincount(subject.image_ids, minlength=len(stimuli))
        assert (counts == CONFIG.repeats).all()
        assert subject.betas.shape == (len(stimuli) * CONFIG.repeats, subject.n_voxels)
        np.testing.assert_array_equal(np.unique(subject.image_ids[subject.is_test]), test_ids)
        _, ids = subject.averaged(True)
        np.testing.assert_array_equal(ids, test_ids)
        train, _ = subject.trials(False)
        np.testing.assert_allclose(train.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(train.std(0), 1.0, atol=1e-4)
        assert abs(subject.n_voxels - CONFIG.n_voxels) <= 0.05 * CONFIG.n_voxels + 1
    a, b = sim.subjects
    assert a.n_voxels != b.n_voxels or not np.array_equal(a.voxel_mm(), b.voxel_mm())
    assert not np.array_equal(a.image_ids, b.image_ids)  # each subject has its own trial order


def test_estimated_noise_ceiling_matches_truth(data):
    _, _, sim = data
    for subject, truth in zip(sim.subjects, sim.truth, strict=True):
        betas, ids = subject.trials(True)
        estimated = noise_ceiling(betas, ids)
        assert 40 < np.median(truth.noise_ceiling) < 60  # NSD-like default
        assert np.corrcoef(estimated, truth.noise_ceiling)[0, 1] > 0.85
        assert abs(np.median(estimated) - np.median(truth.noise_ceiling)) < 3
        # per-voxel errors of the size sampling 120 images x 3 repeats allows
        assert np.median(np.abs(estimated - truth.noise_ceiling)) < 7


def test_ridge_from_true_regressors_reaches_the_ceiling(data):
    from sklearn.linear_model import RidgeCV

    _, _, sim = data
    regressors = sim.design.regressors()
    rng = np.random.default_rng(0)
    for subject, truth in zip(sim.subjects, sim.truth, strict=True):
        train, train_ids = subject.averaged(False)
        test, test_ids = subject.averaged(True)
        model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(regressors[train_ids], train)
        r2 = _r2(test, model.predict(regressors[test_ids]))
        ratio = np.median(r2) / np.median(truth.noise_ceiling / 100)
        assert 0.8 < ratio < 1.05, ratio
        assert np.corrcoef(r2, truth.noise_ceiling)[0, 1] > 0.85
        # control: the same ridge on regressors of the wrong images predicts nothing
        shuffled = regressors[rng.permutation(len(regressors))]
        control = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(shuffled[train_ids], train)
        assert np.median(_r2(test, control.predict(shuffled[test_ids]))) < 0.02


def test_concept_voxels_prefer_their_concept(data):
    stimuli, _, sim = data
    matrix = sim.design.concept_matrix
    for subject, truth in zip(sim.subjects, sim.truth, strict=True):
        has = np.flatnonzero(truth.concept >= 0)
        assert len(has) == round(CONFIG.concept_fraction * subject.n_voxels)
        assert (subject.roi[has] >= 4).all()  # planted in V4/higher
        betas = np.zeros((len(stimuli), subject.n_voxels))
        for split in (False, True):
            b, ids = subject.averaged(split)
            betas[ids] = b
        own = np.array(
            [betas[matrix[:, truth.concept[v]], v].mean() - betas[~matrix[:, truth.concept[v]], v].mean() for v in has]
        )
        assert (own > 0).mean() >= 0.95
        # the same voxels show no such preference for another concept on average
        other = (truth.concept[has] + 7) % len(sim.design.concepts)
        foreign = np.array(
            [betas[matrix[:, k], v].mean() - betas[~matrix[:, k], v].mean() for v, k in zip(has, other, strict=True)]
        )
        assert own.mean() > 0.5 and own.mean() > foreign.mean() + 0.4
        # names resolve to real tags of the stimuli
        names = [n for n in truth.concept_names(sim.design.concepts) if n is not None]
        assert set(names) <= set(stimuli.concept_vocabulary())


def test_rois_run_posterior_to_anterior(data):
    _, _, sim = data
    for subject, truth in zip(sim.subjects, sim.truth, strict=True):
        assert subject.roi_names == {1: "V1", 2: "V2", 3: "V3", 4: "V4", 5: "higher"}
        y = subject.voxel_mm()[:, 1]
        means = [y[subject.roi == code].mean() for code in range(1, 6)]
        assert all(a < b for a, b in itertools.pairwise(means)), means
        assert y.max() < -20  # occipital/ventral only
        frac = [truth.lowlevel_fraction[subject.roi == code].mean() for code in range(1, 6)]
        assert all(a > b for a, b in itertools.pairwise(frac))


def test_weights_are_spatially_smooth(data):
    _, _, sim = data
    subject, truth = sim.subjects[0], sim.truth[0]
    mm = subject.voxel_mm()
    d = np.linalg.norm(mm[:, None] - mm[None], axis=-1)
    sim_w = truth.semantic_weights @ truth.semantic_weights.T  # rows are unit vectors: cosine similarity
    near = (d > 0) & (d <= 4.5)
    far = d > 40
    assert sim_w[near].mean() > 0.5 and abs(sim_w[far].mean()) < 0.15


def test_deterministic_and_validated(data):
    stimuli, features, sim = data
    again = simulate_nsd(
        stimuli,
        features,
        dataclasses.replace(CONFIG, n_subjects=1),
    )
    np.testing.assert_array_equal(again.subjects[0].betas, sim.subjects[0].betas)
    with pytest.raises(ConfigError, match="noise_sd"):
        simulate_nsd(stimuli, features, NSDSimulationConfig(noise_sd=0.0))
    with pytest.raises(ConfigError, match="test_images"):
        simulate_nsd(stimuli, features, NSDSimulationConfig(test_images=len(stimuli)))


def test_tuning_axes_make_weights_low_rank_and_shared_across_subjects(data):
    stimuli, features, _ = data
    config = dataclasses.replace(CONFIG, n_semantic=16, tuning_axes=3, tuning_specific=0.0, concept_fraction=0.0)
    sim = simulate_nsd(stimuli, features, config)
    spans = []
    for subject, truth in zip(sim.subjects, sim.truth, strict=True):
        v1 = truth.semantic_weights[subject.roi == 1].astype(np.float64)  # (V1, 16)
        sv = np.linalg.svd(v1, compute_uv=False)
        assert sv[3] < 1e-5 * sv[0]  # exactly rank 3 without a voxel-specific part
        spans.append(np.linalg.svd(v1, full_matrices=False)[2][:3])  # (3, 16) row space
    overlap = np.linalg.svd(spans[0] @ spans[1].T, compute_uv=False)  # cosines of principal angles
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)  # both subjects' V1 tuning spans the same 3 axes
    iso = simulate_nsd(stimuli, features, dataclasses.replace(config, tuning_axes=0))
    sv_iso = np.linalg.svd(iso.truth[0].semantic_weights[iso.subjects[0].roi == 1], compute_uv=False)
    assert sv_iso[3] > 0.1 * sv_iso[0]  # isotropic tuning is full rank
    with pytest.raises(ConfigError):
        NSDSimulationConfig(tuning_specific=1.5).validate()
