"""The evaluation orchestrator on a 4 mm traveling-subject cohort: raw vs a planted near-perfect harmonization."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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
from neuroattn.harmonize.evaluate import evaluate_harmonization, metrics_table, write_metrics_csv, write_metrics_json

MODALITIES = ("T1w", "FLAIR")
N_SUBJECTS = 6


@pytest.fixture(scope="module")
def cohort() -> dict:
    """6 subjects x 2 sites x 2 modalities at 4 mm; 'rescan' = every site-B scan replaced by a fresh
    reference-site scan of the same subject (what a perfect harmonizer would produce, noise aside)."""
    cfg = SynthMRIConfig(n_subjects=N_SUBJECTS, n_sites=2, seed=0, voxel_size=4.0, modalities=MODALITIES)
    template = load_template_tissues(cfg.voxel_size, cfg.margin_mm)
    site_a, site_b = cohort_sites(cfg)
    raw, rescan, masks, dsegs, gt = {}, {}, {}, {}, {}
    for s in range(N_SUBJECTS):
        sub = f"sub-{s}"
        anatomy = simulate_subject(subject_variation(cfg, s), template)
        masks[sub], dsegs[sub] = anatomy.tissues.mask(), anatomy.tissues.labels()
        for m in MODALITIES:
            a = scan_at_site(anatomy, m, site_a, noise_rng(cfg, s, 0, m))
            gt[(sub, m)] = raw[(sub, "siteA", m)] = rescan[(sub, "siteA", m)] = a
            raw[(sub, "siteB", m)] = scan_at_site(anatomy, m, site_b, noise_rng(cfg, s, 1, m))
            rescan[(sub, "siteB", m)] = scan_at_site(anatomy, m, site_a, np.random.default_rng([7, s, len(m)]))
    metrics = evaluate_harmonization(
        {"raw": raw, "rescan": rescan},
        masks=masks,
        ground_truth=gt,
        dsegs=dsegs,
        reference_site="siteA",
        n_permutations=500,
        n_bootstrap=200,
        progress=False,
    )
    return {"raw": raw, "masks": masks, "gt": gt, "dsegs": dsegs, "metrics": metrics}


def test_raw_site_effect_is_detected_by_every_metric(cohort: dict) -> None:
    h = cohort["metrics"]["headline"]["raw"]
    assert h["mmd_intensity_p"] < 0.05  # exact paired test, 6 subjects: smallest attainable p is 2/64
    assert h["mmd_learned_p"] < 0.05
    assert h["domain_accuracy"] >= 0.9
    assert h["ks"] > 0.3
    assert h["icc_median"] < 0.5


def test_planted_harmonization_wins_on_every_metric(cohort: dict) -> None:
    m = cohort["metrics"]
    h, raw, rel = m["headline"]["rescan"], m["headline"]["raw"], m["relative_to_raw"]["rescan"]
    assert rel["mmd_intensity_reduction_percent"] >= 90
    assert rel["mmd_learned_reduction_percent"] >= 90
    assert h["mmd_intensity_p"] > 0.05
    assert h["domain_accuracy_ci_low"] <= 0.5 <= h["domain_accuracy_ci_high"]
    assert rel["ks_reduction_percent"] >= 90
    assert h["psnr"] > raw["psnr"] + 10.0
    assert h["ssim"] > raw["ssim"]
    assert h["dice_vs_ground_truth"] > raw["dice_vs_ground_truth"]
    assert h["dice_vs_dseg"] >= raw["dice_vs_dseg"]
    assert h["icc_median"] > 0.9 > raw["icc_median"]
    assert rel["psnr_change_db"] == pytest.approx(h["psnr"] - raw["psnr"])
    assert all(v == 0 or v is None for k, v in m["relative_to_raw"]["raw"].items() if "reduction" not in k)


def test_output_layout_and_json_csv_round_trip(cohort: dict, tmp_path) -> None:
    m = cohort["metrics"]
    raw = m["methods"]["raw"]
    assert set(raw) == {"mmd", "domain_classifier", "distances", "ground_truth", "dice", "radiomics"}
    assert set(raw["mmd"]["intensity"]) == {*MODALITIES, "all"}
    assert set(raw["mmd"]["intensity"]["all"]["siteB"]) == {"median", "multi"}
    assert len(raw["mmd"]["intensity"]["all"]["siteB"]["multi"]["bandwidths"]) == 5
    assert set(raw["distances"]["siteA-vs-siteB"]["T1w"]) == {"all", "csf", "gm", "wm"}
    assert raw["ground_truth"]["all"]["psnr"]["n"] == N_SUBJECTS * len(MODALITIES)  # non-reference scans only
    assert raw["radiomics"]["summary"]["icc2_1"]["n_features"] == len(MODALITIES) * 3 * 19
    assert m["cohort"]["tissue_labels"].startswith("dsegs")
    assert set(m["reference"]["dice_ground_truth_segmentation_vs_dseg"]) == set(MODALITIES)
    path = write_metrics_json(m, tmp_path / "metrics.json")
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) == m
    table = metrics_table(m)
    assert list(table.index) == ["raw", "rescan"]
    assert {"mmd_intensity", "domain_accuracy", "psnr", "ssim", "dice_vs_ground_truth", "icc_median"} <= set(table)
    assert "mmd_intensity_reduction_percent" in table
    csv = write_metrics_csv(m, tmp_path / "metrics.csv")
    back = pd.read_csv(csv, index_col="method")
    np.testing.assert_allclose(back["psnr"].to_numpy(), table["psnr"].to_numpy())


def test_inputs_are_validated(cohort: dict) -> None:
    raw, masks = cohort["raw"], cohort["masks"]
    with pytest.raises(InvalidInputError, match="reference_site"):
        evaluate_harmonization({"raw": raw}, masks=masks, reference_site="siteZ", progress=False)
    partial = {k: v for k, v in raw.items() if k != ("sub-0", "siteB", "FLAIR")}
    with pytest.raises(InvalidInputError, match="missing"):
        evaluate_harmonization({"raw": partial}, masks=masks, reference_site="siteA", progress=False)
    with pytest.raises(InvalidInputError, match="other scans"):
        evaluate_harmonization({"raw": raw, "x": partial}, masks=masks, reference_site="siteA", progress=False)
    broken = dict(raw)
    bad = raw[("sub-1", "siteB", "T1w")].copy()
    bad[masks["sub-1"]] = np.nan
    broken[("sub-1", "siteB", "T1w")] = bad
    with pytest.raises(InvalidInputError, match="NaN"):
        evaluate_harmonization({"raw": broken}, masks=masks, reference_site="siteA", progress=False)
    with pytest.raises(InvalidInputError, match="brain mask"):
        evaluate_harmonization({"raw": raw}, masks={}, reference_site="siteA", progress=False)


def test_without_labels_or_ground_truth_it_still_runs_and_is_seeded(cohort: dict) -> None:
    """Tissue ROIs fall back to a segmentation of the raw reference scans; same seed, same numbers."""
    subjects = ["sub-0", "sub-1", "sub-2"]
    raw = {k: v for k, v in cohort["raw"].items() if k[0] in subjects and k[2] == "T1w"}
    masks = {s: cohort["masks"][s] for s in subjects}
    kw = {"masks": masks, "reference_site": "siteA", "n_permutations": 50, "n_bootstrap": 20, "progress": False}
    a = evaluate_harmonization({"raw": raw}, **kw)
    assert a["cohort"]["tissue_labels"].startswith("GMM segmentation of 'raw' siteA T1w")
    assert "psnr" not in a["headline"]["raw"]
    assert "psnr_vs_method_reference" in a["headline"]["raw"]
    assert "vs_ground_truth" not in a["methods"]["raw"]["dice"]
    b = evaluate_harmonization({"raw": raw}, **kw)
    a.pop("runtime_s")
    b.pop("runtime_s")
    assert a == b


# ---------------------------------------------------------------------------------------- unpaired cohorts

SITE_A_SUBJECTS = [f"sub-{s}" for s in range(6)]
SITE_B_SUBJECTS = [f"sub-{s}" for s in range(6, 12)]
GT_SUBJECTS = ["sub-6", "sub-7", "sub-8"]  # ground truth (the reference-site scan) of some site-B subjects only


@pytest.fixture(scope="module")
def unpaired() -> dict:
    """Different subjects per site (6 at siteA, 6 others at siteB, 4 mm, the planted site effect of the paired
    cohort); 'ideal' = every site-B scan replaced by a reference-site scan of the same subject (fresh noise)."""
    cfg = SynthMRIConfig(n_subjects=12, n_sites=2, seed=0, voxel_size=4.0, modalities=MODALITIES)
    template = load_template_tissues(cfg.voxel_size, cfg.margin_mm)
    site_a, site_b = cohort_sites(cfg)
    raw, ideal, masks, dsegs, gt = {}, {}, {}, {}, {}
    for s in range(12):
        sub = f"sub-{s}"
        anatomy = simulate_subject(subject_variation(cfg, s), template)
        masks[sub], dsegs[sub] = anatomy.tissues.mask(), anatomy.tissues.labels()
        for m in MODALITIES:
            if sub in SITE_A_SUBJECTS:
                raw[(sub, "siteA", m)] = ideal[(sub, "siteA", m)] = scan_at_site(
                    anatomy, m, site_a, noise_rng(cfg, s, 0, m)
                )
                continue
            raw[(sub, "siteB", m)] = scan_at_site(anatomy, m, site_b, noise_rng(cfg, s, 1, m))
            ideal[(sub, "siteB", m)] = scan_at_site(anatomy, m, site_a, np.random.default_rng([7, s, len(m)]))
            if sub in GT_SUBJECTS:
                gt[(sub, m)] = scan_at_site(anatomy, m, site_a, noise_rng(cfg, s, 0, m))
    metrics = evaluate_harmonization(
        {"raw": raw, "ideal": ideal},
        masks=masks,
        ground_truth=gt,
        reference_site="siteA",
        n_permutations=500,
        n_bootstrap=200,
        n_label_permutations=5,  # within-subject label shuffles are undefined without traveling subjects: skipped
        progress=False,
    )
    return {"raw": raw, "masks": masks, "dsegs": dsegs, "metrics": metrics}


def test_unpaired_site_effect_is_detected_and_ideal_harmonization_removes_it(unpaired: dict) -> None:
    m = unpaired["metrics"]
    raw, ideal, rel = m["headline"]["raw"], m["headline"]["ideal"], m["relative_to_raw"]["ideal"]
    # 6 vs 6 scans, 500 random relabelings: p = (1 + hits) / 501, so 0.004 when nothing beats the observed split
    assert raw["mmd_intensity_p"] < 0.01
    assert raw["mmd_learned_p"] < 0.01
    assert raw["domain_accuracy"] >= 0.9 and raw["domain_auc"] >= 0.9
    assert raw["ks"] > 0.3
    assert ideal["mmd_intensity_p"] > 0.05 and ideal["mmd_intensity_multi_p"] > 0.05
    assert ideal["mmd_learned_p"] > 0.05
    assert ideal["domain_accuracy"] <= 0.7
    assert ideal["domain_accuracy_ci_low"] <= 0.5 <= ideal["domain_accuracy_ci_high"]
    # different subjects per site: anatomy still differs between the two samples, so the distances stay above 0
    assert rel["mmd_intensity_reduction_percent"] >= 85
    assert ideal["ks"] < raw["ks"] / 4
    assert ideal["psnr"] > raw["psnr"] + 10.0
    assert ideal["dice_vs_ground_truth"] > raw["dice_vs_ground_truth"]


def test_unpaired_layout_skips_what_needs_traveling_subjects(unpaired: dict, tmp_path) -> None:
    m = unpaired["metrics"]
    assert m["settings"]["design"] == m["cohort"]["design"] == "unpaired"
    assert m["cohort"]["subjects_per_site"] == {"siteA": SITE_A_SUBJECTS, "siteB": sorted(SITE_B_SUBJECTS)}
    assert m["cohort"]["n_scans"] == 12 * len(MODALITIES)
    assert m["cohort"]["ground_truth_subjects"] == GT_SUBJECTS
    # ROIs: the ground truth's segmentation where there is one, else the subject's own raw scan at its site
    assert m["cohort"]["tissue_labels"] == (
        "GMM segmentation of 'raw' siteA T1w scans for 6 subjects; GMM segmentation of 'raw' siteB T1w scans for 3 "
        "subjects; GMM segmentation of the ground truth (T1w) for 3 subjects"
    )
    raw = m["methods"]["raw"]
    for space in ("intensity", "learned"):
        test = raw["mmd"][space]["all"]["siteB"]["median"]
        assert (test["paired"], test["exact"], test["n_x"], test["n_y"]) == (False, False, 6, 6)
    dc = raw["domain_classifier"]["all"]
    assert (dc["n_subjects"], dc["n_scans"], dc["chance"]) == (12, 12, 0.5)
    assert dc["n_label_permutations"] == 0 and m["headline"]["raw"]["domain_accuracy_p"] is None
    assert raw["ground_truth"]["all"]["psnr"]["n"] == len(GT_SUBJECTS) * len(MODALITIES)
    assert set(raw["ground_truth"]["all"]) == {"psnr", "ssim"}  # no PSNR vs the method's own reference scan
    assert set(raw["dice"]) == {"vs_ground_truth"}
    assert raw["dice"]["vs_ground_truth"]["all"]["mean"]["n"] == len(GT_SUBJECTS) * len(MODALITIES)
    assert raw["radiomics"] is None
    assert m["settings"]["radiomics_icc"].startswith("not applicable")
    h = m["headline"]["raw"]
    assert "psnr_vs_method_reference" not in h and h["icc_median"] is None
    assert m["relative_to_raw"]["ideal"]["icc_median_change"] is None
    table = metrics_table(m)
    assert np.isnan(table.loc["ideal", "icc_median"]) and np.isnan(table.loc["raw", "domain_accuracy_p"])
    assert table.loc["ideal", "psnr"] == pytest.approx(m["headline"]["ideal"]["psnr"])
    path = write_metrics_json(m, tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == m


def test_unpaired_without_ground_truth_has_no_ground_truth_blocks(unpaired: dict) -> None:
    """Two BraTS-like datasets: no ground truth, no tissue labels; the ground-truth blocks are simply absent."""
    subjects = ["sub-0", "sub-1", "sub-6", "sub-7"]
    raw = {k: v for k, v in unpaired["raw"].items() if k[0] in subjects and k[2] == "T1w"}
    masks = {s: unpaired["masks"][s] for s in subjects}
    m = evaluate_harmonization({"raw": raw}, masks=masks, reference_site="siteA", n_permutations=20,
                               n_bootstrap=10, progress=False)
    assert m["methods"]["raw"]["ground_truth"] is None and m["methods"]["raw"]["dice"] == {}
    assert not {"psnr", "ssim", "psnr_vs_method_reference", "dice_vs_ground_truth"} & set(m["headline"]["raw"])
    assert m["cohort"]["ground_truth_subjects"] == []
    assert metrics_table(m).loc["raw", "domain_chance"] == 0.5


def test_unpaired_inputs_are_validated(unpaired: dict) -> None:
    raw, masks = unpaired["raw"], unpaired["masks"]
    partial = {k: v for k, v in raw.items() if k not in {("sub-7", "siteB", "FLAIR"), ("sub-2", "siteA", "T1w")}}
    with pytest.raises(InvalidInputError, match="needs every modality") as err:
        evaluate_harmonization({"raw": partial}, masks=masks, reference_site="siteA", progress=False)
    assert "('sub-2', 'siteA', 'T1w')" in str(err.value) and "('sub-7', 'siteB', 'FLAIR')" in str(err.value)
    lonely = {k: v for k, v in raw.items() if k[1] == "siteA" or k[0] == "sub-6"}
    with pytest.raises(InvalidInputError, match=r"at least 2 subjects per site; got \{'siteB': \['sub-6'\]\}"):
        evaluate_harmonization({"raw": lonely}, masks=masks, reference_site="siteA", progress=False)
    gt = {("sub-6", "T1w"): raw[("sub-6", "siteB", "T1w")]}  # FLAIR missing for a subject that has ground truth
    with pytest.raises(InvalidInputError, match="no ground truth for subject 'sub-6', modality 'FLAIR'"):
        evaluate_harmonization({"raw": raw}, masks=masks, ground_truth=gt, reference_site="siteA", progress=False)


def test_radiomics_icc_uses_the_subjects_scanned_at_every_site(cohort: dict) -> None:
    """Part traveling, part not: the ICC block equals that of the complete cohort of the traveling subjects."""
    kw = {"reference_site": "siteA", "n_permutations": 20, "n_bootstrap": 10, "progress": False}
    t1 = {k: v for k, v in cohort["raw"].items() if k[2] == "T1w"}
    dropped = {("sub-0", "siteB"), ("sub-1", "siteB"), ("sub-2", "siteA"), ("sub-3", "siteA")}
    mixed = {k: v for k, v in t1.items() if (k[0], k[1]) not in dropped}
    m = evaluate_harmonization({"raw": mixed}, masks=cohort["masks"], dsegs=cohort["dsegs"], **kw)
    assert m["cohort"]["design"] == "unpaired"
    assert m["cohort"]["subjects_per_site"]["siteA"] == ["sub-0", "sub-1", "sub-4", "sub-5"]
    traveling = ["sub-4", "sub-5"]
    complete = {k: v for k, v in t1.items() if k[0] in traveling}
    ref = evaluate_harmonization({"raw": complete}, masks=cohort["masks"], dsegs=cohort["dsegs"], **kw)
    assert ref["cohort"]["design"] == "paired traveling subjects"
    assert m["methods"]["raw"]["radiomics"] == ref["methods"]["raw"]["radiomics"]
    assert m["methods"]["raw"]["radiomics"]["summary"]["icc2_1"]["n_features"] > 0
    assert m["settings"]["radiomics_icc"] == "across sites on the 2 subjects scanned at every site"


# Headline numbers of the paired cohort above computed before unpaired cohorts were supported; the paired path
# must reproduce them. They come from float32 volumes and features, whose last bits differ between builds of the
# numerical libraries (a fresh install moved them by up to 1.6e-7 relative, 6.9e-8 absolute); any change of logic
# moves them far more than a float32-level tolerance of 1e-6 relative / 1e-7 absolute.
PAIRED_HEADLINE = {
    "raw": {
        "mmd_intensity": 0.8319124812839365, "mmd_intensity_p": 0.03125, "mmd_intensity_multi": 4.883174323530659,
        "mmd_intensity_multi_p": 0.03125, "mmd_learned": 0.6530687631295053, "mmd_learned_p": 0.03125,
        "mmd_learned_multi": 2.134598413661373, "mmd_learned_multi_p": 0.03125, "domain_accuracy": 1.0,
        "domain_accuracy_ci_low": 1.0, "domain_accuracy_ci_high": 1.0, "domain_auc": 1.0, "domain_chance": 0.5,
        "domain_accuracy_p": None, "ks": 0.8426421144497316, "wasserstein_normalized": 1.3012559992177772,
        "psnr": 6.8972540928027435, "ssim": 0.6657863539622305, "psnr_vs_method_reference": 6.8972540928027435,
        "ssim_vs_method_reference": 0.6657863539622305, "dice_vs_ground_truth": 0.7243262242964664,
        "dice_vs_dseg": 0.5899475033954713, "icc_median": 0.010212018728247129,
        "icc_fraction_above_0.75": 0.03508771929824561, "icc3_median": 0.4407479745881879,
    },
    "rescan": {
        "mmd_intensity": -0.0009254437015056016, "mmd_intensity_p": 0.8125,
        "mmd_intensity_multi": -0.002987484378822458, "mmd_intensity_multi_p": 0.75,
        "mmd_learned": 4.996886142727419e-05, "mmd_learned_p": 0.25,
        "mmd_learned_multi": -2.3920874022032024e-05, "mmd_learned_multi_p": 0.5625, "domain_accuracy": 0.5,
        "domain_accuracy_ci_low": 0.5, "domain_accuracy_ci_high": 0.5, "domain_auc": 0.5, "domain_chance": 0.5,
        "domain_accuracy_p": None, "ks": 0.0032876690281194074, "wasserstein_normalized": 0.001981649165799269,
        "psnr": 32.72680752524676, "ssim": 0.9918187902871763, "psnr_vs_method_reference": 32.72680752524676,
        "ssim_vs_method_reference": 0.9918187902871763, "dice_vs_ground_truth": 0.9518806588811581,
        "dice_vs_dseg": 0.731036990859257, "icc_median": 0.9805189520347897,
        "icc_fraction_above_0.75": 0.8596491228070176, "icc3_median": 0.9837670128513454,
    },
}


def test_paired_cohort_results_are_unchanged(cohort: dict) -> None:
    m = cohort["metrics"]
    assert m["settings"]["design"] == m["cohort"]["design"] == "paired traveling subjects"
    assert m["methods"]["raw"]["mmd"]["intensity"]["all"]["siteB"]["median"]["paired"] is True
    assert set(m["headline"]) == set(PAIRED_HEADLINE)
    for method, expected in PAIRED_HEADLINE.items():
        got = m["headline"][method]
        assert set(got) == set(expected)
        assert {k for k, v in got.items() if v is None} == {k for k, v in expected.items() if v is None}
        numbers = {k: v for k, v in expected.items() if v is not None}
        assert {k: got[k] for k in numbers} == pytest.approx(numbers, rel=1e-6, abs=1e-7)
