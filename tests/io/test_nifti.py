"""NIfTI IO: round trips keep geometry and header; every bad input fails with a message naming file and problem."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroattn.errors import InvalidInputError, NeuroattnError
from neuroattn.io.nifti import load_volume, save_volume, volume_from_array


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header: object) -> Path:
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---- round trips ---------------------------------------------------------------------------------------


def test_las_volume_comes_in_as_ras_and_goes_out_as_las(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(size=(6, 7, 5)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.5, 0, -120], [0, 0, 3.0, -70], [0, 0, 0, 1]])
    src = _write(tmp_path / "las.nii.gz", data, affine, descrip=b"site scan")
    vol = load_volume(src)
    assert vol.orientation == "LAS"
    # RAS inside: the first axis is flipped, so voxel (0,.,.) inside is voxel (5,.,.) in the file.
    np.testing.assert_array_equal(vol.data, data[::-1])
    world_in = vol.affine @ np.array([0, 1, 2, 1.0])
    world_file = affine @ np.array([5, 1, 2, 1.0])
    np.testing.assert_allclose(world_in, world_file)
    assert vol.voxel_size == pytest.approx((2.0, 2.5, 3.0))

    out = save_volume(vol.with_data(vol.data * 2), tmp_path / "out" / "las.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, affine)
    np.testing.assert_allclose(np.asarray(back.dataobj), data * 2, rtol=1e-6)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    assert back.header["descrip"].tobytes().rstrip(b"\x00") == b"site scan"
    assert nib.aff2axcodes(back.affine) == ("L", "A", "S")


def test_oblique_and_permuted_axes_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(size=(4, 5, 6)).astype(np.float32)
    # axes permuted (file axis 0 is superior) and a small rotation
    theta = 0.1
    rot = np.array([[0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)], [1.5, 0, 0]])
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = [10, -5, 3]
    src = _write(tmp_path / "perm.nii", data, affine)
    vol = load_volume(src)
    assert vol.shape == (5, 6, 4)  # world x, y, z come from file axes 1, 2, 0
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    save_volume(vol, tmp_path / "perm_out.nii")
    back = nib.load(str(tmp_path / "perm_out.nii"))
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)


def test_4d_volume_keeps_tr(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.normal(size=(3, 4, 5, 7)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_zooms((3.0, 3.0, 3.0, 2.0))
    nib.save(img, str(tmp_path / "bold.nii.gz"))
    vol = load_volume(tmp_path / "bold.nii.gz", ndim=4)
    assert vol.shape == (3, 4, 5, 7)
    save_volume(vol, tmp_path / "bold_out.nii.gz")
    back = nib.load(str(tmp_path / "bold_out.nii.gz"))
    assert back.header.get_zooms()[3] == pytest.approx(2.0)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)


def test_integer_scaled_input_is_read_in_real_units(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    vol = load_volume(tmp_path / "scaled.nii")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, data * 0.5 + 10.0)
    save_volume(vol, tmp_path / "scaled_out.nii")
    np.testing.assert_allclose(load_volume(tmp_path / "scaled_out.nii").data, vol.data)


def test_failed_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.nii.gz"
    vol = volume_from_array(np.ones((3, 3, 3)))
    save_volume(vol, target)
    before = target.read_bytes()

    def broken_save(img: object, filename: str) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(vol.with_data(np.zeros((3, 3, 3))), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]


# ---- bad inputs: each names the file and the problem ---------------------------------------------------


def _bad_inputs(tmp: Path) -> list[tuple[str, Path, str, dict]]:
    """(case id, path, expected message fragment, load kwargs)."""
    good = np.ones((4, 4, 4), dtype=np.float32)
    cases: list[tuple[str, Path, str, dict]] = []
    cases.append(("missing", tmp / "absent.nii.gz", "file not found", {}))
    (tmp / "folder.nii").mkdir()
    cases.append(("directory", tmp / "folder.nii", "is a directory", {}))
    (tmp / "scan.mgz").write_bytes(b"x" * 400)
    cases.append(("wrong extension", tmp / "scan.mgz", "not a NIfTI file name", {}))
    (tmp / "text.nii").write_text("subject,site\n" * 50)
    cases.append(("wrong magic", tmp / "text.nii", "wrong magic", {}))
    (tmp / "short.nii").write_bytes(b"\x5c\x01" + b"\x00" * 50)
    cases.append(("short header", tmp / "short.nii", "too short to be NIfTI", {}))
    (tmp / "plain_not_gz.nii.gz").write_bytes(b"this is not gzip data at all" * 20)
    cases.append(("not gzip", tmp / "plain_not_gz.nii.gz", "corrupt or truncated gzip", {}))
    full = _write(tmp / "full.nii.gz", np.random.default_rng(1).normal(size=(20, 20, 20)))
    blob = full.read_bytes()
    (tmp / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    cases.append(("truncated gzip", tmp / "truncated.nii.gz", "truncated", {}))
    raw = _write(tmp / "raw.nii", good)
    (tmp / "truncated.nii").write_bytes(raw.read_bytes()[:360])
    cases.append(("truncated data", tmp / "truncated.nii", "truncated or corrupt voxel data", {}))
    _write(tmp / "flat.nii", np.ones((4, 4), dtype=np.float32))
    cases.append(("2-D", tmp / "flat.nii", "found 2-D", {}))
    _write(tmp / "five.nii", np.ones((2, 2, 2, 2, 2), dtype=np.float32))
    cases.append(("5-D", tmp / "five.nii", "found 5-D", {}))
    _write(tmp / "bold.nii", np.ones((3, 3, 3, 5), dtype=np.float32))
    cases.append(("4-D where 3-D expected", tmp / "bold.nii", "expected a 3-D volume, found 4-D", {"ndim": 3}))
    _write(tmp / "anat.nii", good)
    cases.append(("3-D where 4-D expected", tmp / "anat.nii", "expected a 4-D volume, found 3-D", {"ndim": 4}))
    zero = _write(tmp / "zero.nii", good)
    _patch_header(zero, dim=[3, 4, 0, 4, 1, 1, 1, 1])
    cases.append(("zero dimension", zero, "zero-length dimension", {}))
    absurd = _write(tmp / "absurd.nii", good)
    _patch_header(absurd, dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])
    cases.append(("absurd dimension", absurd, "absurd dimensions", {}))
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    nan[0, 0, 0] = np.inf
    _write(tmp / "nan.nii.gz", nan)
    cases.append(("non-finite", tmp / "nan.nii.gz", "2 non-finite voxel value(s)", {}))
    neg = _write(tmp / "negvox.nii", good)
    _patch_header(neg, pixdim=[1.0, 2.0, 0.0, 2.0, 1, 1, 1, 1], qform_code=0, sform_code=0)
    cases.append(("non-positive voxel size", neg, "non-positive or non-finite voxel size", {}))
    singular = _write(tmp / "singular.nii", good)
    _patch_header(singular, qform_code=0, sform_code=1, srow_z=[0.0, 0.0, 0.0, 0.0])
    cases.append(("singular affine", singular, "singular affine", {}))
    return cases


def _patch_header(path: Path, **fields: object) -> None:
    """Overwrite header fields in place without nibabel's own consistency fixes."""
    raw = path.read_bytes()
    hdr = nib.Nifti1Header(binaryblock=raw[:348], check=False)
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(hdr.binaryblock + raw[348:])


def test_every_bad_input_gets_a_clear_message(tmp_path: Path) -> None:
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 12
    for case_id, path, fragment, kwargs in cases:
        with pytest.raises(InvalidInputError) as info:
            load_volume(path, **kwargs)
        message = str(info.value)
        assert str(path) in message, f"{case_id}: message does not name the file: {message}"
        assert fragment in message, f"{case_id}: expected {fragment!r} in {message!r}"
        assert "\n" not in message, f"{case_id}: message spans lines"
        assert isinstance(info.value, NeuroattnError)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "locked.nii", np.ones((3, 3, 3), dtype=np.float32))
    real_open = open

    def denied(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # chmod does not stop root, so the permission failure is injected where the module opens files
    monkeypatch.setattr("neuroattn.io.nifti.open", denied, raising=False)
    with pytest.raises(InvalidInputError, match=r"locked.nii: cannot read file \(Permission denied\)"):
        load_volume(path)


def test_gzip_with_bad_crc_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "crc.nii.gz", np.random.default_rng(2).normal(size=(8, 8, 8)))
    blob = bytearray(path.read_bytes())
    blob[-8] ^= 0xFF  # corrupt the stored CRC32 of the gzip member
    path.write_bytes(bytes(blob))
    with gzip.open(path) as fh, pytest.raises(OSError):
        fh.read()
    with pytest.raises(InvalidInputError, match=r"crc\.nii\.gz: .*(corrupt|truncated)"):
        load_volume(path)
