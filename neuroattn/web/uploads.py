"""Safe handling of what a browser sends: sanitized names, per-session folders, size limits, paths kept in roots."""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_write_bytes
from neuroattn.io.nifti import NIFTI_SUFFIXES, Volume, load_volume


class ListedFolder(Protocol):
    """A record the app lists: the folder it describes and when its file was written."""

    @property
    def path(self) -> Path: ...

    @property
    def modified(self) -> float: ...


T = TypeVar("T", bound=ListedFolder)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def sanitize_filename(name: str) -> str:
    """A plain file name from whatever the browser sent: no folders, no traversal, no hidden files.

    ``../../etc/passwd`` → ``passwd``; ``C:\\scans\\sub 01.nii.gz`` → ``sub_01.nii.gz``.
    """
    base = re.split(r"[\\/]", unicodedata.normalize("NFKC", name))[-1]
    base = _UNSAFE.sub("_", base).strip("._") or "upload"
    return base[-120:]


def new_session_id() -> str:
    """Random id naming a browser session's upload folder."""
    return secrets.token_hex(8)


def session_folder(uploads_root: Path, session_id: str) -> Path:
    """``uploads_root/<session_id>``, created; ids that could escape the folder are refused."""
    if not _SESSION.match(session_id):
        raise InvalidInputError(f"invalid upload session id {session_id!r}", uploads_root)
    folder = uploads_root / session_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_upload(content: bytes, name: str, folder: Path, *, max_mb: int,
                suffixes: tuple[str, ...] = NIFTI_SUFFIXES,
                wrong_type: str = "not a NIfTI file name (expected .nii or .nii.gz)") -> Path:
    """Write an upload into ``folder`` atomically under its sanitized name and return the path.

    Refuses files over ``max_mb`` and names without one of ``suffixes`` (default: NIfTI; ``wrong_type`` says
    so) before writing anything.
    """
    safe = sanitize_filename(name)
    if not safe.endswith(suffixes):
        raise InvalidInputError(wrong_type, safe)
    size_mb = len(content) / 2**20
    if size_mb > max_mb:
        raise InvalidInputError(f"upload of {size_mb:.1f} MB is over the {max_mb} MB limit", safe)
    target = folder / safe
    atomic_write_bytes(target, content)
    return target


def load_upload(content: bytes, name: str, folder: Path, *, max_mb: int, ndim: int | None = None) -> Volume:
    """Save an upload and read it through the IO layer; a bad file is removed again and its error raised."""
    path = save_upload(content, name, folder, max_mb=max_mb)
    try:
        return load_volume(path, ndim=ndim)
    except InvalidInputError as exc:
        path.unlink(missing_ok=True)
        raise InvalidInputError(exc.problem, sanitize_filename(name)) from None


def resolve_inside(path: str | Path, roots: tuple[Path, ...]) -> Path:
    """The real path of ``path`` if it lies inside one of ``roots`` (symlinks resolved), else a clear error."""
    real = Path(path).expanduser().resolve()
    if _inside(real, roots):
        return real
    allowed = ", ".join(str(r) for r in roots)
    raise InvalidInputError(f"outside the folders this app may read ({allowed})", path)


def _inside(real: Path, roots: tuple[Path, ...]) -> bool:
    return any(real.is_relative_to(root.resolve()) for root in roots)


def list_nifti_files(folder: Path, roots: tuple[Path, ...], limit: int = 2000) -> list[Path]:
    """NIfTI files under ``folder`` (recursively, sorted), which must lie inside ``roots``."""
    folder = resolve_inside(folder, roots)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    return [p for p in found if _inside(p.resolve(), roots)][:limit]  # links pointing out are left out


def files_named(root: Path, name: str, max_depth: int) -> list[Path]:
    """Files called ``name`` in ``root`` and up to ``max_depth - 1`` folders below it (bounded, unlike rglob)."""
    found: list[Path] = []
    for depth in range(max_depth):
        found += root.glob("/".join(["*"] * depth + [name]))
    return found


def is_inside(path: str | Path, roots: tuple[Path, ...]) -> bool:
    """Whether the real path of ``path`` (symlinks resolved) lies inside one of ``roots``."""
    return _inside(Path(path).expanduser().resolve(), roots)


def find_records(search: Iterable[Path], name: str, read: Callable[[Path], T | None], roots: tuple[Path, ...],
                 max_depth: int) -> list[T]:
    """Records read from the files called ``name`` under ``search`` (``max_depth`` folders down), newest first.

    ``read`` turns a file into a record with ``path`` (its folder) and ``modified`` (seconds), or None when the
    file is not readable; records outside ``roots`` are left out, and each folder is listed once.
    """
    found: dict[Path, T] = {}
    for root in search:
        if not root.is_dir():
            continue
        for info_path in files_named(root, name, max_depth + 1):
            record = read(info_path)
            if record is not None and is_inside(record.path, roots):
                found.setdefault(record.path.resolve(), record)
    return sorted(found.values(), key=lambda r: r.modified, reverse=True)
