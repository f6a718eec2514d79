"""Synthetic fMRI: planted labels, task responses and networks are recoverable; files round-trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuroattn.data.fmri_atlas import build_brain_grid, load_coordinate_atlas
from neuroattn.data.hrf import (
    bandlimited_noise,
    canonical_hrf,
    drift_basis,
    task_regressors,
    trial_peak_response,
)
from neuroattn.data.synth_fmri import (
    MOTION_COLUMNS,
    SynthFMRIConfig,
    cohort_labels,
    load_synth_timeseries,
    simulate_roi_timeseries,
    simulate_subject,
    synthesize_fmri_cohort,
)
from neuroattn.errors import ConfigError
from neuroattn.io.manifest import load_manifest
from neuroattn.io.nifti import load_volume

N_SUBJECTS = 40  # >= 20 for a cross-validated accuracy that can tell 0.8 from 0.5


def _network_connectivity(ts: np.ndarray, net: np.ndarray) -> np.ndarray:
    """Mean ROI correlation within (off-diagonal) and between every network pair, shape (K, K)."""
    corr = np.corrcoef(ts.T)  # (R, R)
    k = int(net.max()) + 1
    out = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            block = corr[np.ix_(net == a, net == b)]
            out[a, b] = block[~np.eye(len(block), dtype=bool)].mean() if a == b else block.mean()
    return out


def _cohort(label_effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network connectivity (N, K, K), labels (N,) and ROI series (N, T, R) of an in-memory cohort."""
    config = SynthFMRIConfig(n_subjects=N_SUBJECTS, seed=7, label_effect=label_effect)
    net = load_coordinate_atlas(config.atlas).network_index()
    runs = [simulate_roi_timeseries(config, i) for i in range(config.n_subjects)]
    conn = np.stack([_network_connectivity(r.timeseries, net) for r in runs])
    return conn, np.array([r.label for r in runs]), np.stack([r.timeseries for r in runs])


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _cohort(SynthFMRIConfig().label_effect)


@pytest.fixture(scope="module")
def null() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _cohort(0.0)


def _cv_accuracy(conn: np.ndarray, labels: np.ndarray) -> float:
    """5-fold accuracy of logistic regression on the upper triangle (with diagonal) of network connectivity."""
    iu = np.triu_indices(conn.shape[1])
    features = conn[:, iu[0], iu[1]]  # (N, K(K+1)/2), blind to which pair was planted
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, features, labels, cv=cv).mean())


def _pair_index() -> tuple[int, int]:
    atlas = load_coordinate_atlas("dosenbach_2010")
    names = atlas.network_names
    return names.index("default"), names.index("fronto-parietal")


# -- HRF and time-domain helpers ------------------------------------------------------------------------


def test_hrf_matches_closed_form_double_gamma():
    tr, over = 2.0, 50
    hrf = canonical_hrf(tr, over)
    dt = tr / over
    t = np.arange(len(hrf)) * dt
    # SPM canonical HRF in float64: gamma(6) peak minus gamma(16) undershoot at ratio 1/6
    ref = stats.gamma.pdf(t, 6.0) - stats.gamma.pdf(t, 16.0) / 6.0
    assert np.isclose(ref.sum() * dt, 5 / 6, atol=2e-3)  # the closed-form integral of the unnormalised HRF
    ref /= ref.sum()
    assert np.isclose(hrf.sum(), 1.0, atol=1e-9)
    assert np.abs(hrf - ref).max() < 0.02 * ref.max()
    peak = t[np.argmax(hrf)]
    assert 4.5 <= peak <= 5.5, peak
    trough = t[np.argmin(hrf)]
    assert hrf.min() < 0 and 12.0 <= trough <= 18.0, trough


def test_block_regressor_settles_at_one_and_starts_at_zero():
    events = pd.DataFrame({"onset": [20.0], "duration": [80.0], "trial_type": ["a"]})
    reg, names = task_regressors(events, n_frames=100, tr=2.0)
    assert names == ["a"] and reg.shape == (100, 1)
    assert np.abs(reg[:10, 0]).max() < 1e-9  # before the onset (frames at 0..18 s)
    assert np.allclose(reg[35:50, 0], 1.0, atol=1e-3)  # 70-98 s: sustained block, the HRF sums to 1
    assert reg[55:65, 0].min() < -0.05  # 110-128 s: undershoot after the block ends at 100 s
    assert np.abs(reg[-5:, 0]).max() < 1e-3  # back to baseline once the 32 s kernel has passed


def test_trial_peak_response_is_the_peak_of_a_finely_sampled_trial():
    for duration in (1.0, 20.0):
        events = pd.DataFrame({"onset": [5.0], "duration": [duration], "trial_type": ["a"]})
        fine, _ = task_regressors(events, n_frames=600, tr=0.1)  # 60 s at 0.1 s
        assert trial_peak_response(duration, 2.0) == pytest.approx(fine.max(), rel=0.01)
    assert 0.15 < trial_peak_response(1.0, 2.0) < 0.3  # a brief event reaches a fraction of a block


def test_drift_basis_and_bandlimited_noise():
    basis = drift_basis(120, 2.0, order=2, n_cosines=1)
    assert basis.shape == (120, 3)
    assert np.abs(basis).max() <= 1.0 + 1e-12 and np.abs(basis).max(axis=0).min() > 0.99
    assert np.abs(basis.mean(axis=0)).max() < 0.05  # no constant part
    noise = bandlimited_noise(np.random.default_rng(0), 400, 50, 2.0, 0.01, 0.1)
    assert noise.shape == (400, 50)
    assert np.allclose(noise.std(axis=0), 1.0) and np.allclose(noise.mean(axis=0), 0.0, atol=1e-12)
    power = np.abs(np.fft.rfft(noise, axis=0)) ** 2
    freqs = np.fft.rfftfreq(400, d=2.0)
    in_band = power[(freqs >= 0.005) & (freqs <= 0.11)].sum() / power.sum()
    assert in_band > 0.95, in_band


# -- planted structure ----------------------------------------------------------------------------------


def test_subject_components_have_documented_shapes():
    config = SynthFMRIConfig(n_subjects=2)
    atlas = load_coordinate_atlas(config.atlas)
    run = simulate_roi_timeseries(config, 1)
    t, r, k = config.n_frames, len(atlas.roi_names), len(atlas.network_names)
    assert run.timeseries.shape == (t, r) and np.isfinite(run.timeseries).all()
    assert run.drift.shape == (t, r) and np.abs(run.drift).max() > 0
    assert run.motion.shape == (t, len(MOTION_COLUMNS)) == (t, 6)
    assert run.network_signals.shape == (t, k) and run.coupling.shape == (k, k)
    assert run.task_regressors.shape == (t, len(config.task_networks))
    assert list(run.events.columns) == ["onset", "duration", "trial_type"]
    assert set(run.events["trial_type"]) == set(config.task_networks)
    assert (run.events["onset"] + run.events["duration"] <= config.n_frames * config.tr).all()
    assert run.label == cohort_labels(config)[1]
    assert abs(run.timeseries.mean() - config.baseline) < 0.05 * config.baseline
    assert np.allclose(np.diag(run.coupling), 1.0) and np.linalg.eigvalsh(run.coupling).min() > 0


def test_labels_are_balanced_and_seeded():
    labels = cohort_labels(SynthFMRIConfig(n_subjects=21, seed=3))
    assert labels.sum() == 10 and set(labels) == {0, 1}
    assert np.array_equal(labels, cohort_labels(SynthFMRIConfig(n_subjects=21, seed=3)))
    assert not np.array_equal(labels, cohort_labels(SynthFMRIConfig(n_subjects=21, seed=4)))


def test_label_is_recoverable_from_connectivity(planted, null):
    conn, labels, _ = planted
    a, b = _pair_index()
    gap = conn[labels == 1, a, b].mean() - conn[labels == 0, a, b].mean()
    assert gap > 0.2, gap  # planted latent effect 0.5, diluted by ROI-specific signal and noise
    accuracy = _cv_accuracy(conn, labels)
    assert accuracy >= 0.8, accuracy  # chance is 0.5

    conn0, labels0, _ = null
    gap0 = conn0[labels0 == 1, a, b].mean() - conn0[labels0 == 0, a, b].mean()
    assert abs(gap0) < 0.1, gap0
    accuracy0 = _cv_accuracy(conn0, labels0)
    assert accuracy0 <= 0.7, accuracy0  # the same baseline is near chance without the planted effect


def test_networks_are_recoverable(planted):
    conn, labels, _ = planted
    mean = conn[labels == 0].mean(axis=0)  # (K, K), label-0 subjects: no strong planted coupling
    within = np.diag(mean)
    between = mean[~np.eye(len(mean), dtype=bool)]
    assert within.min() > 0.5, within
    assert between.max() < 0.35, between
    assert within.min() - between.max() > 0.3


def test_networks_are_found_by_clustering_one_subject(planted):
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    _, labels, series = planted
    net = load_coordinate_atlas("dosenbach_2010").network_index()
    subject = int(np.flatnonzero(labels == 0)[0])
    corr = np.corrcoef(series[subject].T)
    found = AgglomerativeClustering(n_clusters=int(net.max()) + 1, metric="precomputed", linkage="average")
    ari = adjusted_rand_score(net, found.fit_predict(1.0 - corr))
    assert ari > 0.9, ari


def test_task_responses_are_recoverable_by_glm():
    config = SynthFMRIConfig(n_subjects=20, seed=11)
    atlas = load_coordinate_atlas(config.atlas)
    net = atlas.network_index()
    conditions = list(config.task_networks)
    t_values = []
    for i in range(config.n_subjects):
        run = simulate_roi_timeseries(config, i)
        regs, _ = task_regressors(run.events, config.n_frames, config.tr, conditions)  # from the events only
        nuisance = np.column_stack([drift_basis(config.n_frames, config.tr), run.motion, np.ones(config.n_frames)])
        design = np.column_stack([regs, nuisance])  # (T, C + P)
        beta, *_ = np.linalg.lstsq(design, run.timeseries, rcond=None)  # (C + P, R)
        resid = run.timeseries - design @ beta
        sigma2 = (resid**2).sum(axis=0) / (design.shape[0] - design.shape[1])  # (R,)
        var_coef = np.diag(np.linalg.inv(design.T @ design))[: len(conditions)]  # (C,)
        t_values.append(beta[: len(conditions)] / np.sqrt(np.outer(var_coef, sigma2)))  # (C, R)
    group_t = np.mean(t_values, axis=0)  # (C, R) mean t over subjects
    for c, cond in enumerate(conditions):
        driven = net == atlas.network_names.index(atlas.resolve(config.task_networks[cond]))
        assert group_t[c, driven].min() > 2.0, (cond, group_t[c, driven].min())
        assert np.abs(group_t[c, ~driven]).max() < 1.5, (cond, np.abs(group_t[c, ~driven]).max())
        assert group_t[c, driven].min() > group_t[c, ~driven].max()


# -- files ----------------------------------------------------------------------------------------------


def _sphere_mean(vol, coords: np.ndarray, radius: float) -> np.ndarray:
    """Mean BOLD of brain voxels within ``radius`` mm of a point, computed from the file's affine. (T,)"""
    shape = vol.data.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    flat = vol.data.reshape(-1, vol.data.shape[3])  # (X*Y*Z, T)
    inside = (np.linalg.norm(xyz - coords, axis=1) <= radius) & (flat.mean(axis=1) > 0)
    return flat[inside].mean(axis=0) if inside.any() else np.full(vol.data.shape[3], np.nan)


def test_cohort_files_round_trip(tmp_path):
    config = SynthFMRIConfig(n_subjects=2, n_frames=40, tr=1.5, seed=5)
    result = synthesize_fmri_cohort(tmp_path, config, progress=False)
    assert result.subjects == ["sub-001", "sub-002"]
    truth = json.loads(result.ground_truth_path.read_text())
    rois = truth["rois"]
    assert truth["tr"] == 1.5 and truth["seed"] == 5 and truth["coupled_networks"] == ["default", "fronto-parietal"]
    assert truth["task_networks"] == {"visual": "occipital", "motor": "sensorimotor"}
    assert truth["labels"] == {s: int(v) for s, v in zip(result.subjects, result.labels, strict=True)}
    assert truth["planted_coupling"]["1"] - truth["planted_coupling"]["0"] == pytest.approx(config.label_effect)
    assert all(r["n_voxels"] >= 1 for r in rois)

    participants = pd.read_csv(result.participants_path, sep="\t")
    assert list(participants.columns) == ["participant_id", "label"]
    assert participants["label"].tolist() == result.labels.tolist()
    manifest = load_manifest(result.manifest_path, expected_modalities=["bold"])  # validates files exist
    assert [row.relative_path for row in manifest] == [p.relative_to(tmp_path).as_posix() for p in result.bold_paths]
    assert {row.site for row in manifest} == {"synth"}
    raw = pd.read_csv(result.manifest_path)
    assert list(raw.columns)[:5] == ["path", "site", "subject", "session", "modality"]

    motion = pd.read_csv(result.motion_paths[0], sep="\t")
    assert list(motion.columns) == list(MOTION_COLUMNS) and motion.shape == (40, 6)
    events = pd.read_csv(result.events_paths[0], sep="\t")
    assert list(events.columns) == ["onset", "duration", "trial_type"]

    series, labels, names = load_synth_timeseries(tmp_path)
    assert series.shape == (2, 40, len(rois)) and names == [r["name"] for r in rois]
    assert np.array_equal(labels, result.labels)

    vol = load_volume(result.bold_paths[0], ndim=4)
    grid = build_brain_grid(config.atlas, config.voxel_size, config.roi_radius)
    assert vol.shape == (*grid.shape, 40)
    assert vol.header.get_zooms() == pytest.approx((4.0, 4.0, 4.0, 1.5))
    assert vol.header.get_xyzt_units() == ("mm", "sec")
    assert (
        json.loads(result.bold_paths[0].with_name("sub-001_task-synth_bold.json").read_text())["RepetitionTime"] == 1.5
    )

    # exact: the label image's ROIs average to the written table
    dseg = load_volume(result.roi_labels_path, ndim=3).data.ravel()
    flat = vol.data.reshape(-1, 40)  # (X*Y*Z, T)
    by_label = np.stack([flat[dseg == r + 1].mean(axis=0) for r in range(len(rois))], axis=1)  # (T, R)
    assert np.allclose(by_label, series[0], atol=5e-3)

    # independent: spheres at the atlas coordinates, from the file's own affine
    r_values = []
    for j, roi in enumerate(rois):
        mean = _sphere_mean(vol, np.array([roi["x"], roi["y"], roi["z"]]), truth["roi_radius"])
        r_values.append(np.corrcoef(mean, series[0][:, j])[0, 1] if np.isfinite(mean).all() else 0.0)
    r_values = np.array(r_values)
    assert np.mean(r_values > 0.9) >= 0.9, np.sort(r_values)[:10]
    assert np.median(r_values) > 0.99


def test_timeseries_only_cohort_lists_tables(tmp_path):
    config = SynthFMRIConfig(n_subjects=2, n_frames=30, write_bold=False)
    result = synthesize_fmri_cohort(tmp_path, config, progress=False)
    assert result.bold_paths == [] and not list(tmp_path.rglob("*_bold.nii.gz"))
    manifest = load_manifest(result.manifest_path, expected_modalities=["timeseries"])
    assert [row.path for row in manifest] == [p.resolve() for p in result.timeseries_paths]


def test_deterministic_by_seed(tmp_path):
    config = SynthFMRIConfig(n_subjects=3, n_frames=30, seed=9, write_bold=False)
    a = synthesize_fmri_cohort(tmp_path / "a", config, progress=False)
    b = synthesize_fmri_cohort(tmp_path / "b", config, progress=False)
    for pa, pb in zip(
        [*a.timeseries_paths, *a.events_paths, *a.motion_paths, a.ground_truth_path, a.manifest_path],
        [*b.timeseries_paths, *b.events_paths, *b.motion_paths, b.ground_truth_path, b.manifest_path],
        strict=True,
    ):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    other = SynthFMRIConfig(n_subjects=3, n_frames=30, seed=10, write_bold=False)
    c = synthesize_fmri_cohort(tmp_path / "c", other, progress=False)
    assert a.timeseries_paths[0].read_bytes() != c.timeseries_paths[0].read_bytes()

    # the in-memory path gives what was written, with or without the volume
    run = simulate_roi_timeseries(config, 1)
    with_volume = simulate_subject(config, 1, with_volume=True)
    assert np.array_equal(run.timeseries, with_volume.timeseries)
    assert with_volume.volume.shape[-1] == config.n_frames
    written = pd.read_csv(a.timeseries_paths[1], sep="\t").to_numpy(float)
    assert np.allclose(written, run.timeseries, rtol=1e-6)


def test_seitzman_atlas_runs():
    config = SynthFMRIConfig(n_subjects=2, n_frames=40, atlas="seitzman_2018")
    atlas = load_coordinate_atlas("seitzman_2018")
    assert len(atlas.roi_names) == 285 and "unassigned" not in atlas.network_names
    run = simulate_roi_timeseries(config, 0)
    assert run.timeseries.shape == (40, 285)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_frames": 8},
        {"tr": 0.0},
        {"voxel_size": -1.0},
        {"base_coupling": 0.6, "label_effect": 0.5},
        {"coupled_networks": ("default", "default")},
        {"block_conditions": ("rest",)},
        {"spike_rate": 2.0},
        {"thermal_noise": -0.1},
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ConfigError):
        SynthFMRIConfig(**kwargs)


def test_unknown_atlas_or_network_is_refused():
    with pytest.raises(ConfigError, match="dosenbach_2010"):
        simulate_roi_timeseries(SynthFMRIConfig(atlas="power_2011"), 0)
    with pytest.raises(ConfigError, match="fronto-parietal"):
        simulate_roi_timeseries(SynthFMRIConfig(coupled_networks=("default", "limbic")), 0)
    with pytest.raises(ConfigError, match="subject_index"):
        simulate_roi_timeseries(SynthFMRIConfig(n_subjects=2), 2)
    with pytest.raises(ConfigError, match="label"):
        simulate_roi_timeseries(SynthFMRIConfig(n_subjects=2), 0, label=2)
