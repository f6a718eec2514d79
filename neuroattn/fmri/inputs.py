"""fMRI model inputs: 4-D BOLD runs from any cohort source, labels joined by subject, arrays each model takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.nifti import NIFTI_SUFFIXES, Volume, load_volume
from neuroattn.progress import progress_bar

SUBJECT_COLUMNS = ("participant_id", "subject", "subject_id", "participant")
LABEL_TASKS = ("auto", "classification", "regression")
MISSING_VALUES = ("", "n/a", "na", "nan", "none")
MAX_AUTO_CLASSES = 20  # "auto" calls integer labels with at most this many values classes


@dataclass
class FmriRun:
    """One 4-D BOLD run of a cohort."""

    subject: str  # subject label without the BIDS 'sub-' prefix
    session: str  # "" when the cohort has none
    path: Path
    volume: Volume  # data (X, Y, Z, T) float32 RAS, with affine and header

    @property
    def frames(self) -> np.ndarray:
        """The run as the models take it: ``(T, X, Y, Z)`` float32."""
        return np.ascontiguousarray(np.moveaxis(self.volume.data, -1, 0))  # (X, Y, Z, T) -> (T, X, Y, Z)

    @property
    def n_frames(self) -> int:
        return int(self.volume.data.shape[-1])

    @property
    def tr(self) -> float | None:
        """Seconds per frame from the header (``pixdim[4]``), None when the header carries none."""
        zooms = self.volume.header.get_zooms()
        if len(zooms) < 4 or not zooms[3] > 0:
            return None
        scale = {"msec": 1e-3, "usec": 1e-6}.get(self.volume.header.get_xyzt_units()[1], 1.0)
        return float(zooms[3]) * scale


@dataclass
class Labels:
    """One target per run, joined by subject."""

    values: np.ndarray  # (n_runs,) float64: class codes 0..K-1 (classification) or values (regression)
    column: str
    task: str  # "classification" | "regression"
    classes: list[str] | None = None  # class names in code order (classification only)

    def to_dict(self) -> dict[str, object]:
        return {"column": self.column, "task": self.task, "classes": self.classes, "n": len(self.values)}


def subject_key(text: object) -> str:
    """Canonical subject label: surrounding spaces and a BIDS ``sub-`` prefix removed (``sub-001`` -> ``001``)."""
    return str(text).strip().removeprefix("sub-")


def read_fmri_runs(source: str | Path, *, progress: bool = False) -> list[FmriRun]:
    """Every 4-D BOLD run of a cohort source.

    ``source`` is a 4-D NIfTI file, a folder of them, a manifest CSV (rows of modality ``bold`` or none), or a
    BIDS folder (``func/*_bold.nii[.gz]``), read through :func:`neuroattn.io.cohort.read_cohort`.
    Returns the runs in manifest order; raises :class:`InvalidInputError` naming the first unusable file.
    """
    from neuroattn.io.cohort import read_cohort

    manifest = read_cohort(source, datatype="func", suffixes=("bold",))
    rows = [row for row in manifest if row.modality.lower() in ("", "bold")]
    if not rows:
        found = sorted({row.modality for row in manifest})
        raise InvalidInputError(f"no fMRI runs (modality 'bold' or none) among modalities {found}", source)
    runs = []
    for row in progress_bar(rows, desc="read BOLD", unit="run", disable=not progress):
        if not row.path.name.lower().endswith(NIFTI_SUFFIXES):
            raise InvalidInputError("not a NIfTI file; fMRI runs must be 4-D NIfTI (X, Y, Z, T)", row.path)
        volume = load_volume(row.path, ndim=4)
        runs.append(FmriRun(subject_key(row.subject), row.session, row.path, volume))
    return runs


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InvalidInputError("labels table not found", path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ("," if path.suffix.lower() == ".csv" else None)
    try:
        table = pd.read_csv(path, sep=sep, engine="python", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"unreadable labels table ({' '.join(str(exc).split())})", path) from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _resolve_task(raw: list[str], task: str) -> str:
    if task not in LABEL_TASKS:
        raise ConfigError(f"'task' must be one of {list(LABEL_TASKS)}. {task!r} was provided.")
    if task != "auto":
        return task
    try:
        numbers = np.array([float(v) for v in raw])
    except ValueError:
        return "classification"
    whole = bool(np.all(numbers == np.round(numbers)))
    return "classification" if whole and len(np.unique(numbers)) <= MAX_AUTO_CLASSES else "regression"


def read_labels(
    path: str | Path, subjects: Sequence[str], *, column: str = "label", task: str = "auto"
) -> Labels:
    """Targets of ``subjects`` (one per run, repeats allowed) from a CSV/TSV with a subject and a label column.

    The subject column is the first of ``participant_id``, ``subject``, ``subject_id``, ``participant``
    (``sub-`` prefixes ignored on both sides). ``task="auto"`` treats numeric labels with at most 20
    distinct whole values, and any text labels, as classes; other numbers as a regression target.
    """
    path = Path(path)
    table = _read_table(path)
    by_lower = {c.lower(): c for c in table.columns}
    subject_col = next((by_lower[c] for c in SUBJECT_COLUMNS if c in by_lower), None)
    if subject_col is None:
        raise InvalidInputError(f"no subject column ({' or '.join(SUBJECT_COLUMNS)}); columns are "
                                f"{list(table.columns)}", path)
    if column not in table.columns:
        raise InvalidInputError(f"no label column '{column}'; columns are {list(table.columns)}", path)
    mapping: dict[str, str] = {}
    for subject, value in zip(table[subject_col].map(subject_key), table[column].str.strip(), strict=True):
        if value.lower() in MISSING_VALUES:
            continue
        if mapping.get(subject, value) != value:
            raise InvalidInputError(f"subject {subject} has two different '{column}' values", path)
        mapping[subject] = value
    wanted = [subject_key(s) for s in subjects]
    missing = sorted({s for s in wanted if s not in mapping})
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InvalidInputError(f"no '{column}' label for subject(s) {shown} ({len(missing)} of "
                                f"{len(set(wanted))} subjects)", path)
    raw = [mapping[s] for s in wanted]
    task = _resolve_task(raw, task)
    if task == "regression":
        try:
            values = np.array([float(v) for v in raw], dtype=np.float64)
        except ValueError:
            raise InvalidInputError(f"column '{column}' holds text; a regression needs numbers", path) from None
        return Labels(values, column, task)
    try:
        keys = sorted(set(raw), key=float)
    except ValueError:
        keys = sorted(set(raw))
    code = {k: i for i, k in enumerate(keys)}
    return Labels(np.array([code[v] for v in raw], dtype=np.float64), column, task, classes=keys)


# -- what each model takes -----------------------------------------------------------------------------------


def fit_frames(frames: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-crop or zero-pad the spatial axes of ``(T, X, Y, Z)`` frames to ``shape`` ``(X', Y', Z')``.

    Returns float32 ``(T, X', Y', Z')``; voxels keep their size (no resampling), as TABLeT's cube padding does.
    """
    data = np.asarray(frames, dtype=np.float32)
    if data.ndim != 4:
        raise InvalidInputError(f"expected frames (T, X, Y, Z), got shape {data.shape}")
    out = np.zeros((data.shape[0], *(int(s) for s in shape)), dtype=np.float32)
    src, dst = [slice(None)], [slice(None)]
    for have, want in zip(data.shape[1:], out.shape[1:], strict=True):
        lo_src = max(0, (have - want) // 2)
        lo_dst = max(0, (want - have) // 2)
        n = min(have, want)
        src.append(slice(lo_src, lo_src + n))
        dst.append(slice(lo_dst, lo_dst + n))
    out[tuple(dst)] = data[tuple(src)]
    return out


def volume_inputs(runs: Sequence[FmriRun], shape: Sequence[int] | None = None) -> list[np.ndarray]:
    """``(T, X, Y, Z)`` float32 arrays of the runs (TABLeT, SLIM-Brain), fitted to ``shape`` when given."""
    return [run.frames if shape is None else fit_frames(run.frames, shape) for run in runs]


def roi_inputs(
    runs: Sequence[FmriRun], rois: str = "dosenbach_2010", *, radius: float = 5.0, progress: bool = False
) -> tuple[list[np.ndarray], list[str]]:
    """ROI series ``(T, R)`` of the runs (BrainMAE) and the ROI names.

    ``rois`` is a bundled coordinate atlas (``dosenbach_2010``, ``seitzman_2018``: spheres of ``radius`` mm,
    images in MNI space) or the path of a 3-D integer label image (e.g. ``rois_dseg.nii.gz`` of a synthetic
    cohort). Series are z-scored per ROI (:func:`neuroattn.fmri.roi_series.standardize_rois`).
    """
    from neuroattn.data.fmri_atlas import ATLASES
    from neuroattn.fmri.roi_series import extract_atlas_series, extract_label_series

    label_image = rois not in ATLASES
    if label_image and not Path(rois).is_file():
        raise ConfigError(f"'rois' must be one of {sorted(ATLASES)} or a 3-D label NIfTI file. {rois!r} was provided.")
    series, names = [], None
    for run in progress_bar(runs, desc="ROI series", unit="run", disable=not progress):
        if label_image:
            extracted = extract_label_series(run.volume, rois)
        else:
            extracted = extract_atlas_series(run.volume, rois, radius=radius)
        if names is not None and list(extracted.roi_names) != names:
            raise InvalidInputError("its ROIs differ from the first run's", run.path)
        names = list(extracted.roi_names)
        series.append(extracted.data)
    return series, names or []


__all__ = [
    "LABEL_TASKS",
    "FmriRun",
    "Labels",
    "fit_frames",
    "read_fmri_runs",
    "read_labels",
    "roi_inputs",
    "subject_key",
    "volume_inputs",
]
