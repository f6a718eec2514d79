"""Synthetic multi-site MRI cohorts: planted scanner effects, ground truth, anatomy, files and determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy import stats

from neuroattn.data.anatomy import (
    AnatomyVariation,
    enlarge_ventricles,
    load_template_tissues,
    simulate_subject,
    smooth_displacement,
    thin_gray_matter,
)
from neuroattn.data.site_effects import (
    ModalityEffects,
    SiteEffects,
    add_rician_noise,
    apply_scanner_effects,
    apply_tissue_contrast,
    bias_field,
    change_slice_thickness,
    gaussian_blur,
    intensity_curve,
)
from neuroattn.data.synth_mri import (
    MANIFEST_COLUMNS,
    SynthMRIConfig,
    cohort_sites,
    load_site_effects,
    noise_rng,
    render_modality,
    scan_at_site,
    subject_variation,
    synthesize_mri_cohort,
)
from neuroattn.errors import ConfigError
from neuroattn.io.manifest import load_manifest
from neuroattn.io.nifti import load_volume

CONFIG = SynthMRIConfig(n_subjects=2, n_sites=3, seed=0)
COHORT_CONFIG = SynthMRIConfig(n_subjects=2, n_sites=2, seed=0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def high_freq_energy(img: np.ndarray, cutoff: float = 0.25) -> float:
    """Spectral energy above ``cutoff`` cycles/voxel (radial frequency)."""
    power = np.abs(np.fft.fftn(img.astype(np.float64))) ** 2
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in img.shape], indexing="ij")
    radius = np.sqrt(sum(f**2 for f in freqs))
    return float(power[radius > cutoff].sum())


@pytest.fixture(scope="module")
def template():
    return load_template_tissues(CONFIG.voxel_size, CONFIG.margin_mm)


@pytest.fixture(scope="module")
def subjects(template):
    return [simulate_subject(subject_variation(CONFIG, s), template) for s in range(CONFIG.n_subjects)]


@pytest.fixture(scope="module")
def sites():
    return cohort_sites(CONFIG)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return synthesize_mri_cohort(out, COHORT_CONFIG, progress=False)


# ---------------------------------------------------------------- site histograms


def test_sites_change_histograms_but_reference_noise_does_not(subjects, sites):
    # Measured at seed 0: site-vs-reference KS between 0.41 and 0.91 over 2 sites x 3 modalities x 2 subjects
    # (over 29 drawn sites the minimum was 0.39); two reference scans with different noise give KS <= 0.0016.
    for s, subject in enumerate(subjects):
        mask = subject.tissues.mask()
        for m in CONFIG.modalities:
            ref = scan_at_site(subject, m, sites[0], noise_rng(CONFIG, s, 0, m))[mask]
            ref_again = scan_at_site(subject, m, sites[0], np.random.default_rng(12345))[mask]
            assert stats.ks_2samp(ref, ref_again).statistic < 0.01
            for site in sites[1:]:
                other = scan_at_site(subject, m, site, noise_rng(CONFIG, s, site.index, m))[mask]
                assert stats.ks_2samp(ref, other).statistic > 0.2, (site.name, m, s)


def test_reference_site_is_noise_only(subjects, sites):
    subject = subjects[0]
    clean = render_modality(subject, "T1w")
    ref = sites[0]
    assert ref.is_reference and ref.bias_amplitude == 0 and ref.blur_sigma_mm == 0 and ref.slice_thickness_mm is None
    np.testing.assert_array_equal(scan_at_site(subject, "T1w", ref, None), clean)
    noisy = scan_at_site(subject, "T1w", ref, np.random.default_rng(0)).astype(np.float64)
    wm = subject.tissues.wm >= 0.99
    # Rician bias at SNR 90 is sigma^2 / (2 x) ~ 6e-5; the mean over thousands of voxels stays within 1e-3.
    assert abs(noisy[wm].mean() - clean[wm].mean()) < 1e-3


# ---------------------------------------------------------------- each effect


def test_bias_field_is_smooth_with_planted_amplitude(template, sites):
    site = sites[1]
    field = bias_field(template.shape, site.bias_coefficients, site.bias_amplitude, site.bias_order)
    log_field = np.log(field.astype(np.float64))
    # The planted amplitude is the max |log field| over the grid (float32 rounding only).
    assert abs(np.abs(log_field).max() - site.bias_amplitude) < 1e-6
    # Smooth: largest second difference is 1.7e-4 x amplitude here; white noise of that size gives ~1 x.
    second = max(np.abs(np.diff(log_field, 2, axis=a)).max() for a in range(3))
    assert second < 1e-3 * site.bias_amplitude
    rough = np.random.default_rng(0).uniform(-1, 1, template.shape) * site.bias_amplitude
    assert max(np.abs(np.diff(rough, 2, axis=a)).max() for a in range(3)) > 1e-3 * site.bias_amplitude
    # Scanning with the bias alone multiplies the clean image by exactly this field.
    bias_only = SiteEffects(
        name="bias",
        index=9,
        is_reference=False,
        noise_sigma=0.0,
        bias_amplitude=site.bias_amplitude,
        bias_coefficients=site.bias_coefficients,
    )
    ones = np.ones(template.shape, dtype=np.float32)
    measured = np.log(apply_scanner_effects(ones, bias_only, "T1w", template.voxel_size, None).astype(np.float64))
    assert abs(np.abs(measured).max() - site.bias_amplitude) < 1e-6


def test_rician_noise_sigma_recovered_from_background(subjects, sites):
    subject = subjects[0]
    # Background farther than 10 mm from the brain is exactly 0 before noise, so it is Rayleigh(sigma):
    # E[x^2] = 2 sigma^2. Measured relative errors < 0.1 %; we allow 3 %.
    far = ndi.distance_transform_edt(~subject.tissues.mask(), sampling=subject.tissues.voxel_size) > 10.0
    assert far.sum() > 100_000
    for site in sites:
        for m in CONFIG.modalities:
            img = scan_at_site(subject, m, site, noise_rng(CONFIG, 0, site.index, m)).astype(np.float64)
            sigma_hat = np.sqrt((img[far] ** 2).mean() / 2.0)
            assert abs(sigma_hat / site.noise_sigma - 1.0) < 0.03, (site.name, m, sigma_hat, site.noise_sigma)


def test_rician_noise_formula():
    rng = np.random.default_rng(3)
    x = np.full(200_000, 2.0, dtype=np.float32)
    y = add_rician_noise(x, 0.5, rng).astype(np.float64)
    # Rician mean for nu=2, sigma=0.5: E[y^2] = nu^2 + 2 sigma^2 exactly.
    assert abs((y**2).mean() - (4.0 + 2 * 0.25)) < 0.02
    assert (y >= 0).all()


def test_blur_lowers_high_frequency_energy(subjects, template):
    img = render_modality(subjects[0], "T1w")
    base = high_freq_energy(img)
    for sigma_mm, measured in ((1.0, 0.46), (1.5, 0.13)):
        blurred = gaussian_blur(img, sigma_mm, template.voxel_size)
        ratio = high_freq_energy(blurred) / base
        # Closed form: a Gaussian of sigma s voxels damps power at frequency f by exp(-4 pi^2 s^2 f^2), so all
        # energy above f_c = 0.25 cycles/voxel shrinks at least that much (0.54 and 0.25 here).
        bound = np.exp(-4 * np.pi**2 * (sigma_mm / template.voxel_size[0]) ** 2 * 0.25**2)
        assert ratio < bound, (sigma_mm, ratio, measured)
        assert abs(blurred.sum() / img.sum() - 1.0) < 1e-3  # mass kept: background margin absorbs the spread


def test_intensity_curve_monotone_and_exact(sites):
    x = np.linspace(0.0, 2.0, 20001)
    for site in sites[1:]:
        for m, eff in site.modalities.items():
            y = intensity_curve(x, eff.gain, eff.gamma).astype(np.float64)
            assert (np.diff(y) > 0).all(), (site.name, m)
            np.testing.assert_allclose(y, eff.gain * x**eff.gamma, rtol=1e-6, atol=1e-7)
            assert eff.gamma != 1.0 and eff.gain != 1.0
            # Gain and gamma push the same way for x < 1, so no site falls back onto the reference curve.
            assert (eff.gain > 1) == (eff.gamma < 1)


def test_contrast_multipliers_exact_on_pure_tissue():
    probs = np.zeros((3, 4, 1, 1), dtype=np.float32)
    probs[0, 0] = probs[1, 1] = probs[2, 2] = 1.0  # voxel 3 is background
    out = apply_tissue_contrast(probs, np.array([0.25, 0.6, 0.9]), np.array([1.1, 0.9, 1.2]))
    np.testing.assert_allclose(out[:, 0, 0], [0.275, 0.54, 1.08, 0.0], rtol=1e-6)


def test_contrast_multipliers_change_tissue_ratios(subjects, sites):
    subject = subjects[0]
    t = subject.tissues
    site = sites[1]
    contrast_only = SiteEffects(
        name="contrast",
        index=9,
        is_reference=False,
        noise_sigma=0.0,
        modalities={m: ModalityEffects(contrast=e.contrast) for m, e in site.modalities.items()},
    )
    for m in CONFIG.modalities:
        ref = render_modality(subject, m)
        other = scan_at_site(subject, m, contrast_only, None)

        def mean(img, tissue):
            sel = getattr(t, tissue) >= 0.99  # near-pure voxels; partial volume leaves < 0.15 % error
            assert sel.sum() > 50
            return float(img[sel].mean())

        c = site.modalities[m].contrast
        for tissue in ("gm", "csf"):
            change = (mean(other, tissue) / mean(other, "wm")) / (mean(ref, tissue) / mean(ref, "wm"))
            assert change == pytest.approx(c[tissue] / c["wm"], rel=5e-3), (m, tissue)


def test_thick_slices():
    rng = np.random.default_rng(0)
    in_plane = rng.random((5, 6, 1)).astype(np.float32)
    const_z = np.repeat(in_plane, 12, axis=2)
    np.testing.assert_allclose(change_slice_thickness(const_z, 3), const_z, atol=1e-6)
    # Slice-to-slice alternation (Nyquist along z) averages out in 2-voxel-thick slices, in-plane detail stays.
    alternating = const_z * np.where(np.arange(12) % 2 == 0, 1.0, -1.0).astype(np.float32)
    thick = change_slice_thickness(alternating, 2)
    assert thick.shape == alternating.shape
    assert np.abs(thick).max() < 1e-6
    ramp = np.broadcast_to(np.arange(12, dtype=np.float32), (2, 2, 12))
    # Inside the volume a linear ramp is reproduced exactly (box average of a line sits on the line).
    np.testing.assert_allclose(change_slice_thickness(ramp, 2)[..., 1:-1], ramp[..., 1:-1], atol=1e-5)


# ---------------------------------------------------------------- anatomy


def test_subjects_differ_and_tissues_stay_plausible(subjects, template):
    masks = [s.tissues.mask() for s in subjects]
    d = dice(masks[0], masks[1])
    assert 0.7 < d < 0.999, d  # measured 0.970 at seed 0 (0.875-0.975 over 8 subjects)
    assert not np.array_equal(subjects[0].tissues.labels(), subjects[1].tissues.labels())
    for s in subjects:
        t = s.tissues
        assert t.shape == template.shape == (83, 101, 88)
        for a in (t.csf, t.gm, t.wm):
            assert a.min() >= 0.0 and a.max() <= 1.0
        assert t.brain.max() <= 1.0 + 1e-5
        vol = t.volumes_ml()
        assert 800 < vol["gm"] < 1400 and 550 < vol["wm"] < 1000 and 150 < vol["csf"] < 600, vol
        labels = t.labels()
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        np.testing.assert_array_equal(labels > 0, t.mask())
        # The brain stays inside the grid (only the inferior face cuts it, as the template itself does).
        faces = [t.brain[0], t.brain[-1], t.brain[:, 0], t.brain[:, -1], t.brain[:, :, -1]]
        assert max(f.max() for f in faces) < 0.05


def test_tissue_contrast_order_in_reference_scans(subjects, sites):
    subject = subjects[0]
    labels = subject.tissues.labels()
    means = {}
    for m in CONFIG.modalities:
        img = scan_at_site(subject, m, sites[0], noise_rng(CONFIG, 0, 0, m))
        means[m] = {k: float(img[labels == v].mean()) for k, v in (("csf", 1), ("gm", 2), ("wm", 3))}
    assert means["T1w"]["wm"] > means["T1w"]["gm"] > means["T1w"]["csf"]
    assert means["T2w"]["csf"] > means["T2w"]["gm"] > means["T2w"]["wm"]
    assert means["FLAIR"]["gm"] > means["FLAIR"]["wm"] > means["FLAIR"]["csf"]


def test_atrophy_operations_move_tissue_into_csf(template):
    thinned = thin_gray_matter(template, 0.3)
    np.testing.assert_allclose(thinned.brain, template.brain, atol=1e-6)  # tissue turns into CSF, none lost
    lost = template.volumes_ml()["gm"] - thinned.volumes_ml()["gm"]  # measured 81 ml of 1008 ml
    assert lost > 50 and thinned.volumes_ml()["wm"] == template.volumes_ml()["wm"]
    grown = enlarge_ventricles(template, 0.6)
    np.testing.assert_allclose(grown.brain, template.brain, atol=1e-6)
    gained = grown.volumes_ml()["csf"] - template.volumes_ml()["csf"]  # measured 54 ml
    assert gained > 30, gained
    # Only deep CSF grows: within 15 mm of the brain surface nothing changes.
    depth = ndi.distance_transform_edt(template.mask(), sampling=template.voxel_size)
    np.testing.assert_array_equal(grown.csf[depth < 15], template.csf[depth < 15])


def test_displacement_has_planted_peak_and_never_folds(template):
    disp = smooth_displacement(template.shape, 2.0, 5.0, 24.0, np.random.default_rng(0)).astype(np.float64)
    assert disp.shape == (3, *template.shape)
    assert np.sqrt((disp**2).sum(axis=0)).max() * 2.0 == pytest.approx(5.0, rel=1e-5)
    # Jacobian determinant of x -> x + u(x): positive everywhere means a folding-free (invertible) warp.
    # Measured minimum 0.59 at seed 0 (0.46 worst over seeds 0-4); white noise of this size folds (< 0).
    jac = np.stack([np.stack(np.gradient(disp[i]), 0) for i in range(3)]) + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))  # (X, Y, Z)
    assert det.min() > 0.3


def test_identity_variation_keeps_template(template):
    same = simulate_subject(AnatomyVariation(), template)
    np.testing.assert_allclose(same.tissues.gm, template.gm, atol=1e-5)
    np.testing.assert_array_equal(same.texture, 1.0)


# ---------------------------------------------------------------- files


def test_ground_truth_is_the_reference_scan(cohort, subjects):
    root = cohort.out_dir
    table = pd.read_csv(cohort.manifest_path, dtype=str)
    ref_rows = table[table["site"] == cohort.site_effects[0].name]
    assert len(ref_rows) == COHORT_CONFIG.n_subjects * len(COHORT_CONFIG.modalities)
    for _, row in ref_rows.iterrows():
        scan = load_volume(root / row["path"])
        truth = load_volume(root / row["ground_truth"])
        np.testing.assert_array_equal(truth.data, scan.data)
        np.testing.assert_array_equal(truth.affine, scan.affine)
    # Non-reference rows point at the same subject's reference scan.
    for _, row in table.iterrows():
        expected = ref_rows[(ref_rows.subject == row.subject) & (ref_rows.modality == row.modality)].path.item()
        truth = load_volume(root / row["ground_truth"])
        np.testing.assert_array_equal(truth.data, load_volume(root / expected).data)
    # The in-memory API gives exactly what was written (same subjects as the 3-site fixture: same seed).
    s0 = load_volume(root / ref_rows.iloc[0]["path"])
    memory = scan_at_site(subjects[0], "T1w", cohort.site_effects[0], noise_rng(COHORT_CONFIG, 0, 0, "T1w"))
    np.testing.assert_array_equal(s0.data, memory)
    np.testing.assert_allclose(s0.affine, cohort.affine)
    assert s0.voxel_size == (2.0, 2.0, 2.0)


def test_manifest_rows_and_paths(cohort):
    table = pd.read_csv(cohort.manifest_path, dtype=str)
    assert tuple(table.columns) == MANIFEST_COLUMNS
    n = COHORT_CONFIG.n_subjects * COHORT_CONFIG.n_sites * len(COHORT_CONFIG.modalities)
    assert len(table) == n == 12
    assert len(table.drop_duplicates(["subject", "site", "modality"])) == n
    assert set(table.site) == {"siteA", "siteB"}
    root = cohort.manifest_path.parent
    for col in ("path", "ground_truth", "mask", "dseg_path"):
        for rel in table[col]:
            assert not rel.startswith("/") and (root / rel).is_file(), (col, rel)
    # The package's own manifest reader accepts it with every file present.
    manifest = load_manifest(cohort.manifest_path, expected_modalities=COHORT_CONFIG.modalities)
    assert len(manifest) == n
    # Masks and tissue labels agree.
    for sub in cohort.subjects:
        mask = load_volume(root / sub / f"{sub}_mask.nii.gz").data
        dseg = load_volume(root / sub / f"{sub}_dseg.nii.gz").data
        np.testing.assert_array_equal(mask > 0, dseg > 0)
        assert set(np.unique(dseg)) == {0.0, 1.0, 2.0, 3.0}
    written = {p.relative_to(root).as_posix() for p in cohort.files}
    assert set(table.path) <= written and set(table.ground_truth) <= written


def test_site_effects_json_round_trips(cohort):
    loaded = load_site_effects(cohort.site_effects_path)
    assert loaded == cohort.site_effects
    assert [s.is_reference for s in loaded] == [True, False]
    meta = json.loads(cohort.site_effects_path.read_text())
    assert meta["seed"] == 0 and meta["voxel_size_mm"] == 2.0 and meta["shape"] == list(cohort.shape)
    np.testing.assert_array_equal(np.array(meta["affine"]), cohort.affine)
    assert set(meta["subjects"]) == set(cohort.subjects)
    assert SiteEffects.from_dict(json.loads(json.dumps(loaded[1].to_dict()))) == loaded[1]


def test_same_seed_same_files_different_seed_different(cohort, tmp_path):
    again = synthesize_mri_cohort(tmp_path / "again", COHORT_CONFIG, progress=False)
    assert [p.relative_to(again.out_dir) for p in again.files] == [p.relative_to(cohort.out_dir) for p in cohort.files]
    for a, b in zip(cohort.files, again.files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a
    small = SynthMRIConfig(n_subjects=1, n_sites=2, seed=1, modalities=("T1w",))
    other = synthesize_mri_cohort(tmp_path / "other", small, progress=False)
    assert other.site_effects[1] != cohort.site_effects[1]
    for rel in (
        "sub-000/sub-000_mask.nii.gz",
        "sub-000/site-A/sub-000_site-A_T1w.nii.gz",
        "sub-000/site-B/sub-000_site-B_T1w.nii.gz",
    ):
        a = load_volume(cohort.out_dir / rel).data
        b = load_volume(other.out_dir / rel).data
        assert not np.array_equal(a, b), rel


def test_config_validation_messages():
    with pytest.raises(ConfigError, match=r"'modalities' must be among .*'PD' was provided"):
        SynthMRIConfig(modalities=("T1w", "PD"))
    with pytest.raises(ConfigError, match="'n_sites' must be a positive integer"):
        SynthMRIConfig(n_sites=0)
    with pytest.raises(ConfigError, match="'voxel_size'"):
        SynthMRIConfig(voxel_size=0.0)
