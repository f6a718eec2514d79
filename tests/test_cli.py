"""CLI: help for every command, info, and user errors as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuroattn.cli import main
from neuroattn.io.nifti import save_volume, volume_from_array

COMMANDS = [
    [],
    ["info"],
    ["data"],
    ["data", "synth-mri"],
    ["data", "synth-fmri"],
    ["data", "validate"],
    ["demo"],
    ["app"],
    ["harmonize"],
    ["harmonize", "train"],
    ["harmonize", "apply"],
    ["harmonize", "evaluate"],
    ["bench"],
    ["bench", "attention"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and "--help" in out


def test_info_reports_versions_and_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out or "device: cuda" in out
    assert "sdpa=yes" in out
    assert "torch" in out and "nibabel" in out


def test_validate_reports_good_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_volume(volume_from_array(np.ones((4, 4, 4))), tmp_path / "good.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    code = main(["data", "validate", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "ok   " in out and "good.nii.gz" in out
    assert "FAIL" in out and "bad.nii.gz" in out and "gzip" in out
    assert "1 ok, 1 failed" in out


def test_user_error_is_one_line_with_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "neuroattn.cli", "data", "validate", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_option_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth-mri", "--out", "x", "--sites", "1"]) == 2
    assert "--sites" in capsys.readouterr().err
