"""Start the Streamlit app on localhost with a configured workspace, data roots and upload limit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from neuroattn.errors import ConfigError
from neuroattn.web.settings import AppSettings


def app_entry() -> Path:
    """Path of the app's entry script (the ``app/`` folder beside the package in a source checkout)."""
    home = Path(__file__).resolve().parents[2] / "app" / "Home.py"
    if not home.is_file():
        raise ConfigError(f"{home}: app pages not found; run `neuroattn app` from a source checkout of neuroattn")
    return home


def streamlit_command(settings: AppSettings, port: int) -> list[str]:
    """The ``streamlit run`` command line: bound to 127.0.0.1, headless, the upload limit enforced by the server."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_entry()),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.maxUploadSize", str(settings.max_upload_mb),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip


def launch(settings: AppSettings, port: int = 8501) -> int:
    """Run the app in the foreground; returns Streamlit's exit code."""
    env = dict(os.environ, **settings.env())
    roots = ", ".join(map(str, settings.data_roots)) or "none besides the workspace"
    print(f"neuroattn app on http://127.0.0.1:{port} · workspace {settings.workspace} · data roots: {roots}",
          flush=True)
    return subprocess.call(streamlit_command(settings, port), env=env)
