"""Viewer page headless: a synthetic 3-D and 4-D volume go through it; a bad upload shows the IO layer's message."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_test_support import APP_DIR, AppWorkspace
from streamlit.testing.v1 import AppTest

VIEWER = str(APP_DIR / "views" / "viewer.py")


def _nifti_bytes(data: np.ndarray, zooms: tuple[float, ...], tmp: Path) -> bytes:
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(zooms)
    path = tmp / "vol.nii.gz"
    nib.save(img, path)
    return path.read_bytes()


def _viewer() -> AppTest:
    at = AppTest.from_file(VIEWER, default_timeout=60).run()
    assert not at.exception
    return at


def test_viewer_shows_slices_header_histogram_and_compares(workspace_env: AppWorkspace) -> None:
    at = _viewer()
    scan = workspace_env.scan()
    at.file_uploader[0].upload(scan.name, scan.read_bytes()).run()
    assert not at.exception and not at.error
    shape = nib.load(scan).shape
    assert [s.label for s in at.slider][:3] == ["x slice (sagittal)", "y slice (coronal)", "z slice (axial)"]
    assert [s.value for s in at.slider][:3] == [n // 2 for n in shape]
    assert len(at.image) == 3  # the three orthogonal views
    header = at.table[0].value
    assert header.loc["shape", "value"] == " × ".join(map(str, shape))
    assert header.loc["voxel size (mm)", "value"] == "6 × 6 × 6"
    # moving the axial slider redraws that view only from the new slice
    at.slider(key="viewer_z").set_value(1).run()
    assert not at.exception and len(at.image) == 3
    # compare with the same subject at the reference site: side-by-side row + difference row
    other = workspace_env.scan(site="siteA")
    at.file_uploader[1].upload(other.name, other.read_bytes()).run()
    assert not at.exception and not at.error
    assert len(at.image) == 9


def test_viewer_4d_has_time_slider_and_time_course(workspace_env: AppWorkspace, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, size=(6, 7, 5, 12))
    data[3, 3, 2, :] = 100 + 10 * np.sin(np.arange(12))  # a planted oscillation at one voxel
    at = _viewer()
    at.file_uploader[0].upload("bold.nii.gz", _nifti_bytes(data, (3.0, 3.0, 3.0, 2.0), tmp_path)).run()
    assert not at.exception and not at.error
    assert at.slider(key="viewer_t").max == 11
    header = at.table[0].value
    assert header.loc["TR (s)", "value"] == "2" and header.loc["frames", "value"] == "12"
    assert len(at.get("vega_lite_chart")) == 2  # histogram + the voxel's time course
    for axis, value in zip("xyz", (3, 3, 2), strict=True):
        at.slider(key=f"viewer_{axis}").set_value(value)
    at.run()
    assert "Time course of voxel (3, 3, 2)" in [h.value for h in at.subheader]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("notes.nii.gz", b"this is not an image", "not a gzipped file"),
        ("truncated.nii.gz", None, "truncated"),
        ("../../escape.nii", b"\x00" * 20, "escape.nii"),
    ],
)
def test_viewer_bad_upload_shows_one_line_error_and_keeps_working(
    workspace_env: AppWorkspace, name: str, content: bytes | None, problem: str
) -> None:
    if content is None:
        full = workspace_env.scan().read_bytes()
        content = gzip.compress(gzip.decompress(full)[:600])  # header fine, voxel data cut short
    at = _viewer()
    at.file_uploader[0].upload(name, content).run()
    assert not at.exception
    assert len(at.error) == 1 and problem in at.error[0].value.lower()
    assert "\n" not in at.error[0].value and ".." not in at.error[0].value
    assert len(at.image) == 0
    uploads = workspace_env.root / "uploads"
    assert not any(p.name.endswith(".nii") or p.name.endswith(".nii.gz") for p in uploads.rglob("*")
                   if p.name.startswith(("notes", "truncated", "escape")))
    assert not (workspace_env.root.parent / "escape.nii").exists()
