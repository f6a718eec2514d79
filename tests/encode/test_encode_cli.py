"""`neuroattn encode` end to end on a tiny simulated folder: fit (ridge, BraInCoRL, LaVCa), predict, caption."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_support import one_line_error, run_cli
from threadpoolctl import threadpool_limits

from neuroattn.decode.pipeline import SimulateSettings
from neuroattn.encode.braincorl import BraInCoRLConfig
from neuroattn.encode.braincorl_training import InContextEncoder
from neuroattn.encode.gaussian_prior import WeightPrior, posterior_weights, roi_groups
from neuroattn.encode.lavca import LavcaConfig
from neuroattn.encode.metrics import explained_variance, voxelwise_pearson
from neuroattn.encode.ridge_encoder import RidgeEncoder
from neuroattn.encode.runs import EncodeSettings, open_run
from neuroattn.pipelines import load_pipeline_config

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
ENCODE = ROOT / "pipelines" / "encode"
TINY_DATA = ROOT / "pipelines" / "decode" / "simulate-tiny.yaml"



def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run every command once on a tiny folder; the tests then read the files."""
    root = tmp_path_factory.mktemp("encode_cli")
    p = {name: root / name for name in ("data", "ridge", "braincorl", "lavca", "prior", "pred", "eval-ridge",
                                        "eval-bc", "eval-lavca", "eval-prior", "captions")}
    with threadpool_limits(limits=1):
        assert run_cli("decode", "simulate", "--config", TINY_DATA, "--out", p["data"], "--generator-steps", 0) == 0
        assert run_cli("encode", "fit", "--data", p["data"], "--model", "ridge", "--out", p["ridge"]) == 0
        assert run_cli("encode", "fit", "--data", p["data"], "--config", ENCODE / "tiny.yaml", "--out", p["braincorl"],
                    "--k", 40) == 0  # fmt: skip
        assert run_cli("encode", "fit", "--data", p["data"], "--model", "lavca", "--roi", "V4", "--roi", "higher",
                    "--out", p["lavca"]) == 0  # fmt: skip
        assert run_cli("encode", "fit", "--data", p["data"], "--model", "prior", "--k", 40, "--out", p["prior"]) == 0
        assert run_cli("encode", "evaluate", "--run", p["prior"], "--out", p["eval-prior"], "--no-figures") == 0
        assert run_cli("encode", "predict", "--run", p["ridge"], "--out", p["pred"], "--text", "a red circle",
                    "--no-figures") == 0  # fmt: skip
        assert run_cli("encode", "evaluate", "--run", p["ridge"], "--out", p["eval-ridge"]) == 0
        assert run_cli("encode", "evaluate", "--run", p["braincorl"], "--out", p["eval-bc"], "--no-figures") == 0
        assert run_cli("encode", "evaluate", "--run", p["lavca"], "--out", p["eval-lavca"], "--no-figures") == 0
        assert run_cli("encode", "caption", "--run", p["braincorl"], "--out", p["captions"]) == 0
    return p


@pytest.mark.parametrize("path", sorted(ENCODE.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_encode_configs_validate(path: Path) -> None:
    if path.stem == "simulate":
        settings = load_pipeline_config(path, SimulateSettings)
        assert settings.simulation_config().tuning_axes > 0
        return
    settings = load_pipeline_config(path, EncodeSettings)
    BraInCoRLConfig(**({"embedding_dim": settings.n_clip + settings.n_lowlevel} | settings.braincorl))
    LavcaConfig(**settings.lavca)
    known = set(inspect.signature(InContextEncoder).parameters)
    assert set(settings.meta_training) <= known, set(settings.meta_training) - known


def test_encoding_seed_keeps_the_data_folders_clip(done: dict[str, Path], tmp_path: Path) -> None:
    """The responses were simulated from the folder's tiny random CLIP: another encoding seed keeps those features;
    a run that recorded no CLIP seed reopens with the one it was fitted with (its own seed)."""
    assert EncodeSettings(seed=3).feature_source().seed is None
    run = open_run(done["ridge"])
    recorded = json.loads((done["ridge"] / "encode_run.json").read_text())["clip_seed"]
    assert recorded == 0 == run.data.decoding.source.seed
    reseeded = EncodeSettings(seed=3).open_data(done["data"])
    assert np.array_equal(reseeded.features.values, run.data.features.values)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    info = json.loads((done["ridge"] / "encode_run.json").read_text())
    info.pop("clip_seed")
    info["settings"]["seed"] = 2
    (legacy / "encode_run.json").write_text(json.dumps(info))
    (legacy / "encoder").symlink_to(done["ridge"] / "encoder", target_is_directory=True)
    assert open_run(legacy).data.decoding.source.seed == 2


def test_ridge_run_scores_equal_the_api_and_maps_hold_them(done: dict[str, Path]) -> None:
    run = open_run(done["ridge"])
    x, s = run.data.features.values, run.subject
    ridge = RidgeEncoder().fit(x[s.train_ids], s.train_responses)
    np.testing.assert_allclose(run.encoder.weights, ridge.coef_, atol=1e-6)
    pred = ridge.predict(x[s.test_ids])
    r, ev = voxelwise_pearson(pred, s.test_responses), explained_variance(pred, s.test_responses)
    metrics = json.loads((done["eval-ridge"] / "metrics.json").read_text())
    overall = metrics["rois"][0]
    assert overall["roi"] == "all" and overall["n_voxels"] == s.n_voxels
    assert overall["pearson_r"] == pytest.approx(r.mean(), abs=1e-5)
    assert overall["explained_variance"] == pytest.approx(ev.mean(), abs=1e-5)
    assert overall["pearson_r"] > 0.2  # the planted encoder is linear in these features: ridge finds it
    assert "CLIP features (tiny random CLIP)" in metrics["untrained"]
    img = nib.load(done["eval-ridge"] / "pearson_r_map.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.shape == s.mask_shape
    np.testing.assert_allclose(data[tuple(s.voxel_ijk.T)], r, atol=1e-5)
    np.testing.assert_allclose(img.affine, s.affine, atol=1e-5)
    assert (done["eval-ridge"] / "pearson_r_map.png").stat().st_size > 10_000
    by_roi = {row["roi"]: row for row in _read_csv(done["eval-ridge"] / "metrics.csv")}
    assert set(by_roi) >= {"all", "V1", "higher"}


def test_predict_writes_test_responses_and_text_selectivity(done: dict[str, Path]) -> None:
    run = open_run(done["ridge"])
    s = run.subject
    pred = np.asarray(nib.load(done["pred"] / "predicted_test_responses.nii.gz").dataobj)
    assert pred.shape == (*s.mask_shape, len(s.test_ids))
    expected = run.encoder.predict(run.data.features.values[s.test_ids])  # (n_test, V)
    np.testing.assert_allclose(pred[tuple(s.voxel_ijk.T)], expected.T, atol=1e-5)
    ids = [int(row["image_id"]) for row in _read_csv(done["pred"] / "predicted_test_images.csv")]
    assert ids == s.test_ids.tolist()
    query = np.asarray(nib.load(done["pred"] / "selectivity_a-red-circle.nii.gz").dataobj)
    text = run.data.features.text_features(run.data.clip.encode_text(["a red circle"]))
    np.testing.assert_allclose(query[tuple(s.voxel_ijk.T)], run.encoder.predict(text)[0], atol=1e-5)


def test_braincorl_run_meta_trains_on_the_other_subject_and_draws_the_curve(done: dict[str, Path]) -> None:
    info = json.loads((done["braincorl"] / "encode_run.json").read_text())
    assert info["model"] == "braincorl" and info["subject"] == "subj02"
    run = open_run(done["braincorl"])
    assert run.encoder.info["k"] == 40 and run.encoder.info["hypernetwork_trained"] is True
    assert set(run.encoder.info["support_ids"]) <= set(run.subject.train_ids.tolist())
    pooling = run.encoder.info["spatial_pooling"]  # tiny.yaml: no kernel or a 3 mm one, by 2-fold CV
    assert (pooling["sigma_mm"], pooling["mix"]) in {(0.0, 0.0), (3.0, 1.0)} and len(pooling["candidates"]) == 2
    meta = json.loads((done["braincorl"] / "meta" / "final" / "config.json").read_text())
    assert meta["data_summary"]["n_subjects"] == 1  # subj01 only: the encoded subject is held out
    metrics = json.loads((done["eval-bc"] / "metrics.json").read_text())
    ks = [row["k"] for row in metrics["in_context_curve"]]
    assert ks == [10, 25, 50]
    assert all(row["ridge_full_ev"] == metrics["in_context_curve"][0]["ridge_full_ev"]
               for row in metrics["in_context_curve"])
    assert metrics["untrained"] == ["CLIP features (tiny random CLIP)"]
    assert len(_read_csv(done["eval-bc"] / "in_context_curve.csv")) == 3
    assert metrics["spatial_pooling"] == {key: pooling[key] for key in ("sigma_mm", "mix", "folds")}
    assert all(row["braincorl_pooling"] in ("0mm x 0", "3mm x 1") for row in metrics["in_context_curve"])
    attention = _read_csv(done["eval-bc"] / "support_attention.csv")
    assert len(attention) == 5 * len(run.encoder.voxels)
    assert {int(r["image_id"]) for r in attention} <= set(run.encoder.info["support_ids"])
    first = [float(r["attention_share"]) for r in attention if int(r["subject_voxel"]) == run.encoder.voxels[0]]
    assert first == sorted(first, reverse=True) and 0 < sum(first) <= 1 + 1e-6


def test_prior_run_learns_from_the_other_subject_and_equals_the_posterior(done: dict[str, Path]) -> None:
    run = open_run(done["prior"])
    info = run.encoder.info
    assert run.encoder.model == "prior" and info["k"] == 40 and info["prior_learned_from"] == ["subj01"]
    prior = WeightPrior.load(done["prior"] / "prior")
    assert 0 < prior.noise_fraction < 1 and set(prior.groups) >= set(roi_groups(run.subject).tolist())
    support = np.asarray(info["support_ids"])
    rows = np.searchsorted(run.subject.train_ids, support)  # support images' rows of the training responses
    assert np.array_equal(run.subject.train_ids[rows], support)
    coef, intercept = posterior_weights(prior, run.data.features.values[support],
                                        run.subject.train_responses[rows][:, run.encoder.voxels],
                                        roi_groups(run.subject)[run.encoder.voxels])
    np.testing.assert_allclose(run.encoder.weights, coef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run.encoder.bias, intercept, rtol=1e-5, atol=1e-6)
    metrics = json.loads((done["eval-prior"] / "metrics.json").read_text())
    curve = metrics["in_context_curve"]
    assert curve and all("prior_ev" in row and "braincorl_ev" not in row for row in curve)
    assert not (done["eval-prior"] / "support_attention.csv").exists()  # attention belongs to BraInCoRL only


def test_lavca_captions_every_roi_voxel_and_scores_them(done: dict[str, Path]) -> None:
    run = open_run(done["lavca"])
    keep = np.isin(run.subject.roi, [4, 5])
    assert np.array_equal(run.encoder.voxels, np.flatnonzero(keep))
    rows = _read_csv(done["lavca"] / "captions.csv")
    assert len(rows) == keep.sum() and {r["roi"] for r in rows} <= {"V4", "higher"}
    test_ids = set(run.subject.test_ids.tolist())
    for row in rows:
        assert row["sentence"]
        assert not test_ids & {int(i) for i in row["top_image_ids"].split("|")}  # held-out images never used
    captions = json.loads((done["eval-lavca"] / "metrics.json").read_text())["captions"]
    assert {"lavca_mean", "baseline_mean", "shuffled_mean", "lavca_mean_concept_voxels"} <= set(captions["spearman"])
    assert captions["n_concept_voxels"] > 0 and 0 <= captions["concept_naming_rate"] <= 1
    assert captions["clip_filter_weight"] == 0.0 and captions["clip_trained"] is False  # untrained CLIP: filter off
    assert len(_read_csv(done["captions"] / "captions.csv")) == open_run(done["braincorl"]).subject.n_voxels
    assert (done["captions"] / "captions_top_images.png").is_file()



def test_bad_inputs_give_one_line_and_exit_2(done: dict[str, Path], tmp_path: Path, capsys) -> None:
    err = one_line_error(capsys, "encode", "evaluate", "--run", tmp_path / "no-run", "--out", tmp_path / "e")
    assert "not an encoding run folder" in err
    err = one_line_error(capsys, "encode", "fit", "--data", done["data"], "--model", "ridges", "--out", tmp_path / "f")
    assert "'model' must be one of" in err
    err = one_line_error(capsys, "encode", "fit", "--data", done["data"], "--model", "ridge", "--roi", "V9",
                          "--out", tmp_path / "g")  # fmt: skip
    assert "unknown ROI(s) ['V9']" in err
    err = one_line_error(capsys, "encode", "fit", "--data", tmp_path, "--model", "ridge", "--out", tmp_path / "h")
    assert "not a decoding data folder" in err
    err = one_line_error(capsys, "encode", "fit", "--data", done["data"], "--model", "ridge", "--subject", "subj09",
                          "--out", tmp_path / "i")  # fmt: skip
    assert "no subject 'subj09'" in err
