"""Write a synthetic BIDS-like fMRI cohort (BOLD, ROI time series, events, motion) with its ground truth."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroattn import __version__
from neuroattn.data.fmri_atlas import load_coordinate_atlas
from neuroattn.data.fmri_simulation import (
    MOTION_COLUMNS,
    SubjectRun,
    SynthFMRIConfig,
    cohort_labels,
    grid_for,
    resolve_networks,
    simulate_roi_timeseries,
    simulate_subject,
    subject_id,
    subject_rng,
)
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.nifti import save_volume, volume_from_array
from neuroattn.progress import progress_bar

__all__ = [
    "MOTION_COLUMNS",
    "SubjectRun",
    "SynthFMRIConfig",
    "SynthFMRIResult",
    "cohort_labels",
    "load_synth_timeseries",
    "simulate_roi_timeseries",
    "simulate_subject",
    "synthesize_fmri_cohort",
]

TASK_NAME = "synth"
SITE = "synth"
MANIFEST_COLUMNS = ("path", "site", "subject", "session", "modality")


@dataclass
class SynthFMRIResult:
    """Where a synthetic cohort was written, and its labels."""

    out_dir: Path
    subjects: list[str]  # BIDS ids, e.g. 'sub-001'
    labels: np.ndarray  # (n_subjects,) 0/1 group label of each subject
    timeseries_paths: list[Path]
    events_paths: list[Path]
    motion_paths: list[Path]
    bold_paths: list[Path] = field(default_factory=list)  # empty unless config.write_bold
    participants_path: Path | None = None
    ground_truth_path: Path | None = None
    manifest_path: Path | None = None
    roi_labels_path: Path | None = None  # 3-D NIfTI: ROI r (atlas order) has value r + 1, 0 elsewhere
    mask_path: Path | None = None  # 3-D NIfTI brain mask of the BOLD grid


def _func_path(out_dir: Path, subject: str, suffix: str) -> Path:
    return out_dir / subject / "func" / f"{subject}_task-{TASK_NAME}_{suffix}"


def _write_tsv(frame: pd.DataFrame, path: Path, float_format: str) -> Path:
    return atomic_write_text(path, frame.to_csv(sep="\t", index=False, float_format=float_format))


def _write_json(obj: dict, path: Path) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _write_subject(out_dir: Path, run: SubjectRun, config: SynthFMRIConfig, roi_names: list[str]) -> dict:
    """Write one subject's files; return their paths keyed by kind."""
    paths = {
        "timeseries": _func_path(out_dir, run.subject, "timeseries.tsv"),
        "events": _func_path(out_dir, run.subject, "events.tsv"),
        "motion": _func_path(out_dir, run.subject, "motion.tsv"),
    }
    _write_tsv(pd.DataFrame(run.timeseries, columns=roi_names), paths["timeseries"], "%.7g")
    _write_tsv(run.events, paths["events"], "%.3f")
    _write_tsv(pd.DataFrame(run.motion, columns=list(MOTION_COLUMNS)), paths["motion"], "%.7g")
    if run.volume is not None:
        grid = grid_for(config)
        vol = volume_from_array(run.volume, affine=np.array(grid.affine))
        vx = grid.voxel_size
        vol.header.set_zooms((vx, vx, vx, float(config.tr)))  # pixdim[4] carries the TR
        vol.header.set_xyzt_units("mm", "sec")
        paths["bold"] = save_volume(vol, _func_path(out_dir, run.subject, "bold.nii.gz"))
        sidecar = {"RepetitionTime": float(config.tr), "TaskName": TASK_NAME, "Units": "arbitrary"}
        _write_json(sidecar, _func_path(out_dir, run.subject, "bold.json"))
    return paths


def _write_static_images(out_dir: Path, config: SynthFMRIConfig) -> tuple[Path, Path]:
    """The ROI label image and the brain mask of the simulation grid."""
    grid = grid_for(config)
    labels = np.zeros(int(np.prod(grid.shape)), dtype=np.float32)  # (X*Y*Z,)
    for r, vox in enumerate(grid.roi_voxels):
        labels[vox] = r + 1
    affine = np.array(grid.affine)
    roi_path = save_volume(volume_from_array(labels.reshape(grid.shape), affine), out_dir / "rois_dseg.nii.gz")
    mask_path = save_volume(volume_from_array(grid.mask.astype(np.float32), affine), out_dir / "brain_mask.nii.gz")
    return roi_path, mask_path


def _ground_truth(config: SynthFMRIConfig, runs_summary: dict[str, dict]) -> dict:
    """Everything planted, in plain JSON types."""
    atlas = load_coordinate_atlas(config.atlas)
    grid = grid_for(config)
    pair, tasks = resolve_networks(config, atlas)
    rois = [
        {"name": name, "x": float(c[0]), "y": float(c[1]), "z": float(c[2]), "network": net,
         "n_voxels": len(vox)}
        for name, c, net, vox in zip(atlas.roi_names, atlas.coords, atlas.networks, grid.roi_voxels, strict=True)
    ]  # fmt: skip
    return {
        "generator": "neuroattn.data.synth_fmri",
        "version": __version__,
        "seed": config.seed,
        "tr": config.tr,
        "n_frames": config.n_frames,
        "voxel_size": config.voxel_size,
        "atlas": config.atlas,
        "roi_radius": config.roi_radius,
        "bold_units": f"scanner units; brain baseline {config.baseline}, amplitudes in % of it",
        "networks": atlas.network_names,
        "rois": rois,
        "coupled_networks": list(pair),
        "planted_coupling": {
            "0": config.base_coupling,
            "1": config.base_coupling + config.label_effect,
            "label_effect": config.label_effect,
            "coupling_jitter": config.coupling_jitter,
        },
        "task_networks": tasks,
        "block_conditions": [c for c in config.block_conditions],
        "task_amplitude": config.task_amplitude,
        "noise": {
            "network_amplitude": config.network_amplitude,
            "roi_amplitude": config.roi_amplitude,
            "band_hz": list(config.band),
            "thermal_noise": config.thermal_noise,
            "drift_amplitude": config.drift_amplitude,
            "drift_order": config.drift_order,
            "motion_step_mm": config.motion_step,
            "motion_gain": config.motion_gain,
            "spike_rate": config.spike_rate,
            "spike_amplitude": config.spike_amplitude,
        },
        "labels": {s: v["label"] for s, v in runs_summary.items()},
        "subjects": runs_summary,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
    }


def _subject_summary(run: SubjectRun, config: SynthFMRIConfig) -> dict:
    atlas = load_coordinate_atlas(config.atlas)
    (a_name, b_name), _ = resolve_networks(config, atlas)
    a, b = atlas.network_names.index(a_name), atlas.network_names.index(b_name)
    return {
        "label": run.label,
        "latent_coupling": float(run.coupling[a, b]),  # correlation the pair was drawn with
        "sample_coupling": float(np.corrcoef(run.network_signals[:, a], run.network_signals[:, b])[0, 1]),
        "spike_frames": [int(s) for s in run.spikes],
    }


def synthesize_fmri_cohort(
    out_dir: str | Path, config: SynthFMRIConfig | None = None, progress: bool = True
) -> SynthFMRIResult:
    """Simulate and write a cohort; every file is written atomically.

    Layout under ``out_dir``::

        dataset_description.json, participants.tsv (participant_id, label), ground_truth.json,
        manifest.csv (path, site, subject, session, modality, label), rois_dseg.nii.gz, brain_mask.nii.gz,
        sub-XXX/func/sub-XXX_task-synth_{bold.nii.gz, bold.json, timeseries.tsv, events.tsv, motion.tsv}

    ``timeseries.tsv`` has one column per ROI (atlas order) and one row per frame; the BOLD volume (when
    ``config.write_bold``) has shape ``(X, Y, Z, T)`` with ``pixdim[4] = TR``. The manifest is written last,
    and lists the BOLD files (modality ``bold``), or the ROI tables (modality ``timeseries``) without them.
    """
    config = SynthFMRIConfig() if config is None else config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atlas = load_coordinate_atlas(config.atlas)
    roi_names = list(atlas.roi_names)
    labels = cohort_labels(config)
    subjects = [subject_id(i) for i in range(config.n_subjects)]
    written: list[dict] = []
    summary: dict[str, dict] = {}
    for i in progress_bar(range(config.n_subjects), desc="synth fMRI", unit="subject", disable=not progress):
        run = simulate_subject(
            config, i, subject_rng(config.seed, i), label=int(labels[i]), with_volume=config.write_bold
        )
        written.append(_write_subject(out_dir, run, config, roi_names))
        summary[run.subject] = _subject_summary(run, config)

    description = {"Name": "neuroattn synthetic fMRI", "BIDSVersion": "1.8.0", "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "neuroattn", "Version": __version__}]}  # fmt: skip
    _write_json(description, out_dir / "dataset_description.json")
    participants_path = _write_tsv(
        pd.DataFrame({"participant_id": subjects, "label": labels}), out_dir / "participants.tsv", "%g"
    )
    roi_labels_path, mask_path = _write_static_images(out_dir, config)
    ground_truth_path = _write_json(_ground_truth(config, summary), out_dir / "ground_truth.json")
    kind = "bold" if config.write_bold else "timeseries"
    manifest = pd.DataFrame(
        {
            "path": [p[kind].relative_to(out_dir).as_posix() for p in written],
            "site": SITE,
            "subject": subjects,
            "session": "",
            "modality": kind,
            "label": labels,
        },
        columns=[*MANIFEST_COLUMNS, "label"],
    )
    manifest_path = atomic_write_text(out_dir / "manifest.csv", manifest.to_csv(index=False))
    return SynthFMRIResult(
        out_dir=out_dir,
        subjects=subjects,
        labels=labels,
        timeseries_paths=[p["timeseries"] for p in written],
        events_paths=[p["events"] for p in written],
        motion_paths=[p["motion"] for p in written],
        bold_paths=[p["bold"] for p in written] if config.write_bold else [],
        participants_path=participants_path,
        ground_truth_path=ground_truth_path,
        manifest_path=manifest_path,
        roi_labels_path=roi_labels_path,
        mask_path=mask_path,
    )


def load_synth_timeseries(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read back the ROI time series and labels of a cohort written by :func:`synthesize_fmri_cohort`.

    Returns
    -------
    timeseries : np.ndarray
        Shape ``(N, T, R)``, subjects in ``participants.tsv`` order.
    labels : np.ndarray
        Shape ``(N,)``, 0/1.
    roi_names : list[str]
        The ``R`` column names.
    """
    out_dir = Path(out_dir)
    participants = out_dir / "participants.tsv"
    if not participants.is_file():
        raise InvalidInputError("no participants.tsv; not a synthetic fMRI cohort folder", out_dir)
    table = pd.read_csv(participants, sep="\t", dtype={"participant_id": str})
    series, names = [], None
    for subject in table["participant_id"]:
        path = _func_path(out_dir, subject, "timeseries.tsv")
        if not path.is_file():
            raise InvalidInputError("ROI time series listed in participants.tsv is missing", path)
        frame = pd.read_csv(path, sep="\t")
        if names is not None and list(frame.columns) != names:
            raise InvalidInputError("ROI columns differ from the first subject's", path)
        names = list(frame.columns)
        series.append(frame.to_numpy(float))
    if len({s.shape for s in series}) > 1:
        raise InvalidInputError("subjects have different numbers of frames", out_dir)
    return np.stack(series), table["label"].to_numpy(int), names or []
