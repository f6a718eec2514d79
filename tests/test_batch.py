"""Batch runner: failures skipped and listed, ledger-based resume with checksums, Dask LocalCluster path."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import pytest

from neuroattn.batch import WorkUnit, read_ledger, run_batch
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_write_text


def double_file(unit: WorkUnit) -> dict:
    """Module-level so Dask can pickle it: output = input number × 2; 'bad' inputs fail."""
    text = unit.inputs[0].read_text()
    if text == "bad":
        raise InvalidInputError("not a number", unit.inputs[0])
    atomic_write_text(unit.outputs[0], str(int(text) * 2))
    return {"value": int(text) * 2}


def _units(tmp_path: Path, values: dict[str, str]) -> list[WorkUnit]:
    units = []
    for key, value in values.items():
        src = tmp_path / "in" / f"{key}.txt"
        src.parent.mkdir(exist_ok=True)
        if not src.exists() or src.read_text() != value:
            src.write_text(value)
        units.append(WorkUnit(key, (src,), (tmp_path / "out" / f"{key}.txt",)))
    return units


def test_bad_unit_is_listed_and_the_rest_finish(tmp_path: Path) -> None:
    units = _units(tmp_path, {"a": "1", "b": "bad", "c": "3"})
    report = run_batch(units, double_file, tmp_path / "out", progress=False)
    assert [r.status for r in report.results] == ["done", "failed", "done"]
    assert (tmp_path / "out" / "c.txt").read_text() == "6"
    rows = list(csv.DictReader(report.failures.open()))
    assert len(rows) == 1 and rows[0]["key"] == "b" and "b.txt: not a number" in rows[0]["reason"]
    assert set(read_ledger(tmp_path / "out")) == {"a", "c"}


def test_resume_skips_only_unchanged_finished_units(tmp_path: Path) -> None:
    calls: list[str] = []

    def counting(unit: WorkUnit) -> dict:
        calls.append(unit.key)
        return double_file(unit)

    units = _units(tmp_path, {"a": "1", "b": "2", "c": "3"})
    run_batch(units, counting, tmp_path / "out", fingerprint="ckpt-1", progress=False)
    assert calls == ["a", "b", "c"]
    calls.clear()
    # change b's input, damage c's output: both must run again; a is skipped
    units = _units(tmp_path, {"a": "1", "b": "5", "c": "3"})
    (tmp_path / "out" / "c.txt").write_text("tampered")
    report = run_batch(units, counting, tmp_path / "out", fingerprint="ckpt-1", resume=True, progress=False)
    assert calls == ["b", "c"]
    assert [r.status for r in report.results] == ["skipped", "done", "done"]
    assert (tmp_path / "out" / "b.txt").read_text() == "10" and (tmp_path / "out" / "c.txt").read_text() == "6"
    calls.clear()
    # other settings (fingerprint) rerun everything
    run_batch(units, counting, tmp_path / "out", fingerprint="ckpt-2", resume=True, progress=False)
    assert calls == ["a", "b", "c"]


def test_interrupted_ledger_line_is_ignored(tmp_path: Path) -> None:
    units = _units(tmp_path, {"a": "1", "b": "2"})
    run_batch(units, double_file, tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "ledger.jsonl", "a") as fh:
        fh.write('{"key": "b", "status": "do')  # torn write
    assert set(read_ledger(tmp_path / "out")) == {"a", "b"}


def test_duplicate_keys_rejected(tmp_path: Path) -> None:
    unit = _units(tmp_path, {"a": "1"})[0]
    with pytest.raises(ValueError, match="unique"):
        run_batch([unit, unit], double_file, tmp_path / "out", progress=False)


@pytest.mark.timeout(180)
def test_dask_local_cluster_gives_same_outputs(tmp_path: Path) -> None:
    units = _units(tmp_path, {"a": "1", "b": "bad", "c": "3", "d": "4"})
    report = run_batch(units, double_file, tmp_path / "out", scheduler="local", n_workers=2, progress=False)
    assert [r.status for r in report.results] == ["done", "failed", "done", "done"]
    assert [(tmp_path / "out" / f"{k}.txt").read_text() for k in "acd"] == ["2", "6", "8"]
    summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert summary["results"][0]["info"] == {"value": 2}


def test_dask_workers_do_not_rerun_a_script_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # under Streamlit, __main__ is the page script; spawned Dask workers must not execute it
    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('the page script ran in a worker')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    units = _units(tmp_path, {"a": "1", "c": "3"})
    report = run_batch(units, double_file, tmp_path / "out", scheduler="local", n_workers=2, progress=False)
    assert [r.status for r in report.results] == ["done", "done"]
    assert sys.modules["__main__"] is fake_main
