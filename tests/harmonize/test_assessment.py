"""Evaluating harmonized folders on disk: metrics JSON/CSV and an HTML report with every method side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort
from neuroattn.errors import InvalidInputError
from neuroattn.harmonize import NyulHarmonizer
from neuroattn.harmonize.apply import apply_harmonizer
from neuroattn.harmonize.assessment import evaluate_outputs
from neuroattn.io.manifest import load_manifest


@pytest.fixture(scope="module")
def harmonized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("assess")
    synthesize_mri_cohort(root / "cohort", SynthMRIConfig(n_subjects=4, n_sites=2, seed=11, voxel_size=6.0,
                                                          modalities=("T1w",)), progress=False)
    ckpt = NyulHarmonizer(progress=False).fit(load_manifest(root / "cohort" / "manifest.csv")).save(root / "nyul")
    apply_harmonizer(ckpt, root / "cohort" / "manifest.csv", root / "out", progress=False)
    return root / "cohort" / "manifest.csv", root / "out"


def test_metrics_and_report_written(harmonized: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, outputs = harmonized
    files = evaluate_outputs(manifest, {"nyul": outputs}, tmp_path / "eval" / "metrics.json",
                             n_permutations=64, progress=False, trained={"nyul": True})
    metrics = json.loads(files.metrics_json.read_text())
    assert set(metrics["headline"]) == {"raw", "nyul"}
    raw, nyul = metrics["headline"]["raw"], metrics["headline"]["nyul"]
    assert nyul["psnr"] > raw["psnr"] + 3.0  # Nyul brings site B's scale onto the reference site's
    assert nyul["ks"] < raw["ks"]
    table = pd.read_csv(files.metrics_csv, index_col="method")
    assert list(table.index) == ["raw", "nyul"]
    page = files.report_html.read_text()
    assert "<table>" in page and "nyul" in page and page.count("data:image/png;base64,") == 2
    assert "Untrained" not in page


def test_missing_output_is_named(harmonized: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, _ = harmonized
    with pytest.raises(InvalidInputError, match="no 'nyul' output for"):
        evaluate_outputs(manifest, {"nyul": tmp_path / "empty"}, tmp_path / "m.json", progress=False)
