"""What the app's Encode page does, outside Streamlit: find and open runs, text-query maps, accuracy, voxel captions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.encode.runs import RUN_INFO, EncodeRun
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.web.settings import AppSettings
from neuroattn.web.uploads import find_records, resolve_inside

N_PICKED = 25  # voxels offered by the voxel picker (the most reliable of the chosen ROIs)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


@dataclass(frozen=True)
class EncodeRunEntry:
    """An encoding run folder as the page lists it."""

    path: Path  # the run folder holding encode_run.json
    model: str
    subject: str
    n_voxels: int
    data_root: Path
    clip_trained: bool
    modified: float  # seconds since the epoch, of encode_run.json

    def label(self, roots: tuple[Path, ...]) -> str:
        rel = next((self.path.relative_to(r) for r in roots if self.path.is_relative_to(r)), self.path)
        clip = "" if self.clip_trained else " · UNTRAINED CLIP"
        return f"{rel} · {self.model} · {self.subject} · {self.n_voxels} voxels{clip}"


def read_encode_entry(info_path: Path) -> EncodeRunEntry | None:
    """The listing of ``run/encode_run.json``, or None when it is not a readable encoding run."""
    try:
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        features = info.get("features") or {}
        return EncodeRunEntry(info_path.parent, str(info["model"]), str(info["subject"]), int(info["n_voxels"]),
                              Path(info["data"]), bool(features.get("clip_trained", False)),
                              info_path.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def find_encode_runs(settings: AppSettings, max_depth: int = 4) -> list[EncodeRunEntry]:
    """Encoding runs under the workspace's runs/ and the data roots (``max_depth`` folders down), newest first."""
    return find_records((settings.runs, *settings.data_roots), RUN_INFO, read_encode_entry, settings.readable_roots,
                        max_depth)


def open_encode_run(settings: AppSettings, run_dir: str | Path) -> EncodeRun:
    """Open a run folder inside the readable roots with its data folder, which must lie inside them too.

    Every problem (missing folder, not a run, unreadable ``encode_run.json``) is an :class:`InvalidInputError`
    naming the folder.
    """
    from neuroattn.encode.runs import open_run, read_run_info

    run_dir = resolve_inside(run_dir, settings.readable_roots)
    if not run_dir.is_dir():
        raise InvalidInputError("no such run folder", run_dir)
    try:
        info = read_run_info(run_dir)
        data_root = info["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"unreadable {RUN_INFO} ({type(exc).__name__}: {exc})", run_dir) from None
    data_root = resolve_inside(data_root, settings.readable_roots)
    return open_run(run_dir, data_root)


def roi_choices(run: EncodeRun) -> list[str]:
    """Names of the ROIs holding at least one of the run's voxels, in ROI code order."""
    present = set(np.unique(run.subject.roi[run.encoder.voxels]).tolist())
    return [name for code, name in sorted(run.subject.roi_names.items()) if code in present]


def roi_columns(run: EncodeRun, rois: list[str] | None) -> np.ndarray:
    """Encoder columns (int64, sorted) of the run's voxels in the named ROIs (every column when empty)."""
    if not rois:
        return np.arange(len(run.encoder.voxels))
    unknown = sorted(set(rois) - set(run.subject.roi_names.values()))
    if unknown:
        raise InvalidInputError(f"unknown ROI(s) {unknown}; known: {roi_choices(run)}", run.path)
    codes = [c for c, n in run.subject.roi_names.items() if n in rois]
    return np.flatnonzero(np.isin(run.subject.roi[run.encoder.voxels], codes))


def roi_name(run: EncodeRun, column: int) -> str:
    """The ROI name of one encoder column's voxel ('' outside every ROI)."""
    return run.subject.roi_names.get(int(run.subject.roi[run.encoder.voxels[column]]), "")


def restrict(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per-column ``values`` (V_run,) with every column outside ``columns`` set to 0 (float32)."""
    out = np.zeros(len(values), dtype=np.float32)
    out[columns] = np.asarray(values, dtype=np.float32)[columns]
    return out


def grid_volume(run: EncodeRun, values: np.ndarray) -> np.ndarray:
    """Per-column ``values`` (V_run,) on the subject's grid: float32 (X, Y, Z), 0 outside the run's voxels."""
    from neuroattn.encode.maps import voxel_volume
    from neuroattn.encode.run_outputs import full_map

    return voxel_volume(run.subject, full_map(run, values)).data


def peak_index(run: EncodeRun, values: np.ndarray) -> tuple[int, int, int]:
    """Grid index (i, j, k) of the run's voxel with the largest ``|values|`` (V_run,)."""
    column = int(np.argmax(np.abs(values)))
    i, j, k = run.subject.voxel_ijk[run.encoder.voxels[column]]
    return int(i), int(j), int(k)


def world_mm(run: EncodeRun, column: int) -> tuple[float, float, float]:
    """Scanner/MNI coordinates (mm) of one encoder column's voxel centre."""
    ijk = np.append(run.subject.voxel_ijk[run.encoder.voxels[column]], 1.0)  # (4,) homogeneous
    x, y, z = (run.subject.affine @ ijk)[:3]
    return float(x), float(y), float(z)


def text_map(run: EncodeRun, text: str) -> np.ndarray:
    """Predicted response (V_run,) of every voxel of the run to one text query (``text_selectivity``)."""
    from neuroattn.encode.run_outputs import text_selectivity

    query = text.strip()
    if not query:
        raise InvalidInputError("the text query is empty")
    return text_selectivity(run, [query])[0]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe lowercase form of ``text`` ('query' when nothing is left)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "query"


def save_selectivity(run: EncodeRun, text: str, values: np.ndarray, rois: list[str], out_dir: Path) -> Path:
    """Write a text query's map (V_run,) as NIfTI on the subject's grid, and a JSON sidecar, atomically.

    Voxels outside ``rois`` (all kept when empty) hold 0. The sidecar records the query, ROIs, run and which
    parts are UNTRAINED. Returns the NIfTI path ``out_dir/selectivity_<query>[_<rois>].nii.gz``.
    """
    from neuroattn.encode.maps import save_voxel_map
    from neuroattn.encode.run_outputs import full_map

    columns = roi_columns(run, rois)
    name = f"selectivity_{slug(text)}" + (f"_{slug('-'.join(rois))}" if rois else "")
    path = save_voxel_map(run.subject, full_map(run, restrict(values, columns)), out_dir / f"{name}.nii.gz")
    untrained = run.untrained_parts()
    sidecar = {"text": text, "rois": rois or "all", "n_voxels": len(columns), "run": str(run.path),
               "model": run.encoder.model, "subject": run.subject.name,
               "label": "UNTRAINED" if untrained else "trained", "untrained": untrained}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(sidecar, indent=2) + "\n")
    return path


def held_out_accuracy(run: EncodeRun) -> np.ndarray:
    """Voxelwise Pearson r (V_run,) of the run's predictions of the subject's held-out test images."""
    from neuroattn.encode.metrics import voxelwise_pearson

    if len(run.subject.test_ids) < 2:
        raise InvalidInputError(f"{run.subject.name} has {len(run.subject.test_ids)} test images; a test accuracy "
                                "needs at least 2", run.path)
    pred = run.encoder.predict(run.data.features.values[run.subject.test_ids])  # (n_test, V_run)
    return voxelwise_pearson(pred, run.responses_test)


def accuracy_rows(run: EncodeRun, r: np.ndarray, columns: np.ndarray) -> list[dict[str, Any]]:
    """Test accuracy per ROI among ``columns``, then all of them: voxels, mean and median r, % of voxels r > 0.

    ``noise_ceiling`` (mean %) is added when the subject has one.
    """
    names = np.array([roi_name(run, c) for c in columns], dtype=object)
    groups = [(name, columns[names == name]) for name in dict.fromkeys(names.tolist())]
    groups.append(("all shown", columns))
    nc = run.subject.noise_ceiling
    rows = []
    for name, cols in groups:
        if len(cols) == 0:
            continue
        row: dict[str, Any] = {"roi": name or "(none)", "n_voxels": len(cols), "mean_r": float(r[cols].mean()),
                               "median_r": float(np.median(r[cols])), "pct_r_positive": float((r[cols] > 0).mean()
                                                                                              * 100)}
        if nc is not None:
            row["noise_ceiling"] = float(nc[run.encoder.voxels[cols]].mean())
        rows.append(row)
    return rows


def reliable_columns(run: EncodeRun, columns: np.ndarray, r: np.ndarray, n: int = N_PICKED) -> np.ndarray:
    """Up to ``n`` of ``columns``, most reliable first: by noise ceiling, else by test r (ties: column order)."""
    nc = run.subject.noise_ceiling
    score = r[columns] if nc is None else nc[run.encoder.voxels[columns]]
    return columns[np.argsort(-score, kind="stable")[:n]]


def voxel_label(run: EncodeRun, column: int, r: np.ndarray) -> str:
    """How the picker names one voxel: subject voxel index, ROI, noise ceiling and test r."""
    nc = run.subject.noise_ceiling
    ceiling = "" if nc is None else f" · noise ceiling {nc[run.encoder.voxels[column]]:.0f}%"
    return f"voxel {int(run.encoder.voxels[column])} · {roi_name(run, column) or 'no ROI'}{ceiling} · r {r[column]:.2f}"


@dataclass(frozen=True)
class VoxelDescription:
    """LaVCa's description of one voxel: sentence, keywords (best first), top images and their responses."""

    column: int  # encoder column
    sentence: str
    keywords: list[str]
    top_ids: np.ndarray  # (n_top,) stimulus ids, best first
    top_responses: np.ndarray  # (n_top,) predicted responses
    top_caption: str  # caption of the single best image (the baseline description)


def describe_voxel(run: EncodeRun, column: int) -> VoxelDescription:
    """LaVCa caption of one encoder column (``describe_voxels(run, voxels=[column])``), test images kept out."""
    from neuroattn.encode.run_outputs import describe_voxels

    captions = describe_voxels(run, voxels=np.array([column], dtype=np.int64))
    return VoxelDescription(int(column), captions.sentences[0], list(captions.keywords[0]),
                            np.asarray(captions.top_ids[0]), np.asarray(captions.top_responses[0]),
                            captions.baseline[0])


def escape_markdown(text: str) -> str:
    """``text`` with Markdown's special characters escaped, so captions show verbatim."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
