"""The app's logic without Streamlit: names, limits, roots, settings, figures, manifests and the page registry."""

from __future__ import annotations

import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.nifti import volume_from_array
from neuroattn.web.cohort import rebase_manifest, status_table
from neuroattn.web.figures import colorize, difference_window, histogram, slice_images, voxel_time_course
from neuroattn.web.launch import streamlit_command
from neuroattn.web.pages import AppPage, register_page, registered_pages
from neuroattn.web.settings import load_settings
from neuroattn.web.uploads import list_nifti_files, resolve_inside, sanitize_filename, save_upload, session_folder


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/passwd.nii.gz", "passwd.nii.gz"),
        ("C:\\scans\\sub 01.nii.gz", "sub_01.nii.gz"),
        (".hidden.nii", "hidden.nii"),
        ("..", "upload"),
        ("sub-01_T1w.nii.gz", "sub-01_T1w.nii.gz"),
    ],
)
def test_sanitize_filename_strips_folders_and_unsafe_characters(raw: str, safe: str) -> None:
    assert sanitize_filename(raw) == safe


def test_save_upload_enforces_suffix_and_size_before_writing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"^notes.txt: not a NIfTI file name"):
        save_upload(b"x", "notes.txt", tmp_path, max_mb=1)
    with pytest.raises(InvalidInputError, match=r"big.nii: upload of 2.0 MB is over the 1 MB limit"):
        save_upload(b"\0" * (2 * 2**20), "big.nii", tmp_path, max_mb=1)
    assert list(tmp_path.iterdir()) == []
    path = save_upload(b"abc", "../x.nii", tmp_path, max_mb=1)
    assert path == tmp_path / "x.nii" and path.read_bytes() == b"abc"
    with pytest.raises(InvalidInputError, match="invalid upload session id"):
        session_folder(tmp_path, "../../etc")


def test_paths_must_stay_inside_roots_even_through_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.nii.gz").write_bytes(b"x")
    (root / "scan.nii.gz").write_bytes(b"x")
    os.symlink(outside / "secret.nii.gz", root / "link.nii.gz")
    os.symlink(outside, root / "linked_dir")
    assert resolve_inside(root / "scan.nii.gz", (root,)) == (root / "scan.nii.gz").resolve()
    for escaping in (root / "link.nii.gz", root / "linked_dir", root / ".." / "outside", Path("/etc")):
        with pytest.raises(InvalidInputError, match="outside the folders this app may read"):
            resolve_inside(escaping, (root,))
    assert list_nifti_files(root, (root,)) == [(root / "scan.nii.gz").resolve()]


def test_settings_from_environment_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("NEUROATTN_DATA_ROOTS", os.pathsep.join([str(tmp_path), str(tmp_path)]))
    monkeypatch.setenv("NEUROATTN_MAX_UPLOAD_MB", "64")
    settings = load_settings()
    assert settings.data_roots == (tmp_path.resolve(),) and settings.max_upload_mb == 64
    assert settings.uploads.is_dir() and settings.runs.is_dir() and settings.outputs.is_dir()
    cmd = streamlit_command(settings, 8765)
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "64"
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    monkeypatch.setenv("NEUROATTN_MAX_UPLOAD_MB", "lots")
    with pytest.raises(ConfigError, match="not a whole number"):
        load_settings()
    with pytest.raises(ConfigError, match="data root is not a folder"):
        load_settings(data_roots=[tmp_path / "missing"], max_upload_mb=5)


def test_slices_are_oriented_and_windowed_as_stated() -> None:
    data = np.zeros((5, 6, 7), dtype=np.float32)
    data[1, 2, 3] = 10.0
    images = slice_images(data, (1, 2, 3), (0.0, 10.0), "gray")
    factor = images["axial"].shape[0] // 6
    axial = images["axial"][::factor, ::factor, 0]  # (Y, X) with superior/anterior up: row = Y-1-y
    assert axial.shape == (6, 5) and axial[6 - 1 - 2, 1] == 255 and axial.sum() == 255
    sagittal = images["sagittal"][::factor, ::factor, 0]  # (Z, Y)
    assert sagittal[7 - 1 - 3, 2] == 255
    mid = colorize(np.array([[5.0]]), (0.0, 10.0), "gray", min_pixels=1)
    assert mid.shape == (1, 1, 3) and abs(int(mid[0, 0, 0]) - 127) <= 1
    diff, window = difference_window(np.zeros((4, 4, 4)), np.full((4, 4, 4), 2.0))
    assert np.all(diff == 2.0) and window == (-2.0, 2.0)
    counts, centres = histogram(data, bins=4)
    assert counts.sum() == 1 and centres.shape == (4,)


def test_time_course_uses_tr_from_header() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 3, 3, 10)).astype(np.float32)
    data[1, 1, 1] = np.sin(np.arange(10))
    volume = volume_from_array(data, voxel_size=2.0)
    volume.header.set_zooms((2.0, 2.0, 2.0, 1.5))
    seconds, series = voxel_time_course(volume, (1, 1, 1))
    np.testing.assert_allclose(seconds, np.arange(10) * 1.5)
    np.testing.assert_allclose(series, np.sin(np.arange(10)), rtol=1e-6)


def test_uploaded_manifest_paths_are_rebased_on_the_chosen_folder(tmp_path: Path) -> None:
    csv = b"path,site,subject,mask,age\nsub-1/a.nii.gz,A,1,sub-1/m.nii.gz,30\n/abs/b.nii.gz,B,2,,40\n"
    out = rebase_manifest(csv, "m.csv", tmp_path / "base", tmp_path / "m.csv")
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table["path"]) == [str(tmp_path / "base" / "sub-1/a.nii.gz"), "/abs/b.nii.gz"]
    assert list(table["mask"]) == [str(tmp_path / "base" / "sub-1/m.nii.gz"), ""]
    assert list(table["age"]) == ["30", "40"]
    with pytest.raises(InvalidInputError, match=r"^bad.csv: not a readable CSV"):
        rebase_manifest(b"\xff\xfe\x00bad", "bad.csv", tmp_path, tmp_path / "bad.csv")


def test_status_table_lists_waiting_units() -> None:
    frame = status_table({}, ["sub-1", "sub-2"])
    assert list(frame["status"]) == ["waiting", "waiting"]


def test_page_registry_keys_are_unique() -> None:
    keys = [p.key for p in registered_pages()]
    assert keys[:4] == ["viewer", "harmonize", "cohort", "report"] and len(set(keys)) == len(keys)
    with pytest.raises(ConfigError, match="already registered"):
        register_page(AppPage("viewer", "Other", ":material/home:", "views/other.py", "x"))
    for page in registered_pages():
        assert (Path(__file__).resolve().parents[2] / "app" / page.script).is_file()


def test_nifti_written_by_the_app_round_trips(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    img = nib.Nifti1Image(np.ones((2, 2, 2), dtype=np.float32), np.eye(4))
    buffer.write(img.to_bytes())
    path = save_upload(buffer.getvalue(), "one.nii", tmp_path, max_mb=1)
    assert nib.load(path).shape == (2, 2, 2)
