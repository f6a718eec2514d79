"""Cohort jobs for the app: inputs checked against the allowed folders, a live status table, zipped outputs."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from neuroattn.batch import BatchReport, UnitResult
from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.apply import apply_harmonizer, plan_apply
from neuroattn.io.atomic import atomic_path
from neuroattn.io.cohort import read_cohort
from neuroattn.io.manifest import Manifest
from neuroattn.web.uploads import resolve_inside

PATH_COLUMNS = ("path", "mask", "ground_truth")  # and every column ending in "_path"
STATUS_COLUMNS = ["subject visit", "status", "reason", "seconds"]


def _is_path_column(name: str) -> bool:
    return name.lower() in PATH_COLUMNS or name.lower().endswith("_path")


def rebase_manifest(content: bytes, name: str, base: Path, out: Path) -> Path:
    """Save an uploaded manifest CSV with its relative paths made relative to ``base`` (a server folder).

    An uploaded file has no folder of its own on the server, so relative paths in it mean "below ``base``".
    """
    sep = "\t" if name.lower().endswith(".tsv") else ","
    try:
        table = pd.read_csv(io.BytesIO(content), sep=sep, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InvalidInputError(f"not a readable CSV table ({exc})", name) from None
    for column in table.columns:
        if _is_path_column(str(column)):
            table[column] = [str(base / v) if v and not Path(v).is_absolute() else v for v in table[column]]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, sep=sep, lineterminator="\n")
    return out


def check_inside_roots(manifest: Manifest, roots: tuple[Path, ...]) -> Manifest:
    """Refuse a cohort that points at any file outside the folders the app may read."""
    for row in manifest:
        resolve_inside(row.path, roots)
        for key, value in row.extras.items():
            if _is_path_column(key) and value:
                resolve_inside(value, roots)
    return manifest


def load_cohort_source(source: Path, roots: tuple[Path, ...]) -> Manifest:
    """A manifest/BIDS/BraTS/plain folder inside the allowed roots, read and checked like the CLI does."""
    return check_inside_roots(read_cohort(resolve_inside(source, roots)), roots)


def status_table(results: dict[str, UnitResult], pending: list[str]) -> pd.DataFrame:
    """One row per subject visit: done / skipped / failed (with reason) / waiting."""
    rows = [[r.key, r.status, r.reason, round(r.seconds, 1)] for r in results.values()]
    rows += [[key, "waiting", "", None] for key in pending if key not in results]
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def run_cohort(
    checkpoint: Path,
    source: Path,
    out_dir: Path,
    *,
    resume: bool,
    on_update: Callable[[pd.DataFrame], None] | None = None,
) -> BatchReport:
    """Harmonize every subject of ``source`` into ``out_dir``; ``on_update`` gets the status table after each one."""
    plan = plan_apply(source, out_dir)
    keys = [u.key for u in plan.units]
    results: dict[str, UnitResult] = {}

    def record(result: UnitResult) -> None:
        results[result.key] = result
        if on_update is not None:
            on_update(status_table(results, keys))

    if on_update is not None:
        on_update(status_table(results, keys))
    return apply_harmonizer(checkpoint, source, out_dir, resume=resume, progress=False, on_result=record)


def zip_folder(folder: Path, target: Path) -> Path:
    """Every file under ``folder`` (except the zip itself) in one zip written atomically to ``target``."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.resolve() != target.resolve() and not path.name.startswith("."):
                archive.write(path, path.relative_to(folder))
    return target
