"""ROI time series from 4-D BOLD (nilearn sphere and label maskers), per-ROI standardization, segments and FC."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.nifti import Volume, load_volume, to_nifti_image, volume_from_array

BoldInput = str | Path | Volume | nib.Nifti1Image | np.ndarray


@dataclass
class RoiSeries:
    """ROI-averaged BOLD of one run."""

    data: np.ndarray  # (T, R) float32
    roi_names: tuple[str, ...]  # (R,)
    tr: float | None = None  # seconds, from the image header when known

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])


def _as_image(img: BoldInput, affine: np.ndarray | None) -> tuple[nib.Nifti1Image, float | None, Path | None]:
    """A 4-D NIfTI image (X, Y, Z, T), its TR in seconds (None when unknown) and its path."""
    if isinstance(img, str | Path):
        vol = load_volume(img, ndim=4)
        return to_nifti_image(vol), _header_tr(vol.header), Path(img)
    if isinstance(img, Volume):
        if img.data.ndim != 4:
            raise InvalidInputError(f"expected 4-D BOLD (X, Y, Z, T), got shape {img.shape}", img.path)
        return to_nifti_image(img), _header_tr(img.header), img.path
    if isinstance(img, nib.Nifti1Image):
        if len(img.shape) != 4:
            raise InvalidInputError(f"expected 4-D BOLD (X, Y, Z, T), got shape {img.shape}")
        return img, _header_tr(img.header), None
    data = np.asarray(img, dtype=np.float32)
    if data.ndim != 4:
        raise InvalidInputError(f"expected a (T, X, Y, Z) array, got shape {data.shape}")
    xyzt = np.moveaxis(data, 0, -1)  # (T, X, Y, Z) -> (X, Y, Z, T)
    return to_nifti_image(volume_from_array(xyzt, affine)), None, None


def _header_tr(header: nib.Nifti1Header) -> float | None:
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    unit = header.get_xyzt_units()[1]
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    return float(zooms[3]) * scale


def _run_masker(masker, image: nib.Nifti1Image, path: Path | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return np.asarray(masker.fit_transform(image), dtype=np.float32)  # (T, R)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"ROI extraction failed ({exc})", path) from None


def extract_sphere_series(
    img: BoldInput,
    coords: np.ndarray | Sequence[Sequence[float]],
    *,
    radius: float = 5.0,
    roi_names: Sequence[str] | None = None,
    affine: np.ndarray | None = None,
    mask_img: nib.Nifti1Image | None = None,
    standardize: bool = True,
    allow_overlap: bool = True,
) -> RoiSeries:
    """Mean BOLD in spheres around world coordinates (nilearn ``NiftiSpheresMasker``).

    ``allow_overlap``: spheres may share voxels (neighbouring atlas ROIs do on coarse grids, e.g. 10 mm).

    Parameters
    ----------
    img : 4-D NIfTI path, :class:`Volume`, nibabel image, or a ``(T, X, Y, Z)`` RAS array (with ``affine``).
    coords : ``(R, 3)`` sphere centres in the image's world millimetres.
    radius : sphere radius in mm.
    standardize : z-score each ROI over time (:func:`standardize_rois`).

    Returns
    -------
    RoiSeries with ``data`` of shape ``(T, R)``.
    """
    from nilearn.maskers import NiftiSpheresMasker

    if not radius > 0:
        raise ConfigError(f"'radius' must be positive (mm). {radius} was provided.")
    seeds = np.asarray(coords, dtype=float).reshape(-1, 3)  # (R, 3)
    image, tr, path = _as_image(img, affine)
    masker = NiftiSpheresMasker(seeds=[tuple(s) for s in seeds], radius=radius, mask_img=mask_img, standardize=False,
                                 allow_overlap=allow_overlap)
    data = _run_masker(masker, image, path)
    names = tuple(roi_names) if roi_names is not None else tuple(f"roi_{i:03d}" for i in range(len(seeds)))
    if len(names) != data.shape[1]:
        raise ConfigError(f"{len(names)} ROI names for {data.shape[1]} spheres")
    return RoiSeries(standardize_rois(data) if standardize else data, names, tr)


def extract_atlas_series(
    img: BoldInput,
    atlas: str = "seitzman_2018",
    *,
    radius: float = 5.0,
    affine: np.ndarray | None = None,
    standardize: bool = True,
) -> RoiSeries:
    """Sphere series at the ROIs of a bundled coordinate atlas (MNI mm, see ``load_coordinate_atlas``).

    The image must be in MNI space; spheres falling outside it raise :class:`InvalidInputError`.
    """
    from neuroattn.data.fmri_atlas import load_coordinate_atlas

    coordinate_atlas = load_coordinate_atlas(atlas)
    return extract_sphere_series(
        img, coordinate_atlas.coords, radius=radius, roi_names=coordinate_atlas.roi_names, affine=affine,
        standardize=standardize,
    )  # fmt: skip


def extract_label_series(
    img: BoldInput,
    labels_img: str | Path | nib.Nifti1Image,
    *,
    affine: np.ndarray | None = None,
    standardize: bool = True,
) -> RoiSeries:
    """Mean BOLD in each non-zero label of an integer atlas image (nilearn ``NiftiLabelsMasker``).

    ``labels_img`` is a local 3-D NIfTI path or image (resampled to the BOLD grid with nearest neighbours).
    ROIs are ordered by label value and named ``label_<value>``.
    """
    from nilearn.maskers import NiftiLabelsMasker

    if isinstance(labels_img, str | Path):
        labels_path = Path(labels_img)
        labels_img = to_nifti_image(load_volume(labels_path, ndim=3))
    values = np.unique(np.rint(np.asarray(labels_img.dataobj)).astype(int))
    values = values[values != 0]
    if values.size == 0:
        raise InvalidInputError("the label image holds no non-zero label")
    image, tr, path = _as_image(img, affine)
    masker = NiftiLabelsMasker(labels_img=labels_img, standardize=False, resampling_target="data")
    data = _run_masker(masker, image, path)
    region_ids = getattr(masker, "region_ids_", None)
    if isinstance(region_ids, dict):
        kept = [int(v) for k, v in region_ids.items() if k != "background"]
    else:
        kept = [int(v) for v in values]
    if len(kept) != data.shape[1]:
        kept = [int(v) for v in values[: data.shape[1]]]
    return RoiSeries(standardize_rois(data) if standardize else data, tuple(f"label_{v}" for v in kept), tr)


def standardize_rois(series: np.ndarray) -> np.ndarray:
    """Z-score each ROI over time: ``(T, R)`` → ``(T, R)`` float32; a constant ROI becomes all zeros."""
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidInputError(f"expected ROI series (T >= 2, R), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("ROI series hold non-finite values")
    centred = x - x.mean(axis=0, keepdims=True)
    std = centred.std(axis=0, keepdims=True)
    return np.where(std > 1e-12, centred / np.where(std > 1e-12, std, 1.0), 0.0).astype(np.float32)


def segment_frames(segment_seconds: float, tr: float) -> int:
    """Frames per segment: ``round(segment_seconds / tr)``, at least 1 (15 s at TR 0.72 s → 21 frames)."""
    if not segment_seconds > 0 or not tr > 0:
        raise ConfigError(f"segment length and TR must be positive seconds; got {segment_seconds} s, TR {tr} s")
    return max(1, round(segment_seconds / tr))


def cut_segments(series: np.ndarray, frames: int) -> np.ndarray:
    """Cut ``(T, R)`` into ``S = T // frames`` whole segments ``(S, R, frames)``; the incomplete tail is dropped."""
    x = np.asarray(series)
    n_segments = x.shape[0] // frames
    if n_segments < 1:
        raise InvalidInputError(f"a run of {x.shape[0]} frames is shorter than one {frames}-frame segment")
    cut = x[: n_segments * frames].reshape(n_segments, frames, x.shape[1])  # (S, L, R)
    return np.ascontiguousarray(cut.transpose(0, 2, 1))  # (S, R, L)


def functional_connectivity(series: np.ndarray) -> np.ndarray:
    """Pearson correlation between ROIs of ``(T, R)`` series, ``(R, R)`` float64 (constant ROIs → 0)."""
    z = standardize_rois(series).astype(np.float64)  # (T, R)
    return z.T @ z / z.shape[0]


def fc_features(series: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """Fisher-z (``arctanh``) of the upper triangle (k = 1) of the FC matrix: ``(R (R - 1) / 2,)`` float64."""
    fc = functional_connectivity(series)
    rows, cols = np.triu_indices(fc.shape[0], k=1)
    return np.arctanh(np.clip(fc[rows, cols], -1 + eps, 1 - eps))


__all__ = [
    "RoiSeries",
    "cut_segments",
    "extract_atlas_series",
    "extract_label_series",
    "extract_sphere_series",
    "fc_features",
    "functional_connectivity",
    "segment_frames",
    "standardize_rois",
]
