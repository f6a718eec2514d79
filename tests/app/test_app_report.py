"""Report page headless: an evaluation is found, its methods are side by side; a wrong file gets one clear line."""

from __future__ import annotations

from pathlib import Path

from app_test_support import APP_DIR, AppWorkspace
from streamlit.testing.v1 import AppTest

from neuroattn.harmonize.apply import apply_harmonizer
from neuroattn.harmonize.assessment import evaluate_outputs

REPORT = str(APP_DIR / "views" / "report.py")


def test_report_shows_every_method_and_the_files(workspace_env: AppWorkspace) -> None:
    out = workspace_env.root / "outputs" / "report-test"
    harmonized = {}
    for name, run in (("nyul", workspace_env.nyul), ("sa-cyclegan", workspace_env.sa_cyclegan)):
        apply_harmonizer(run, workspace_env.cohort / "manifest.csv", out / name, progress=False)
        harmonized[name] = out / name
    files = evaluate_outputs(workspace_env.cohort / "manifest.csv", harmonized, out / "evaluation",
                             n_permutations=16, progress=False, trained={"sa-cyclegan": False})
    at = AppTest.from_file(REPORT, default_timeout=60).run()
    assert not at.exception
    choice = str(files.metrics_json.relative_to(workspace_env.root))
    at.selectbox(key="report_pick").set_value(choice).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table.index) == ["raw", "nyul", "sa-cyclegan"]
    assert {"psnr", "ssim", "mmd_intensity", "domain_accuracy"} <= set(table.columns)
    assert table.loc["nyul", "psnr"] == files.metrics["headline"]["nyul"]["psnr"]
    assert any("UNTRAINED" in w.value and "sa-cyclegan" in w.value for w in at.warning)
    labels = [d.label for d in at.get("download_button")]
    assert labels == ["metrics.json", "metrics.csv", "report.html"]


def test_report_refuses_other_files_and_outside_paths(workspace_env: AppWorkspace, tmp_path: Path) -> None:
    not_metrics = workspace_env.root / "outputs" / "other.json"
    not_metrics.write_text('{"a": 1}')
    at = AppTest.from_file(REPORT, default_timeout=60).run()
    at.text_input(key="report_path").input(str(not_metrics)).run()
    assert not at.exception and len(at.error) == 1 and "not an evaluation's metrics.json" in at.error[0].value
    at.text_input(key="report_path").input(str(tmp_path / "metrics.json")).run()
    assert len(at.error) == 1 and "outside the folders this app may read" in at.error[0].value
