"""Start the Streamlit app on localhost with a configured workspace folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from neuroattn.errors import ConfigError

WORKSPACE_ENV = "NEUROATTN_WORKSPACE"


def app_entry() -> Path:
    """Path of the app's Home page (the ``app/`` folder beside the package in a source checkout)."""
    home = Path(__file__).resolve().parents[1] / "app" / "Home.py"
    if not home.is_file():
        raise ConfigError(f"{home}: app pages not found; run `neuroattn app` from a source checkout of neuroattn")
    return home


def default_workspace() -> Path:
    """Workspace used when none is given: ``$NEUROATTN_WORKSPACE`` or ``./neuroattn_workspace``."""
    return Path(os.environ.get(WORKSPACE_ENV, "neuroattn_workspace")).resolve()


def launch(port: int = 8501, workspace: Path | None = None) -> int:
    """Run ``streamlit run app/Home.py`` bound to localhost; returns Streamlit's exit code."""
    home = app_entry()
    workspace = (workspace or default_workspace()).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{WORKSPACE_ENV: str(workspace)})
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(home),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    print(f"neuroattn app on http://127.0.0.1:{port} · workspace {workspace}", flush=True)
    return subprocess.call(cmd, env=env)
