"""Image embeddings for encoding models: whitened PCs of the CLIP token grid and of low-level image features.

Every encoder (ridge, BraInCoRL, LaVCa) reads the same (N, D) embedding of the stimuli. A linear bridge from
CLIP's joint space (unit-norm pooled image embeddings) to it lets CLIP text embeddings be asked as queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuroattn.data.pca import WhitenedPCA
from neuroattn.decode.clip_features import ImageFeatures, lowlevel_features
from neuroattn.errors import ConfigError, InvalidInputError

FEATURE_KINDS = ("clip-grid+lowlevel", "clip-grid", "clip-pooled")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


@dataclass
class EncodingFeatures:
    """Whitened image embeddings ``values`` (N, D) float32 and the text bridge into them.

    ``text_map`` ((Dclip + 1, D): weights then intercept) maps unit-norm CLIP embeddings to ``values``; it is
    fitted by ridge on the images' pooled embeddings, exact for ``clip-pooled`` and a projection otherwise.
    """

    values: np.ndarray
    kind: str
    info: dict[str, Any] = field(default_factory=dict)
    text_map: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def text_features(self, text_embeddings: np.ndarray) -> np.ndarray:
        """CLIP text embeddings (M, Dclip) -> (M, D) in this embedding space (the low-level part gets ~0)."""
        if self.text_map is None:
            raise InvalidInputError("these features have no text bridge (no CLIP embeddings were given)")
        t = _unit(text_embeddings)
        if t.ndim != 2 or t.shape[1] != self.text_map.shape[0] - 1:
            raise InvalidInputError(f"text embeddings must be (M, {self.text_map.shape[0] - 1}), got {t.shape}")
        return (t @ self.text_map[:-1] + self.text_map[-1]).astype(np.float32)


def _text_bridge(pooled: np.ndarray, values: np.ndarray, alpha: float = 1e-3) -> np.ndarray:
    """Ridge map (Dclip + 1, D) from unit-norm pooled embeddings (with an intercept column) to ``values``."""
    x = _unit(pooled)
    x_mean, y_mean = x.mean(axis=0), values.mean(axis=0)
    xc = x - x_mean
    gram = xc.T @ xc
    ridge = alpha * np.trace(gram) / len(gram)
    w = np.linalg.solve(gram + ridge * np.eye(len(gram)), xc.T @ (values - y_mean))  # (Dclip, D)
    return np.vstack([w, y_mean - x_mean @ w])


def encoding_features(
    features: ImageFeatures,
    images: np.ndarray,
    *,
    kind: str = "clip-grid+lowlevel",
    n_clip: int = 64,
    n_lowlevel: int = 32,
) -> EncodingFeatures:
    """Whitened embeddings of N images for encoding models.

    Parameters
    ----------
    features : ImageFeatures
        CLIP token grid (N, L, Dclip) and pooled embeddings (N, Dclip).
    images : ndarray
        uint8 (N, H, W, 3), for the low-level features (``clip-grid+lowlevel`` only).
    kind : str
        ``clip-grid+lowlevel`` (``n_clip`` PCs of the flattened token grid and ``n_lowlevel`` PCs of
        thumbnails/contrast energy; early visual cortex needs the latter), ``clip-grid`` or ``clip-pooled``.
    n_clip, n_lowlevel : int
        Principal components kept of each part.
    """
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"'kind' must be one of {FEATURE_KINDS}, got {kind!r}")
    if n_clip < 1 or (kind == "clip-grid+lowlevel" and n_lowlevel < 1):
        raise ConfigError(f"'n_clip' and 'n_lowlevel' must be >= 1, got {n_clip} and {n_lowlevel}")
    n = len(features)
    if len(images) != n:
        raise InvalidInputError(f"{len(images)} images for {n} CLIP feature rows")
    if kind == "clip-pooled":
        parts = [WhitenedPCA(n_clip).fit_transform(features.pooled)]
    else:
        parts = [WhitenedPCA(n_clip).fit_transform(features.tokens.reshape(n, -1))]  # (N, L*Dclip) -> PCs
        if kind == "clip-grid+lowlevel":
            parts.append(WhitenedPCA(n_lowlevel).fit_transform(lowlevel_features(images)))
    values = np.concatenate(parts, axis=1)
    info = {"kind": kind, "n_clip": parts[0].shape[1], "n_lowlevel": parts[1].shape[1] if len(parts) > 1 else 0}
    return EncodingFeatures(values=values.astype(np.float32), kind=kind, info=info,
                            text_map=_text_bridge(features.pooled, values))
