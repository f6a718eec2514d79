"""RidgeDecoder recovers a planted linear map, retrieves well on planted data and round-trips its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroattn.decode.base import BrainDecoder
from neuroattn.decode.metrics import top1_among
from neuroattn.decode.ridge import RidgeDecoder
from neuroattn.errors import CheckpointError, ConfigError
from neuroattn.io.checkpoints import save_checkpoint

N_TRAIN, N_TEST, V, L, D = 400, 200, 40, 5, 8
NOISE_SD = 0.5  # signal variance 1 per output -> noise ceiling R^2 = 1 / (1 + 0.25) = 0.8


def _planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, L * D)) / np.sqrt(V)  # unit signal variance per output
    w_lat = rng.standard_normal((V, 2 * 3 * 3)) / np.sqrt(V)
    x = rng.standard_normal((N_TRAIN + N_TEST, V))
    clean = x @ w
    tokens = (clean + NOISE_SD * rng.standard_normal(clean.shape)).reshape(-1, L, D)
    latents = (x @ w_lat + NOISE_SD * rng.standard_normal((len(x), 18))).reshape(-1, 2, 3, 3)
    return x.astype(np.float32), tokens.astype(np.float32), latents.astype(np.float32), clean.reshape(-1, L, D)


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    pred, true = pred.reshape(len(pred), -1), true.reshape(len(true), -1)
    return float(np.mean(1 - ((true - pred) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)))


@pytest.fixture(scope="module")
def fitted():
    x, tokens, latents, clean = _planted()
    dec = RidgeDecoder(cv=4).fit(x[:N_TRAIN], tokens[:N_TRAIN], latents[:N_TRAIN])
    return dec, x[N_TRAIN:], tokens[N_TRAIN:], latents[N_TRAIN:], clean[N_TRAIN:]


def test_ridge_recovers_planted_map_near_noise_ceiling(fitted):
    dec, x, tokens, latents, clean = fitted
    ceiling = 1 / (1 + NOISE_SD**2)
    r2_noisy = _r2(dec.predict_clip(x), tokens)
    assert ceiling - 0.05 < r2_noisy <= ceiling + 0.02
    assert _r2(dec.predict_clip(x), clean) > 0.95  # the map itself is recovered
    assert ceiling - 0.05 < _r2(dec.predict_latents(x), latents) <= ceiling + 0.02
    assert dec.predict_clip(x).shape == (N_TEST, L, D)
    assert dec.predict_latents(x).shape == (N_TEST, 2, 3, 3)
    assert 0.6 < dec.cv_scores_["clip"] < 0.85
    assert dec.chosen_alphas_["clip"] < 1e3  # a well-determined map needs little shrinkage


def test_ridge_retrieval_on_planted_data(fitted):
    dec, x, _, _, clean = fitted
    emb = dec.brain_embeddings(x)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    truth = clean.reshape(len(clean), -1)
    res = top1_among(emb, truth, pool_size=100, n_draws=10, seed=0)
    assert res["brain_to_image"] > 0.9 and res["image_to_brain"] > 0.9
    assert res["chance"] == pytest.approx(0.01)


def test_ridge_protocol_trained_flag_and_roundtrip(fitted, tmp_path):
    dec, x, *_ = fitted
    assert isinstance(dec, BrainDecoder)
    assert dec.trained is False  # fitted on targets of unknown (default: untrained) provenance
    dec.targets_trained = True
    try:
        assert dec.trained is True
        dec.save(tmp_path / "ridge")
    finally:
        dec.targets_trained = False
    loaded = RidgeDecoder.load(tmp_path / "ridge")
    assert loaded.trained is True
    np.testing.assert_array_equal(loaded.brain_embeddings(x), dec.brain_embeddings(x))
    np.testing.assert_array_equal(loaded.predict_latents(x), dec.predict_latents(x))
    save_checkpoint(tmp_path / "other", {"w": torch.zeros(1)}, {}, model_class="MindEye", trained=False)
    with pytest.raises(CheckpointError):
        RidgeDecoder.load(tmp_path / "other")


def test_ridge_grouped_cv_and_errors():
    x, tokens, _, _ = _planted(1)
    groups = np.repeat(np.arange(N_TRAIN // 2), 2)
    dec = RidgeDecoder(cv=3).fit(x[:N_TRAIN], tokens[:N_TRAIN], groups=groups)
    assert dec.predict_latents(x[:3]) is None
    with pytest.raises(ConfigError):
        RidgeDecoder().brain_embeddings(x)
    with pytest.raises(ConfigError):
        RidgeDecoder(alphas=[-1.0])
