"""Train a harmonizer on a cohort and save it in a run folder (what `neuroattn harmonize train` does)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.apply import HARMONIZER_DIR
from neuroattn.harmonize.base import create_harmonizer
from neuroattn.io.cohort import read_cohort
from neuroattn.io.manifest import Manifest


@dataclass
class TrainedHarmonizer:
    """Where a fitted harmonizer was saved and whether it was actually trained."""

    checkpoint: Path
    method: str
    trained: bool
    seconds: float


def select_sites(manifest: Manifest, target_site: str, source_site: str | None) -> Manifest:
    """Rows of the target site and the source site (all sites when no source is named), checked to exist."""
    known = list(manifest.sites)
    wanted = [target_site] + ([source_site] if source_site else [s for s in known if s != target_site])
    missing = [s for s in wanted if s not in known]
    if missing:
        raise InvalidInputError(f"site(s) {missing} not in the cohort; its sites are {known}", manifest.source)
    if len(wanted) < 2:
        raise InvalidInputError(f"harmonization needs at least two sites; the cohort has {known}", manifest.source)
    return manifest.rows_for(site=wanted)


def train_harmonizer(
    cohort: str | Path | Manifest,
    out_dir: str | Path,
    *,
    method: str = "sa-cyclegan",
    target_site: str,
    source_site: str | None = None,
    params: Mapping[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainedHarmonizer:
    """Fit ``method`` on the cohort (target + source sites) and save it under ``out_dir/harmonizer``.

    SA-CycleGAN training runs (checkpoints, metrics) go to ``out_dir/training`` so ``resume`` continues them.
    """
    import time

    manifest = cohort if isinstance(cohort, Manifest) else read_cohort(cohort)
    manifest = select_sites(manifest, target_site, source_site)
    out_dir = Path(out_dir)
    options = dict(params or {})
    if method == "sa-cyclegan":
        options.setdefault("run_dir", out_dir / "training")
    harmonizer = create_harmonizer(method, target_site=target_site, progress=progress, **options)
    start = time.perf_counter()
    if method == "sa-cyclegan":
        harmonizer.fit(manifest, resume=resume)
    else:
        harmonizer.fit(manifest)
    seconds = time.perf_counter() - start
    checkpoint = harmonizer.save(out_dir / HARMONIZER_DIR)
    trained = bool(getattr(harmonizer, "trained_", True))
    return TrainedHarmonizer(checkpoint, method, trained, seconds)
