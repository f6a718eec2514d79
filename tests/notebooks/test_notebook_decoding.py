"""notebooks/decoding.ipynb runs at tiny settings and shows every decoder's results, labelled UNTRAINED."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from notebook_support import execute_quick

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "decoding.ipynb"
DECODERS = ["ridge", "mindeye", "brain-it"]


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, Path]:
    out = tmp_path_factory.mktemp("decoding_notebook")
    notebook = execute_quick(NOTEBOOK, out)
    return notebook, out


@pytest.mark.timeout(600)
def test_notebook_runs_without_errors_and_shows_figures(executed) -> None:
    notebook, _ = executed
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert [o for o in outputs if o.get("output_type") == "error"] == []
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # stimuli, training curves, one retrieval grid per decoder, the reconstruction grid
    assert len(images) >= 3 + len(DECODERS)
    assert "UNTRAINED" in notebook.cells[0].source and "randomly" in notebook.cells[0].source


@pytest.mark.timeout(600)
def test_metrics_table_matches_every_decoder_evaluation(executed) -> None:
    notebook, out = executed
    printed = _text(notebook.cells[-1])
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.strip()}
    assert "metrics.json" in printed and "report.html" in printed
    for name in DECODERS:
        result = json.loads((out / "evaluation" / name / "metrics.json").read_text())
        assert result["decoder"] == name and result["label"] == "UNTRAINED"
        assert result["n_reconstructed"] == 4 and "pixcorr" in result["metrics"]
        assert (out / "evaluation" / name / "report.html").is_file()
        row = lines[name]
        assert row[1] == "UNTRAINED"
        # columns 2, 3: top-1 brain->image and image->brain, printed rounded to 3 decimals
        assert float(row[2]) == pytest.approx(result["metrics"]["top1_brain_to_image"], abs=5e-4)
        assert float(row[3]) == pytest.approx(result["metrics"]["top1_image_to_brain"], abs=5e-4)
    chance = lines["chance"]
    # 60 test images in the quick data folder
    assert chance[1] == "-" and float(chance[2]) == pytest.approx(1 / 60, abs=5e-4)


@pytest.mark.timeout(600)
def test_steps_write_their_outputs(executed) -> None:
    notebook, out = executed
    for name in DECODERS:
        assert json.loads((out / "runs" / name / "decode_run.json").read_text())["model"] == name
        assert (out / "retrieval" / name / "retrieval.png").is_file()
        recon = json.loads((out / "reconstructions" / name / "reconstruction.json").read_text())
        assert len(recon["images"]) == 4 and recon["label"] == "UNTRAINED"
    retrieval = "".join(_text(c) for c in notebook.cells if "decode\", \"retrieve\"" in c.source)
    assert len(re.findall(r"seen image found first in \d+ of 4 queries", retrieval)) == len(DECODERS)


def test_notebook_uses_only_the_public_api() -> None:
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    assert not re.search(r"import _|\._[a-z]", source)
    assert "get_ipython" not in source
