"""Fixtures of the app tests: one session-wide workspace, and the environment pointing the app at it."""

from __future__ import annotations

import pytest
from app_test_support import AppWorkspace, make_workspace


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory: pytest.TempPathFactory) -> AppWorkspace:
    return make_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture
def workspace_env(app_workspace: AppWorkspace, monkeypatch: pytest.MonkeyPatch) -> AppWorkspace:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(app_workspace.root))
    monkeypatch.delenv("NEUROATTN_DATA_ROOTS", raising=False)
    monkeypatch.delenv("NEUROATTN_MAX_UPLOAD_MB", raising=False)
    return app_workspace
