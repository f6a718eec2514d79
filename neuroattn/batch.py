"""Run one function over many work units (subjects): resumable ledger, skip-and-report failures, local or Dask.

Every unit's outputs are written by the unit function itself (atomically, through ``neuroattn.io``); this
module decides which units still need to run, runs them in-process or on a Dask cluster, and records each
finished unit in ``ledger.jsonl`` with checksums of its inputs and outputs, so a rerun with ``resume=True``
skips exactly the units whose inputs and outputs are unchanged. Units that fail are listed with their reason
in ``failures.csv`` while the others carry on.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neuroattn.errors import ConfigError, NeuroattnError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.progress import progress_bar

LEDGER_NAME = "ledger.jsonl"
FAILURES_NAME = "failures.csv"


@dataclass(frozen=True)
class WorkUnit:
    """One independent piece of a batch (typically one subject visit): its key, inputs and planned outputs."""

    key: str
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitResult:
    """What happened to one unit."""

    key: str
    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchReport:
    """Outcome of a batch: per-unit results and where the ledger and failure list are."""

    results: list[UnitResult]
    ledger: Path
    failures: Path

    @property
    def done(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "done"]

    @property
    def skipped(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "skipped"]

    @property
    def failed(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> str:
        return f"{len(self.done)} done, {len(self.skipped)} skipped (already finished), {len(self.failed)} failed"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _checksums(paths: Iterable[Path]) -> dict[str, str]:
    return {str(p): file_sha256(p) for p in paths}


def read_ledger(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Latest ledger entry per unit key (a torn last line from an interrupted run is ignored)."""
    path = Path(out_dir) / LEDGER_NAME
    entries: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        entries[entry["key"]] = entry
    return entries


def is_finished(unit: WorkUnit, entry: dict[str, Any] | None, fingerprint: str) -> bool:
    """True when the ledger says the unit finished with the same inputs, settings and intact outputs."""
    if not entry or entry.get("status") != "done" or entry.get("fingerprint") != fingerprint:
        return False
    try:
        if entry.get("inputs") != _checksums(unit.inputs):
            return False
        return all(Path(p).is_file() and file_sha256(Path(p)) == digest for p, digest in entry["outputs"].items())
    except OSError:
        return False


def _append_ledger(out_dir: Path, unit: WorkUnit, result: UnitResult, fingerprint: str) -> None:
    entry = {
        "key": unit.key,
        "status": result.status,
        "fingerprint": fingerprint,
        "inputs": _checksums(unit.inputs),
        "outputs": _checksums(Path(p) for p in result.outputs),
        "seconds": round(result.seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "info": result.info,
    }
    with open(Path(out_dir) / LEDGER_NAME, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()


def _write_failures(out_dir: Path, units: dict[str, WorkUnit], failed: Sequence[UnitResult]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["key", "inputs", "reason"])
    for r in failed:
        writer.writerow([r.key, ";".join(str(p) for p in units[r.key].inputs), r.reason])
    return atomic_write_text(Path(out_dir) / FAILURES_NAME, buffer.getvalue())


def run_unit(fn: Callable[[WorkUnit], dict[str, Any] | None], unit: WorkUnit) -> UnitResult:
    """Run one unit, turning a user-facing error into a 'failed' result instead of stopping the batch."""
    start = time.perf_counter()
    try:
        info = fn(unit) or {}
    except NeuroattnError as exc:
        return UnitResult(unit.key, "failed", str(exc), time.perf_counter() - start)
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        return UnitResult(unit.key, "failed", reason, time.perf_counter() - start)
    missing = [str(p) for p in unit.outputs if not Path(p).is_file()]
    if missing:
        return UnitResult(unit.key, "failed", f"outputs not written: {missing}", time.perf_counter() - start)
    return UnitResult(unit.key, "done", "", time.perf_counter() - start, [str(p) for p in unit.outputs], info)


def run_batch(
    units: Sequence[WorkUnit],
    fn: Callable[[WorkUnit], dict[str, Any] | None],
    out_dir: str | Path,
    *,
    fingerprint: str = "",
    resume: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    description: str = "units",
    on_result: Callable[[UnitResult], None] | None = None,
) -> BatchReport:
    """Run ``fn`` over ``units``; finished units are skipped on ``resume``; failures are collected, not raised.

    ``fingerprint`` identifies the settings (e.g. the checkpoint's checksum): a unit finished under another
    fingerprint runs again. ``scheduler``: None runs in this process; ``"local"`` starts an embedded Dask
    LocalCluster; any other value is a Dask scheduler address (``tcp://host:8786``). ``fn`` must then be
    picklable by Dask (a module-level function or a ``functools.partial`` of one).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ConfigError("work unit keys must be unique")
    by_key = {u.key: u for u in units}
    ledger = read_ledger(out_dir) if resume else {}
    if not resume:
        (out_dir / LEDGER_NAME).unlink(missing_ok=True)
    results: dict[str, UnitResult] = {}
    todo: list[WorkUnit] = []
    for unit in units:
        if resume and is_finished(unit, ledger.get(unit.key), fingerprint):
            results[unit.key] = UnitResult(unit.key, "skipped", "finished in an earlier run", 0.0,
                                           [str(p) for p in unit.outputs])
        else:
            todo.append(unit)
    bar = progress_bar(total=len(units), initial=len(units) - len(todo), desc=description, disable=not progress)

    def record(result: UnitResult) -> None:
        results[result.key] = result
        if result.status == "done":
            _append_ledger(out_dir, by_key[result.key], result, fingerprint)
        bar.update(1)
        bar.set_postfix(failed=sum(r.status == "failed" for r in results.values()))
        if on_result is not None:
            on_result(result)

    for result in results.values():
        if on_result is not None:
            on_result(result)
    if scheduler is None:
        for unit in todo:
            record(run_unit(fn, unit))
    else:
        _run_on_dask(todo, fn, scheduler, n_workers, record)
    bar.close()
    ordered = [results[k] for k in keys]
    failures = _write_failures(out_dir, by_key, [r for r in ordered if r.status == "failed"])
    atomic_write_text(out_dir / "batch_summary.json",
                      json.dumps({"results": [asdict(r) for r in ordered]}, indent=2) + "\n")
    return BatchReport(ordered, out_dir / LEDGER_NAME, failures)


@contextlib.contextmanager
def _plain_main_module() -> Iterator[None]:
    """Hide a script ``__main__`` while worker processes spawn.

    Spawned processes re-run the parent's ``__main__`` file; under Streamlit that is the page script, which
    must not run in a worker. A bare module makes them start from the library alone.
    """
    saved = sys.modules.get("__main__")
    if saved is None or not getattr(saved, "__file__", None):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def _run_on_dask(
    units: Sequence[WorkUnit],
    fn: Callable[[WorkUnit], dict[str, Any] | None],
    scheduler: str,
    n_workers: int | None,
    record: Callable[[UnitResult], None],
) -> None:
    """Submit every unit to Dask (embedded LocalCluster for 'local') and record results as they complete."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is a core dependency
        raise ConfigError("Dask scheduling needs the 'distributed' package: pip install distributed") from exc
    cluster = None
    if scheduler == "local":
        with _plain_main_module():
            cluster = LocalCluster(n_workers=n_workers or 2, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = [client.submit(run_unit, fn, unit, key=f"unit-{i}-{unit.key}", pure=False)
                   for i, unit in enumerate(units)]
        for future in as_completed(futures):
            record(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
