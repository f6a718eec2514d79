"""Atomic writes: target replaced only on success, temp files cleaned up, ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neuroattn.io.atomic import atomic_path, atomic_write_text


def test_success_replaces_target_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_keeps_old_content_and_leaves_nothing(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "metrics.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
