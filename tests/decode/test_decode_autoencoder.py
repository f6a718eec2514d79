"""Training the image autoencoder through the shared trainer: better reconstructions, scaled latents, round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroattn.decode.autoencoder import decode_latents, encode_latents, tiny_autoencoder
from neuroattn.decode.autoencoder_training import load_trained_autoencoder, train_autoencoder
from neuroattn.errors import CheckpointError, InvalidInputError
from neuroattn.train import TrainConfig
from neuroattn.train.metrics import read_rows

SIZE = 16  # pixels; the tiny autoencoder maps 16x16 images to 4x4x4 latents


def planted_rectangles(n: int, seed: int) -> np.ndarray:
    """uint8 (n, SIZE, SIZE, 3): a random flat background with one random-coloured rectangle."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        images[i] = rng.integers(0, 256, 3)
        x0, y0 = rng.integers(0, SIZE // 2, 2)
        w, h = rng.integers(SIZE // 4, SIZE // 2, 2)
        images[i, y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    return images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vae_run")
    images = planted_rectangles(32, seed=0)
    config = TrainConfig(out, max_steps=300, batch_size=8, lr=1e-3, warmup_steps=10, checkpoint_every=0,
                         device="cpu", progress=False, tensorboard=False, log_every=10)
    return images, train_autoencoder(images, config), out


def test_training_improves_heldout_psnr(trained) -> None:
    _, vae, _ = trained
    heldout = planted_rectangles(16, seed=1)
    untrained = tiny_autoencoder(SIZE, seed=0)  # the same initialisation training started from
    before = psnr(decode_latents(untrained, encode_latents(untrained, heldout)), heldout)
    after = psnr(decode_latents(vae, encode_latents(vae, heldout)), heldout)
    assert vae.trained and not untrained.trained
    assert after > before + 3.0, (before, after)  # measured here: 9.3 dB -> 13.5 dB


def test_training_psnr_rises_in_the_log(trained) -> None:
    _, _, out = trained
    values = [row["psnr_db"] for row in read_rows(out / "metrics.jsonl") if "psnr_db" in row]
    assert len(values) == 30
    assert np.mean(values[-3:]) > np.mean(values[:3]) + 2.0


def test_scaling_factor_gives_unit_variance_latents(trained) -> None:
    images, vae, _ = trained
    latents = encode_latents(vae, images)
    assert vae.model.config.scaling_factor != pytest.approx(0.18215)
    assert float(latents.std()) == pytest.approx(1.0, abs=1e-4)


def test_checkpoint_round_trip(trained) -> None:
    images, vae, out = trained
    again = load_trained_autoencoder(out)
    assert again.trained
    assert again.model.config.scaling_factor == pytest.approx(vae.model.config.scaling_factor)
    torch.testing.assert_close(encode_latents(again, images[:4]), encode_latents(vae, images[:4]), rtol=0, atol=0)
    with pytest.raises(CheckpointError):
        load_trained_autoencoder(out / "missing")


def test_rejects_bad_images(tmp_path) -> None:
    config = TrainConfig(tmp_path, max_steps=1, device="cpu", progress=False, tensorboard=False)
    with pytest.raises(InvalidInputError):
        train_autoencoder(np.zeros((4, SIZE, SIZE), np.uint8), config)
    with pytest.raises(InvalidInputError):
        train_autoencoder(np.zeros((4, SIZE, SIZE, 3), np.float32), config)
