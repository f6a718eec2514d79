"""LaVCa voxel captions: encoder -> top pool images -> captions -> keywords -> one sentence per voxel, and its scores.

Follows LaVCa (Matsuyama et al.): a voxelwise ridge encoder predicts every pool image's response, each voxel's
best images are captioned, keywords of those captions are filtered by CLIP text-image similarity, and a composer
writes one sentence per voxel. Evaluation embeds the sentence and held-out images' captions with a sentence encoder;
their similarity is a predicted response, scored by Spearman correlation with the measured responses.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from neuroattn.encode.captioners import Captioner
from neuroattn.encode.keywords import DEFAULT_STOP_WORDS, Composer, KeywordComposer, keyword_incidence, score_keywords
from neuroattn.encode.metrics import voxelwise_spearman
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.progress import progress_bar

TRAINED_CLIP_WEIGHT = 0.5  # default weight of the CLIP filter when the CLIP is trained (untrained: 0)


class ResponseEncoder(Protocol):
    """Anything that predicts voxel responses (m, V) from image embeddings (m, D), e.g. ``RidgeEncoder``."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class LavcaConfig:
    """Settings of :class:`LaVCa`."""

    n_top: int = 10  # images per voxel that are captioned (the paper's top-N)
    n_keywords: int = 5  # keywords kept per voxel
    n_candidates: int = 15  # keywords per voxel, by frequency, that the CLIP filter re-ranks
    specificity: float = 1.0  # times a keyword's background caption rate subtracted from its frequency
    clip_weight: float | None = None  # in [0, 1]; None: 0.5 with a trained CLIP, 0 with an untrained one
    n_background: int = 200  # random pool images captioned to measure keyword base rates
    chunk_size: int = 4096  # pool images predicted at once (memory: chunk_size x V floats)
    seed: int = 0  # background sample

    def __post_init__(self) -> None:
        if self.n_top < 1 or self.n_keywords < 1 or self.n_candidates < self.n_keywords:
            raise ConfigError("need n_top >= 1 and 1 <= n_keywords <= n_candidates")
        if self.clip_weight is not None and not 0.0 <= self.clip_weight <= 1.0:
            raise ConfigError(f"'clip_weight' must be in [0, 1] or None. {self.clip_weight} was provided.")
        if self.n_background < 0 or self.chunk_size < 1 or self.specificity < 0:
            raise ConfigError("'n_background' and 'specificity' must be >= 0 and 'chunk_size' >= 1")


@dataclass
class ImagePool:
    """The images LaVCa searches: ids (P,), encoder embeddings (P, D), optional images and CLIP embeddings.

    ``images`` uint8 (P, H, W, 3) are needed by image captioners (and to compute CLIP embeddings when
    ``clip_embeddings`` (P, Dclip) is not given); ids are what captioners and outputs refer to.
    """

    ids: np.ndarray
    features: np.ndarray
    images: np.ndarray | None = None
    clip_embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        n = len(self.ids)
        for name in ("features", "images", "clip_embeddings"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise InvalidInputError(f"pool '{name}' has {len(value)} rows for {n} ids")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> ImagePool:
        return ImagePool(
            ids=self.ids[rows], features=self.features[rows],
            images=None if self.images is None else self.images[rows],
            clip_embeddings=None if self.clip_embeddings is None else self.clip_embeddings[rows],
        )


@dataclass
class VoxelCaptions:
    """LaVCa's description of V voxels.

    ``voxels`` (V,) encoder columns; ``sentences`` and ``keywords`` (best first) per voxel; ``keyword_scores``
    (V, n_keywords) frequency scores (NaN pads); ``top_ids`` (V, N) pool ids of each voxel's best images with
    ``top_responses`` (V, N) their predicted responses; ``baseline`` the caption of each voxel's single best
    image; ``clip_trained`` whether the CLIP of the keyword filter was trained and ``clip_weight`` its weight.
    """

    voxels: np.ndarray
    sentences: list[str]
    keywords: list[list[str]]
    keyword_scores: np.ndarray
    top_ids: np.ndarray
    top_responses: np.ndarray
    baseline: list[str]
    clip_trained: bool
    clip_weight: float
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sentences)

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per voxel, ready for a CSV."""
        return [
            {
                "voxel": int(self.voxels[v]),
                "sentence": self.sentences[v],
                "keywords": "; ".join(self.keywords[v]),
                "top_image_ids": "|".join(str(int(i)) for i in self.top_ids[v]),
                "top_image_caption": self.baseline[v],
                "clip_trained": self.clip_trained,
            }
            for v in range(len(self))
        ]

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_rows` to ``path`` atomically."""
        rows = self.to_rows()
        buf = io.StringIO()
        names = list(rows[0]) if rows else ["voxel", "sentence", "keywords", "top_image_ids",
                                            "top_image_caption", "clip_trained"]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(Path(path), buf.getvalue())
        return Path(path)

    def shuffled(self, seed: int = 0) -> VoxelCaptions:
        """A control: the same captions with sentences and keywords moved to other voxels (no voxel keeps its own)."""
        n = len(self)
        perm = np.random.default_rng(seed).permutation(n)
        source = np.empty(n, dtype=np.int64)
        source[perm] = perm[(np.arange(n) + 1) % n]  # one cycle through a random order: a derangement for n > 1
        return replace(self, sentences=[self.sentences[i] for i in source],
                       keywords=[self.keywords[i] for i in source], keyword_scores=self.keyword_scores[source])


def top_images(
    encoder: ResponseEncoder,
    features: np.ndarray,
    n_top: int,
    *,
    voxels: np.ndarray | None = None,
    chunk_size: int = 4096,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each voxel's ``n_top`` highest predicted responses over the pool, streamed in chunks of images.

    Returns
    -------
    rows : ndarray (V, n_top) int64
        Pool rows, best first.
    values : ndarray (V, n_top) float32
        Their predicted responses.
    mean, sd : ndarray (V,) float64
        Mean and standard deviation of each voxel's predictions over the whole pool.
    """
    n_pool = len(features)
    if n_pool < n_top:
        raise InvalidInputError(f"the pool has {n_pool} images, fewer than n_top={n_top}")
    best_rows = best_vals = None
    total = total_sq = 0.0
    for start in progress_bar(range(0, n_pool, chunk_size), desc="pool responses", unit="chunk", disable=not progress):
        pred = np.asarray(encoder.predict(features[start : start + chunk_size]), dtype=np.float32)  # (c, V_all)
        if voxels is not None:
            pred = pred[:, voxels]
        total = total + pred.sum(axis=0, dtype=np.float64)
        total_sq = total_sq + (pred.astype(np.float64) ** 2).sum(axis=0)
        rows = np.broadcast_to(np.arange(start, start + len(pred))[:, None], pred.shape)  # (c, V)
        if best_rows is not None:
            pred, rows = np.concatenate([best_vals, pred]), np.concatenate([best_rows, rows])
        keep = np.argpartition(-pred, min(n_top, len(pred)) - 1, axis=0)[:n_top]  # (n_top, V), unordered
        best_vals, best_rows = np.take_along_axis(pred, keep, 0), np.take_along_axis(rows, keep, 0)
    order = np.argsort(-best_vals, axis=0, kind="stable")
    values = np.take_along_axis(best_vals, order, 0).T  # (V, n_top)
    rows = np.take_along_axis(best_rows, order, 0).T.astype(np.int64)
    mean = total / n_pool
    sd = np.sqrt(np.maximum(total_sq / n_pool - mean**2, 0.0))
    return rows, values.astype(np.float32), mean, sd


def response_weights(values: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Weights (V, N) of each voxel's top images: predicted response z-scored over the pool, >= 0, rows sum to 1."""
    z = np.maximum((values - mean[:, None]) / np.where(sd > 0, sd, 1.0)[:, None], 0.0)
    total = z.sum(axis=1, keepdims=True)
    return np.where(total > 0, z / np.where(total > 0, total, 1.0), 1.0 / values.shape[1])


class LaVCa:
    """Voxel captions from an encoding model.

    Parameters
    ----------
    encoder : ResponseEncoder
        A fitted voxelwise encoder (``RidgeEncoder``) on the pool's embedding space.
    captioner : Captioner
        Captions pool images (``StimulusCaptioner`` offline, ``LocalCaptioner`` with a local model).
    composer : Composer, optional
        Writes the sentences (default :class:`KeywordComposer`).
    clip : ClipEncoder, optional
        CLIP for the keyword filter (``encode_text``, ``encode_images`` and ``trained``).
    config : LavcaConfig, optional
    stop_words : iterable of str
        Words never used as keywords.
    """

    def __init__(
        self,
        encoder: ResponseEncoder,
        captioner: Captioner,
        composer: Composer | None = None,
        clip: Any = None,
        config: LavcaConfig | None = None,
        stop_words: Sequence[str] | frozenset[str] = DEFAULT_STOP_WORDS,
    ) -> None:
        self.encoder = encoder
        self.captioner = captioner
        self.composer = composer if composer is not None else KeywordComposer()
        self.clip = clip
        self.config = config if config is not None else LavcaConfig()
        self.stop_words = frozenset(stop_words)

    @property
    def clip_trained(self) -> bool:
        return bool(self.clip is not None and getattr(self.clip, "trained", False))

    def effective_clip_weight(self) -> float:
        """The configured CLIP weight, or the default for this CLIP (0 without a CLIP or with an untrained one)."""
        if self.config.clip_weight is not None:
            if self.config.clip_weight > 0 and self.clip is None:
                raise ConfigError("'clip_weight' > 0 needs a CLIP model ('clip' is None)")
            return float(self.config.clip_weight)
        return TRAINED_CLIP_WEIGHT if self.clip_trained else 0.0

    def _image_clip(self, pool: ImagePool, rows: np.ndarray) -> np.ndarray:
        if pool.clip_embeddings is not None:
            return np.asarray(pool.clip_embeddings[rows], dtype=np.float32)
        if pool.images is None:
            raise InvalidInputError("the CLIP filter needs the pool's CLIP embeddings or its images")
        return self.clip.encode_images(pool.images[rows]).pooled

    def describe(
        self,
        pool: ImagePool,
        *,
        voxels: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        progress: bool = False,
    ) -> VoxelCaptions:
        """Describe ``voxels`` (encoder columns; all when None) from the ``pool`` minus ``exclude_ids``.

        Every captioned image (the union of the voxels' top images and a background sample) is captioned once,
        and keyword CLIP text embeddings are computed once for the whole vocabulary.
        """
        cfg = self.config
        clip_weight = self.effective_clip_weight()
        if exclude_ids is not None:
            pool = pool.subset(~np.isin(pool.ids, np.asarray(exclude_ids)))
        rows, values, mean, sd = top_images(self.encoder, pool.features, cfg.n_top, voxels=voxels,
                                            chunk_size=cfg.chunk_size, progress=progress)
        n_vox = len(rows)
        rng = np.random.default_rng(cfg.seed)
        background = np.sort(rng.choice(len(pool), size=min(cfg.n_background, len(pool)), replace=False))
        captioned, inverse = np.unique(np.concatenate([rows.ravel(), background]), return_inverse=True)
        top_u = inverse[: rows.size].reshape(rows.shape)  # (V, N) rows into the captioned set
        back_u = inverse[rows.size :]
        images = None if pool.images is None else pool.images[captioned]
        captions = self.captioner.caption(pool.ids[captioned], images, progress=progress)
        vocabulary, incidence = keyword_incidence(captions, self.stop_words)
        base_rate = (np.asarray(incidence[back_u].mean(axis=0)).ravel() if len(back_u)
                     else np.zeros(len(vocabulary), dtype=np.float32))
        weights = response_weights(values, mean, sd)  # (V, N)
        weight_matrix = sparse.csr_matrix(
            (weights.ravel(), (np.repeat(np.arange(n_vox), cfg.n_top), top_u.ravel())), shape=(n_vox, len(captioned))
        )  # duplicate (v, image) entries cannot occur: top rows are distinct per voxel
        keyword_clip = image_clip = None
        if clip_weight > 0:
            keyword_clip = self.clip.encode_text(vocabulary)
            image_clip = self._image_clip(pool, captioned)
        index, scores = score_keywords(
            weight_matrix, incidence, base_rate, n_keywords=cfg.n_keywords, n_candidates=cfg.n_candidates,
            specificity=cfg.specificity, clip_weight=clip_weight, keyword_clip=keyword_clip, image_clip=image_clip,
        )
        keywords = [[vocabulary[k] for k in row if k >= 0] for row in index]
        sentences = self.composer.compose(keywords, progress=progress)
        return VoxelCaptions(
            voxels=np.arange(n_vox) if voxels is None else np.asarray(voxels, dtype=np.int64),
            sentences=list(sentences), keywords=keywords, keyword_scores=scores,
            top_ids=pool.ids[rows], top_responses=values, baseline=[captions[u] for u in top_u[:, 0]],
            clip_trained=self.clip_trained, clip_weight=clip_weight,
            info={"n_pool": len(pool), "n_captioned": len(captioned), "n_vocabulary": len(vocabulary)},
        )


@dataclass
class CaptionScores:
    """Per-voxel Spearman rho (V,) of sentence-similarity predictions with measured responses.

    ``lavca`` the voxel sentences, ``baseline`` each voxel's top-image caption, ``shuffled`` the sentences of
    other voxels (:meth:`VoxelCaptions.shuffled`, a chance-level control).
    """

    lavca: np.ndarray
    baseline: np.ndarray
    shuffled: np.ndarray

    def summary(self) -> dict[str, float]:
        return {f"{name}_mean": float(np.mean(getattr(self, name))) for name in ("lavca", "baseline", "shuffled")}


def _similarity_predictions(encoder: Any, descriptions: Sequence[str], test_emb: np.ndarray) -> np.ndarray:
    """(m, V): cosine of each held-out caption with each voxel's description (unique texts embedded once)."""
    unique, inverse = np.unique(np.asarray(descriptions, dtype=object).astype(str), return_inverse=True)
    emb = np.asarray(encoder.encode(list(unique)), dtype=np.float32)[inverse]  # (V, d)
    return test_emb @ emb.T


def evaluate_captions(
    captions: VoxelCaptions,
    sentence_encoder: Any,
    test_captions: Sequence[str],
    test_responses: np.ndarray,
    *,
    shuffle_seed: int = 0,
) -> CaptionScores:
    """LaVCa's evaluation: sentence similarity to held-out image captions as a predicted response.

    Parameters
    ----------
    captions : VoxelCaptions
        Descriptions of V voxels.
    sentence_encoder : object with ``encode(list[str]) -> (n, d)`` unit rows
        E.g. :func:`neuroattn.encode.sentence_encoder.load_sentence_encoder`.
    test_captions : sequence of str (m,)
        Captions of the held-out images.
    test_responses : ndarray (m, V)
        Measured responses of the V voxels (columns in the order of ``captions``) to those images.
    """
    test_responses = np.asarray(test_responses, dtype=np.float64)
    if test_responses.ndim != 2 or test_responses.shape != (len(test_captions), len(captions)):
        raise InvalidInputError(
            f"test responses {test_responses.shape} must be (m, V) = ({len(test_captions)}, {len(captions)})"
        )
    test_emb = np.asarray(sentence_encoder.encode(list(test_captions)), dtype=np.float32)  # (m, d)
    control = captions.shuffled(shuffle_seed)

    def score(descriptions: Sequence[str]) -> np.ndarray:
        return voxelwise_spearman(_similarity_predictions(sentence_encoder, descriptions, test_emb), test_responses)

    return CaptionScores(lavca=score(captions.sentences), baseline=score(captions.baseline),
                         shuffled=score(control.sentences))


def concept_naming_rate(captions: VoxelCaptions, planted_concept: np.ndarray, concepts: Sequence[str]) -> float:
    """Fraction of voxels with a planted concept (index >= 0 into ``concepts``) whose sentence names it as a word.

    NaN when no voxel has a planted concept.
    """
    planted_concept = np.asarray(planted_concept, dtype=np.int64)
    if planted_concept.shape != (len(captions),):
        raise InvalidInputError(f"planted concepts {planted_concept.shape} must be ({len(captions)},)")
    with_concept = np.flatnonzero(planted_concept >= 0)
    if len(with_concept) == 0:
        return float("nan")
    hits = [
        re.search(rf"\b{re.escape(concepts[planted_concept[v]].lower())}\b", captions.sentences[v].lower()) is not None
        for v in with_concept
    ]
    return float(np.mean(hits))
