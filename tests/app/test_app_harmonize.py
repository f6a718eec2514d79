"""Harmonize page headless: a scan goes through a saved harmonizer, before/after are shown, the file downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_test_support import APP_DIR, AppWorkspace
from streamlit.testing.v1 import AppTest

from neuroattn.harmonize.base import BaseHarmonizer
from neuroattn.io.nifti import load_volume

HARMONIZE = str(APP_DIR / "views" / "harmonize.py")


def _page() -> AppTest:
    at = AppTest.from_file(HARMONIZE, default_timeout=120).run()
    assert not at.exception
    return at


@pytest.mark.parametrize("run_name", ["tiny-sa", "nyul"])
def test_harmonize_one_scan_matches_the_estimator_and_downloads(workspace_env: AppWorkspace, run_name: str) -> None:
    at = _page()
    checkpoint = at.selectbox(key="harm_checkpoint")
    label = next(o for o in checkpoint.options if o.startswith(run_name))
    checkpoint.set_value(label).run()
    assert at.selectbox(key="harm_site").value == "siteB"  # the non-target site is offered first
    scan = workspace_env.scan()
    at.file_uploader(key="harm_in_T1w_upload").upload(scan.name, scan.read_bytes()).run()
    assert not at.exception and not at.error
    at.button(key="harm_run").click().run()
    assert not at.exception and not at.error
    assert len(at.image) == 9  # before, after, difference x three views
    assert [d.label for d in at.get("download_button")] == [f"Download {scan.name.replace('.nii.gz', '')}"
                                                            "_harmonized.nii.gz"]
    written = list((workspace_env.root / "outputs" / "harmonize").rglob("*_harmonized.nii.gz"))
    out = max(written, key=lambda p: p.stat().st_mtime)
    harmonizer = BaseHarmonizer.load(getattr(workspace_env, run_name.replace("tiny-sa", "sa_cyclegan"))
                                     / "harmonizer")
    harmonizer.progress = False
    expected = harmonizer.transform([load_volume(scan).data], ["siteB"], subjects=["upload"], modalities=["T1w"])[0]
    got = load_volume(out)
    np.testing.assert_allclose(got.data, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.affine, load_volume(scan).affine)


def test_harmonize_refuses_a_wrong_file_in_the_page(workspace_env: AppWorkspace) -> None:
    at = _page()
    at.file_uploader(key="harm_in_T1w_upload").upload("scan.nii.gz", b"garbage").run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("scan.nii.gz: ")
    assert len(at.button) == 1  # only the demo-training button; no Harmonize without a valid scan


def test_train_the_quick_demo_model_from_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(tmp_path / "fresh"))
    at = _page()
    assert any("No harmonizer checkpoints" in i.value for i in at.info)
    at.button(key="harm_train_demo").click().run()
    assert not at.exception and not at.error
    assert any("demo-quick" in o for o in at.selectbox(key="harm_checkpoint").options)
    assert (tmp_path / "fresh" / "runs" / "demo-quick" / "harmonizer" / "config.json").is_file()
    assert at.get("progress") and at.get("progress")[0].proto.text.endswith("done")
