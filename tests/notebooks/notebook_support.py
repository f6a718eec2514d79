"""Executing a notebook at its quick settings the way every notebook test does."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]


def execute_quick(notebook_path: Path, out: Path, timeout: int = 300) -> nbformat.NotebookNode:
    """Run ``notebook_path`` with NEUROATTN_NOTEBOOK_QUICK=1, writing into ``out``; the executed copy is kept there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEUROATTN_NOTEBOOK_QUICK", "1")
        mp.setenv("NEUROATTN_NOTEBOOK_OUT", str(out))
        mp.setenv("NEUROATTN_PIPELINES", str(ROOT / "pipelines"))
        # one BLAS thread in the kernel: spinning OpenBLAS threads on a busy small machine slow ridge 100x
        mp.setenv("OPENBLAS_NUM_THREADS", "1")
        mp.setenv("OMP_NUM_THREADS", "1")
        # importing streamlit (the app tests, same worker) sets MPLBACKEND=Agg, which would hide the kernel's figures
        mp.delenv("MPLBACKEND", raising=False)
        notebook = nbformat.read(notebook_path, as_version=4)
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(out)}})
        client.execute()
    nbformat.write(notebook, out / "executed.ipynb")  # kept with the outputs for reading the figures
    return notebook
