"""The decoding pipeline's steps over a data folder: simulate it, train its image generator, reconstruct images.

``simulate_dataset`` builds the stimulus set, its CLIP features and the NSD-like subjects, and trains the
offline image generator (autoencoder + image-variation diffusion model) on the stimuli, so reconstructions
work without downloaded weights. Real weights (a Stable unCLIP folder) replace the generator when given.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.data.nsd_simulation import NSDSimulationConfig, save_simulated_nsd, simulate_nsd
from neuroattn.data.stimuli import build_stimulus_set
from neuroattn.decode.autoencoder import LoadedAutoencoder, decode_latents
from neuroattn.decode.base import BrainDecoder
from neuroattn.decode.data_bundle import (
    DATASET_SUMMARY,
    GENERATOR_DIR,
    DecodingData,
    FeatureSource,
    image_features,
)
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_write_text


@dataclass
class SimulateSettings:
    """Settings of ``neuroattn decode simulate`` (``pipelines/decode/simulate-*.yaml``)."""

    n_images: int = 1200  # stimulus images (photo crops and generated scenes)
    image_size: int = 64  # px
    simulation: dict[str, Any] = field(default_factory=dict)  # NSDSimulationConfig fields (subjects, voxels, noise)
    autoencoder_steps: int = 1500  # steps training the offline autoencoder on the stimuli (0: keep it random)
    variation_steps: int = 1500  # steps training the offline image-variation model (0: keep it random)
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    clip_weights: str | None = None  # open_clip checkpoint file; None = tiny random CLIP (untrained)
    clip_model: str = "ViT-L-14"

    def simulation_config(self) -> NSDSimulationConfig:
        known = set(NSDSimulationConfig.__dataclass_fields__)
        unknown = sorted(set(self.simulation) - known)
        if unknown:
            raise ConfigError(f"simulation: unknown setting(s) {unknown}; known: {sorted(known)}")
        return NSDSimulationConfig(**({"seed": self.seed} | self.simulation))

    def feature_source(self) -> FeatureSource:
        return FeatureSource(clip_weights=self.clip_weights, clip_model=self.clip_model, seed=self.seed)


def _train_config(out_dir: Path, steps: int, settings: SimulateSettings, progress: bool) -> Any:
    from neuroattn.train import TrainConfig

    return TrainConfig(out_dir=out_dir, max_steps=steps, batch_size=settings.batch_size, lr=settings.lr,
                       warmup_steps=min(50, steps // 10), seed=settings.seed, device=settings.device,
                       checkpoint_every=0, log_every=max(1, steps // 20), progress=progress)


def train_generator(root: Path, images: np.ndarray, pooled: np.ndarray, settings: SimulateSettings, *,
                    progress: bool = False) -> dict[str, Any]:
    """Train the offline autoencoder, then the image-variation model on its latents, under ``root/generator``."""
    from neuroattn.decode.autoencoder import tiny_autoencoder
    from neuroattn.decode.autoencoder_training import train_autoencoder
    from neuroattn.decode.variation_model import train_variation_model

    out = Path(root) / GENERATOR_DIR
    vae = tiny_autoencoder(images.shape[1], seed=settings.seed)
    if settings.autoencoder_steps > 0:
        vae = train_autoencoder(images, _train_config(out / "autoencoder", settings.autoencoder_steps, settings,
                                                      progress), seed=settings.seed)
    summary: dict[str, Any] = {"autoencoder_trained": vae.trained, "variation_trained": False}
    if settings.variation_steps > 0 and vae.trained:
        model = train_variation_model(images, pooled, vae, _train_config(out / "variation", settings.variation_steps,
                                                                          settings, progress), seed=settings.seed)
        summary["variation_trained"] = model.trained
    return summary


def simulate_dataset(out_dir: str | Path, settings: SimulateSettings, *, progress: bool = False) -> dict[str, Any]:
    """Write a complete simulated decoding data folder; returns its summary (also in ``dataset.json``)."""
    out_dir = Path(out_dir)
    config = settings.simulation_config()
    config.validate()
    if config.test_images >= settings.n_images:
        raise ConfigError(f"test_images ({config.test_images}) must be fewer than n_images ({settings.n_images})")
    stimuli = build_stimulus_set(settings.n_images, settings.image_size, seed=settings.seed, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    features, clip_info = image_features(out_dir, stimuli, settings.feature_source(), progress=progress)
    sim = simulate_nsd(stimuli, features, config, progress=progress)
    save_simulated_nsd(sim, stimuli, out_dir, progress=progress)
    generator = train_generator(out_dir, stimuli.images, features.pooled, settings, progress=progress)
    summary = {
        "n_images": len(stimuli),
        "image_size": stimuli.image_size,
        "subjects": {s.subject: s.n_voxels for s in sim.subjects},
        "median_noise_ceiling": {s.subject: float(np.median(t.noise_ceiling))
                                 for s, t in zip(sim.subjects, sim.truth, strict=True)},
        "clip": {k: clip_info.get(k) for k in ("trained", "source")} | {"seed": settings.feature_source().seed},
        "generator": generator,
        "settings": asdict(settings),
    }
    atomic_write_text(out_dir / DATASET_SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def load_reconstructor(data_root: str | Path, unclip_path: str | Path | None = None) -> Any:
    """A Stable unCLIP pipeline from ``unclip_path``, else the data folder's trained generator, else a tiny one."""
    from neuroattn.decode.reconstruct import Reconstructor

    if unclip_path is not None:
        return Reconstructor.from_pretrained(unclip_path)
    variation = Path(data_root) / GENERATOR_DIR / "variation"
    if variation.is_dir():
        return Reconstructor.load(variation)
    raise InvalidInputError(f"no image generator in {variation} (run `neuroattn decode simulate` with "
                            "variation_steps > 0) and no --unclip folder given", data_root)


def lowlevel_images(decoder: BrainDecoder, betas: np.ndarray, vae: LoadedAutoencoder) -> np.ndarray | None:
    """Images (N, H, W, 3) decoded from the decoder's predicted autoencoder latents, or None without that path."""
    import torch

    latents = decoder.predict_latents(betas)
    if latents is None:
        return None
    return decode_latents(vae, torch.as_tensor(np.asarray(latents, dtype=np.float32)))


def reconstruct_images(decoder: BrainDecoder, betas: np.ndarray, reconstructor: Any, *, use_lowlevel: bool = True,
                       steps: int = 20, strength: float = 0.85, guidance: float = 3.0, seed: int = 0,
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Reconstructions (N, H, W, 3) from betas (N, V): predicted CLIP embedding + img2img from the low-level image.

    Returns the reconstructions and the low-level images (None when the decoder has no low-level path).
    """
    pooled = np.asarray(decoder.predict_clip(betas))[:, 0]  # (N, D): the predicted CLS/pooled token
    low = lowlevel_images(decoder, betas, reconstructor.vae) if use_lowlevel else None
    images = reconstructor.reconstruct(pooled, low, steps=steps, strength=strength if low is not None else 1.0,
                                       guidance=guidance, seed=seed, progress=progress)
    return images, low


def describe_data(data: DecodingData) -> dict[str, Any]:
    """A short description of a data folder for logs and the app."""
    return {"root": str(data.root), "images": len(data.stimuli), "subjects": data.subject_names,
            "clip_trained": data.clip_trained, "clip_source": data.clip_info.get("source")}
