"""Image captioners for voxel captions: the stimulus set's own descriptions, or a local image-to-text model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from neuroattn.data.stimuli import StimulusSet
from neuroattn.errors import InvalidInputError
from neuroattn.progress import progress_bar


class Captioner(Protocol):
    """Captions of pool images, given their ids (N,) and, when the captioner needs them, uint8 images (N, H, W, 3)."""

    def caption(self, ids: np.ndarray, images: np.ndarray | None = None, progress: bool = False) -> list[str]: ...


class StimulusCaptioner:
    """The offline default: each image's stored description, looked up by its id.

    Parameters
    ----------
    descriptions : StimulusSet or sequence of str
        A stimulus set (its ``descriptions``) or one caption per pool id.
    """

    def __init__(self, descriptions: StimulusSet | Sequence[str]) -> None:
        if isinstance(descriptions, StimulusSet):
            descriptions = descriptions.descriptions
        self.descriptions = list(descriptions)

    def caption(self, ids: np.ndarray, images: np.ndarray | None = None, progress: bool = False) -> list[str]:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.descriptions)):
            raise InvalidInputError(f"image ids must be in [0, {len(self.descriptions)}), got {ids.min()}..{ids.max()}")
        return [self.descriptions[i] for i in ids]


class LocalCaptioner:
    """Captions from a local HuggingFace image-to-text model folder (BLIP, GIT, ...), loaded with no network.

    Parameters
    ----------
    path : str or Path
        Folder with the model and its processor (``save_pretrained`` layout).
    max_new_tokens : int
        Caption length limit (tokens).
    batch_size : int
        Images per generation batch.
    device : str
        Torch device.
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 30, batch_size: int = 16, device: str = "cpu") -> None:
        self.path = Path(path)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._processor = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import transformers

        if not self.path.is_dir():
            raise InvalidInputError("captioning model folder not found", self.path)
        # AutoModelForVision2Seq was renamed AutoModelForImageTextToText; GIT registers as a causal LM
        auto_names = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")
        errors = []
        try:
            processor = transformers.AutoProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise InvalidInputError(f"cannot load an image processor ({str(err).splitlines()[0]})", self.path) from err
        for name in auto_names:
            auto = getattr(transformers, name, None)
            if auto is None:
                continue
            try:
                model = auto.from_pretrained(self.path, local_files_only=True)
                break
            except (OSError, ValueError, KeyError) as err:
                errors.append(f"{name}: {str(err).splitlines()[0]}")
        else:
            raise InvalidInputError(f"cannot load an image-to-text model ({'; '.join(errors)})", self.path)
        self._model, self._processor = model.to(self.device).eval(), processor

    def caption(self, ids: np.ndarray, images: np.ndarray | None = None, progress: bool = False) -> list[str]:
        import torch
        from PIL import Image

        if images is None:
            raise InvalidInputError("LocalCaptioner needs the images, not only their ids")
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(ids):
            raise InvalidInputError(f"expected {len(ids)} images of shape (N, H, W, 3), got {images.shape}")
        self._load()
        out: list[str] = []
        starts = range(0, len(images), self.batch_size)
        for start in progress_bar(starts, desc="captions", unit="batch", disable=not progress):
            chunk = images[start : start + self.batch_size]
            batch = [Image.fromarray(np.ascontiguousarray(im).astype(np.uint8)) for im in chunk]
            inputs = self._processor(images=batch, return_tensors="pt").to(self.device)
            with torch.no_grad():
                generated = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += [t.strip() for t in self._processor.batch_decode(generated, skip_special_tokens=True)]
        return out
