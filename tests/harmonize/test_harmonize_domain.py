"""Site classifier with subject-grouped CV: planted site effect found, identical sites at chance, no subject leakage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from neuroattn.data.anatomy import load_template_tissues
from neuroattn.data.synth_mri import (
    SynthMRIConfig,
    cohort_sites,
    noise_rng,
    scan_at_site,
    simulate_subject,
    subject_variation,
)
from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.domain import (
    SLICE_FEATURES,
    binary_auc,
    cross_validate_domain,
    domain_classifier,
    grouped_folds,
    slice_features,
)

N_SUBJECTS = 8


@pytest.fixture(scope="module")
def cohort() -> dict:
    """8 traveling subjects at 4 mm (T1w): site A, site B, and a second site-A visit with fresh noise."""
    cfg = SynthMRIConfig(n_subjects=N_SUBJECTS, n_sites=2, seed=0, voxel_size=4.0, modalities=("T1w",))
    template = load_template_tissues(cfg.voxel_size, cfg.margin_mm)
    site_a, site_b = cohort_sites(cfg)
    out: dict = {"masks": {}, "real": {}, "null": {}}
    for s in range(N_SUBJECTS):
        sub = f"sub-{s}"
        anatomy = simulate_subject(subject_variation(cfg, s), template)
        out["masks"][sub] = anatomy.tissues.mask()
        a = scan_at_site(anatomy, "T1w", site_a, noise_rng(cfg, s, 0, "T1w"))
        out["real"][(sub, site_a.name)] = a
        out["real"][(sub, site_b.name)] = scan_at_site(anatomy, "T1w", site_b, noise_rng(cfg, s, 1, "T1w"))
        # Two "sites" that are the same scanner: the reference scan and a re-scan with independent noise.
        out["null"][(sub, "fakeA")] = a
        out["null"][(sub, "fakeB")] = scan_at_site(anatomy, "T1w", site_a, np.random.default_rng([99, s]))
    return out


def test_planted_site_effect_is_classified(cohort: dict) -> None:
    res = domain_classifier(cohort["real"], cohort["masks"], n_bootstrap=300, n_label_permutations=30)
    assert res.accuracy >= 0.9
    assert res.accuracy_p_value <= 2 / 31  # only "no subject swapped" / "all swapped" relabelings tie
    assert res.auc >= 0.9
    assert res.accuracy_ci[0] >= 0.75
    assert res.slice_accuracy >= 0.9
    assert res.chance == 0.5
    assert (res.n_subjects, res.n_scans) == (N_SUBJECTS, 2 * N_SUBJECTS)


def test_identical_sites_are_at_chance(cohort: dict) -> None:
    res = domain_classifier(cohort["null"], cohort["masks"], n_bootstrap=300, n_label_permutations=30)
    assert res.accuracy_p_value > 0.05
    assert res.accuracy_ci[0] <= 0.5 <= res.accuracy_ci[1]
    assert res.auc_ci[0] <= 0.5 <= res.auc_ci[1]
    assert res.slice_accuracy_ci[0] <= 0.5 <= res.slice_accuracy_ci[1]
    assert abs(res.slice_accuracy - 0.5) < 0.1


def test_folds_never_split_a_subject() -> None:
    groups = np.repeat([f"s{i}" for i in range(7)], 12)  # 7 subjects x 12 slices
    labels = np.tile(np.repeat(["A", "B"], 6), 7)
    folds = grouped_folds(labels, groups, n_splits=5, seed=3)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(seen), np.arange(len(groups)))  # every sample tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    with pytest.raises(InvalidInputError, match="at least 2 subjects"):
        grouped_folds(labels[:12], groups[:12])


def test_grouping_blocks_subject_identity_leakage() -> None:
    """Labels are constant per subject and features only encode the subject: grouped CV is at chance, while
    folds split by slice position (every subject's slices on both sides, as in the weak original
    evaluation) look nearly perfect to a classifier that memorizes subjects."""
    rng = np.random.default_rng(0)
    n_subj, n_slices = 20, 30
    subject_code = rng.normal(size=(n_subj, 6)) * 3.0
    x = np.repeat(subject_code, n_slices, axis=0) + rng.normal(size=(n_subj * n_slices, 6))  # (600, 6)
    labels = np.repeat(rng.permutation(np.repeat(["A", "B"], n_subj // 2)), n_slices)
    subjects = np.repeat(np.arange(n_subj), n_slices)
    slice_position = np.tile(np.arange(n_slices), n_subj)
    grouped = cross_validate_domain(x, labels, subjects, subjects, n_bootstrap=200, classifier="gboost")
    leaky = cross_validate_domain(x, labels, slice_position, n_bootstrap=0, classifier="gboost")
    assert leaky.slice_accuracy >= 0.9  # measured 0.96
    assert grouped.slice_accuracy_ci[0] <= 0.5 <= grouped.slice_accuracy_ci[1]
    assert grouped.slice_accuracy < 0.7  # measured 0.50
    assert grouped.accuracy_ci[0] <= 0.5 <= grouped.accuracy_ci[1]  # scan level: one scan per subject here


def test_binary_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=200).astype(bool)
    score = np.round(rng.normal(size=200) + y, 1)  # rounding makes ties
    assert binary_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert np.isnan(binary_auc(np.ones(5, bool), np.arange(5.0)))


def test_slice_features_closed_form() -> None:
    vol = np.zeros((12, 12, 4), dtype=np.float32)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[2:10, 2:10, 1:3] = True
    vol[:, :, 1] = 5.0  # constant slice: quantiles 5, sd 0, no gradient
    vol[:, :, 2] = np.arange(12, dtype=np.float32)[:, None]  # ramp: unit gradient along x
    feats, slices = slice_features(vol, mask)
    assert list(slices) == [1, 2]
    assert feats.shape == (2, len(SLICE_FEATURES))
    np.testing.assert_allclose(feats[0, :5], 5.0)
    np.testing.assert_allclose(feats[0, 6:], 0.0)
    ramp = np.arange(2, 10, dtype=np.float64)
    assert feats[1, SLICE_FEATURES.index("mean")] == pytest.approx(ramp.mean())
    assert feats[1, SLICE_FEATURES.index("grad_mean")] == pytest.approx(1.0)
    assert feats[1, SLICE_FEATURES.index("lap_rel")] == pytest.approx(0.0, abs=1e-6)  # a ramp has no curvature
