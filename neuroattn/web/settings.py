"""Where the web app may read and write: the workspace, the server-side data roots and the upload limit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from neuroattn.errors import ConfigError

WORKSPACE_ENV = "NEUROATTN_WORKSPACE"
DATA_ROOTS_ENV = "NEUROATTN_DATA_ROOTS"  # os.pathsep-separated folders the Cohort page may read
MAX_UPLOAD_ENV = "NEUROATTN_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 1024  # a 1 mm 4-D run is a few hundred MB compressed


@dataclass(frozen=True)
class AppSettings:
    """Resolved app settings; every page reads them through :func:`load_settings`."""

    workspace: Path  # uploads/, runs/, outputs/ live here
    data_roots: tuple[Path, ...]  # server-side folders (besides the workspace) that may be browsed
    max_upload_mb: int

    @property
    def uploads(self) -> Path:
        return self.workspace / "uploads"

    @property
    def runs(self) -> Path:
        return self.workspace / "runs"

    @property
    def outputs(self) -> Path:
        return self.workspace / "outputs"

    @property
    def readable_roots(self) -> tuple[Path, ...]:
        return (self.workspace, *self.data_roots)

    def env(self) -> dict[str, str]:
        """Environment variables that hand these settings to the Streamlit process."""
        return {WORKSPACE_ENV: str(self.workspace), DATA_ROOTS_ENV: os.pathsep.join(map(str, self.data_roots)),
                MAX_UPLOAD_ENV: str(self.max_upload_mb)}


def default_workspace() -> Path:
    """``$NEUROATTN_WORKSPACE`` or ``./neuroattn_workspace``."""
    return Path(os.environ.get(WORKSPACE_ENV, "neuroattn_workspace")).resolve()


def load_settings(
    workspace: Path | None = None, data_roots: list[Path] | None = None, max_upload_mb: int | None = None
) -> AppSettings:
    """Arguments first, then the environment, then defaults; the workspace folders are created."""
    ws = (workspace or default_workspace()).resolve()
    if data_roots is None:
        text = os.environ.get(DATA_ROOTS_ENV, "")
        data_roots = [Path(p) for p in text.split(os.pathsep) if p.strip()]
    roots = tuple(dict.fromkeys(p.expanduser().resolve() for p in data_roots))
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"{root}: data root is not a folder")
    if max_upload_mb is None:
        raw = os.environ.get(MAX_UPLOAD_ENV, str(DEFAULT_MAX_UPLOAD_MB))
        try:
            max_upload_mb = int(raw)
        except ValueError:
            raise ConfigError(f"{MAX_UPLOAD_ENV}={raw!r} is not a whole number of megabytes") from None
    if max_upload_mb < 1:
        raise ConfigError(f"the upload limit must be at least 1 MB, got {max_upload_mb}")
    settings = AppSettings(ws, roots, max_upload_mb)
    for folder in (settings.uploads, settings.runs, settings.outputs):
        folder.mkdir(parents=True, exist_ok=True)
    return settings
