"""COCO captions of NSD images, read from a local NSD tree: the text side of real-data decoding and voxel captions.

NSD images are COCO 2017 images; ``nsddata/experiments/nsd/nsd_stim_info_merged.csv`` maps each 0-based NSD id
(``nsdId``) to its ``cocoId`` and ``cocoSplit`` (train2017 / val2017), and the COCO caption files
``captions_<split>.json`` hold about five human captions per image. NSD ships those files under
``nsddata_stimuli/stimuli/nsd/annotations/``; another folder holding them can be given instead.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from neuroattn.errors import InvalidInputError

STIM_INFO = Path("nsddata") / "experiments" / "nsd" / "nsd_stim_info_merged.csv"
ANNOTATIONS = Path("nsddata_stimuli") / "stimuli" / "nsd" / "annotations"


def _coco_ids(path: Path, wanted: set[int]) -> dict[int, tuple[int, str]]:
    """``nsdId -> (cocoId, cocoSplit)`` for the wanted NSD ids, from the stimulus info CSV."""
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    out: dict[int, tuple[int, str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"nsdId", "cocoId", "cocoSplit"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInputError(f"missing columns {sorted(missing)}", path)
        for line, row in enumerate(reader, start=2):
            try:
                nsd_id = int(row["nsdId"])
                if nsd_id in wanted:
                    out[nsd_id] = (int(row["cocoId"]), row["cocoSplit"].strip())
            except ValueError:
                raise InvalidInputError(f"line {line}: nsdId/cocoId must be integers", path) from None
    return out


def _captions_by_image(path: Path, wanted: set[int]) -> dict[int, list[str]]:
    """``cocoId -> captions`` for the wanted COCO ids, from one COCO ``captions_<split>.json``."""
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    try:
        with path.open(encoding="utf-8") as fh:
            annotations = json.load(fh)["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"not a COCO caption file ({type(err).__name__}: {err})", path) from None
    out: dict[int, list[str]] = {}
    for item in annotations:
        image = item.get("image_id") if isinstance(item, dict) else None
        if image in wanted:
            out.setdefault(int(image), []).append(str(item.get("caption", "")).strip())
    return out


def load_nsd_captions(nsd_root: str | Path, image_ids: np.ndarray, annotations_dir: str | Path | None = None
                      ) -> list[list[str]]:
    """The COCO captions of each 0-based NSD image id, in the order given.

    Parameters
    ----------
    nsd_root : root of the NSD tree (holds ``nsddata/experiments/nsd/nsd_stim_info_merged.csv``).
    image_ids : ``(N,)`` 0-based NSD ids (repeats allowed).
    annotations_dir : folder with ``captions_train2017.json`` / ``captions_val2017.json`` (default: NSD's copy).

    Returns
    -------
    One list of captions per id (COCO order). An id missing from the CSV, or with no caption, is an error that
    names the file and the id.
    """
    root = Path(nsd_root)
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    wanted = {int(i) for i in ids}
    info_path = root / STIM_INFO
    coco = _coco_ids(info_path, wanted)
    absent = sorted(wanted - set(coco))
    if absent:
        raise InvalidInputError(f"no row for NSD id(s) {absent[:5]}{' ...' if len(absent) > 5 else ''}", info_path)
    folder = Path(annotations_dir) if annotations_dir is not None else root / ANNOTATIONS
    captions: dict[tuple[str, int], list[str]] = {}
    for split in sorted({s for _, s in coco.values()}):
        needed = {c for c, s in coco.values() if s == split}
        path = folder / f"captions_{split}.json"
        found = _captions_by_image(path, needed)
        lacking = sorted(needed - set(found))
        if lacking:
            raise InvalidInputError(f"no captions for COCO id(s) {lacking[:5]}", path)
        captions |= {(split, c): caps for c, caps in found.items()}
    return [list(captions[coco[int(i)][1], coco[int(i)][0]]) for i in ids]
