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
