"""Load, validate and save NIfTI volumes: canonical RAS inside, the file's own orientation and header outside."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_AXIS_LENGTH = 4096  # voxels; larger than any MRI matrix, catches garbage headers before allocation
MAX_TOTAL_VOXELS = 2**31  # 8 GiB of float32; beyond this a header is almost surely corrupt


@dataclass
class Volume:
    """A NIfTI image held in canonical RAS voxel order.

    ``data`` is float32 of shape ``(X, Y, Z)`` or ``(X, Y, Z, T)`` in RAS order; ``affine`` maps those RAS voxel
    indices to scanner millimetres. ``header`` is the original header and ``source_ornt`` the original axis
    orientation, so :func:`save_volume` writes the file back in the orientation it came in.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header = field(repr=False)
    path: Path | None = None
    source_ornt: np.ndarray = field(default_factory=lambda: np.array([[0, 1], [1, 1], [2, 1]], dtype=float))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm along the RAS voxel axes."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes of the original file, e.g. ``'LAS'``."""
        return "".join(nib.orientations.ornt2axcodes(self.source_ornt))

    def with_data(self, data: np.ndarray) -> Volume:
        """Same geometry and header, new voxel values (same RAS layout, spatial shape unchanged)."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape[:3] != self.data.shape[:3]:
            raise ValueError(f"new data has spatial shape {data.shape[:3]}, volume has {self.data.shape[:3]}")
        return replace(self, data=data)


def _read_bytes(path: Path) -> bytes | None:
    """Whole decompressed content of a ``.nii.gz`` (so gzip CRC and length are verified); None for ``.nii``."""
    if not path.name.endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInputError(f"corrupt or truncated gzip stream ({exc})", path) from None


def _check_raw_header(path: Path, content: bytes | None) -> None:
    """Check magic and voxel sizes on the raw header bytes, before nibabel quietly repairs them.

    Fails clearly for files that are not NIfTI-1/2 or whose pixdim holds zero/negative/non-finite voxel
    sizes (nibabel would silently set those to 1 mm).
    """
    if content is None:
        with open(path, "rb") as fh:
            head = fh.read(348 + 4)
    else:
        head = content[: 348 + 4]
    if len(head) < 348:
        raise InvalidInputError(f"file too short to be NIfTI ({len(head)} bytes of header, need 348)", path)
    magic_n1 = head[344:348]
    magic_n2 = head[4:12]
    if magic_n1 not in (b"n+1\x00", b"ni1\x00") and not magic_n2.startswith((b"n+2\x00", b"ni2\x00")):
        raise InvalidInputError("not a NIfTI file (wrong magic in header)", path)
    if magic_n1 in (b"n+1\x00", b"ni1\x00"):
        raw = nib.Nifti1Header(binaryblock=head[:348], check=False)
        ndim = int(raw["dim"][0])
        spatial = [float(v) for v in raw["pixdim"][1 : 1 + min(max(ndim, 1), 3)]]
        if not all(np.isfinite(v) and v > 0 for v in spatial):
            raise InvalidInputError(f"non-positive or non-finite voxel size {tuple(spatial)} mm in header", path)


def _validate_header(img: nib.Nifti1Image, path: Path, ndim: int | tuple[int, ...] | None) -> None:
    shape = img.shape
    allowed = (3, 4) if ndim is None else ((ndim,) if isinstance(ndim, int) else tuple(ndim))
    if len(shape) not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise InvalidInputError(f"expected a {want} volume, found {len(shape)}-D with shape {shape}", path)
    if any(int(s) <= 0 for s in shape):
        raise InvalidInputError(f"zero-length dimension in shape {shape}", path)
    if any(int(s) > MAX_AXIS_LENGTH for s in shape[:3]) or int(np.prod(shape)) > MAX_TOTAL_VOXELS:
        raise InvalidInputError(f"absurd dimensions {shape} (axis limit {MAX_AXIS_LENGTH} voxels)", path)
    zooms = img.header.get_zooms()[:3]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InvalidInputError(f"non-positive or non-finite voxel size {tuple(float(z) for z in zooms)} mm", path)
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise InvalidInputError("affine contains non-finite values", path)
    det = float(np.linalg.det(affine[:3, :3]))
    if abs(det) < 1e-8:
        raise InvalidInputError(f"singular affine (determinant {det:.3g}); the voxel-to-world map is broken", path)


def load_volume(path: str | Path, ndim: int | tuple[int, ...] | None = None) -> Volume:
    """Read and validate a NIfTI file; return it as float32 in canonical RAS order.

    ``ndim`` restricts the accepted dimensionality (3 for structural, 4 for BOLD; default 3 or 4).
    Every problem raises :class:`InvalidInputError` naming the file and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("file not found", path)
    if path.is_dir():
        raise InvalidInputError("is a directory, expected a NIfTI file", path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InvalidInputError(f"not a NIfTI file name (expected one of {', '.join(NIFTI_SUFFIXES)})", path)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InvalidInputError(f"cannot read file ({exc.strerror})", path) from None
    content = _read_bytes(path)
    _check_raw_header(path, content)
    try:
        if content is None:
            img = nib.load(str(path))
        elif content[344:348] in (b"n+1\x00", b"ni1\x00"):
            img = nib.Nifti1Image.from_bytes(content)
        else:
            img = nib.Nifti2Image.from_bytes(content)
    except Exception as exc:  # nibabel raises many types for damaged headers
        raise InvalidInputError(f"unreadable NIfTI header ({exc})", path) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidInputError(f"not a NIfTI image (read as {type(img).__name__})", path)
    _validate_header(img, path, ndim)
    try:
        raw = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InvalidInputError(f"truncated or corrupt voxel data ({exc})", path) from None
    if not np.all(np.isfinite(raw)):
        bad = int(np.size(raw) - np.count_nonzero(np.isfinite(raw)))
        raise InvalidInputError(f"{bad} non-finite voxel value(s) (NaN or Inf)", path)
    ornt = io_orientation(img.affine)
    to_ras = ornt_transform(ornt, np.array([[0, 1], [1, 1], [2, 1]], dtype=float))
    data = np.ascontiguousarray(apply_orientation(raw, to_ras), dtype=np.float32)
    affine = img.affine @ inv_ornt_aff(to_ras, raw.shape[:3])
    header = img.header.copy()
    return Volume(data=data, affine=affine, header=header, path=path, source_ornt=ornt)


def to_nifti_image(vol: Volume) -> nib.Nifti1Image:
    """Rebuild the NIfTI image in the volume's original orientation, header fields and codes kept."""
    from_ras = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], dtype=float), vol.source_ornt)
    data = np.ascontiguousarray(apply_orientation(vol.data, from_ras), dtype=np.float32)
    affine = vol.affine @ inv_ornt_aff(from_ras, vol.data.shape[:3])
    header = vol.header.copy()
    header.set_data_dtype(np.float32)
    # Output is float32 in real units already; keep scaling from turning it back into integers.
    header["scl_slope"] = np.nan
    header["scl_inter"] = np.nan
    qcode = int(header["qform_code"])
    scode = int(header["sform_code"])
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_qform(affine, code=qcode if qcode > 0 else 1)
    img.set_sform(affine, code=scode if scode > 0 else (0 if qcode > 0 else 1))
    if qcode == 0 and scode > 0:
        img.set_qform(affine, code=0)
    return img


def save_volume(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` to ``path`` (``.nii`` or ``.nii.gz``) atomically, in the orientation it was read in."""
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InvalidInputError(f"output must end in {' or '.join(NIFTI_SUFFIXES)}", path)
    img = to_nifti_image(vol)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def volume_from_array(data: np.ndarray, affine: np.ndarray | None = None, voxel_size: float = 1.0) -> Volume:
    """Wrap an array already in RAS order as a :class:`Volume` (identity-like affine unless given)."""
    data = np.asarray(data, dtype=np.float32)
    if affine is None:
        affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    header = img.header.copy()
    ornt = io_orientation(affine)
    if not np.array_equal(ornt, np.array([[0, 1], [1, 1], [2, 1]], dtype=float)):
        raise ValueError("volume_from_array expects a RAS-ordered array and affine")
    return Volume(data=data, affine=np.asarray(affine, dtype=float), header=header, path=None, source_ornt=ornt)
