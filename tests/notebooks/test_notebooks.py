"""Every notebook runs top to bottom on tiny settings (NEUROATTN_NOTEBOOK_QUICK=1)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
# notebooks with a dedicated test file (test_notebook_<name>.py) are executed and checked there, once
NOTEBOOKS = sorted(p for p in (HERE.parents[1] / "notebooks").glob("*.ipynb")
                   if not (HERE / f"test_notebook_{p.stem}.py").is_file())
# what the last two cells print, and a file the run must leave, per notebook
EXPECTED = {
    "harmonization": ("report.html", "metrics.json"),
    "fmri_foundation_models": ("metrics.json", "metrics.csv"),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROATTN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("NEUROATTN_NOTEBOOK_OUT", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=540, kernel_name="python3", resources=resources)
    client.execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors == []
    # the last cells produced the metrics table and the report (or metrics) link
    printed, written = EXPECTED[path.stem]
    assert any(printed in str(o) for cell in notebook.cells[-2:] for o in cell.get("outputs", []))
    assert list(tmp_path.rglob(written))
