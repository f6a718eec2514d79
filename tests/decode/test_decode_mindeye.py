"""Tiny MindEye trained by the shared trainer on planted data: retrieval, phase switch, prior, low-level path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroattn.decode.base import BrainDecoder, normalize_rows
from neuroattn.decode.mindeye import MindEyeConfig
from neuroattn.decode.mindeye_training import MindEyeDecoder, train_mindeye
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint
from neuroattn.train import TrainConfig

N_TRAIN, N_TEST, L, D, V, STEPS = 800, 100, 5, 16, 200, 300


@pytest.fixture(scope="module")
def planted() -> dict[str, np.ndarray]:
    """Random "CLIP" tokens; voxels (plus noise) and coarse-grained latents are fixed linear maps of them."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    tokens = rng.standard_normal((n, L, D)).astype(np.float32)
    flat = tokens.reshape(n, L * D)  # (N, L*D)
    voxels = flat @ (rng.standard_normal((L * D, V)) / np.sqrt(L * D)) + 0.5 * rng.standard_normal((n, V))
    mu, sd = voxels[:N_TRAIN].mean(0), voxels[:N_TRAIN].std(0)
    coarse = (flat @ (rng.standard_normal((L * D, 4 * 4 * 4)) / np.sqrt(L * D))).reshape(n, 4, 4, 4)
    latents = coarse.repeat(2, axis=2).repeat(2, axis=3)  # (N, 4, 8, 8): spatially smooth, as VAE latents are
    return {"tokens": tokens, "voxels": ((voxels - mu) / sd).astype(np.float32), "latents": latents.astype(np.float32)}


@pytest.fixture(scope="module")
def run(planted: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mindeye") / "run"
    train = TrainConfig(out_dir=out, max_steps=STEPS, batch_size=64, lr=1e-3, warmup_steps=20, device="cpu",
                        progress=False, log_every=1, checkpoint_every=0, tensorboard=False, seed=0)
    s = slice(0, N_TRAIN)
    result = train_mindeye(planted["voxels"][s], planted["tokens"][s], planted["latents"][s],
                           MindEyeConfig.tiny(V, L, D), train, clip_trained=False)
    assert result.finished and result.final_dir == out / "final"
    return out


def test_brain_to_image_retrieval_far_above_chance(run: Path, planted: dict[str, np.ndarray]) -> None:
    decoder = MindEyeDecoder.load(run)
    assert isinstance(decoder, BrainDecoder) and decoder.name == "mindeye"
    emb = decoder.brain_embeddings(planted["voxels"][N_TRAIN:])
    assert emb.shape == (N_TEST, L * D)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    targets = normalize_rows(planted["tokens"][N_TRAIN:].reshape(N_TEST, -1))
    top1 = float(np.mean((emb @ targets.T).argmax(1) == np.arange(N_TEST)))
    assert top1 > 0.5, f"brain->image top-1 among {N_TEST} is {top1:.2f} (chance {1 / N_TEST:.2f})"


def test_bimixco_runs_first_third_then_softclip(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "mindeye/bimixco" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    phase = np.array([r["mindeye/bimixco"] for r in rows])
    assert np.all(phase[: STEPS // 3] == 1.0) and np.all(phase[STEPS // 3 :] == 0.0)
    temps = np.array([r["mindeye/temperature"] for r in rows])
    assert np.all(temps[: STEPS // 3] == 0.006)
    assert temps[STEPS // 3] == pytest.approx(0.004) and temps[-1] == pytest.approx(0.0075)
    summary = load_checkpoint(run / "final").data_summary
    assert summary["bimixco_steps"] == STEPS // 3


def test_prior_loss_falls_and_samples_beat_the_mean_grid(run: Path, planted: dict[str, np.ndarray]) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    prior = np.array([r["mindeye/prior"] for r in rows if "mindeye/prior" in r])
    assert prior[-50:].mean() < 0.8 * prior[:50].mean()
    decoder = MindEyeDecoder.load(run)
    truth = planted["tokens"][N_TRAIN:]
    sample = decoder.predict_clip(planted["voxels"][N_TRAIN:], steps=20)
    assert sample.shape == truth.shape
    sample_mse = float(np.mean((sample - truth) ** 2))
    mean_mse = float(np.mean((planted["tokens"][:N_TRAIN].mean(0) - truth) ** 2))
    assert sample_mse < 0.8 * mean_mse, f"prior sample MSE {sample_mse:.3f} vs mean grid {mean_mse:.3f}"
    again = decoder.predict_clip(planted["voxels"][N_TRAIN:], steps=20)
    np.testing.assert_array_equal(sample, again)


def test_lowlevel_path_beats_the_mean_latent(run: Path, planted: dict[str, np.ndarray]) -> None:
    decoder = MindEyeDecoder.load(run)
    pred = decoder.predict_latents(planted["voxels"][N_TRAIN:])
    truth = planted["latents"][N_TRAIN:]
    assert pred is not None and pred.shape == truth.shape
    l1 = float(np.abs(pred - truth).mean())
    l1_mean = float(np.abs(planted["latents"][:N_TRAIN].mean(0) - truth).mean())
    assert l1 < 0.8 * l1_mean, f"low-level L1 {l1:.3f} vs mean latent {l1_mean:.3f}"


def test_checkpoint_round_trip_and_trained_flag(run: Path, planted: dict[str, np.ndarray], tmp_path: Path) -> None:
    decoder = MindEyeDecoder.load(run)
    assert decoder.trained is False  # the planted "CLIP" targets stand in for an untrained CLIP
    ckpt = load_checkpoint(run / "final", expected_class="MindEye")
    assert ckpt.trained and ckpt.config["mindeye"]["n_voxels"] == V
    assert ckpt.data_summary["token_shape"] == [L, D] and ckpt.data_summary["latent_shape"] == [4, 8, 8]
    copy = save_checkpoint(tmp_path / "copy", ckpt.state_dict, ckpt.config, model_class="MindEye", trained=True,
                           data_summary={"clip_trained": True})
    reloaded = MindEyeDecoder.load(copy)
    assert reloaded.trained is True
    betas = planted["voxels"][N_TRAIN:]
    np.testing.assert_array_equal(reloaded.brain_embeddings(betas), decoder.brain_embeddings(betas))
    np.testing.assert_array_equal(reloaded.predict_latents(betas), decoder.predict_latents(betas))
