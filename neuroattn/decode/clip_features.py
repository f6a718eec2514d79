"""CLIP image/text features (open_clip), the flattened-token retrieval space and low-level image features.

A tiny randomly initialised CLIP works offline (``trained=False``); real weights load from a local
open_clip checkpoint file only, never from the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.progress import progress_bar

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RGB, images scaled to [0, 1]
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_CLIP_CONFIG: dict = {
    "embed_dim": 64,  # D, the joint image/text space
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
"""Tiny open_clip configuration: 64 px images, 8 px patches -> 8x8 grid, L = 65 tokens of D = 64."""


@dataclass
class ImageFeatures:
    """CLIP features of N images.

    ``tokens`` (N, L, D) float32: CLS token first, then the patch grid in row-major order, every token passed
    through ``ln_post`` and the projection into the joint space; ``pooled`` (N, D) equals ``tokens[:, 0]``.
    """

    tokens: np.ndarray
    pooled: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, index: np.ndarray) -> ImageFeatures:
        """Features of the images selected by ``index`` (integer or boolean array)."""
        return ImageFeatures(tokens=self.tokens[index], pooled=self.pooled[index])


class ClipEncoder:
    """An open_clip model wrapped to give token grids, pooled embeddings and text embeddings as numpy.

    Parameters
    ----------
    model : open_clip ``CLIP``
        A CLIP model with a ViT image tower pooled on the class token.
    tokenizer : callable
        open_clip tokenizer for ``model``'s text tower.
    trained : bool
        Whether the weights come from a trained checkpoint.
    source : str
        Where the weights came from (``"tiny-random"`` or a file path).
    device : str
        Torch device for inference.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, trained: bool, source: str, device: str = "cpu") -> None:
        visual = model.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok":
            raise ConfigError("CLIP image tower must pool on the class token (pool_type 'tok', no attentional pool)")
        if getattr(visual, "final_ln_after_pool", False) or visual.proj is None:
            raise ConfigError("CLIP image tower must apply ln_post to every token and have a projection")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.trained = trained
        self.source = source
        self.device = device
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        patch = visual.patch_size
        self.grid = self.image_size // int(patch[0] if isinstance(patch, tuple | list) else patch)
        self.dim = int(visual.proj.shape[1])
        self.n_tokens = 1 + self.grid**2
        self._mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)

    def _prepare(self, images: np.ndarray) -> Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S) at the tower's input size."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
            x = x.clamp(0.0, 1.0)
        return ((x - self._mean) / self._std).to(self.device)

    @torch.no_grad()
    def _encode_batch(self, images: np.ndarray) -> tuple[Tensor, Tensor]:
        visual = self.model.visual
        previous = visual.output_tokens
        visual.output_tokens = True
        try:
            pooled, patches = visual(self._prepare(images))  # (B, D), (B, grid**2, width) after ln_post
        finally:
            visual.output_tokens = previous
        patches = patches @ visual.proj  # (B, grid**2, D): same ln_post + proj the class token got
        tokens = torch.cat([pooled[:, None, :], patches], dim=1)  # (B, L, D)
        return tokens.float().cpu(), pooled.float().cpu()

    def encode_images(self, images: np.ndarray, batch_size: int = 64, progress: bool = False) -> ImageFeatures:
        """CLIP token grids and pooled embeddings of uint8 images (N, H, W, 3)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InvalidInputError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        tokens = np.zeros((len(images), self.n_tokens, self.dim), dtype=np.float32)
        pooled = np.zeros((len(images), self.dim), dtype=np.float32)
        starts = range(0, len(images), batch_size)
        for start in progress_bar(starts, desc="CLIP images", unit="batch", disable=not progress):
            t, p = self._encode_batch(images[start : start + batch_size])
            tokens[start : start + len(t)] = t.numpy()
            pooled[start : start + len(p)] = p.numpy()
        return ImageFeatures(tokens=tokens, pooled=pooled)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Text embeddings (N, D) in the joint space (not normalised)."""
        if isinstance(texts, str):
            raise InvalidInputError("encode_text expects a list of strings, got one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenizer(list(texts)).to(self.device)  # (N, context_length)
        return self.model.encode_text(ids).float().cpu().numpy()


def tiny_clip(*, seed: int = 0, image_size: int = 64) -> torch.nn.Module:
    """The tiny randomly initialised open_clip ``CLIP`` of :data:`TINY_CLIP_CONFIG` (untrained)."""
    from open_clip.model import CLIP

    vision = dict(TINY_CLIP_CONFIG["vision_cfg"], image_size=image_size)
    if image_size % vision["patch_size"]:
        raise ConfigError(f"'image_size' must be a multiple of {vision['patch_size']} px. {image_size} was provided.")
    torch.manual_seed(seed)
    return CLIP(embed_dim=TINY_CLIP_CONFIG["embed_dim"], vision_cfg=vision, text_cfg=dict(TINY_CLIP_CONFIG["text_cfg"]))


def load_clip(
    weights: Path | str | None = None,
    *,
    model_name: str = "ViT-L-14",
    image_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> ClipEncoder:
    """A :class:`ClipEncoder`: the tiny untrained CLIP when ``weights`` is None, else real weights from a file.

    Parameters
    ----------
    weights : path or None
        An open_clip checkpoint file (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with
        ``weights_only=True``) for the architecture ``model_name``. Nothing is downloaded.
    model_name : str
        open_clip architecture name of ``weights`` (e.g. ``"ViT-L-14"``, ``"ViT-B-32"``); ignored for the tiny model.
    image_size : int
        Input size (px) of the tiny model; real models resize images to their own input size.
    seed : int
        Seed of the tiny model's random weights.
    """
    from open_clip.tokenizer import SimpleTokenizer

    if weights is None:
        model = tiny_clip(seed=seed, image_size=image_size)
        tokenizer = SimpleTokenizer(context_length=TINY_CLIP_CONFIG["text_cfg"]["context_length"])
        return ClipEncoder(model, tokenizer, trained=False, source="tiny-random", device=device)
    import open_clip
    from open_clip.factory import load_checkpoint

    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"{path}: CLIP checkpoint file not found")
    if model_name not in open_clip.list_models():
        raise ConfigError(f"'model_name' must be an open_clip architecture name. '{model_name}' was provided.")
    model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    try:
        load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, OSError, ValueError, KeyError, AssertionError) as err:  # open_clip asserts on shapes
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: cannot load {model_name} CLIP weights ({reason})") from err
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipEncoder(model, tokenizer, trained=True, source=str(path), device=device)


def retrieval_targets(features: ImageFeatures) -> np.ndarray:
    """The retrieval space: flattened tokens (N, L*D), each row L2-normalised, float32."""
    flat = features.tokens.reshape(len(features.tokens), -1).astype(np.float32)  # (N, L*D)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-12)


LOWLEVEL_THUMBNAIL = 16  # px, side of the grey thumbnail
LOWLEVEL_ENERGY_GRID = 8  # cells per side over which local contrast energy is pooled


def _block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Average (N, H, W) over a size x size grid of equal blocks (area resampling when H is not a multiple)."""
    n, h, w = x.shape
    if h % size == 0 and w % size == 0:
        return x.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4))  # (N, size, size)
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]  # (N, 1, H, W)
    return F.adaptive_avg_pool2d(t, size)[:, 0].numpy()


def lowlevel_features(images: np.ndarray) -> np.ndarray:
    """Low-level image features (N, F), F = 16*16 + 8*8: grey thumbnail and local contrast energy.

    The thumbnail is the block-averaged luminance in [0, 1]; the energy is the mean squared luminance
    gradient in each cell of an 8x8 grid (square-rooted), a crude model of V1 complex-cell responses.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidInputError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    grey = (images.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
    thumb = _block_mean(grey, LOWLEVEL_THUMBNAIL).reshape(len(images), -1)  # (N, 256)
    gy, gx = np.gradient(grey, axis=(1, 2))
    energy = np.sqrt(_block_mean(gx**2 + gy**2, LOWLEVEL_ENERGY_GRID)).reshape(len(images), -1)  # (N, 64)
    return np.concatenate([thumb, energy], axis=1).astype(np.float32)
