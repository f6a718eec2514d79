"""End to end through the CLI: synth commands and the demo write what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from neuroattn.cli import main
from neuroattn.io.manifest import load_manifest


def test_synth_mri_cli_writes_manifest_and_effects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    code = main(["data", "synth-mri", "--out", str(out), "--sites", "3", "--subjects", "1",
                 "--modalities", "T1w", "--seed", "3", "--no-progress"])
    assert code == 0
    manifest = load_manifest(out / "manifest.csv", expected_modalities=["T1w"])
    assert sorted(manifest.sites) == ["siteA", "siteB", "siteC"] and len(manifest) == 3
    effects = json.loads((out / "site_effects.json").read_text())
    assert effects["seed"] == 3
    assert "manifest.csv" in capsys.readouterr().out


def test_synth_fmri_cli_writes_labels(tmp_path: Path) -> None:
    out = tmp_path / "fmri"
    assert main(["data", "synth-fmri", "--out", str(out), "--subjects", "2", "--frames", "40", "--no-bold",
                 "--no-progress"]) == 0
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert len(participants) == 2 and set(participants["label"]) <= {0, 1}
    assert (out / "ground_truth.json").is_file()


@pytest.mark.timeout(300)
def test_quick_demo_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["headline"]) == {"raw", "sa-cyclegan", "sa-cyclegan-noattn", "nyul"}
    assert summary["trained"]["sa-cyclegan"] is True
    for name in ("sa-cyclegan", "sa-cyclegan-noattn", "nyul"):
        outputs = sorted((out / "harmonized" / name).rglob("*.nii.gz"))
        assert len(outputs) == 2 * 2 * 2  # held-out subjects × sites × contrasts
    page = (out / "evaluation" / "report.html").read_text()
    assert "Attention ablation" in page and "sa-cyclegan-noattn" in page
    # the evaluation saw the planted site effect in the raw scans
    assert summary["headline"]["raw"]["ks"] > 0.2
    png = (out / "cohort_preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "report:" in printed and "targets:" in printed
