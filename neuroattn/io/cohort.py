"""Any cohort input (manifest CSV, BIDS folder, folder of NIfTI, single NIfTI) as one validated Manifest."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from neuroattn.errors import InvalidInputError, ManifestError
from neuroattn.io.brats import is_brats_layout, manifest_from_brats
from neuroattn.io.manifest import (
    UNKNOWN_SITE,
    Manifest,
    load_manifest,
    nifti_stem,
    relative_text,
    validate_manifest,
)
from neuroattn.io.nifti import NIFTI_SUFFIXES


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files below ``folder`` (recursively, sorted), skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames
                     if not f.startswith(".") and f.lower().endswith(NIFTI_SUFFIXES))
    return sorted(found)


def manifest_from_files(files: Iterable[str | Path], *, root: str | Path, site: str = UNKNOWN_SITE) -> Manifest:
    """A manifest of loose NIfTI files: subject = file name without suffix (the relative path when names clash)."""
    root = Path(os.path.abspath(root))
    files = [Path(os.path.abspath(f)) for f in files]
    stems = [nifti_stem(f) for f in files]
    clashes = {s for s in stems if stems.count(s) > 1}
    rows = []
    for f, stem in zip(files, stems, strict=True):
        rel = relative_text(f, root)
        subject = rel[: len(rel) - len(f.name)] + stem if stem in clashes else stem
        rows.append({"path": f, "relative_path": rel, "site": site, "subject": subject})
    return Manifest.from_rows(rows, root=root)


def read_cohort(
    source: str | Path,
    *,
    known_sites: Iterable[str] | None = None,
    expected_modalities: Iterable[str] | None = None,
    require_files: bool = True,
    default_site: str = UNKNOWN_SITE,
    **bids_options: object,
) -> Manifest:
    """Any cohort input as a validated :class:`Manifest`.

    ``source`` may be

    - a manifest CSV/TSV (any file that is not NIfTI) -> :func:`load_manifest`;
    - a BIDS folder (has ``dataset_description.json``) -> :func:`neuroattn.io.bids.manifest_from_bids`
      with ``bids_options``;
    - a folder holding ``manifest.csv`` (as ``neuroattn data synth-mri`` writes) -> that manifest;
    - a BraTS-style folder (subject folders of ``<id>_t1/_t1ce/_t2/_flair`` files) -> one row per subject and
      modality (:mod:`neuroattn.io.brats`), site ``default_site``;
    - any other folder -> every NIfTI file below it, site ``default_site``, subject from the file name;
    - a single NIfTI file -> a one-row manifest.

    The same checks as :func:`load_manifest` apply to every kind (``known_sites``, ``expected_modalities``).
    ``bids_options`` are used only for BIDS input.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise InvalidInputError("not found (expected a manifest CSV, a NIfTI file or a folder of them)", source)
    if source.is_file() and not source.name.lower().endswith(NIFTI_SUFFIXES):
        return load_manifest(source, known_sites=known_sites, expected_modalities=expected_modalities,
                             require_files=require_files)
    if source.is_dir() and (source / "dataset_description.json").is_file():
        from neuroattn.io.bids import manifest_from_bids  # pybids is imported only for BIDS input

        manifest = manifest_from_bids(source, **bids_options)  # type: ignore[arg-type]
    elif source.is_dir() and (source / "manifest.csv").is_file():
        return load_manifest(source / "manifest.csv", known_sites=known_sites,
                             expected_modalities=expected_modalities, require_files=require_files)
    elif is_brats_layout(source):
        manifest = manifest_from_brats(source, site=default_site)
    elif source.is_dir():
        files = _nifti_files(source)
        if not files:
            raise InvalidInputError(f"no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) in this folder", source)
        manifest = manifest_from_files(files, root=source, site=default_site)
    else:
        manifest = manifest_from_files([source], root=Path(os.path.abspath(source)).parent, site=default_site)
    manifest.source = source
    problems = validate_manifest(manifest, known_sites=known_sites, expected_modalities=expected_modalities,
                                 require_files=require_files)
    if problems:
        raise ManifestError(problems, source)
    return manifest
