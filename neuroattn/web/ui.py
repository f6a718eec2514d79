"""Streamlit pieces every page shares: settings, the session's upload folder, errors, progress, volume pickers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from neuroattn.errors import NeuroattnError
from neuroattn.io.nifti import Volume, load_volume
from neuroattn.progress import ProgressEvent, listen
from neuroattn.web.figures import slice_images
from neuroattn.web.runs import HarmonizerEntry, find_harmonizers
from neuroattn.web.settings import AppSettings, load_settings
from neuroattn.web.uploads import list_nifti_files, load_upload, new_session_id, session_folder

NIFTI_TYPES = ["nii", "gz"]  # the browser filter; the IO layer checks the real format


def app_settings() -> AppSettings:
    """Settings from the environment the launcher set (cached per browser session)."""
    if "settings" not in st.session_state:
        st.session_state["settings"] = load_settings()
    return st.session_state["settings"]


def upload_folder() -> Path:
    """This browser session's private upload folder."""
    if "upload_session" not in st.session_state:
        st.session_state["upload_session"] = new_session_id()
    return session_folder(app_settings().uploads, st.session_state["upload_session"])


def show_error(exc: BaseException) -> None:
    """One clear line in the page; the app keeps running."""
    st.error(str(exc), icon=":material/error:")


@contextmanager
def guarded() -> Iterator[None]:
    """Show a neuroattn error (bad file, bad setting) in the page instead of a traceback."""
    try:
        yield
    except NeuroattnError as exc:
        show_error(exc)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[ProgressEvent], None]]:
    """A Streamlit progress bar fed by every neuroattn progress update inside the block."""
    bar = st.progress(0.0, text=label)

    def update(event: ProgressEvent) -> None:
        fraction = event.fraction
        total = f"/{event.total}" if event.total else ""
        bar.progress(fraction if fraction is not None else 0.0,
                     text=f"{label} · {event.description or 'working'} {event.done}{total} {event.unit}")

    with listen(update):
        yield update
    bar.progress(1.0, text=f"{label} · done")


def _cached_volume(key: str, loader: Callable[[], Volume]) -> Volume:
    cache: dict[str, Volume] = st.session_state.setdefault("volumes", {})
    if key not in cache:
        cache[key] = loader()
    return cache[key]


def volume_input(label: str, key: str, ndim: int | None = None, workspace_choice: bool = True) -> Volume | None:
    """Upload a NIfTI or pick one already in the workspace; returns the loaded volume or None.

    A bad file shows the IO layer's one-line message under the widget.
    """
    settings = app_settings()
    sources = ["Upload", "Workspace file"] if workspace_choice else ["Upload"]
    source = st.radio(f"{label}: source", sources, horizontal=True, key=f"{key}_source",
                      label_visibility="collapsed") if workspace_choice else "Upload"
    try:
        if source == "Upload":
            uploaded = st.file_uploader(label, type=NIFTI_TYPES, key=f"{key}_upload")
            if uploaded is None:
                return None
            return _cached_volume(f"upload:{uploaded.file_id}:{ndim}", lambda: load_upload(
                uploaded.getvalue(), uploaded.name, upload_folder(), max_mb=settings.max_upload_mb, ndim=ndim))
        files = list_nifti_files(settings.workspace, settings.readable_roots)
        if not files:
            st.info("No NIfTI files in the workspace yet.")
            return None
        labels = {str(p.relative_to(settings.workspace)): p for p in files}
        choice = st.selectbox(label, list(labels), index=None, key=f"{key}_pick", placeholder="Choose a file")
        if choice is None:
            return None
        path = labels[choice]
        return _cached_volume(f"file:{path}:{path.stat().st_mtime_ns}:{ndim}", lambda: load_volume(path, ndim=ndim))
    except NeuroattnError as exc:
        show_error(exc)
        return None


def download_file(label: str, path: Path, key: str, mime: str = "application/octet-stream", **kwargs: Any) -> None:
    """A download button for a file the app wrote."""
    st.download_button(label, data=path.read_bytes(), file_name=path.name, mime=mime, key=key, **kwargs)


def show_slices(title: str, data: np.ndarray, window: tuple[float, float], cmap: str, caption: str,
                index: tuple[int, int, int] | None = None) -> None:
    """A titled row of the three orthogonal views of ``(X, Y, Z)`` data (through the centre by default)."""
    index = index if index is not None else tuple(s // 2 for s in data.shape[:3])  # type: ignore[assignment]
    st.markdown(f"**{title}**")
    for col, (view, image) in zip(st.columns(3), slice_images(data, index, window, cmap).items(), strict=True):
        col.image(image, caption=f"{view} · {caption}", width="stretch")


def checkpoint_picker(key: str, empty_hint: str) -> HarmonizerEntry:
    """Choose one of the harmonizers under the runs folder (newest first); stops the page when there is none."""
    settings = app_settings()
    entries = find_harmonizers(settings.runs)
    if not entries:
        st.info(f"No harmonizer checkpoints under `{settings.runs}`: {empty_hint}")
        st.stop()
    labels = {e.label(settings.runs): e for e in entries}
    entry = labels[st.selectbox("Checkpoint", list(labels), key=key)]
    if not entry.trained:
        st.warning("This checkpoint is UNTRAINED: its outputs are not harmonized scans.")
    return entry
