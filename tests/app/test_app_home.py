"""Home renders headless: workspace, device, kernels, a link to every registered page and the checkpoints found."""

from __future__ import annotations

from app_test_support import APP_DIR, AppWorkspace
from streamlit.testing.v1 import AppTest

from neuroattn.web.pages import registered_pages


def test_home_lists_environment_pages_and_checkpoints(workspace_env: AppWorkspace) -> None:
    at = AppTest.from_file(str(APP_DIR / "Home.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "neuroattn"
    text = " ".join(m.value for m in at.markdown)
    assert str(workspace_env.root) in text and "upload limit" in text
    tables = [t.value for t in at.table]
    kernels = next(t for t in tables if "kernel" in t.columns)
    assert "sdpa" in list(kernels["kernel"])
    links = at.get("page_link")
    assert len(links) == len(registered_pages()) >= 4
    checkpoints = next(t for t in tables if "checkpoint" in t.columns)
    labels = " ".join(checkpoints["checkpoint"])
    assert "nyul" in labels and "sa-cyclegan · 2 steps" in labels
