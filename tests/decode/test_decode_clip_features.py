"""CLIP features: token grid consistent with open_clip's own pooled embedding, shapes, determinism, text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroattn.decode.clip_features import (
    ImageFeatures,
    load_clip,
    lowlevel_features,
    retrieval_targets,
)
from neuroattn.errors import CheckpointError


@pytest.fixture(scope="module")
def clip():
    return load_clip(seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)


def test_shapes_and_metadata(clip, images):
    feats = clip.encode_images(images, batch_size=4)
    assert clip.trained is False and clip.source == "tiny-random"
    assert (clip.dim, clip.n_tokens) == (64, 65)
    assert feats.tokens.shape == (6, 65, 64) and feats.tokens.dtype == np.float32
    assert feats.pooled.shape == (6, 64) and feats.pooled.dtype == np.float32


def test_cls_token_is_pooled_and_tokens_are_projected(clip, images):
    feats = clip.encode_images(images, batch_size=4)
    np.testing.assert_array_equal(feats.tokens[:, 0], feats.pooled)
    model = clip.model
    x = clip._prepare(images)
    with torch.no_grad():
        reference_pooled = model.encode_image(x).numpy()  # open_clip's own image embedding
        hidden = model.visual.transformer(model.visual._embeds(x))  # (B, L, width)
        reference_tokens = (model.visual.ln_post(hidden) @ model.visual.proj).numpy()  # (B, L, D)
    np.testing.assert_allclose(feats.pooled, reference_pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats.tokens, reference_tokens, rtol=1e-5, atol=1e-5)
    # patch tokens are distinct from each other and from the class token
    assert np.abs(feats.tokens[:, 1:] - feats.tokens[:, :1]).mean() > 1e-2


def test_deterministic_and_seeded(clip, images):
    again = load_clip(seed=0).encode_images(images)
    other = load_clip(seed=1).encode_images(images)
    first = clip.encode_images(images)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert not np.allclose(first.tokens, other.tokens)
    # batch size does not change results
    np.testing.assert_allclose(clip.encode_images(images, batch_size=1).tokens, first.tokens, rtol=1e-5, atol=1e-6)


def test_encode_text(clip):
    emb = clip.encode_text(["a red circle on the left", "a crop of a photo of a cat", "a red circle on the left"])
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], emb[2], rtol=1e-6)
    assert not np.allclose(emb[0], emb[1])
    assert clip.encode_text([]).shape == (0, 64)


def test_retrieval_targets_unit_rows():
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((5, 3, 4)).astype(np.float32)
    feats = ImageFeatures(tokens=tokens, pooled=tokens[:, 0])
    targets = retrieval_targets(feats)
    assert targets.shape == (5, 12) and targets.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(targets, axis=1), 1.0, rtol=1e-6)
    flat = tokens.reshape(5, 12)
    np.testing.assert_allclose(targets, flat / np.linalg.norm(flat, axis=1, keepdims=True), rtol=1e-6)


def test_lowlevel_features_closed_forms():
    flat = np.full((1, 64, 64, 3), 100, dtype=np.uint8)
    feats = lowlevel_features(flat)
    assert feats.shape == (1, 16 * 16 + 8 * 8)
    np.testing.assert_allclose(feats[0, :256], 100 / 255, rtol=1e-5)
    np.testing.assert_allclose(feats[0, 256:], 0.0, atol=1e-7)
    # left half black, right half white: thumbnail shows the edge, energy sits only in the cells at the edge
    split = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    split[:, :, 32:] = 255
    feats = lowlevel_features(split)
    thumb = feats[0, :256].reshape(16, 16)
    np.testing.assert_allclose(thumb[:, :8], 0.0, atol=1e-6)
    np.testing.assert_allclose(thumb[:, 8:], 1.0, atol=1e-5)
    energy = feats[0, 256:].reshape(8, 8)
    assert (energy[:, 3:5] > 0).all() and np.allclose(np.delete(energy, [3, 4], axis=1), 0.0)


def test_missing_weights_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_clip(tmp_path / "absent.safetensors", model_name="ViT-B-32")


def test_local_weights_of_a_real_architecture_load_exactly(tmp_path, images):
    """What ``--clip-weights`` does with real weights: a ViT-S-32 checkpoint written locally (random weights,
    safetensors) loads strictly, is marked trained, and gives the source model's own image and text embeddings."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    path = tmp_path / "vit-s-32.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in source.state_dict().items()}, str(path))

    clip = load_clip(path, model_name="ViT-S-32")
    assert clip.trained and clip.source == str(path)
    assert (clip.n_tokens, clip.dim) == (1 + 7 * 7, source.visual.proj.shape[1])
    feats = clip.encode_images(images[:2])
    with torch.no_grad():
        expected = source.encode_image(clip._prepare(images[:2])).numpy()
        expected_text = source.encode_text(open_clip.get_tokenizer("ViT-S-32")(["a red square"])).numpy()
    np.testing.assert_allclose(feats.pooled, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats.tokens[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clip.encode_text(["a red square"]), expected_text, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="cannot load ViT-B-32"):
        load_clip(path, model_name="ViT-B-32")
