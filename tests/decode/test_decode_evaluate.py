"""evaluate_decoder scores planted data, writes metrics.json and report.html, and labels untrained parts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from neuroattn.decode.base import normalize_rows
from neuroattn.decode.clip_features import ImageFeatures
from neuroattn.decode.evaluate import compare_decoders, evaluate_decoder
from neuroattn.decode.ridge import RidgeDecoder

M, V, L, D, SIZE = 120, 30, 3, 8, 32  # stimuli, voxels, tokens, token dim, image side (px)


class OracleDecoder:
    """Returns the true CLIP tokens of each row's image: the ceiling every metric should reach."""

    name = "oracle"
    trained = True

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def brain_embeddings(self, betas: np.ndarray) -> np.ndarray:
        ids = betas[:, 0].astype(int)
        return normalize_rows(self.tokens[ids].reshape(len(ids), -1))

    def predict_clip(self, betas: np.ndarray) -> np.ndarray:
        return self.tokens[betas[:, 0].astype(int)]

    def predict_latents(self, betas: np.ndarray) -> None:
        return None


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, V)).astype(np.float32)
    w = rng.standard_normal((V, L * D)) / np.sqrt(V)
    tokens = (x @ w).reshape(M, L, D).astype(np.float32)
    images = rng.integers(0, 256, size=(M, SIZE, SIZE, 3)).astype(np.uint8)
    feats = ImageFeatures(tokens=tokens, pooled=tokens[:, 0].copy())
    noisy = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)  # trial noise
    return x, noisy, tokens, images, feats


def test_evaluate_untrained_ridge_writes_report_with_banner(planted, tmp_path):
    _, noisy, tokens, images, feats = planted
    train, test = np.arange(80), np.arange(80, M)
    dec = RidgeDecoder(cv=4).fit(noisy[train], tokens[train])
    recon = np.clip(images[test].astype(int) + 30, 0, 255).astype(np.uint8)
    res = evaluate_decoder(dec, noisy[test], test, images, feats, reconstructions=recon, noise_ceiling=0.42,
                           out_dir=tmp_path, n_examples=4, pool_size=300, n_draws=5)
    assert res["label"] == "UNTRAINED" and "CLIP features" in res["untrained_parts"]
    assert res["pool_size"] == 40 and res["chance"]["top1_brain_to_image"] == pytest.approx(1 / 40)
    assert res["metrics"]["top1_brain_to_image"] > 0.8  # planted linear map, mild noise
    assert res["metrics"]["top5_all_test"] >= res["metrics"]["top1_all_test"]
    assert res["metrics"]["two_way_clip_predicted"] > 0.9
    assert res["metrics"]["pixcorr"] > 0.95 and abs(res["chance"]["pixcorr"]) < 0.1
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(res["metrics"]) and saved["noise_ceiling"] == 0.42
    page = (tmp_path / "report.html").read_text()
    assert 'class="banner">UNTRAINED' in page
    assert page.count("data:image/png;base64,") == 4 * (1 + 5 + 1)  # seen + top-5 + reconstruction per example
    assert "noise ceiling" in page and "0.4200" in page


def test_evaluate_oracle_is_perfect_and_trained(planted, tmp_path):
    _, _, tokens, images, feats = planted
    ids = np.arange(M)
    betas = np.stack([ids, np.zeros(M)], axis=1).astype(np.float32)  # the oracle reads the id from column 0
    res = evaluate_decoder(OracleDecoder(tokens), betas, ids, images, feats, out_dir=tmp_path,
                           features_trained=True, n_draws=3)
    assert res["label"] == "trained" and res["untrained_parts"] == []
    for key in ("top1_brain_to_image", "top1_image_to_brain", "top1_all_test", "two_way_clip_predicted"):
        assert res["metrics"][key] == 1.0
    assert "UNTRAINED" not in (tmp_path / "report.html").read_text()
    rows = compare_decoders([res, {**res, "decoder": "copy"}], out_dir=tmp_path)
    assert [r["decoder"] for r in rows] == ["oracle", "copy", "chance"]
    with open(tmp_path / "comparison.csv") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[2]["top1_all_test"]) == pytest.approx(1 / M)
    assert json.loads((tmp_path / "comparison.json").read_text())[0]["top1_all_test"] == 1.0
