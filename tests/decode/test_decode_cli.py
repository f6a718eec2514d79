"""`neuroattn decode` end to end on a tiny data folder: simulate -> train -> retrieve / reconstruct / evaluate."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import one_line_error, run_cli
from PIL import Image
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from neuroattn.cli import app
from neuroattn.data.nsd import load_subject
from neuroattn.decode.brain_it import BrainITConfig
from neuroattn.decode.data_bundle import FeatureSource, data_clip_seed, open_decoding_data
from neuroattn.decode.mindeye import MindEyeConfig
from neuroattn.decode.pipeline import SimulateSettings
from neuroattn.decode.runs import DecodeSettings, adapt_brain_it, open_run, run_feature_source
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint
from neuroattn.io.nifti import save_volume, volume_from_array
from neuroattn.pipelines import load_pipeline_config

torch.set_num_threads(1)

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines" / "decode"
UNTRAINED_RED = (176, 0, 32)  # the UNTRAINED strip heading a retrieval grid
TOP_K = 5



def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _pearson_mean(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Pearson r between flattened pixels, in float64."""
    return float(np.mean([np.corrcoef(x.astype(np.float64).ravel(), y.astype(np.float64).ravel())[0, 1]
                          for x, y in zip(a, b, strict=True)]))


def _one_blas_thread() -> threadpool_limits:
    """One BLAS thread: OpenBLAS threads spinning against other processes on a small machine make the ridge
    decoder's SVDs about 100x slower. scipy ships its own OpenBLAS, loaded here so that the limit reaches it."""
    import scipy.linalg  # noqa: F401

    return threadpool_limits(limits=1)


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run the pipeline once from the command line; the tests then read its files."""
    root = tmp_path_factory.mktemp("decode_cli")
    p = {name: root / name for name in ("data", "ridge", "brain-it", "brain-it-2", "retrieve", "retrieve-test",
                                        "reconstruct", "eval-ridge", "eval-brain-it-2")}
    with _one_blas_thread():
        assert run_cli("decode", "simulate", "--config", PIPELINES / "simulate-tiny.yaml", "--out", p["data"]) == 0
        assert run_cli("decode", "train", "--data", p["data"], "--model", "ridge", "--out", p["ridge"]) == 0
        assert run_cli("decode", "train", "--data", p["data"], "--model", "brain-it", "--subject", "subj01",
                    "--steps", 3, "--device", "cpu", "--out", p["brain-it"]) == 0  # fmt: skip
        assert run_cli("decode", "train", "--data", p["data"], "--model", "brain-it", "--adapt-from", p["brain-it"],
                    "--subject", "subj02", "--steps", 3, "--train-fraction", 0.5, "--device", "cpu",
                    "--out", p["brain-it-2"]) == 0  # fmt: skip
        assert run_cli("decode", "retrieve", "--checkpoint", p["ridge"], "--out", p["retrieve"], "--top-k", TOP_K) == 0
        assert run_cli("decode", "retrieve", "--checkpoint", p["ridge"], "--out", p["retrieve-test"], "--pool", "test",
                    "--top-k", 1) == 0  # fmt: skip
        assert run_cli("decode", "reconstruct", "--checkpoint", p["ridge"], "--out", p["reconstruct"], "--limit", 2,
                    "--steps", 2) == 0  # fmt: skip
        assert run_cli("decode", "evaluate", "--checkpoint", p["ridge"], "--out", p["eval-ridge"],
                    "--no-reconstruct") == 0  # fmt: skip
        assert run_cli("decode", "evaluate", "--checkpoint", p["brain-it-2"], "--out", p["eval-brain-it-2"],
                    "--recon-limit", 2, "--steps", 2) == 0  # fmt: skip
    p["root"] = root
    return p


@pytest.fixture(scope="module")
def subj01(done: dict[str, Path]):
    """subj01's raw (not z-scored) repeat-averaged test betas (N, V), their image ids and the subject's data."""
    subject = load_subject(done["data"], "subj01", zscore=False)
    betas, ids = subject.averaged(test=True)
    return betas, ids, subject


def test_simulate_writes_the_tiny_folder_of_the_yaml(done: dict[str, Path]) -> None:
    summary = json.loads((done["data"] / "dataset.json").read_text())
    assert summary["n_images"] == 240 and summary["image_size"] == 32
    assert sorted(summary["subjects"]) == ["subj01", "subj02"]
    assert all(190 <= v <= 210 for v in summary["subjects"].values())  # 200 voxels +- 5 %
    assert summary["clip"]["trained"] is False
    assert summary["generator"] == {"autoencoder_trained": True, "variation_trained": True}
    trials = _read_csv(done["data"] / "subj01" / "trials.csv")
    test_images = {r["image_id"] for r in trials if r["split"] == "test"}
    assert len(test_images) == 60 and len(trials) == 240 * 3  # every image shown 3 times


def test_adapting_run_takes_its_prior_weight_from_its_own_config(done: dict[str, Path], tmp_path: Path) -> None:
    """``model_config: {adapt_prior_weight: W}`` of the adapting run reaches the adaptation; without it the base
    run's value (0) holds."""
    settings = DecodeSettings(model="brain-it", steps=2, device="cpu", train_fraction=0.5, checkpoint_every=0,
                              model_config={"adapt_prior_weight": 3.0})  # fmt: skip
    with _one_blas_thread():
        adapt_brain_it(open_decoding_data(done["data"]), done["brain-it"], "subj02", settings, tmp_path / "prior")
    assert load_checkpoint(tmp_path / "prior" / "final").data_summary["adapt_prior_weight"] == 3.0
    assert load_checkpoint(done["brain-it-2"] / "final").data_summary["adapt_prior_weight"] == 0.0
    for bad in ("strong", -1.0):
        with pytest.raises(ConfigError, match="prior_weight"):
            adapt_brain_it(open_decoding_data(done["data"]), done["brain-it"], "subj02",
                           replace(settings, model_config={"adapt_prior_weight": bad}), tmp_path / "bad")


def test_training_seed_keeps_the_data_folders_clip(done: dict[str, Path], tmp_path: Path) -> None:
    """The simulated responses and generator come from the folder's tiny random CLIP; a decoder trained with
    another seed must learn those same targets, and adapting must use the base run's CLIP."""
    assert json.loads((done["data"] / "dataset.json").read_text())["clip"]["seed"] == 0 == data_clip_seed(done["data"])
    own = open_decoding_data(done["data"])
    reseeded = open_decoding_data(done["data"], DecodeSettings(model="ridge", seed=5).feature_source())
    assert reseeded.source.seed == own.source.seed == 0
    assert np.array_equal(reseeded.features.tokens, own.features.tokens)
    assert not (done["data"] / "features" / "clip-tiny-seed5.json").exists()
    assert json.loads((done["brain-it"] / "decode_run.json").read_text())["clip"]["seed"] == 0
    assert open_run(done["ridge"])[0].source.seed == 0
    settings = asdict(DecodeSettings(model="ridge", seed=4))
    assert run_feature_source({"settings": settings, "clip": {"trained": False}}).seed == 4  # recorded none: its seed
    assert run_feature_source({"settings": settings, "clip": {"seed": 0}}).seed == 0
    other = open_decoding_data(done["data"], FeatureSource(seed=1))  # a different random CLIP, chosen explicitly
    assert not np.array_equal(other.features.tokens, own.features.tokens)
    with pytest.raises(ConfigError, match=r"CLIP targets 'tiny-seed0'.*'tiny-seed1'"):
        adapt_brain_it(other, done["brain-it"], "subj02", DecodeSettings(model="brain-it", steps=1), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_data_clip_seed_reads_the_simulation_summary(tmp_path: Path) -> None:
    assert data_clip_seed(tmp_path) == 0  # nothing recorded (imported NSD, older folders)
    summary = tmp_path / "dataset.json"
    summary.write_text(json.dumps({"settings": {"seed": 7}, "clip": {"trained": False}}))
    assert data_clip_seed(tmp_path) == 7 == FeatureSource().resolved(tmp_path).seed
    summary.write_text(json.dumps({"settings": {"seed": 7}, "clip": {"seed": 3}}))
    assert data_clip_seed(tmp_path) == 3 and FeatureSource(seed=9).resolved(tmp_path).seed == 9
    summary.write_text(json.dumps({"clip": {"seed": "three"}}))
    with pytest.raises(InvalidInputError, match="unreadable dataset"):
        data_clip_seed(tmp_path)


def test_runs_record_model_subjects_and_untrained_targets(done: dict[str, Path]) -> None:
    ridge = json.loads((done["ridge"] / "decode_run.json").read_text())
    assert ridge["model"] == "ridge" and ridge["subjects"] == ["subj01"] and ridge["clip"]["trained"] is False
    assert Path(ridge["data_root"]) == done["data"].resolve()
    adapted = json.loads((done["brain-it-2"] / "decode_run.json").read_text())
    assert adapted["model"] == "brain-it" and adapted["subjects"] == ["subj02"]
    assert adapted["base_subjects"] == ["subj01"] and Path(adapted["adapted_from"]) == done["brain-it"].resolve()
    assert adapted["settings"]["train_fraction"] == 0.5
    for run in ("brain-it", "brain-it-2"):
        assert (done[run] / "final" / "model.safetensors").is_file()
        assert int(_read_csv(done[run] / "metrics.csv")[-1]["step"]) == 3


def test_retrieve_table_and_grid(done: dict[str, Path], subj01) -> None:
    _, ids, _ = subj01
    rows = _read_csv(done["retrieve"] / "retrieval.csv")
    expected = ["query", "seen_image"] + [f"{c}_{r}" for r in range(1, TOP_K + 1) for c in ("image", "score")]
    assert list(rows[0]) == expected
    assert [int(r["seen_image"]) for r in rows] == ids.tolist()
    for row in rows:
        found = [int(row[f"image_{r}"]) for r in range(1, TOP_K + 1)]
        scores = [float(row[f"score_{r}"]) for r in range(1, TOP_K + 1)]
        assert len(set(found)) == TOP_K and all(0 <= i < 240 for i in found)
        assert scores == sorted(scores, reverse=True)
    grid = np.asarray(Image.open(done["retrieve"] / "retrieval.png").convert("RGB"))
    tile, pad, top = 32, 4, 18
    assert grid.shape == (top + 16 * (tile + pad) + pad, (1 + TOP_K) * (tile + pad) + pad, 3)  # 16 rows shown
    assert tuple(grid[2, 2]) == UNTRAINED_RED
    stimuli = open_decoding_data(done["data"]).stimuli.images
    y, x = top + pad, pad + (tile + pad)  # first query, first retrieved image
    np.testing.assert_array_equal(grid[y:y + tile, x:x + tile], stimuli[int(rows[0]["image_1"])])
    np.testing.assert_array_equal(grid[y:y + tile, pad:pad + tile], stimuli[ids[0]])  # the seen image leads


def test_retrieve_among_test_images_agrees_with_evaluate(done: dict[str, Path]) -> None:
    rows = _read_csv(done["retrieve-test"] / "retrieval.csv")
    hits = np.mean([r["image_1"] == r["seen_image"] for r in rows])
    metrics = json.loads((done["eval-ridge"] / "metrics.json").read_text())
    assert metrics["metrics"]["top1_all_test"] == pytest.approx(hits, abs=1e-12)
    # the simulated voxels carry the (random) CLIP features, so a linear map retrieves above chance
    assert hits > 2 * metrics["chance"]["top1_all_test"]


def test_reconstruct_writes_pngs_and_untrained_label(done: dict[str, Path], subj01) -> None:
    _, ids, _ = subj01
    out = done["reconstruct"]
    info = json.loads((out / "reconstruction.json").read_text())
    names = [f"{q:04d}_image{int(ids[q])}.png" for q in range(2)]
    assert info["images"] == names
    assert info["label"] == "UNTRAINED" and info["clip_trained"] is False and info["decoder_trained"] is False
    assert info["generator_trained"] is True
    stimuli = open_decoding_data(done["data"]).stimuli.images
    for q, name in enumerate(names):
        recon = np.asarray(Image.open(out / name))
        assert recon.shape == (32, 32, 3) and recon.dtype == np.uint8 and recon.std() > 0
        assert np.asarray(Image.open(out / "lowlevel" / name)).shape == (32, 32, 3)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "seen" / name)), stimuli[ids[q]])


def test_evaluate_without_reconstructions(done: dict[str, Path]) -> None:
    result = json.loads((done["eval-ridge"] / "metrics.json").read_text())
    assert result["decoder"] == "ridge" and result["label"] == "UNTRAINED" and result["n_reconstructed"] == 0
    metrics = result["metrics"]
    assert {"top1_brain_to_image", "top1_image_to_brain"} <= set(metrics) and "pixcorr" not in metrics
    assert all(0 <= metrics[k] <= 1 for k in ("top1_brain_to_image", "top1_image_to_brain"))
    assert result["pool_size"] == 60 and result["chance"]["top1_brain_to_image"] == pytest.approx(1 / 60)
    for way in ("brain_to_image", "image_to_brain"):  # ridge fits its own training images better than new ones
        assert metrics[f"top1_{way}_train"] > metrics[f"top1_{way}"] + 0.05
    assert "UNTRAINED" in (done["eval-ridge"] / "report.html").read_text()
    assert not (done["eval-ridge"] / "reconstructions").exists()


def test_evaluate_with_reconstructions_scores_the_written_images(done: dict[str, Path]) -> None:
    out = done["eval-brain-it-2"]
    result = json.loads((out / "metrics.json").read_text())
    metrics = result["metrics"]
    assert result["decoder"] == "brain-it" and result["n_reconstructed"] == 2
    keys = {"top1_brain_to_image", "top1_image_to_brain", "pixcorr", "ssim", "pixcorr_mean_image_baseline"}
    assert keys <= set(metrics)
    assert result["label"] == "UNTRAINED" and "CLIP features" in result["untrained_parts"]
    html = (out / "report.html").read_text()
    assert 'class="banner">UNTRAINED' in html
    # PixCorr recomputed in float64 from the PNGs the command wrote, against subj02's first two test images
    subject = load_subject(done["data"], "subj02", zscore=False)
    _, ids = subject.averaged(test=True)
    stimuli = open_decoding_data(done["data"]).stimuli.images
    recon = np.stack([np.asarray(Image.open(out / "reconstructions" / f"image{int(i)}.png")) for i in ids[:2]])
    assert metrics["pixcorr"] == pytest.approx(_pearson_mean(recon, stimuli[ids[:2]]), abs=1e-9)
    train_ids = np.unique(subject.image_ids[~subject.is_test])
    mean_image = stimuli[train_ids].astype(np.float64).mean(axis=0).round()
    baseline = _pearson_mean(np.stack([mean_image, mean_image]), stimuli[ids[:2]])
    assert metrics["pixcorr_mean_image_baseline"] == pytest.approx(baseline, abs=1e-9)


def test_retrieve_from_npy_and_nifti_equals_the_stored_test_betas(done: dict[str, Path], subj01,
                                                                  tmp_path: Path) -> None:
    """Raw betas given as files are z-scored like training, so they retrieve exactly what the data folder does."""
    betas, _, subject = subj01
    reference = _read_csv(done["retrieve"] / "retrieval.csv")
    npy = tmp_path / "betas.npy"
    np.save(npy, betas)
    # a NIfTI on a grid padded by 2 voxels per side, read at a mask on that grid (C order of voxels kept)
    ijk = subject.voxel_ijk + 2
    shape = tuple(s + 4 for s in subject.mask_shape)
    data = np.zeros((*shape, len(betas)), dtype=np.float32)  # (X, Y, Z, N)
    data[tuple(ijk.T)] = betas.T
    mask = np.zeros(shape, dtype=np.float32)
    mask[tuple(ijk.T)] = 1
    save_volume(volume_from_array(data, voxel_size=4.0), tmp_path / "betas.nii.gz")
    save_volume(volume_from_array(mask, voxel_size=4.0), tmp_path / "mask.nii.gz")
    with _one_blas_thread():
        assert run_cli("decode", "retrieve", "--checkpoint", done["ridge"], "--out", tmp_path / "npy",
                    "--fmri", npy, "--top-k", TOP_K) == 0  # fmt: skip
        assert run_cli("decode", "retrieve", "--checkpoint", done["ridge"], "--out", tmp_path / "nii",
                    "--fmri", tmp_path / "betas.nii.gz", "--mask", tmp_path / "mask.nii.gz", "--top-k", TOP_K) == 0
    for name in ("npy", "nii"):
        rows = _read_csv(tmp_path / name / "retrieval.csv")
        assert len(rows) == len(reference) and all(r["seen_image"] == "" for r in rows)  # unknown for user files
        for row, ref in zip(rows, reference, strict=True):
            for r in range(1, TOP_K + 1):
                assert row[f"image_{r}"] == ref[f"image_{r}"]
                assert float(row[f"score_{r}"]) == pytest.approx(float(ref[f"score_{r}"]), abs=2e-5)
        assert (tmp_path / name / "retrieval.png").is_file()



def test_bad_inputs_give_one_line_and_exit_2(done: dict[str, Path], subj01, tmp_path: Path, capsys) -> None:
    betas, _, subject = subj01
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, betas[:, :-3])
    err = one_line_error(capsys, "decode", "retrieve", "--checkpoint", done["ridge"], "--fmri", wrong,
                          "--out", tmp_path / "r")  # fmt: skip
    assert str(wrong) in err and f"reads {subject.n_voxels} voxels per row" in err
    err = one_line_error(capsys, "decode", "retrieve", "--checkpoint", tmp_path / "no-run", "--out", tmp_path / "r")
    assert str(tmp_path / "no-run") in err and "not a decoding run" in err
    err = one_line_error(capsys, "decode", "evaluate", "--checkpoint", tmp_path / "no-run", "--out", tmp_path / "e")
    assert "not a decoding run" in err
    err = one_line_error(capsys, "decode", "train", "--data", done["data"], "--model", "mindeyes",
                          "--out", tmp_path / "t")  # fmt: skip
    assert "'model' must be one of ['mindeye', 'brain-it', 'ridge']. 'mindeyes' was provided." in err
    err = one_line_error(capsys, "decode", "train", "--data", tmp_path, "--model", "ridge", "--out", tmp_path / "t")
    assert "not a decoding data folder" in err
    padded = np.zeros((*(s + 1 for s in subject.mask_shape), 2), dtype=np.float32)
    save_volume(volume_from_array(padded), tmp_path / "grid.nii.gz")
    err = one_line_error(capsys, "decode", "retrieve", "--checkpoint", done["ridge"], "--fmri",
                          tmp_path / "grid.nii.gz", "--out", tmp_path / "r")  # fmt: skip
    assert "give --mask" in err
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: ridge\nstepz: 3\n")
    err = one_line_error(capsys, "decode", "train", "--data", done["data"], "--config", typo, "--out", tmp_path / "t")
    assert f"{typo}: unknown setting(s) ['stepz']" in err
    err = one_line_error(capsys, "decode", "train", "--data", done["data"], "--model", "brain-it", "--adapt-from",
                          done["ridge"], "--subject", "subj02", "--out", tmp_path / "t")  # fmt: skip
    assert "needs a Brain-IT run, not 'ridge'" in err
    assert not any((tmp_path / n).exists() for n in ("r", "e", "t"))


@pytest.mark.parametrize("command", ["simulate", "train", "retrieve", "reconstruct", "evaluate"])
def test_every_decode_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, ["decode", command, "--help"])
    assert result.exit_code == 0 and "--out" in result.output


# ---------------------------------------------------------------------------------------- shipped pipeline configs
def test_shipped_decode_configs_are_all_known() -> None:
    found = sorted(p.name for p in PIPELINES.glob("*.yaml"))
    assert found == sorted(["simulate-small.yaml", "simulate-tiny.yaml", "ridge.yaml", "mindeye-small.yaml",
                            "brain-it-small.yaml", "mindeye-published.yaml", "brain-it-published.yaml"])


def test_simulate_configs() -> None:
    small = load_pipeline_config(PIPELINES / "simulate-small.yaml", SimulateSettings)
    defaults = SimulateSettings()
    assert small.simulation_config() == defaults.simulation_config()  # spelled-out defaults of the simulation
    assert replace(small, simulation={}) == defaults
    tiny = load_pipeline_config(PIPELINES / "simulate-tiny.yaml", SimulateSettings)
    assert tiny == SimulateSettings(n_images=240, image_size=32, autoencoder_steps=5, variation_steps=5,
                                    simulation={"n_subjects": 2, "n_voxels": 200, "test_images": 60},
                                    batch_size=16, device="cpu")
    tiny.simulation_config().validate()


@pytest.mark.parametrize("name", ["ridge", "mindeye-small", "brain-it-small", "mindeye-published",
                                  "brain-it-published"])
def test_decoder_configs_build_their_models(name: str) -> None:
    settings = load_pipeline_config(PIPELINES / f"{name}.yaml", DecodeSettings)
    assert name.startswith(settings.model)
    assert settings.clip_weights is None and settings.vae_path is None  # placeholders: nothing bundled
    published = name.endswith("published")
    assert settings.size == ("published" if published else "tiny")
    assert (settings.device == "cuda") == published
    if settings.model == "ridge":
        return
    assert settings.steps >= (10_000 if published else 1000) and 0 < settings.warmup_steps < settings.steps
    shape = {"n_tokens": 65, "clip_dim": 64}  # the tiny CLIP's tokens; published sizes fit themselves to the data
    if settings.model == "mindeye":
        if published:
            config = MindEyeConfig.from_dict(MindEyeConfig(n_voxels=200, **shape).to_dict() | settings.model_config)
            assert config.hidden_dim == 4096 and config.n_blocks == 4 and config.prior.depth == 6
        else:
            config = MindEyeConfig.tiny(n_voxels=200, **shape, **settings.model_config)
            assert config.hidden_dim == 256
    else:
        base = BrainITConfig() if published else BrainITConfig.tiny()
        config = BrainITConfig.from_dict(base.to_dict() | shape | settings.model_config)
        assert config.n_clusters == (128 if published else 32) and config.depth == (6 if published else 2)
        assert config.n_clusters * config.embed_dim >= 1024  # what cluster tokens carry (see brain-it-small.yaml)
        assert config.global_readout == (0 if published else 256)  # published: attention read-out alone


def test_trained_images_follow_the_runs_train_fraction(done: dict[str, Path]) -> None:
    """The adapted run trained subj02 on half its images (seeded): training-image retrieval reads exactly those;
    subj01, a base subject of that run, used all of its images."""
    from neuroattn.decode.runs import select_fraction, trained_images

    subj02 = load_subject(done["data"], "subj02")
    betas, ids = trained_images(done["brain-it-2"], subj02)
    trials, trial_ids = subj02.trials(test=False)
    expected = np.unique(trial_ids[select_fraction(trial_ids, 0.5, 0)])
    np.testing.assert_array_equal(ids, expected)
    assert 0 < len(ids) < len(np.unique(trial_ids))
    first = trials[trial_ids == ids[0]].mean(axis=0)
    np.testing.assert_allclose(betas[0], first, rtol=1e-5, atol=1e-6)
    _, all_ids = trained_images(done["brain-it-2"], load_subject(done["data"], "subj01"))
    np.testing.assert_array_equal(all_ids, np.unique(load_subject(done["data"], "subj01").trials(test=False)[1]))
    metrics = json.loads((done["eval-brain-it-2"] / "metrics.json").read_text())["metrics"]
    assert {"top1_brain_to_image_train", "top1_image_to_brain_train"} <= set(metrics)
