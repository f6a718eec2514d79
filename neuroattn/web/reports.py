"""Evaluations the Report page can open: found by their metrics.json, read into tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neuroattn.errors import InvalidInputError
from neuroattn.harmonize.evaluate import metrics_table
from neuroattn.web.uploads import files_named

HEADLINE_ORDER = ("psnr", "ssim", "dice_vs_ground_truth", "mmd_intensity", "mmd_intensity_p", "domain_accuracy",
                  "domain_auc", "ks", "wasserstein", "icc")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation folder: metrics, and the report and figures written beside it."""

    metrics_json: Path
    metrics: dict[str, Any]

    @property
    def report_html(self) -> Path | None:
        path = self.metrics_json.with_name("report.html")
        return path if path.is_file() else None

    @property
    def figures(self) -> list[Path]:
        return sorted(self.metrics_json.parent.glob("*.png"))

    def table(self) -> pd.DataFrame:
        """Methods × headline metrics, the most-read columns first."""
        table = metrics_table(self.metrics)
        first = [c for c in HEADLINE_ORDER if c in table.columns]
        return table[first + [c for c in table.columns if c not in first]]

    def untrained(self) -> list[str]:
        return [name for name, block in self.metrics.get("methods", {}).items()
                if isinstance(block, dict) and block.get("trained") is False]

    def ablation(self) -> pd.DataFrame | None:
        """The attention ablation rows when the evaluation holds both model variants."""
        table = self.table()
        variants = [m for m in ("sa-cyclegan", "sa-cyclegan-noattn") if m in table.index]
        return table.loc[variants] if len(variants) == 2 else None


def find_evaluations(root: Path, max_depth: int = 6) -> list[Path]:
    """Every ``metrics.json`` with a ``headline`` under ``root``, newest first."""
    found = []
    for path in files_named(root, "metrics.json", max_depth):
        try:
            if "headline" in json.loads(path.read_text()):
                found.append(path)
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def load_evaluation(path: Path) -> Evaluation:
    """Read one evaluation; a file that is not an evaluation's metrics.json gets a one-line error."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read evaluation metrics ({exc})", path) from None
    if not isinstance(metrics, dict) or "headline" not in metrics:
        raise InvalidInputError("not an evaluation's metrics.json (no 'headline' block)", path)
    return Evaluation(Path(path), metrics)
