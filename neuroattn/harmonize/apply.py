"""Apply a fitted harmonizer to files, folders, manifests or BIDS datasets: whole NIfTI volumes in and out.

Each subject visit (subject, site, session) is one work unit: its modalities are loaded together (a
multi-modal model takes them as channels), harmonized, and written under the output folder with the input's
relative layout, shape, affine and header. Units run through :mod:`neuroattn.batch`, so a bad subject is
skipped and listed in ``failures.csv``, reruns with ``resume`` skip finished subjects, and large cohorts can
run on Dask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.batch import BatchReport, UnitResult, WorkUnit, file_sha256, run_batch
from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.base import BaseHarmonizer
from neuroattn.io.cohort import read_cohort
from neuroattn.io.manifest import Manifest, nifti_stem
from neuroattn.io.nifti import load_volume, save_volume

HARMONIZER_DIR = "harmonizer"  # inside a training run folder: the saved estimator


@dataclass
class ApplyPlan:
    """The manifest being harmonized and one work unit per subject visit."""

    manifest: Manifest
    units: list[WorkUnit]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (holding ``harmonizer/``) or the harmonizer checkpoint folder itself."""
    path = Path(path)
    if (path / HARMONIZER_DIR / "config.json").is_file():
        return path / HARMONIZER_DIR
    return path


def plan_apply(
    source: str | Path, out_dir: str | Path, *, site: str | None = None, modality: str | None = None
) -> ApplyPlan:
    """Read any cohort input and make one unit per (subject, site, session) with its planned output paths.

    ``site`` labels inputs that carry none (a single file or a plain folder is read with site 'unknown');
    ``modality`` likewise, else a BIDS-style file name's suffix (``…_T1w.nii.gz`` → ``T1w``) is used.
    """
    manifest = read_cohort(source)
    out_dir = Path(out_dir).resolve()
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in manifest:
        row_site = site if (site is not None and row.site in ("", "unknown")) else row.site
        mask = row.extras.get("mask") or None
        groups.setdefault((row.subject, row_site, row.session), []).append(
            {
                "path": str(row.path),
                "modality": row.modality or modality or _suffix_modality(row.path),
                "mask": str(mask) if mask else None,
                "output": str(out_dir / row.output_relpath()),
            }
        )
    units = []
    for (subject, row_site, session), rows in groups.items():
        label = subject if subject.startswith("sub-") else f"sub-{subject}"
        key = f"{label}_site-{row_site}" + (f"_ses-{session}" if session else "")
        inputs = tuple(Path(r["path"]) for r in rows) + tuple(Path(r["mask"]) for r in rows if r["mask"])
        outputs = tuple(Path(r["output"]) for r in rows)
        if len(set(outputs)) != len(outputs):
            raise InvalidInputError(f"two inputs of {key} map to the same output file name", source)
        units.append(WorkUnit(key, inputs, outputs, {"subject": subject, "site": row_site, "rows": rows}))
    return ApplyPlan(manifest, units)


def _suffix_modality(path: Path) -> str:
    """``sub-01_T1w.nii.gz`` → ``T1w``; a name without an underscore gives ''."""
    stem = nifti_stem(path)
    return stem.rsplit("_", 1)[1] if "_" in stem else ""


def harmonize_unit(unit: WorkUnit, harmonizer: BaseHarmonizer) -> dict[str, Any]:
    """Load one subject visit's volumes, harmonize them together and write each output atomically."""
    rows = unit.payload["rows"]
    volumes = [load_volume(r["path"], ndim=3) for r in rows]
    shapes = {v.shape for v in volumes}
    if len(shapes) > 1:
        raise InvalidInputError(f"{unit.key}: modalities have different shapes {sorted(shapes)}; "
                                "resample them onto one grid first", rows[0]["path"])
    masks = None
    if all(r["mask"] for r in rows):
        masks = [load_volume(r["mask"], ndim=3).data > 0.5 for r in rows]
        for mask, vol, r in zip(masks, volumes, rows, strict=True):
            if mask.shape != vol.shape:
                raise InvalidInputError(f"mask shape {mask.shape} differs from the volume's {vol.shape}", r["mask"])
    n = len(rows)
    outputs = harmonizer.transform(
        [v.data for v in volumes],
        [unit.payload["site"]] * n,
        masks,
        subjects=[unit.payload["subject"]] * n,
        modalities=[r["modality"] for r in rows],
    )
    for vol, out, r in zip(volumes, outputs, rows, strict=True):
        if not np.all(np.isfinite(out)):
            raise InvalidInputError("harmonized output has non-finite values", r["path"])
        save_volume(vol.with_data(out), r["output"])
    consistency = getattr(harmonizer, "consistency_", None)
    return {"consistency": consistency[0]} if consistency else {}


_CACHED: dict[str, BaseHarmonizer] = {}


def harmonize_unit_from_checkpoint(unit: WorkUnit, checkpoint: str) -> dict[str, Any]:
    """Dask-friendly: load the harmonizer once per worker process, then :func:`harmonize_unit`."""
    if checkpoint not in _CACHED:
        harmonizer = BaseHarmonizer.load(checkpoint)
        harmonizer.progress = False
        _CACHED[checkpoint] = harmonizer
    return harmonize_unit(unit, _CACHED[checkpoint])


def checkpoint_fingerprint(checkpoint: Path, extra: str = "") -> str:
    """Identifies the model and settings a unit was produced with (ledger entries under another one rerun)."""
    digests = [file_sha256(p) for p in sorted(Path(checkpoint).glob("*")) if p.is_file()]
    return "|".join([*digests, extra])


def apply_harmonizer(
    checkpoint: str | Path,
    source: str | Path,
    out_dir: str | Path,
    *,
    site: str | None = None,
    modality: str | None = None,
    planes: str | None = None,
    resume: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    on_result: Callable[[UnitResult], None] | None = None,
) -> BatchReport:
    """Harmonize every volume of ``source`` with the saved harmonizer at ``checkpoint`` into ``out_dir``.

    ``planes`` overrides the model's slicing planes ("axial", "all" for the 3-plane fusion, ...) where the
    harmonizer has that setting. ``scheduler``: None (this process), "local" (Dask LocalCluster) or an address.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    harmonizer = BaseHarmonizer.load(checkpoint)
    if planes is not None:
        if not hasattr(harmonizer, "planes"):
            raise InvalidInputError(f"{type(harmonizer).__name__} has no slicing planes; drop --planes", checkpoint)
        harmonizer.planes = planes
    harmonizer.progress = False
    plan = plan_apply(source, out_dir, site=site, modality=modality)
    fingerprint = checkpoint_fingerprint(checkpoint, extra=f"planes={planes}")
    if scheduler is None:
        fn: Callable[[WorkUnit], dict[str, Any]] = functools.partial(harmonize_unit, harmonizer=harmonizer)
    else:
        if planes is not None:
            raise InvalidInputError("--planes with --scheduler: save a harmonizer with those planes instead",
                                    checkpoint)
        fn = functools.partial(harmonize_unit_from_checkpoint, checkpoint=str(checkpoint))
    return run_batch(plan.units, fn, out_dir, fingerprint=fingerprint, resume=resume, scheduler=scheduler,
                     n_workers=n_workers, progress=progress, description="harmonizing subjects",
                     on_result=on_result)
