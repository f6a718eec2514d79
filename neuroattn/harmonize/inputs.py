"""Harmonizer inputs checked once: volumes, site/modality/subject labels, brain masks and covariates, or a Manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroattn.errors import InvalidInputError
from neuroattn.io.manifest import Manifest
from neuroattn.io.nifti import Volume, load_volume
from neuroattn.progress import progress_bar

VolumeLike = np.ndarray | Volume
MaskLike = np.ndarray | Volume | None


@dataclass
class HarmonizationData:
    """Validated inputs, one entry per volume.

    ``arrays[i]`` is float32 ``(X, Y, Z)``; ``masks[i]`` is bool ``(X, Y, Z)`` with at least one voxel;
    ``modalities[i]`` is ``""`` when no modality was given; ``subjects`` is None when not given;
    ``covariates`` has one row per volume (None when not given); ``paths[i]`` names the source file, if any.
    """

    arrays: list[np.ndarray]
    sites: list[str] | None
    masks: list[np.ndarray]
    modalities: list[str]
    subjects: list[str] | None = None
    covariates: pd.DataFrame | None = None
    paths: list[Path | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrays)

    def indices(self, *, site: str | None = None, modality: str | None = None) -> list[int]:
        """Positions of the volumes with this site and/or modality."""
        return [
            i
            for i in range(len(self))
            if (site is None or (self.sites is not None and self.sites[i] == site))
            and (modality is None or self.modalities[i] == modality)
        ]

    def where(self, i: int) -> str:
        """How messages name volume ``i``: its file when known, else ``volumes[i]``."""
        path = self.paths[i] if i < len(self.paths) else None
        return str(path) if path is not None else f"volumes[{i}]"


@dataclass
class LoadedCohort:
    """A manifest's images read from disk: ``volumes[i]`` belongs to manifest row ``i``.

    ``masks[i]`` is None where the row names no mask; ``covariates`` holds every covariate column.
    """

    volumes: list[Volume]
    sites: list[str]
    masks: list[np.ndarray | None]
    modalities: list[str]
    subjects: list[str]
    covariates: pd.DataFrame


def volumes_from_manifest(manifest: Manifest, *, progress: bool = True) -> LoadedCohort:
    """Load every image of ``manifest`` (3-D, via :func:`~neuroattn.io.nifti.load_volume`) with its labels.

    A ``mask`` column names each image's brain mask (voxels > 0.5 are brain); a mask file shared by several
    rows is read once.
    """
    volumes: list[Volume] = []
    masks: list[np.ndarray | None] = []
    cache: dict[str, np.ndarray] = {}
    rows = list(manifest)
    for row in progress_bar(rows, desc="loading volumes", unit="vol", disable=not progress):
        volumes.append(load_volume(row.path, ndim=3))
        mask_path = row.extras.get("mask", "")
        if mask_path and mask_path not in cache:
            cache[mask_path] = load_volume(mask_path, ndim=3).data > 0.5
        masks.append(cache[mask_path] if mask_path else None)
    return LoadedCohort(
        volumes=volumes,
        sites=[r.site for r in rows],
        masks=masks,
        modalities=[r.modality for r in rows],
        subjects=[r.subject for r in rows],
        covariates=manifest.covariates().reset_index(drop=True),
    )


def _labels(values: Sequence[object] | None, name: str, n: int) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise InvalidInputError(f"'{name}' must be a sequence with one label per volume, not the string {values!r}")
    out = [str(v).strip() for v in values]
    if len(out) != n:
        raise InvalidInputError(f"got {n} volume(s) but {len(out)} {name}; give one entry per volume")
    return out


def _array(item: object, i: int) -> tuple[np.ndarray, Path | None]:
    if isinstance(item, Volume):
        arr, path = item.data, item.path
    elif isinstance(item, np.ndarray):
        arr, path = item, None
    else:
        raise InvalidInputError(f"volumes[{i}] is a {type(item).__name__}; expected a 3-D numpy array or a Volume")
    where = f"volumes[{i}]" if path is None else None
    if arr.ndim != 3:
        problem = f"has {arr.ndim} dimension(s) (shape {tuple(arr.shape)}); expected a 3-D volume (X, Y, Z)"
        raise InvalidInputError(f"{where} {problem}" if where else problem, path)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InvalidInputError(f"{where or 'volume'} has dtype {arr.dtype}; expected real numbers", path)
    arr = np.asarray(arr, dtype=np.float32)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        problem = f"contains {bad} NaN or infinite voxel(s)"
        raise InvalidInputError(f"{where} {problem}" if where else problem, path)
    return arr, path


def _mask(item: MaskLike, arr: np.ndarray, i: int, where: str) -> np.ndarray:
    if item is None:
        mask = arr != 0
        if not mask.any():
            raise InvalidInputError(f"{where} has no nonzero voxel; pass a brain mask")
        return mask
    data = item.data if isinstance(item, Volume) else np.asarray(item)
    if data.shape != arr.shape:
        raise InvalidInputError(f"masks[{i}] has shape {tuple(data.shape)} but {where} has shape {tuple(arr.shape)}")
    mask = data if data.dtype == bool else np.asarray(data, dtype=np.float64) > 0.5
    if not mask.any():
        raise InvalidInputError(f"masks[{i}] (for {where}) is empty: no voxel inside the brain mask")
    return mask


def _covariates(covariates: pd.DataFrame | Mapping[str, Sequence[object]] | None, n: int) -> pd.DataFrame | None:
    if covariates is None:
        return None
    frame = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(dict(covariates))
    if len(frame) != n:
        raise InvalidInputError(f"got {n} volume(s) but {len(frame)} covariate row(s); give one row per volume")
    return frame.reset_index(drop=True)


def prepare_inputs(
    volumes: Sequence[VolumeLike] | Manifest,
    sites: Sequence[str] | None = None,
    masks: Sequence[MaskLike] | np.ndarray | None = None,
    *,
    subjects: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    covariates: pd.DataFrame | Mapping[str, Sequence[object]] | None = None,
    progress: bool = True,
) -> HarmonizationData:
    """Check and normalise harmonizer inputs; every problem raises a one-line :class:`InvalidInputError`.

    ``volumes`` is a sequence of 3-D arrays or :class:`Volume` objects, or a :class:`Manifest` (then sites,
    masks, subjects, modalities and covariates come from it and must not be passed). ``masks`` is None (each
    volume's nonzero voxels), one 3-D mask for every volume, or one mask (or None) per volume; float masks
    are thresholded at 0.5. Labels are turned into text.
    """
    if isinstance(volumes, Manifest):
        given = [n for n, v in (("sites", sites), ("masks", masks), ("subjects", subjects),
                                ("modalities", modalities), ("covariates", covariates)) if v is not None]
        if given:
            raise InvalidInputError(f"a Manifest carries its own labels; do not also pass {', '.join(given)}")
        cohort = volumes_from_manifest(volumes, progress=progress)
        return prepare_inputs(cohort.volumes, cohort.sites, cohort.masks, subjects=cohort.subjects,
                              modalities=cohort.modalities, covariates=cohort.covariates, progress=progress)
    if isinstance(volumes, np.ndarray | Volume):
        raise InvalidInputError("'volumes' must be a sequence of 3-D volumes (a list), not a single array")
    items = list(volumes)
    if not items:
        raise InvalidInputError("no volumes given")
    n = len(items)
    site_list = _labels(sites, "sites", n)
    modality_list = _labels(modalities, "modalities", n) or [""] * n
    subject_list = _labels(subjects, "subjects", n)
    if isinstance(masks, np.ndarray | Volume):
        mask_items: list[MaskLike] = [masks] * n
    elif masks is None:
        mask_items = [None] * n
    else:
        mask_items = list(masks)
        if len(mask_items) != n:
            raise InvalidInputError(f"got {n} volume(s) but {len(mask_items)} masks; give one mask per volume")
    frame = _covariates(covariates, n)
    arrays, paths, mask_arrays = [], [], []
    for i, item in enumerate(items):
        arr, path = _array(item, i)
        where = str(path) if path is not None else f"volumes[{i}]"
        mask_arrays.append(_mask(mask_items[i], arr, i, where))
        arrays.append(arr)
        paths.append(path)
    return HarmonizationData(arrays=arrays, sites=site_list, masks=mask_arrays, modalities=modality_list,
                             subjects=subject_list, covariates=frame, paths=paths)


__all__ = ["HarmonizationData", "LoadedCohort", "prepare_inputs", "volumes_from_manifest"]
