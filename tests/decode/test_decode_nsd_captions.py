"""COCO captions of NSD images from a local tree: id mapping through the stimulus info CSV, both splits, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroattn.data.nsd_captions import ANNOTATIONS, STIM_INFO, load_nsd_captions
from neuroattn.errors import InvalidInputError


def _tree(root: Path) -> Path:
    """NSD ids 0..3: 0 and 2 from train2017, 1 and 3 from val2017 (COCO ids differ from NSD ids)."""
    info = root / STIM_INFO
    info.parent.mkdir(parents=True)
    rows = [(0, 532481, "train2017"), (1, 245340, "val2017"), (2, 71, "train2017"), (3, 139, "val2017")]
    info.write_text(",cocoId,cocoSplit,nsdId,shared1000\n"
                    + "".join(f"{i},{c},{s},{n},False\n" for i, (n, c, s) in enumerate(rows)))  # fmt: skip
    folder = root / ANNOTATIONS
    folder.mkdir(parents=True)
    train = {"annotations": [{"image_id": 71, "id": 1, "caption": "A dog on a couch. "},
                             {"image_id": 532481, "id": 2, "caption": "A kite in the sky."},
                             {"image_id": 71, "id": 3, "caption": "A brown dog sleeping."},
                             {"image_id": 999, "id": 4, "caption": "not an NSD image"}]}
    val = {"annotations": [{"image_id": 139, "id": 5, "caption": "A living room."},
                           {"image_id": 245340, "id": 6, "caption": "Two zebras."}]}
    (folder / "captions_train2017.json").write_text(json.dumps(train))
    (folder / "captions_val2017.json").write_text(json.dumps(val))
    return root


def test_captions_follow_the_requested_nsd_ids(tmp_path: Path) -> None:
    root = _tree(tmp_path / "nsd")
    got = load_nsd_captions(root, np.array([2, 1, 0, 3, 2]))
    assert got == [["A dog on a couch.", "A brown dog sleeping."], ["Two zebras."], ["A kite in the sky."],
                   ["A living room."], ["A dog on a couch.", "A brown dog sleeping."]]  # fmt: skip


def test_annotations_from_another_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "nsd")
    elsewhere = tmp_path / "coco"
    (root / ANNOTATIONS).rename(elsewhere)
    assert load_nsd_captions(root, [3], annotations_dir=elsewhere) == [["A living room."]]
    with pytest.raises(InvalidInputError, match="file not found"):
        load_nsd_captions(root, [3])


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    root = _tree(tmp_path / "nsd")
    with pytest.raises(InvalidInputError, match=r"no row for NSD id\(s\) \[7\]") as err:
        load_nsd_captions(root, [0, 7])
    assert "nsd_stim_info_merged.csv" in str(err.value)
    (root / ANNOTATIONS / "captions_val2017.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not a COCO caption file") as err:
        load_nsd_captions(root, [1])
    assert "captions_val2017.json" in str(err.value)
    (root / ANNOTATIONS / "captions_val2017.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(InvalidInputError, match="no captions for COCO id"):
        load_nsd_captions(root, [1])
    (root / STIM_INFO).write_text("nsdId,cocoId\n0,5\n")
    with pytest.raises(InvalidInputError, match="missing columns"):
        load_nsd_captions(root, [0])
