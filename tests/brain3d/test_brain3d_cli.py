"""`neuroattn brain3d generate | ablate` end to end on a tiny data folder and a ridge decoding run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from cli_support import run_cli
from PIL import Image
from threadpoolctl import threadpool_limits

from neuroattn.brain3d.pipeline import Brain3DSettings
from neuroattn.data.nsd import load_subject
from neuroattn.pipelines import load_pipeline_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2] / "pipelines"
TINY = ROOT / "brain3d" / "tiny.yaml"



@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("b3d_cli")
    import scipy.linalg  # noqa: F401  (its OpenBLAS must be loaded for the thread limit to reach it)

    p = {k: root / k for k in ("data", "ridge", "fmri-out", "image-out", "ablate")}
    with threadpool_limits(limits=1):
        tiny = ROOT / "decode" / "simulate-tiny.yaml"
        assert run_cli("decode", "simulate", "--config", tiny, "--out", p["data"]) == 0
        assert run_cli("decode", "train", "--data", p["data"], "--model", "ridge", "--out", p["ridge"]) == 0
        raw = load_subject(p["data"], "subj01", zscore=False)
        p["trial"] = root / "trial.npy"
        np.save(p["trial"], raw.betas[raw.is_test][0])  # (V,) one test trial's raw betas
        assert run_cli("brain3d", "generate", "--config", TINY, "--fmri", p["trial"], "--checkpoint", p["ridge"],
                    "--out", p["fmri-out"]) == 0
        assert run_cli("brain3d", "generate", "--config", TINY, "--image", p["fmri-out"] / "reference.png",
                    "--data", p["data"], "--out", p["image-out"]) == 0
        assert run_cli("brain3d", "ablate", "--config", TINY, "--fmri", p["trial"], "--checkpoint", p["ridge"],
                    "--modes", "zero", "--out", p["ablate"]) == 0
    return p


@pytest.mark.parametrize("which", ["fmri-out", "image-out"])
def test_generate_writes_loadable_files(done, which: str) -> None:
    out = done[which]
    for name in ("mesh.glb", "mesh.ply", "mesh.obj"):
        mesh = trimesh.load(out / name, force="mesh")
        assert len(mesh.faces) > 50 and np.isfinite(mesh.vertices).all()
        assert np.abs(mesh.vertices).max() <= 1.0 + 1e-6  # inside the field's box
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 6 and gif.size == (32, 32)
    assert Image.open(out / "reference.png").size == (32, 32)  # the data folder's image size
    with np.load(out / "conditioning.npz") as npz:
        assert npz["lowlevel_image"].shape == (3, 32, 32) and npz["clip_tokens"].ndim == 2
    record = json.loads((out / "brain3d.json").read_text())
    assert record["mesh"]["faces"] == len(trimesh.load(out / "mesh.ply", force="mesh").faces)
    assert set(record["timings_s"]) >= {"stage1", "refine", "export", "turntable", "total"}
    assert record["guidance"]["kind"] == "variation" and record["guidance"]["trained"] is True
    assert "small offline" in record["guidance"]["note"]
    assert "clip" in record["untrained"] and "UNTRAINED" in record["note"]  # the tiny CLIP is random
    assert record["settings"] == json.loads(json.dumps(
        __import__("dataclasses").asdict(load_pipeline_config(TINY, Brain3DSettings)), default=str))


def test_fmri_generation_records_the_decoding(done) -> None:
    record = json.loads((done["fmri-out"] / "brain3d.json").read_text())
    cond = record["conditioning"]
    assert cond["lowlevel_groups"] == ["V1", "V2", "V3", "V4"] and cond["semantic_groups"] == ["higher"]
    assert record["inputs"]["fmri"] == str(done["trial"]) and "decoder" in record["untrained"]
    reference = np.asarray(Image.open(done["fmri-out"] / "reference.png"), dtype=np.float32) / 255
    with np.load(done["fmri-out"] / "conditioning.npz") as npz:
        np.testing.assert_allclose(reference.transpose(2, 0, 1), npz["lowlevel_image"], atol=0.5 / 255)


def test_ablate_table_has_one_row_per_group(done) -> None:
    with open(done["ablate"] / "ablation.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["group"] for r in rows] == ["V1", "V2", "V3", "V4", "higher"]
    assert all(r["mode"] == "zero" for r in rows)
    low = [r for r in rows if r["head"] == "lowlevel"]
    assert all(float(r["clip_cosine"]) == pytest.approx(1.0) for r in low)
    assert float(rows[-1]["reference_pixcorr"]) == 1.0 and float(rows[-1]["clip_cosine"]) < 0.999
    assert (done["ablate"] / "ablation_renders.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--fmri", "missing.npy", "--checkpoint", "RUN"], "file not found"),
    (["--fmri", "TRIAL"], "needs --checkpoint"),
    (["--fmri", "TRIAL", "--image", "TRIAL", "--checkpoint", "RUN"], "exactly one"),
    (["--fmri", "BAD", "--checkpoint", "RUN"], "voxels per row"),
    (["--image", "TRIAL"], "not a readable image"),
    (["--fmri", "TRIAL", "--checkpoint", "DATA"], "not a decoding run"),
])
def test_bad_inputs_are_one_line_exit_2(done, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    np.save(tmp_path / "bad.npy", np.zeros(7, np.float32))
    names = {"RUN": done["ridge"], "TRIAL": done["trial"], "DATA": done["data"], "BAD": tmp_path / "bad.npy",
             "missing.npy": tmp_path / "missing.npy"}
    code = run_cli("brain3d", "generate", "--config", TINY, *[names.get(a, a) for a in args], "--out", tmp_path / "o")
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "brain3d.json").exists()


def test_bad_config_is_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("guidance: dalle\n")
    assert run_cli("brain3d", "generate", "--config", bad, "--image", bad, "--out", tmp_path / "o") == 2
    assert "guidance" in capsys.readouterr().err
