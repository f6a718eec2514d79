"""Train → apply → evaluate from the CLI on two BraTS-style folders (one per site), no ground truth needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroattn.cli import main
from neuroattn.io.cohort import read_cohort
from neuroattn.io.nifti import load_volume, save_volume, volume_from_array


def _brats_site(root: Path, n: int, gain: float, seed: int, names=("t1", "t1ce", "t2", "flair")) -> Path:
    """Skull-stripped 'brains' (an ellipsoid with two tissues) per subject folder, BraTS file names."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in (24, 28, 20)], indexing="ij"))
    for i in range(n):
        radius = (grid**2).sum(0) * rng.uniform(0.9, 1.1)
        brain = radius < 0.8
        subject = f"BraTS_{seed:02d}{i:03d}"
        (root / subject).mkdir(parents=True)
        for k, name in enumerate(names):
            tissue = np.where(radius < 0.3, 1.0 + 0.2 * k, 0.6)
            img = np.where(brain, gain * tissue**1.3 + 0.02 * rng.normal(size=brain.shape), 0.0)
            save_volume(volume_from_array(img, voxel_size=4.0), root / subject / f"{subject}_{name}.nii.gz")
        seg = (radius < 0.1).astype(np.float32)
        save_volume(volume_from_array(seg, voxel_size=4.0), root / subject / f"{subject}_seg.nii.gz")
    return root


def test_brats_layout_is_read_with_modalities_and_segmentation(tmp_path: Path) -> None:
    root = _brats_site(tmp_path / "site_a", 2, 1.0, 1)
    manifest = read_cohort(root, default_site="A")
    assert len(manifest) == 8 and manifest.sites == ["A"]
    assert sorted(manifest.modalities) == ["FLAIR", "T1ce", "T1w", "T2w"]
    assert all(str(row.extras["seg_path"]).endswith("_seg.nii.gz") for row in manifest)


@pytest.mark.timeout(300)
def test_train_apply_evaluate_on_brats_folders(tmp_path: Path) -> None:
    a = _brats_site(tmp_path / "brats", 3, 1.0, 1, names=("t1", "flair"))
    b = _brats_site(tmp_path / "upenn", 3, 2.5, 2, names=("t1", "flair"))
    manifest = tmp_path / "cohort.csv"
    assert main(["data", "manifest", "--input", str(a), "--site", "brats", "--input", str(b), "--site", "upenn",
                 "--out", str(manifest)]) == 0
    run = tmp_path / "run"
    assert main(["harmonize", "train", "--manifest", str(manifest), "--target", "brats", "--out", str(run),
                 "--steps", "3", "--base-channels", "8", "--res-blocks", "3", "--batch-size", "2", "--disc-layers", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((run / "harmonizer" / "config.json").read_text())["trained"] is True
    out = tmp_path / "harmonized"
    assert main(["harmonize", "apply", "--checkpoint", str(run), "--input", str(manifest), "--out", str(out),
                 "--no-progress"]) == 0
    outputs = sorted(out.rglob("*.nii.gz"))
    assert len(outputs) == 12  # 6 subjects × 2 modalities
    first = load_volume(outputs[0])
    assert first.shape == (24, 28, 20)
    metrics = tmp_path / "eval" / "metrics.json"
    assert main(["harmonize", "evaluate", "--manifest", str(manifest), "--harmonized", f"sa-cyclegan={out}",
                 "--out", str(metrics), "--permutations", "32", "--no-progress"]) == 0
    data = json.loads(metrics.read_text())
    assert set(data["headline"]) == {"raw", "sa-cyclegan"}
    assert (metrics.parent / "report.html").is_file()
