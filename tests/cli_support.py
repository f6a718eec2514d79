"""Running ``neuroattn`` commands in-process in tests, and checking that user errors come as one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroattn.cli import main


def run_cli(*args: str | Path) -> int:
    """Exit status of ``neuroattn ARGS --no-progress``."""
    return main([str(a) for a in args] + ["--no-progress"])


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Run a command that must fail on bad input: exit 2, one ``error:`` line on stderr, no traceback."""
    capsys.readouterr()
    assert run_cli(*args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in captured.err + captured.out
    return err
