"""notebooks/encoding.ipynb runs at its quick settings: ridge, BraInCoRL's curve, a text map and LaVCa captions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pytest
import torch
from notebook_support import execute_quick
from threadpoolctl import threadpool_limits

from neuroattn.encode.run_outputs import describe_voxels, text_selectivity
from neuroattn.encode.runs import EncodeSettings, open_run
from neuroattn.pipelines import load_pipeline_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "encoding.ipynb"
MODELS = ["ridge", "braincorl", "lavca"]


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _cell(notebook: nbformat.NotebookNode, marker: str) -> nbformat.NotebookNode:
    return next(c for c in notebook.cells if c.cell_type == "code" and marker in c.source)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, Path, dict]:
    out = tmp_path_factory.mktemp("encoding_notebook")
    notebook = execute_quick(NOTEBOOK, out)
    return notebook, out, json.loads((out / "notebook_summary.json").read_text())


@pytest.mark.timeout(600)
def test_notebook_runs_without_errors_and_shows_every_figure(executed) -> None:
    notebook, out, summary = executed
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert [o for o in outputs if o.get("output_type") == "error"] == []
    # r vs noise ceiling, the scaling curve, the surface map, the top images, the caption scores
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 5
    assert summary["quick"] is True
    intro = notebook.cells[0].source
    assert "UNTRAINED" in intro and "randomly" in intro and "QUICK = True" in intro
    assert Path(summary["query_figure"]).stat().st_size > 10_000  # the surface figure was drawn
    assert [m["label"] for m in summary["models"]] == ["UNTRAINED"] * 3
    assert (out / "runs" / "lavca" / "captions.csv").is_file()


@pytest.mark.timeout(600)
def test_scaling_curve_has_the_quick_ks_and_matches_the_evaluation(executed) -> None:
    notebook, out, summary = executed
    tiny = load_pipeline_config(ROOT / "pipelines" / "encode" / "tiny.yaml", EncodeSettings)
    metrics = json.loads((out / "evaluation" / "braincorl" / "metrics.json").read_text())
    assert summary["curve_ks"] == tiny.ks == [row["k"] for row in metrics["in_context_curve"]]
    assert summary["curve_braincorl_ev"] == [row["braincorl_ev"] for row in metrics["in_context_curve"]]
    printed = _text(_cell(notebook, "in_context_curve"))
    assert f"in context; untrained parts: {metrics['untrained']}" in printed
    table = [line.split() for line in printed.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in table] == tiny.ks
    for row, expected in zip(table, metrics["in_context_curve"], strict=True):
        assert float(row[2]) == pytest.approx(expected["braincorl_r"], abs=5e-4)  # printed rounded to 3 decimals
        assert float(row[3]) == pytest.approx(expected["ridge_r"], abs=5e-4)


@pytest.mark.timeout(600)
def test_text_query_map_equals_text_selectivity(executed) -> None:
    _, out, summary = executed
    run = open_run(out / "runs" / "ridge")
    expected = text_selectivity(run, [summary["query"]])[0]
    data = np.asarray(nib.load(summary["query_map"]).dataobj)
    np.testing.assert_allclose(data[tuple(run.subject.voxel_ijk[run.encoder.voxels].T)], expected, atol=1e-5)


@pytest.mark.timeout(600)
def test_every_shown_voxel_has_its_caption_and_top_images(executed) -> None:
    notebook, out, summary = executed
    run = open_run(out / "runs" / "lavca")
    rows = summary["captions"]
    assert len(rows) == 4
    planted = run.subject.concept[run.encoder.voxels]
    assert [bool(row["planted"]) for row in rows] == [True, True, False, False]
    assert all(row["planted"] == run.data.concepts[planted[row["column"]]] for row in rows[:2])
    columns = np.array([row["column"] for row in rows])
    expected = describe_voxels(run, voxels=columns)
    assert [row["sentence"] for row in rows] == expected.sentences and all(expected.sentences)
    assert [row["keywords"] for row in rows] == expected.keywords
    assert [row["top_ids"] for row in rows] == expected.top_ids.tolist()
    printed = _text(_cell(notebook, "describe_voxels("))
    for row in rows:
        assert f"voxel {row['voxel']} ({row['roi']}, " in printed and repr(row["sentence"]) in printed


@pytest.mark.timeout(600)
def test_caption_scores_are_printed_from_the_evaluation(executed) -> None:
    notebook, out, _ = executed
    scores = json.loads((out / "evaluation" / "lavca" / "metrics.json").read_text())["captions"]
    printed = _text(_cell(notebook, 'lavca_metrics["captions"]'))
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d{3}", printed)]
    sp = scores["spearman"]
    assert numbers == pytest.approx([sp["lavca_mean"], sp["baseline_mean"], sp["shuffled_mean"],
                                     scores["concept_naming_rate"], scores["concept_chance_rate"]], abs=5e-4)
    assert scores["n_concept_voxels"] > 0 and scores["concept_naming_rate"] > scores["concept_chance_rate"]
    last = _text(notebook.cells[-1])
    for name in MODELS:
        assert str(out / "evaluation" / name / "metrics.json") in last


def test_notebook_uses_only_the_public_api() -> None:
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    assert not re.search(r"import _|\._[a-z]", source)
    assert "get_ipython" not in source
