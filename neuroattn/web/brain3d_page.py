"""What the app's Brain3D page does, outside Streamlit: list outputs, pick inputs, generate an object, summarise it."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_path
from neuroattn.web.decode_page import BETAS_SUFFIXES, DecodeRunEntry, SimulatedTrial
from neuroattn.web.settings import AppSettings
from neuroattn.web.uploads import find_records, resolve_inside, sanitize_filename, save_upload

INFO_NAME = "brain3d.json"  # written by neuroattn.brain3d.pipeline.generate into every output folder
PRESETS = ("tiny", "small")  # pipelines/brain3d/<preset>.yaml
PIPELINES_ENV = "NEUROATTN_PIPELINES"  # folder holding brain3d/<preset>.yaml (default: the checkout's pipelines/)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DOWNLOADS = (("mesh.glb", "model/gltf-binary"), ("mesh.ply", "application/octet-stream"),
             ("mesh.obj", "text/plain"), ("turntable.gif", "image/gif"))


@dataclass(frozen=True)
class Brain3DEntry:
    """A Brain3D output folder as the page lists it."""

    path: Path  # the folder holding brain3d.json
    source: str  # "fMRI" or "image"
    subject: str | None
    untrained: tuple[str, ...]
    n_faces: int
    modified: float  # seconds since the epoch, of brain3d.json

    def label(self, root: Path) -> str:
        rel = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        who = f" of {self.subject}" if self.subject and self.source == "fMRI" else ""
        tag = f" · UNTRAINED {', '.join(self.untrained)}" if self.untrained else ""
        return f"{rel} · from {self.source}{who} · {self.n_faces} faces{tag}"


def read_brain3d_entry(info_path: Path) -> Brain3DEntry | None:
    """The listing of ``folder/brain3d.json``, or None when it is not a readable Brain3D output."""
    try:
        record: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        inputs = record.get("inputs") or {}
        source = "fMRI" if inputs.get("fmri") else "image"
        return Brain3DEntry(info_path.parent, source, inputs.get("subject"),
                            tuple(str(p) for p in record.get("untrained", [])), int(record["mesh"]["faces"]),
                            info_path.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def find_brain3d_outputs(settings: AppSettings, max_depth: int = 5) -> list[Brain3DEntry]:
    """Brain3D output folders (holding ``brain3d.json``) in the workspace, ``max_depth`` folders down, newest first."""
    return find_records((settings.workspace,), INFO_NAME, read_brain3d_entry, settings.readable_roots, max_depth)


@dataclass(frozen=True)
class Brain3DOutput:
    """One opened Brain3D output: its record and the files the page shows and offers."""

    path: Path
    record: dict[str, Any]
    mesh: Path  # the .glb (what the interactive viewer loads)
    turntable: Path
    reference: Path
    downloads: tuple[tuple[Path, str], ...]  # (file, MIME type) of every existing download

    @property
    def untrained(self) -> list[str]:
        return [str(p) for p in self.record.get("untrained", [])]


def open_output(settings: AppSettings, folder: str | Path) -> Brain3DOutput:
    """Open an output folder inside the readable roots; a missing or broken file is an :class:`InvalidInputError`."""
    folder = resolve_inside(folder, settings.readable_roots)
    info = folder / INFO_NAME
    if not info.is_file():
        raise InvalidInputError(f"not a Brain3D output folder (no {INFO_NAME})", folder)
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
        files = record["files"]
        names = {"turntable": str(files["turntable"]), "reference": str(files["reference"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"unreadable {INFO_NAME} ({type(exc).__name__}: {exc})", folder) from None
    paths = {key: folder / sanitize_filename(name) for key, name in names.items()}
    paths["mesh"] = folder / "mesh.glb"
    for path in paths.values():
        if not path.is_file():
            raise InvalidInputError("missing from the Brain3D output folder", path)
    downloads = tuple((folder / name, mime) for name, mime in DOWNLOADS if (folder / name).is_file())
    return Brain3DOutput(folder, record, paths["mesh"], paths["turntable"], paths["reference"], downloads)


def pipelines_folder() -> Path:
    """``$NEUROATTN_PIPELINES`` or the ``pipelines/`` folder beside the package in a source checkout."""
    import neuroattn

    default = Path(neuroattn.__file__).resolve().parents[1] / "pipelines"
    return Path(os.environ.get(PIPELINES_ENV, default))


def preset_settings(preset: str, pipelines: Path | None = None) -> Any:
    """The :class:`Brain3DSettings` of ``pipelines/brain3d/<preset>.yaml`` (``preset`` one of :data:`PRESETS`)."""
    from neuroattn.brain3d.pipeline import Brain3DSettings
    from neuroattn.pipelines import load_pipeline_config

    if preset not in PRESETS:
        raise ConfigError(f"'preset' must be one of {list(PRESETS)}. {preset!r} was provided.")
    path = (pipelines or pipelines_folder()) / "brain3d" / f"{preset}.yaml"
    if not path.is_file():
        raise InvalidInputError("settings preset not found", path)
    return load_pipeline_config(path, Brain3DSettings)


def data_root_of(settings: AppSettings, run: DecodeRunEntry) -> Path:
    """The run's data folder, which must lie inside the readable roots."""
    return resolve_inside(run.data_root, settings.readable_roots)


def subject_test_trials(settings: AppSettings, run: DecodeRunEntry, subject: str) -> list[SimulatedTrial]:
    """The subject's test trials in its data folder, in trial order (each with its image and repeat count)."""
    from neuroattn.data.nsd import load_subject

    subject_data = load_subject(data_root_of(settings, run), subject, zscore=False)
    rows = np.flatnonzero(subject_data.is_test)
    ids = subject_data.image_ids[rows]
    counts = dict(zip(*np.unique(ids, return_counts=True), strict=True))
    return [SimulatedTrial(int(r), int(i), int(counts[i])) for r, i in zip(rows, ids, strict=True)]


def write_trial_betas(settings: AppSettings, run: DecodeRunEntry, subject: str, trial: int, folder: Path) -> Path:
    """One test trial's raw betas (V,) as ``folder/<subject>_trial<trial>.npy`` (atomic), for ``generate(fmri=)``.

    Raw, not z-scored: ``generate`` z-scores the file like the subject's training trials.
    """
    from neuroattn.data.nsd import load_subject

    subject_data = load_subject(data_root_of(settings, run), subject, zscore=False)
    if not 0 <= trial < len(subject_data.betas):
        raise InvalidInputError(f"trial {trial} is out of range (0..{len(subject_data.betas) - 1})", run.path)
    path = folder / f"{sanitize_filename(subject)}_trial{trial}.npy"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(subject_data.betas[trial], dtype=np.float32))
    return path


def save_fmri_upload(content: bytes, name: str, folder: Path, *, max_mb: int) -> Path:
    """Write uploaded betas (``.npy`` or NIfTI) into ``folder`` through the app's upload rules."""
    return save_upload(content, name, folder, max_mb=max_mb, suffixes=BETAS_SUFFIXES,
                       wrong_type="expected betas of one trial as .npy (or a NIfTI .nii/.nii.gz)")


def save_image_upload(content: bytes, name: str, folder: Path, *, max_mb: int) -> Path:
    """Write an uploaded image (PNG or JPEG) into ``folder`` through the app's upload rules, and check it opens."""
    from neuroattn.brain3d.pipeline import read_image

    path = save_upload(content, name, folder, max_mb=max_mb, suffixes=IMAGE_SUFFIXES,
                       wrong_type="expected an image (.png, .jpg or .jpeg)")
    try:
        read_image(path)
    except InvalidInputError as exc:
        path.unlink(missing_ok=True)
        raise InvalidInputError(exc.problem, path.name) from None
    return path


def check_fmri_upload(settings: AppSettings, run: DecodeRunEntry, subject: str, path: Path) -> int:
    """Check uploaded betas fit the run's subject and hold one trial; returns the voxel count.

    Errors name the upload by its own file name, not the server path it was saved under.
    """
    from neuroattn.decode.fmri_input import read_betas

    try:
        betas = read_betas(path, data_root_of(settings, run), subject)
        if betas.shape[0] != 1:
            raise InvalidInputError(f"{betas.shape[0]} trials in the file; Brain3D makes one object from one "
                                    "trial", path)
    except InvalidInputError as exc:
        if exc.path is not None and Path(exc.path).parent == path.parent:
            raise InvalidInputError(exc.problem, Path(exc.path).name) from None
        raise
    return int(betas.shape[1])


def new_output_folder(settings: AppSettings, stem: str) -> Path:
    """A fresh folder name ``outputs/brain3d/<stem>-<YYYYmmdd-HHMMSS>[-n]`` (not created)."""
    base = settings.outputs / "brain3d" / f"{_slug(stem)}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "object"


def generate_object(settings: AppSettings, preset: str | Any, out: Path, *, run: DecodeRunEntry | None = None,
                    subject: str | None = None, fmri: Path | None = None, image: Path | None = None,
                    progress: bool = False) -> Any:
    """``neuroattn.brain3d.pipeline.generate`` from the page's choices; returns its ``Brain3DResult``.

    ``preset`` is a preset name or ready :class:`Brain3DSettings`. ``fmri`` needs ``run`` (its decoder decodes the
    conditioning); an ``image`` uses the run's data folder, when given, for its CLIP embedding and size.
    """
    from neuroattn.brain3d.pipeline import generate

    brain3d = preset_settings(preset) if isinstance(preset, str) else preset
    if fmri is not None and run is None:
        raise InvalidInputError("betas need a decoding run to decode them; choose one", fmri)
    checkpoint = None if run is None else resolve_inside(run.path, settings.readable_roots)
    data = None if run is None else data_root_of(settings, run)
    out = resolve_inside(out, (settings.outputs,))  # the page writes only under the workspace's outputs/
    return generate(brain3d, out, fmri=fmri, image=image, checkpoint=checkpoint, data=data, subject=subject,
                    progress=progress)


def untrained_warning(record: dict[str, Any]) -> str | None:
    """The page's one-line UNTRAINED warning for an output's record, or None when every part is trained."""
    parts = [str(p) for p in record.get("untrained", [])]
    if not parts:
        return None
    return (f"UNTRAINED: {', '.join(parts)} use random weights; this object shows that the pipeline runs, not what "
            "the brain saw.")


def conditioning_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """What the object was conditioned on, one (item, value) row each: input, subject, voxels per head, guidance."""
    inputs, cond, guidance = record.get("inputs") or {}, record.get("conditioning") or {}, record.get("guidance") or {}
    rows: list[tuple[str, Any]] = []
    if inputs.get("fmri"):
        rows += [("input", f"fMRI betas {Path(str(inputs['fmri'])).name}"), ("subject", inputs.get("subject")),
                 ("decoding run", inputs.get("checkpoint"))]
        groups = cond.get("groups") or {}
        low, sem = cond.get("lowlevel_groups") or [], cond.get("semantic_groups") or []
        rows += [("low-level head (reference image)",
                  f"{', '.join(low)}: {cond.get('lowlevel_voxels')} voxels"),
                 ("semantic head (CLIP tokens)", f"{', '.join(sem)}: {cond.get('semantic_voxels')} voxels"),
                 ("voxels read by neither head", cond.get("unused_voxels"))]
        rows += [(f"voxels in {name}", count) for name, count in groups.items()]
        if cond.get("ablate"):
            rows.append(("ablated group", f"{cond['ablate']} ({cond.get('mode')})"))
    else:
        rows.append(("input", f"image {Path(str(inputs.get('image'))).name}"))
    rows += [("CLIP", _trained(cond.get("clip_trained"), cond.get("clip_source"))),
             ("reference foreground", cond.get("reference_mask")),
             ("guidance", f"{guidance.get('kind')} · {_trained(guidance.get('trained'), guidance.get('source'))}")]
    if guidance.get("note"):
        rows.append(("guidance note", guidance["note"]))
    return [{"item": item, "value": "" if value is None else str(value)} for item, value in rows]


def _trained(flag: Any, source: Any) -> str:
    state = "n/a" if flag is None else ("trained" if flag else "UNTRAINED")
    return state if not source else f"{state} ({source})"
