"""Applying a saved harmonizer to manifests, folders and single files: layout, geometry, failures, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort
from neuroattn.harmonize import NyulHarmonizer
from neuroattn.harmonize.apply import apply_harmonizer, plan_apply
from neuroattn.io.manifest import load_manifest
from neuroattn.io.nifti import load_volume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    synthesize_mri_cohort(out, SynthMRIConfig(n_subjects=3, n_sites=2, seed=5, voxel_size=6.0,
                                              modalities=("T1w", "FLAIR")), progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    harmonizer = NyulHarmonizer(progress=False).fit(load_manifest(cohort / "manifest.csv"))
    return harmonizer.save(tmp_path_factory.mktemp("run") / "harmonizer")


def test_manifest_outputs_keep_layout_geometry_and_header(cohort: Path, checkpoint: Path, tmp_path: Path) -> None:
    report = apply_harmonizer(checkpoint, cohort / "manifest.csv", tmp_path / "out", progress=False)
    assert len(report.done) == 6 and not report.failed  # 3 subjects × 2 sites, both modalities per unit
    manifest = load_manifest(cohort / "manifest.csv")
    for row in manifest:
        out = tmp_path / "out" / row.relative_path
        src_img, out_img = nib.load(str(row.path)), nib.load(str(out))
        assert out_img.shape == src_img.shape
        np.testing.assert_allclose(out_img.affine, src_img.affine)
        assert int(out_img.header["sform_code"]) == int(src_img.header["sform_code"])
        assert out_img.header.get_zooms() == src_img.header.get_zooms()
    # harmonized site-B scans are closer to the ground truth than the raw ones
    row = manifest.rows_for(site="siteB", modality="T1w")[0]
    truth = load_volume(row.extras["ground_truth"]).data
    mask = load_volume(row.extras["mask"]).data > 0.5
    raw_err = np.abs(load_volume(row.path).data - truth)[mask].mean()
    out_err = np.abs(load_volume(tmp_path / "out" / row.relative_path).data - truth)[mask].mean()
    assert out_err < 0.5 * raw_err


def test_bad_subject_is_skipped_listed_and_resume_finishes_it(cohort: Path, checkpoint: Path, tmp_path: Path) -> None:
    work = tmp_path / "cohort"
    import shutil

    shutil.copytree(cohort, work)
    bad = work / "sub-001" / "site-B" / "sub-001_site-B_FLAIR.nii.gz"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated upload
    report = apply_harmonizer(checkpoint, work / "manifest.csv", tmp_path / "out", progress=False)
    assert len(report.failed) == 1 and len(report.done) == 5
    rows = list(csv.DictReader((tmp_path / "out" / "failures.csv").open()))
    assert rows[0]["key"] == "sub-001_site-siteB_ses-1" and "truncated" in rows[0]["reason"]
    assert not (tmp_path / "out" / "sub-001" / "site-B" / "sub-001_site-B_T1w.nii.gz").exists()

    bad.write_bytes(good_bytes)  # fixed input: resume runs only that subject
    report = apply_harmonizer(checkpoint, work / "manifest.csv", tmp_path / "out", resume=True, progress=False)
    assert [r.key for r in report.done] == ["sub-001_site-siteB_ses-1"]
    assert len(report.skipped) == 5 and not report.failed


def test_single_file_with_site_written_under_its_name(cohort: Path, checkpoint: Path, tmp_path: Path) -> None:
    src = cohort / "sub-000" / "site-B" / "sub-000_site-B_T1w.nii.gz"
    plan = plan_apply(src, tmp_path / "out", site="siteB")
    assert [u.payload["site"] for u in plan.units] == ["siteB"]
    report = apply_harmonizer(checkpoint, src, tmp_path / "out", site="siteB", progress=False)
    assert not report.failed
    assert (tmp_path / "out" / src.name).is_file()


def test_unfitted_modality_fails_with_reason(cohort: Path, tmp_path: Path) -> None:
    t1_only = NyulHarmonizer(progress=False).fit(
        load_manifest(cohort / "manifest.csv").rows_for(modality="T1w"))
    ckpt = t1_only.save(tmp_path / "t1")
    report = apply_harmonizer(ckpt, cohort / "manifest.csv", tmp_path / "out", progress=False)
    assert len(report.failed) == 6
    assert "modality 'FLAIR' was not seen during fit" in report.failed[0].reason
