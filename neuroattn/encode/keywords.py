"""Voxel keywords from image captions: phrase extraction, response-weighted scoring, a CLIP filter, and composers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import sparse

from neuroattn.errors import ConfigError, InvalidInputError

DEFAULT_STOP_WORDS: frozenset[str] = frozenset(
    [
        # function words
        "a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "but", "for", "from", "by", "into", "onto",
        "over", "under", "near", "next", "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "its",
        "it", "this", "that", "these", "those", "there", "here", "some", "any", "one", "two", "three", "four", "five",
        "several", "many", "very", "while", "as", "which", "who", "whose", "what", "where", "when", "than", "then",
        "also", "just", "their", "his", "her", "them", "they", "he", "she",
        # caption filler that describes the picture rather than its content
        "image", "images", "picture", "pictures", "crop", "view", "close", "up", "shows", "showing", "shown",
        "depicting", "depicts", "seen", "visible", "appears", "looking",
    ]
)
"""Words never used as keywords: function words and caption filler (``photo`` is kept; its base rate decides)."""

_SEGMENT_SPLIT = re.compile(r"[,.;:!?()\[\]\"]+")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def phrase_runs(caption: str, stop_words: Iterable[str] = DEFAULT_STOP_WORDS) -> list[list[str]]:
    """Runs of consecutive content words of one caption (split at punctuation and stop words), lower-cased.

    ``"a large purple ring on the right, on a black dots background"`` ->
    ``[["large", "purple", "ring"], ["right"], ["black", "dots", "background"]]``.
    """
    stop = stop_words if isinstance(stop_words, frozenset | set) else frozenset(stop_words)
    runs: list[list[str]] = []
    for segment in _SEGMENT_SPLIT.split(caption.lower().replace("'s ", " ")):
        run: list[str] = []
        for word in _WORD.findall(segment):
            if word in stop or len(word) < 2:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(word)
        if run:
            runs.append(run)
    return runs


def caption_terms(caption: str, stop_words: Iterable[str] = DEFAULT_STOP_WORDS) -> list[str]:
    """Keyword terms of one caption, unique, in order of appearance.

    Every content word, plus each modifier paired with its phrase's head (last word), so that
    ``"large purple striped ring"`` gives ``purple ring``, ``striped ring`` and ``large ring`` as well as
    the single words -- colour+shape terms survive intervening adjectives.
    """
    terms: list[str] = []
    for run in phrase_runs(caption, stop_words):
        terms += run
        head = run[-1]
        terms += [f"{word} {head}" for word in run[:-1] if word != head]
    return list(dict.fromkeys(terms))


def keyword_incidence(
    captions: Sequence[str], stop_words: Iterable[str] = DEFAULT_STOP_WORDS
) -> tuple[list[str], sparse.csr_matrix]:
    """The keyword vocabulary (K,) of ``captions`` (sorted) and the float32 incidence matrix (n_captions, K).

    Entry (i, k) is 1 when caption i contains term k (counted once per caption).
    """
    per_caption = [caption_terms(c, stop_words) for c in captions]
    vocabulary = sorted({t for terms in per_caption for t in terms})
    index = {t: k for k, t in enumerate(vocabulary)}
    rows = np.repeat(np.arange(len(per_caption)), [len(t) for t in per_caption])
    cols = np.array([index[t] for terms in per_caption for t in terms], dtype=np.int64)
    data = np.ones(len(cols), dtype=np.float32)
    matrix = sparse.csr_matrix((data, (rows, cols)), shape=(len(per_caption), len(vocabulary)))
    return vocabulary, matrix


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _zscore_masked(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """z-score each row of ``x`` (V, C) over its ``valid`` entries; rows with no spread give 0."""
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = np.where(valid, x, 0.0).sum(axis=1, keepdims=True) / count
    sd = np.sqrt(np.where(valid, (x - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / count)
    return np.where(valid & (sd > 1e-12), (x - mean) / np.where(sd > 1e-12, sd, 1.0), 0.0)


def score_keywords(
    weights: sparse.csr_matrix,
    incidence: sparse.csr_matrix,
    base_rate: np.ndarray,
    *,
    n_keywords: int = 5,
    n_candidates: int = 15,
    specificity: float = 1.0,
    clip_weight: float = 0.0,
    keyword_clip: np.ndarray | None = None,
    image_clip: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's best keywords: response-weighted frequency, minus the base rate, re-ranked by CLIP.

    Parameters
    ----------
    weights : sparse (V, U)
        Row v holds voxel v's weights on the U captioned images (non-zero on its top images, summing to 1).
    incidence : sparse (U, K)
        Caption-by-keyword incidence (:func:`keyword_incidence`).
    base_rate : ndarray (K,)
        Fraction of background captions containing each keyword; ``specificity`` times it is subtracted, so
        terms in every caption ("background", "photo") do not describe every voxel.
    n_keywords : int
        Keywords kept per voxel.
    n_candidates : int
        Keywords per voxel, by frequency, that the CLIP filter re-ranks.
    clip_weight : float
        In [0, 1]: the final score is ``(1 - w) z(frequency) + w z(CLIP similarity)`` (z over the candidates).
    keyword_clip : ndarray (K, Dclip), optional
        CLIP text embeddings of the keywords (needed when ``clip_weight > 0``).
    image_clip : ndarray (U, Dclip), optional
        CLIP image embeddings of the captioned images; the similarity of a keyword to a voxel is its mean
        cosine with the voxel's top images, weighted as in ``weights``.

    Returns
    -------
    keyword_index : ndarray (V, n_keywords) int64
        Indices into the vocabulary, best first; -1 pads voxels with fewer candidate keywords.
    keyword_score : ndarray (V, n_keywords) float32
        Frequency score (weighted frequency minus scaled base rate) of each kept keyword; NaN for padding.
    """
    if not 0.0 <= clip_weight <= 1.0:
        raise ConfigError(f"'clip_weight' must be in [0, 1]. {clip_weight} was provided.")
    if n_keywords < 1 or n_candidates < n_keywords:
        raise ConfigError(f"need 1 <= 'n_keywords' <= 'n_candidates', got {n_keywords} and {n_candidates}")
    n_vox, n_vocab = weights.shape[0], incidence.shape[1]
    freq = np.asarray((weights @ incidence).todense(), dtype=np.float32)  # (V, K)
    specific = freq - specificity * np.asarray(base_rate, dtype=np.float32)[None, :]
    # candidates: stable sort on -specific keeps vocabulary order among ties (deterministic)
    n_cand = min(n_candidates, n_vocab)
    order = np.argsort(-np.where(freq > 0, specific, -np.inf), axis=1, kind="stable")[:, :n_cand]  # (V, C)
    valid = np.take_along_axis(freq, order, axis=1) > 0  # (V, C)
    cand_score = np.take_along_axis(specific, order, axis=1)  # (V, C)
    final = _zscore_masked(cand_score, valid)
    if clip_weight > 0:
        if keyword_clip is None or image_clip is None:
            raise InvalidInputError("clip_weight > 0 needs keyword and image CLIP embeddings")
        voxel_clip = np.asarray(weights @ _unit_rows(image_clip), dtype=np.float32)  # (V, Dclip)
        text = _unit_rows(keyword_clip)  # (K, Dclip)
        sim = np.einsum("vd,vcd->vc", voxel_clip, text[order])  # (V, C): weighted mean cosine
        final = (1.0 - clip_weight) * final + clip_weight * _zscore_masked(sim, valid)
    final = np.where(valid, final, -np.inf)
    rank = np.argsort(-final, axis=1, kind="stable")[:, :n_keywords]  # (V, n_keywords)
    keep = np.take_along_axis(valid, rank, axis=1)
    index = np.where(keep, np.take_along_axis(order, rank, axis=1), -1)
    score = np.where(keep, np.take_along_axis(cand_score, rank, axis=1), np.nan).astype(np.float32)
    if n_cand < n_keywords:  # tiny vocabularies: pad to the requested width
        pad = n_keywords - n_cand
        index = np.pad(index, ((0, 0), (0, pad)), constant_values=-1)
        score = np.pad(score, ((0, 0), (0, pad)), constant_values=np.nan)
    assert index.shape == (n_vox, n_keywords)
    return index.astype(np.int64), score


class Composer(Protocol):
    """Turns each voxel's keywords (best first) into one sentence."""

    def compose(self, keywords: Sequence[Sequence[str]], progress: bool = False) -> list[str]: ...


def merge_keywords(keywords: Sequence[str]) -> list[str]:
    """Drop single words already said by a kept multi-word keyword; keep the order otherwise."""
    phrases = [k for k in keywords if " " in k]
    covered = {w for p in phrases for w in p.split()}
    return list(dict.fromkeys(k for k in keywords if " " in k or k not in covered))


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class KeywordComposer:
    """Deterministic offline composer: ``template`` filled with the merged keywords, ``"images of a, b and c"``.

    Parameters
    ----------
    template : str
        A format string with one ``{}`` for the joined keywords.
    empty : str
        Sentence for a voxel without keywords.
    """

    def __init__(self, template: str = "images of {}", empty: str = "no clear preference") -> None:
        if template.count("{}") != 1:
            raise ConfigError(f"'template' must contain exactly one '{{}}'. {template!r} was provided.")
        self.template = template
        self.empty = empty

    def compose(self, keywords: Sequence[Sequence[str]], progress: bool = False) -> list[str]:
        out = []
        for words in keywords:
            merged = merge_keywords(list(words))
            out.append(self.template.format(_join(merged)) if merged else self.empty)
        return out


COMPOSER_PROMPT = (
    "Write one short sentence that describes what the images a brain region prefers show, "
    "using these keywords.\nKeywords: {keywords}\nSentence:"
)
"""The fixed prompt of :class:`LocalLanguageModelComposer`."""


class LocalLanguageModelComposer:
    """Sentences written by a local causal language model (a HuggingFace folder, never downloaded).

    Greedy decoding of :data:`COMPOSER_PROMPT`; the first line of the continuation is the sentence (the
    keyword composer's sentence when the model writes nothing).

    Parameters
    ----------
    path : str or Path
        A folder with a causal LM and its tokenizer (``save_pretrained`` layout).
    max_new_tokens : int
        Length limit of each sentence (tokens).
    batch_size : int
        Prompts per generation batch.
    device : str
        Torch device.
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 32, batch_size: int = 16, device: str = "cpu") -> None:
        self.path = Path(path)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self.path.is_dir():
            raise InvalidInputError("language model folder not found", self.path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as err:
            problem = f"cannot load a causal language model ({str(err).splitlines()[0]})"
            raise InvalidInputError(problem, self.path) from err
        tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._model, self._tokenizer = model.to(self.device).eval(), tokenizer

    def compose(self, keywords: Sequence[Sequence[str]], progress: bool = False) -> list[str]:
        import torch

        from neuroattn.progress import progress_bar

        self._load()
        tok, model = self._tokenizer, self._model
        fallback = KeywordComposer().compose(keywords)
        prompts = [COMPOSER_PROMPT.format(keywords=", ".join(words)) for words in keywords]
        out: list[str] = []
        starts = range(0, len(prompts), self.batch_size)
        for start in progress_bar(starts, desc="compose", unit="batch", disable=not progress):
            batch = tok(prompts[start : start + self.batch_size], return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for k, text in enumerate(texts):
                line = text.strip().split("\n")[0].strip()
                out.append(line or fallback[start + k])
        return out
