"""Where Brain3D's score-distillation guidance comes from, and the conditioning tensor each source reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuroattn.brain3d.guidance import ScoreDistillation, load_guidance, tiny_guidance_scheduler, tiny_guidance_unet
from neuroattn.errors import ConfigError, InvalidInputError

GUIDANCE_KINDS = ("variation", "diffusers", "tiny", "none")
VARIATION_NOTE = ("the data folder's small offline image-variation model, trained on its stimuli only: a stand-in "
                  "for a large pretrained diffusion model, not one")


@dataclass
class GuidanceChoice:
    """The guidance of one run: the SDS operator (None: reconstruction only), its conditioning and a description."""

    guidance: ScoreDistillation | None
    conditioning: Tensor | None  # (1, L, C) tokens the UNet attends to
    info: dict[str, Any]


def variation_guidance(data_root: str | Path, pooled: np.ndarray, *, guidance_scale: float = 3.0,
                       t_range: tuple[float, float] = (0.02, 0.98), device: str = "cpu") -> GuidanceChoice:
    """Latent-space SDS from the data folder's image-variation UNet, conditioned on the pooled embedding (D,).

    The UNet reads the embedding as unCLIP does (see ``condition_embeddings``): one cross-attention token and,
    through ``ScoreDistillation``'s mean-token class labels, the same vector as its class embedding; the
    unconditional input is the zero embedding, as in its training.
    """
    from neuroattn.decode.data_bundle import GENERATOR_DIR
    from neuroattn.decode.variation_model import build_train_scheduler, condition_embeddings, load_variation_model

    folder = Path(data_root) / GENERATOR_DIR / "variation"
    if not folder.is_dir():
        raise InvalidInputError(f"no image-variation model in {folder} (simulate the data folder with "
                                "variation_steps > 0, or choose guidance 'tiny' or 'diffusers')", data_root)
    model = load_variation_model(folder)
    if pooled.shape != (model.config.embed_dim,):
        raise ConfigError(f"the variation model reads embeddings of {model.config.embed_dim}; the decoded pooled "
                          f"embedding has shape {pooled.shape}")
    unet, vae = model.unet.to(device), model.vae.model.to(device)
    size = model.config.latent_size * model.vae.downsample  # px: the images the model was trained on
    sds = ScoreDistillation(unet, build_train_scheduler(model.config), guidance_scale, t_range, vae=vae,
                            resolution=size, trained=model.trained, source=str(folder))
    tokens = condition_embeddings(torch.from_numpy(pooled[None].astype(np.float32)))["encoder_hidden_states"]
    info = {"kind": "variation", "trained": model.trained, "source": str(folder), "note": VARIATION_NOTE,
            "autoencoder_trained": model.vae.trained, "resolution": size, "space": "latent"}
    return GuidanceChoice(sds, tokens, info)


def tiny_guidance(tokens: np.ndarray, render_size: int, *, guidance_scale: float = 7.5,
                  t_range: tuple[float, float] = (0.02, 0.98), seed: int = 0, device: str = "cpu") -> GuidanceChoice:
    """SDS from a small randomly initialised pixel UNet attending to the CLIP tokens (L, D): UNTRAINED."""
    unet = tiny_guidance_unet(render_size, cross_attention_dim=tokens.shape[-1], seed=seed).to(device)
    sds = ScoreDistillation(unet, tiny_guidance_scheduler(), guidance_scale, t_range, trained=False,
                            source="tiny-random")
    info = {"kind": "tiny", "trained": False, "source": "tiny-random", "space": "pixel",
            "note": "randomly initialised UNet: its gradients carry no knowledge of images (UNTRAINED)"}
    return GuidanceChoice(sds, torch.from_numpy(tokens[None].astype(np.float32)), info)


def diffusers_guidance(path: str | Path, tokens: np.ndarray, *, guidance_scale: float = 7.5,
                       t_range: tuple[float, float] = (0.02, 0.98), trained: bool = True,
                       device: str = "cpu") -> GuidanceChoice:
    """SDS from a local diffusers UNet (or pipeline) folder attending to the CLIP tokens (L, D)."""
    sds = load_guidance(path, guidance_scale=guidance_scale, t_range=t_range, trained=trained)
    if sds.cross_attention_dim != tokens.shape[-1]:
        raise ConfigError(f"{path}: the UNet attends to tokens of width {sds.cross_attention_dim}; the decoded CLIP "
                          f"tokens have width {tokens.shape[-1]}")
    sds.unet.to(device)
    if sds.vae is not None:
        sds.vae.to(device)
    info = {"kind": "diffusers", "trained": trained, "source": str(path),
            "space": "latent" if sds.vae is not None else "pixel"}
    return GuidanceChoice(sds, torch.from_numpy(tokens[None].astype(np.float32)), info)


def choose_guidance(kind: str, *, data_root: str | Path | None, tokens: np.ndarray, pooled: np.ndarray,
                    render_size: int, path: str | Path | None = None, guidance_scale: float = 7.5,
                    t_range: tuple[float, float] = (0.02, 0.98), path_trained: bool = True, seed: int = 0,
                    device: str = "cpu") -> GuidanceChoice:
    """The guidance named by ``kind`` (one of ``GUIDANCE_KINDS``); ``none`` fits the reference view only."""
    if kind not in GUIDANCE_KINDS:
        raise ConfigError(f"'guidance' must be one of {list(GUIDANCE_KINDS)}. {kind!r} was provided.")
    if kind == "none":
        return GuidanceChoice(None, None, {"kind": "none", "trained": None, "source": None})
    if kind == "variation":
        if data_root is None:
            raise ConfigError("guidance 'variation' needs a decoding data folder (--data or a run's)")
        return variation_guidance(data_root, pooled, guidance_scale=guidance_scale, t_range=t_range, device=device)
    if kind == "diffusers":
        if path is None:
            raise ConfigError("guidance 'diffusers' needs 'guidance_path' (a local diffusers UNet folder)")
        return diffusers_guidance(path, tokens, guidance_scale=guidance_scale, t_range=t_range,
                                  trained=path_trained, device=device)
    return tiny_guidance(tokens, render_size, guidance_scale=guidance_scale, t_range=t_range, seed=seed,
                         device=device)
