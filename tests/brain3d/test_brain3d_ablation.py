"""ROI ablation: zeroing a region group changes only the head that reads it; perturbation is seeded; the table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from neuroattn.brain3d.ablation import cosine, iou, pixcorr, roi_ablation
from neuroattn.brain3d.conditioning import decode_conditioning
from neuroattn.brain3d.pipeline import Brain3DSettings
from neuroattn.cli import main
from neuroattn.data.nsd import load_subject
from neuroattn.decode.runs import open_run
from neuroattn.errors import ConfigError
from neuroattn.pipelines import load_pipeline_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2] / "pipelines"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("b3d_abl")
    import scipy.linalg  # noqa: F401  (its OpenBLAS must be loaded for the thread limit to reach it)

    with threadpool_limits(limits=1):
        assert main(["decode", "simulate", "--config", str(ROOT / "decode" / "simulate-tiny.yaml"), "--out",
                     str(root / "data"), "--no-progress"]) == 0
        assert main(["decode", "train", "--data", str(root / "data"), "--model", "ridge", "--out",
                     str(root / "ridge"), "--no-progress"]) == 0
    bundle, subject, decoder = open_run(root / "ridge")
    raw = load_subject(root / "data", subject, zscore=False)
    np.save(root / "trial.npy", raw.betas[raw.is_test][0])
    betas, _ = bundle.subject(subject).trials(test=True)
    return root, bundle, subject, decoder, betas[0]


def test_zeroing_a_group_changes_only_the_head_that_reads_it(run) -> None:
    _, bundle, subject, decoder, betas = run
    base = decode_conditioning(bundle, subject, decoder, betas)
    higher = decode_conditioning(bundle, subject, decoder, betas, ablate="higher")
    np.testing.assert_array_equal(higher.lowlevel_image, base.lowlevel_image)  # bit-identical
    assert cosine(higher.clip_tokens, base.clip_tokens) < 0.999
    v1 = decode_conditioning(bundle, subject, decoder, betas, ablate="V1")
    np.testing.assert_array_equal(v1.clip_tokens, base.clip_tokens)  # the CLIP head never reads V1
    assert np.abs(v1.lowlevel_image - base.lowlevel_image).max() > 0
    assert pixcorr(v1.lowlevel_image, base.lowlevel_image) < 1.0


def test_perturbation_is_seeded(run) -> None:
    _, bundle, subject, decoder, betas = run
    a = decode_conditioning(bundle, subject, decoder, betas, ablate="higher", mode="perturb", seed=4)
    b = decode_conditioning(bundle, subject, decoder, betas, ablate="higher", mode="perturb", seed=4)
    c = decode_conditioning(bundle, subject, decoder, betas, ablate="higher", mode="perturb", seed=5)
    np.testing.assert_array_equal(a.clip_tokens, b.clip_tokens)
    assert not np.array_equal(a.clip_tokens, c.clip_tokens)
    np.testing.assert_array_equal(a.lowlevel_image, c.lowlevel_image)


def test_metrics_closed_forms() -> None:
    x = np.array([1.0, 2.0, 3.0])
    assert cosine(x, 2 * x) == pytest.approx(1.0) and cosine(x, -x) == pytest.approx(-1.0)
    assert pixcorr(x, 3 * x + 1) == pytest.approx(1.0)
    a, b = np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)
    assert iou(a, b) == pytest.approx(1 / 3) and iou(a, a) == 1.0


def test_roi_ablation_table(run, tmp_path: Path) -> None:
    root = run[0]
    settings = load_pipeline_config(ROOT / "brain3d" / "tiny.yaml", Brain3DSettings)
    rows = roi_ablation(settings, tmp_path, fmri=root / "trial.npy", checkpoint=root / "ridge",
                        groups=["V1", "higher"], modes=("zero",), progress=False)
    assert [(r["group"], r["mode"], r["head"]) for r in rows] == [("V1", "zero", "lowlevel"),
                                                                   ("higher", "zero", "semantic")]
    v1, higher = rows
    assert v1["clip_cosine"] == pytest.approx(1.0) and v1["reference_pixcorr"] < 1.0
    assert higher["reference_pixcorr"] == 1.0 and higher["reference_mae"] == 0.0 and higher["clip_cosine"] < 0.999
    for r in rows:
        assert 0.0 <= r["silhouette_iou"] <= 1.0 and 0.0 <= r["voxel_iou"] <= 1.0 and r["render_mae"] >= 0.0
    with open(tmp_path / "ablation.csv", newline="", encoding="utf-8") as fh:
        assert [r["group"] for r in csv.DictReader(fh)] == ["V1", "higher"]
    assert (tmp_path / "ablation.json").is_file() and (tmp_path / "ablation_renders.png").is_file()
    assert (tmp_path / "baseline" / "mesh.glb").is_file() and (tmp_path / "higher-zero" / "brain3d.json").is_file()
    with pytest.raises(ConfigError, match="unknown region"):
        roi_ablation(settings, tmp_path / "x", fmri=root / "trial.npy", checkpoint=root / "ridge", groups=["V9"],
                     progress=False)
