"""BraTS-style cohorts: one folder per subject holding ``<subject>_t1/_t1ce/_t2/_flair.nii.gz`` (and ``_seg``).

Both naming generations are understood: 2018–2021 (``t1, t1ce, t2, flair``) and 2023+ (``t1n, t1c, t2w,
t2f``). Modalities are mapped onto neuroattn's names (``T1w, T1ce, T2w, FLAIR``); the tumour segmentation,
when present, is kept in the ``seg_path`` column. Volumes are skull-stripped, so the brain mask is taken as
the non-zero voxels unless a ``mask`` column is added.
"""

from __future__ import annotations

import re
from pathlib import Path

from neuroattn.io.manifest import UNKNOWN_SITE, Manifest, relative_text
from neuroattn.io.nifti import NIFTI_SUFFIXES

MODALITY_NAMES = {
    "t1": "T1w", "t1n": "T1w",
    "t1ce": "T1ce", "t1c": "T1ce", "t1gd": "T1ce",
    "t2": "T2w", "t2w": "T2w",
    "flair": "FLAIR", "t2f": "FLAIR",
}  # fmt: skip
SEGMENTATION_SUFFIXES = ("seg",)
_SUFFIX = re.compile(r"[_-]([a-z0-9]+)$", re.IGNORECASE)


def _suffix(path: Path) -> str | None:
    name = path.name
    for ext in NIFTI_SUFFIXES:
        if name.lower().endswith(ext):
            match = _SUFFIX.search(name[: -len(ext)])
            return match.group(1).lower() if match else None
    return None


def _subject_folders(root: Path) -> list[Path]:
    """Sub-folders holding at least one file named like a BraTS modality."""
    folders = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(_suffix(f) in MODALITY_NAMES for f in child.iterdir() if f.is_file()):
            folders.append(child)
    return folders


def is_brats_layout(root: str | Path) -> bool:
    """True when ``root`` holds subject folders of BraTS-named modality files."""
    root = Path(root)
    return root.is_dir() and bool(_subject_folders(root))


def manifest_from_brats(root: str | Path, *, site: str = UNKNOWN_SITE) -> Manifest:
    """One row per subject folder and modality; ``site`` labels the whole folder (one folder per site)."""
    root = Path(root).resolve()
    rows = []
    for folder in _subject_folders(root):
        files = {(_suffix(f) or ""): f for f in sorted(folder.iterdir()) if f.is_file()}
        seg = next((files[s] for s in SEGMENTATION_SUFFIXES if s in files), None)
        for suffix, path in files.items():
            if suffix not in MODALITY_NAMES:
                continue
            row = {"path": path, "relative_path": relative_text(path, root), "site": site,
                   "subject": folder.name, "modality": MODALITY_NAMES[suffix]}
            if seg is not None:
                row["seg_path"] = seg
            rows.append(row)
    return Manifest.from_rows(rows, root=root)
