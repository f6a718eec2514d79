"""Cohort page headless: folder and uploaded manifest runs, live status, resume, failures, zip, evaluation."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from app_test_support import APP_DIR, AppWorkspace
from streamlit.testing.v1 import AppTest

COHORT = str(APP_DIR / "views" / "cohort.py")


def _page(run_name: str = "nyul") -> AppTest:
    at = AppTest.from_file(COHORT, default_timeout=180).run()
    assert not at.exception
    box = at.selectbox(key="cohort_checkpoint")
    box.set_value(next(o for o in box.options if o.startswith(run_name))).run()
    return at


def _statuses(at: AppTest) -> dict[str, str]:
    frame = at.dataframe[-1].value
    return dict(zip(frame["subject visit"], frame["status"], strict=True))


def test_cohort_folder_runs_resumes_zips_and_evaluates(workspace_env: AppWorkspace) -> None:
    at = _page()
    at.text_input(key="cohort_path").input(str(workspace_env.cohort)).run()
    assert not at.exception and not at.error
    at.text_input(key="cohort_name").input("folder-run").run()
    at.checkbox(key="cohort_resume").uncheck().run()
    at.button(key="cohort_run").click().run()
    assert not at.exception and not at.error
    assert set(_statuses(at).values()) == {"done"} and len(_statuses(at)) == 4  # 2 subjects x 2 sites
    out = workspace_env.root / "outputs" / "cohort" / "folder-run"
    assert len(list(out.rglob("*_T1w.nii.gz"))) == 4
    # rerun with resume: nothing is recomputed
    at.checkbox(key="cohort_resume").check().run()
    at.button(key="cohort_run").click().run()
    assert set(_statuses(at).values()) == {"skipped"}
    at.button(key="cohort_zip_make").click().run()
    archive = out.with_suffix(".zip")
    names = zipfile.ZipFile(archive).namelist()
    assert sum(n.endswith("_T1w.nii.gz") for n in names) == 4 and "batch_summary.json" in names
    assert any(d.label.startswith("Download all outputs") for d in at.get("download_button"))
    at.button(key="cohort_eval").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (out / "evaluation" / "metrics.json").is_file() and (out / "evaluation" / "report.html").is_file()


def test_cohort_upload_with_a_bad_subject_lists_it_and_finishes_the_rest(
    workspace_env: AppWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "site-data"  # a server data root outside the workspace
    shutil.copytree(workspace_env.cohort, data)
    monkeypatch.setenv("NEUROATTN_DATA_ROOTS", str(data))
    bad = next(data.rglob("sub-001_site-B_T1w.nii.gz"))
    bad.write_bytes(bad.read_bytes()[:200])
    manifest = (data / "manifest.csv").read_bytes()
    at = _page()
    at.radio(key="cohort_kind").set_value("Upload a manifest CSV").run()
    at.selectbox(key="cohort_base").set_value(str(data)).run()  # relative paths in the upload are below it
    at.file_uploader(key="cohort_csv").upload("manifest.csv", manifest).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.text_input(key="cohort_name").input("upload-run").run()
    at.button(key="cohort_run").click().run()
    statuses = _statuses(at)
    assert list(statuses.values()).count("failed") == 1 and list(statuses.values()).count("done") == 3
    frame = at.dataframe[-1].value
    reason = frame.loc[frame["status"] == "failed", "reason"].item()
    assert "sub-001_site-B_T1w.nii.gz" in reason
    assert any("failed" in e.value for e in at.error)


@pytest.mark.parametrize("path", ["/etc", "../../"])
def test_cohort_refuses_folders_outside_the_roots(workspace_env: AppWorkspace, path: str) -> None:
    at = _page()
    at.text_input(key="cohort_path").input(path).run()
    assert not at.exception
    assert len(at.error) == 1 and "outside the folders this app may read" in at.error[0].value
    assert not at.button(key="cohort_run") if "cohort_run" in [b.key for b in at.button] else True
