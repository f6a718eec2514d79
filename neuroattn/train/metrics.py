"""Metric rows of a run: appended to metrics.jsonl, tabulated into metrics.csv, mirrored to TensorBoard."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

from neuroattn.io.atomic import atomic_write_text

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Complete JSON rows of a metrics file; a torn last line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def seconds_per_step(run_dir: str | Path, skip: int) -> float:
    """Mean wall seconds per optimizer step after the first ``skip`` logged steps of a run (warm-up excluded),
    from the ``seconds`` its rows record; needs a row at step ``skip`` and a later one."""
    times = {int(r["step"]): float(r["seconds"]) for r in read_rows(Path(run_dir) / JSONL_NAME) if "seconds" in r}
    last = max(times, default=skip)
    if skip not in times or last <= skip:
        raise ValueError(f"{Path(run_dir) / JSONL_NAME}: no timed rows at step {skip} and after it")
    return (times[last] - times[skip]) / (last - skip)


class MetricLogger:
    """Writes one JSON object per row to ``metrics.jsonl`` (append-only while training).

    ``metrics.csv`` is rebuilt from it atomically by :meth:`write_csv` (the trainer calls it at every
    checkpoint and at the end), with one column per key ever seen. A disabled logger (ranks other than
    0) writes nothing. TensorBoard events go to ``out_dir/tensorboard`` when the package is installed.
    """

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.jsonl_path = self.out_dir / JSONL_NAME
        self.csv_path = self.out_dir / CSV_NAME
        self._handle: io.TextIOWrapper | None = None
        self._writer: Any = None

    def start(self, resume_step: int = 0) -> None:
        """Open the log, keeping only rows up to ``resume_step`` so a resumed run never repeats a step."""
        if not self.enabled:
            return
        kept = [row for row in read_rows(self.jsonl_path) if row["step"] <= resume_step]
        atomic_write_text(self.jsonl_path, "".join(_dumps(row) + "\n" for row in kept))
        self._handle = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if self.tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, row: dict[str, Any]) -> None:
        """Append one row; it must hold an integer ``step``."""
        if not self.enabled or self._handle is None:
            return
        self._handle.write(_dumps(row) + "\n")
        self._handle.flush()
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, row["step"])

    def write_csv(self) -> None:
        """Rebuild ``metrics.csv`` from ``metrics.jsonl``."""
        if not self.enabled:
            return
        rows = read_rows(self.jsonl_path)
        columns: dict[str, None] = {"step": None}
        for row in rows:
            columns.update(dict.fromkeys(row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, buffer.getvalue())
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _dumps(row: dict[str, Any]) -> str:
    # NaN/inf are written as null: JSON has no spelling for them and readers choke on Python's.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(clean)
