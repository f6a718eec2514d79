"""The bundled all-MiniLM-L6-v2 sentence encoder loads with no network and ranks paraphrases above unrelated text."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from neuroattn.encode.sentence_encoder import SentenceEncoder, default_sentence_model_path, load_sentence_encoder
from neuroattn.errors import CheckpointError, InvalidInputError


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)  # any download attempt would fail the load
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        model = load_sentence_encoder()
        assert "HF_HUB_OFFLINE" not in os.environ  # the offline switch is restored after loading
    return model


def test_loads_offline_with_unit_rows(encoder: SentenceEncoder):
    assert encoder.source == str(default_sentence_model_path())
    emb = encoder.encode(["a red circle", "a cat on a sofa", "galaxies in deep space"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(InvalidInputError):
        encoder.encode("one string")


def test_paraphrases_are_closer_than_unrelated_sentences(encoder: SentenceEncoder):
    pairs = [
        ("a cat is sleeping on the sofa", "a kitten naps on the couch", "the stock market fell sharply today"),
        ("a red circle on a white background", "a round red shape against white", "a man playing the guitar"),
        ("images of faces and people", "photos of human faces", "a bowl of fruit on a table"),
    ]
    for anchor, paraphrase, unrelated in pairs:
        a, p, u = encoder.encode([anchor, paraphrase, unrelated])
        assert a @ p > a @ u + 0.2, (anchor, float(a @ p), float(a @ u))


def test_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        load_sentence_encoder(tmp_path / "absent")
