"""A decoding dataset folder: stimuli, subjects' responses, and cached CLIP features and autoencoder latents.

The folder is the NSD-like layout written by ``neuroattn decode simulate`` (or ``decode import-nsd``).
Image features are computed once per feature extractor and cached under ``features/`` beside the data, so
training, retrieval and evaluation all read the same numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from neuroattn.data.nsd import SubjectData, list_subjects, load_subject
from neuroattn.data.stimuli import StimulusSet, load_stimuli
from neuroattn.decode.autoencoder import LoadedAutoencoder, encode_latents, load_autoencoder
from neuroattn.decode.clip_features import ImageFeatures, load_clip
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_path, atomic_write_text

FEATURES_DIR = "features"
GENERATOR_DIR = "generator"  # offline image generator trained on the stimuli: autoencoder/ and variation/
DATASET_SUMMARY = "dataset.json"  # written by ``decode simulate``: settings, CLIP, generator


@dataclass
class FeatureSource:
    """Which CLIP and autoencoder produce the image targets (None: the tiny offline models)."""

    clip_weights: str | None = None  # open_clip checkpoint file; None = tiny random CLIP (untrained)
    clip_model: str = "ViT-L-14"  # open_clip architecture of clip_weights
    vae_path: str | None = None  # diffusers AutoencoderKL folder; None = the data folder's trained generator
    # seed of the tiny random CLIP; None: the one the data folder was simulated with, whose features its
    # responses and generator were made from (a training seed must not swap the targets for another random CLIP)
    seed: int | None = None

    def resolved(self, root: str | Path) -> FeatureSource:
        """This source with ``seed`` filled in from the data folder ``root`` when it is None."""
        return self if self.seed is not None else replace(self, seed=data_clip_seed(root))

    def clip_key(self) -> str:
        """A short name of the CLIP extractor, used for its cache file (a tiny CLIP's seed :meth:`resolved`)."""
        if self.clip_weights is None:
            if self.seed is None:
                raise ValueError("resolve the tiny CLIP's seed against its data folder first (FeatureSource.resolved)")
            return f"tiny-seed{self.seed}"
        digest = hashlib.sha1(f"{Path(self.clip_weights).resolve()}|{self.clip_model}".encode()).hexdigest()[:10]
        return f"{self.clip_model}-{digest}"


def data_clip_seed(root: str | Path) -> int:
    """Seed of the tiny random CLIP a data folder was simulated with (``dataset.json``), 0 when not recorded."""
    path = Path(root) / DATASET_SUMMARY
    if not path.is_file():
        return 0
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        clip = summary.get("clip") or {}
        seed = clip["seed"] if "seed" in clip else (summary.get("settings") or {}).get("seed", 0)
        return int(seed)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"unreadable {DATASET_SUMMARY} ({exc})", path) from None


@dataclass
class DecodingData:
    """Stimuli, their CLIP features and the subjects of one decoding data folder."""

    root: Path
    stimuli: StimulusSet
    features: ImageFeatures
    clip_info: dict[str, Any]
    source: FeatureSource = field(default_factory=FeatureSource)
    _subjects: dict[str, SubjectData] = field(default_factory=dict, repr=False)

    @property
    def subject_names(self) -> list[str]:
        return list_subjects(self.root)

    @property
    def clip_trained(self) -> bool:
        return bool(self.clip_info.get("trained", False))

    def subject(self, name: str) -> SubjectData:
        """One subject's z-scored single-trial responses (loaded once)."""
        if name not in self._subjects:
            if name not in self.subject_names:
                raise InvalidInputError(f"no subject {name!r}; found {self.subject_names}", self.root)
            self._subjects[name] = load_subject(self.root, name)
        return self._subjects[name]

    def simulation(self) -> dict[str, Any] | None:
        """``simulation.json`` when the folder holds simulated data, else None."""
        path = self.root / "simulation.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def noise_ceiling(self, name: str) -> float | None:
        """Median voxel noise ceiling (%) of the subject's repeat-averaged responses: planted truth when known."""
        path = self.root / name / "truth.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                return float(np.median(npz["noise_ceiling"]))
        from neuroattn.decode.noise_ceiling import noise_ceiling

        subject = self.subject(name)
        betas, ids = subject.trials(test=True)
        repeats = int(np.bincount(ids).max()) if len(ids) else 0
        if repeats < 2:
            return None
        return float(np.median(noise_ceiling(betas, ids, n_average=repeats)))


def _save_arrays(path: Path, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")


def _load_arrays(path: Path, n_images: int) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    info_path = path.with_suffix(".json")
    if not (path.is_file() and info_path.is_file()):
        return None
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("n_images") != n_images:
        return None
    return {k: v.numpy() for k, v in load_file(str(path)).items()}, info


def image_features(
    root: Path, stimuli: StimulusSet, source: FeatureSource, *, device: str = "cpu", progress: bool = False
) -> tuple[ImageFeatures, dict[str, Any]]:
    """CLIP features of every stimulus, computed once and cached in ``root/features/clip-<key>.safetensors``."""
    source = source.resolved(root)
    path = Path(root) / FEATURES_DIR / f"clip-{source.clip_key()}.safetensors"
    cached = _load_arrays(path, len(stimuli))
    if cached is not None:
        arrays, info = cached
        return ImageFeatures(tokens=arrays["tokens"], pooled=arrays["pooled"]), info
    clip = load_clip(source.clip_weights, model_name=source.clip_model, image_size=stimuli.image_size,
                     seed=source.seed, device=device)
    features = clip.encode_images(stimuli.images, progress=progress)
    info = {"n_images": len(stimuli), "trained": clip.trained, "source": clip.source, "dim": clip.dim,
            "n_tokens": clip.n_tokens, "extractor": asdict(source)}
    _save_arrays(path, {"tokens": features.tokens, "pooled": features.pooled}, info)
    return features, info


def generator_autoencoder(root: Path, source: FeatureSource, image_size: int) -> LoadedAutoencoder:
    """The autoencoder of the low-level path: ``vae_path`` if given, else the folder's trained one, else tiny."""
    if source.vae_path is not None:
        return load_autoencoder(source.vae_path)
    trained_dir = Path(root) / GENERATOR_DIR / "autoencoder"
    if (trained_dir / "final" / "config.json").is_file() or (trained_dir / "config.json").is_file():
        from neuroattn.decode.autoencoder_training import load_trained_autoencoder

        return load_trained_autoencoder(trained_dir)
    return load_autoencoder(None, image_size=image_size)


def image_latents(
    root: Path, stimuli: StimulusSet, vae: LoadedAutoencoder, *, progress: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Autoencoder latents (N, C, h, w) of every stimulus, cached per autoencoder source."""
    digest = hashlib.sha1(f"{vae.source}|{vae.trained}".encode()).hexdigest()[:10]
    path = Path(root) / FEATURES_DIR / f"latents-{digest}.safetensors"
    cached = _load_arrays(path, len(stimuli))
    if cached is not None:
        arrays, info = cached
        return arrays["latents"], info
    latents = encode_latents(vae, stimuli.images).numpy().astype(np.float32)  # (N, C, h, w)
    info = {"n_images": len(stimuli), "trained": vae.trained, "source": vae.source,
            "shape": list(latents.shape[1:])}
    _save_arrays(path, {"latents": latents}, info)
    return latents, info


def open_decoding_data(
    root: str | Path, source: FeatureSource | None = None, *, device: str = "cpu", progress: bool = False
) -> DecodingData:
    """Open a decoding data folder, computing (or reading cached) CLIP features of its stimuli."""
    root = Path(root)
    if not (root / "stimuli.hdf5").is_file():
        raise InvalidInputError("not a decoding data folder (no stimuli.hdf5; make one with `neuroattn decode "
                                "simulate`)", root)
    source = (source or FeatureSource()).resolved(root)
    stimuli = load_stimuli(root)
    features, info = image_features(root, stimuli, source, device=device, progress=progress)
    return DecodingData(root=root, stimuli=stimuli, features=features, clip_info=info, source=source)
