"""Home page renders headless and states the device, kernels and workspace."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

HOME = Path(__file__).resolve().parents[2] / "app" / "Home.py"


def test_home_page_shows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(HOME), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "neuroattn"
    text = " ".join(m.value for m in at.markdown)
    assert str(tmp_path / "ws") in text
    tables = [t.value for t in at.table]
    kernels = next(t for t in tables if "kernel" in t.columns)
    assert "sdpa" in list(kernels["kernel"])
