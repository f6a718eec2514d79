"""notebooks/brain3d.ipynb runs at its quick settings: conditioning from one test trial, a mesh, an ROI ablation."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import trimesh
from notebook_support import execute_quick
from threadpoolctl import threadpool_limits

from neuroattn.brain3d.conditioning import decode_conditioning, region_groups
from neuroattn.data.nsd import load_subject
from neuroattn.decode.runs import open_run

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "brain3d.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, Path, dict]:
    out = tmp_path_factory.mktemp("brain3d_notebook")
    notebook = execute_quick(NOTEBOOK, out)
    return notebook, out, json.loads((out / "notebook_summary.json").read_text())


@pytest.mark.timeout(600)
def test_notebook_runs_and_shows_every_figure(executed) -> None:
    notebook, _, summary = executed
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert [o for o in outputs if o.get("output_type") == "error"] == []
    # seen vs reference, turntable frames, mesh renders, ablation grid
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 4
    assert summary["quick"] is True and len(summary["figures"]) == 4
    assert all(Path(p).stat().st_size > 2_000 for p in summary["figures"])
    intro = notebook.cells[0].source
    assert "UNTRAINED" in intro and "randomly" in intro and "QUICK = True" in intro
    assert "clip" in summary["untrained"]


@pytest.mark.timeout(600)
def test_mesh_file_loads_with_trimesh_and_matches_the_record(executed) -> None:
    _, out, summary = executed
    mesh = trimesh.load(summary["mesh"], force="mesh", process=False)
    record = json.loads(Path(summary["brain3d_json"]).read_text())
    assert len(mesh.faces) == summary["mesh_faces"] == record["mesh"]["faces"] > 0
    assert len(mesh.vertices) == record["mesh"]["vertices"]
    assert record["settings"]["stage1_steps"] == 12  # pipelines/brain3d/tiny.yaml
    for name in ("mesh.ply", "mesh.obj", "turntable.gif", "reference.png"):
        assert (out / "object" / name).stat().st_size > 0


@pytest.mark.timeout(600)
def test_conditioning_was_decoded_from_the_first_test_trial(executed) -> None:
    _, out, summary = executed
    subject, trial = summary["subject"], summary["trial"]
    raw = load_subject(out / "data", subject, zscore=False)
    assert trial == int(np.flatnonzero(raw.is_test)[0])
    train = raw.betas[~raw.is_test].astype(np.float64)
    sd = train.std(axis=0)
    betas = ((raw.betas[trial] - train.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)  # (V,)
    bundle, _, decoder = open_run(out / "runs" / "ridge", out / "data", subject)
    expected = decode_conditioning(bundle, subject, decoder, betas)
    saved = np.load(out / "object" / "conditioning.npz")  # what generate decoded from the notebook's .npy
    np.testing.assert_allclose(saved["clip_tokens"], expected.clip_tokens, atol=1e-5)
    np.testing.assert_allclose(saved["lowlevel_image"], expected.lowlevel_image, atol=1e-5)


@pytest.mark.timeout(600)
def test_ablation_table_has_one_row_per_roi_group(executed) -> None:
    notebook, out, summary = executed
    groups = region_groups(load_subject(out / "data", summary["subject"], zscore=False))
    rows = summary["ablation"]
    assert [r["group"] for r in rows] == groups.names == ["V1", "V2", "V3", "V4", "higher"]
    assert {r["mode"] for r in rows} == {"zero"}
    assert [r["voxels"] for r in rows] == [groups.counts()[g] for g in groups.names] == list(summary["groups"].values())
    assert [r["head"] for r in rows] == ["lowlevel"] * 4 + ["semantic"]
    with open(out / "ablation" / "ablation.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["group"] for r in table] == groups.names
    for row, saved in zip(rows, table, strict=True):
        assert float(saved["clip_cosine"]) == pytest.approx(row["clip_cosine"], abs=1e-6)
    higher = rows[-1]
    # the CLIP head reads only the higher areas: zeroing a low-level group leaves its tokens unchanged
    assert all(r["clip_cosine"] == pytest.approx(1.0, abs=1e-5) for r in rows[:4])
    assert higher["clip_cosine"] < 1.0 - 1e-4
    assert higher["reference_pixcorr"] == pytest.approx(1.0, abs=1e-5)  # and the low-level head ignores them
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" and "roi_ablation(" in c.source
                      for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert all(re.search(rf"^\s*{g}\s+zero", printed, re.M) for g in groups.names)


def test_notebook_uses_only_the_public_api() -> None:
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    assert not re.search(r"import _|\._[a-z]", source)
    assert "get_ipython" not in source
