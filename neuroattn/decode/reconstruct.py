"""Images from predicted CLIP embeddings: image-variation diffusion, optionally img2img from a low-level image."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.decode.autoencoder import (
    LoadedAutoencoder,
    decode_latents,
    encode_latents,
    images_to_tensor,
    tensor_to_images,
    tiny_autoencoder,
)
from neuroattn.decode.variation_model import (
    VariationConfig,
    VariationModel,
    build_sample_scheduler,
    condition_embeddings,
    load_variation_model,
    null_condition,
    untrained_variation_model,
)
from neuroattn.errors import CheckpointError, InvalidInputError
from neuroattn.io.atomic import atomic_path
from neuroattn.progress import progress_bar

UnetInputs = dict[str, Tensor]
"""Keyword inputs of the UNet besides the latents and timestep: ``class_labels``, ``encoder_hidden_states``."""


class Conditioner(Protocol):
    """Turns pooled CLIP embeddings (B, D) into the UNet's conditional and unconditional inputs."""

    dim: int

    def __call__(self, pooled: Tensor, generator: torch.Generator) -> tuple[UnetInputs, UnetInputs]: ...


class EmbeddingConditioner:
    """The tiny variation model's conditioning (see :func:`~neuroattn.decode.variation_model.condition_embeddings`)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, pooled: Tensor, generator: torch.Generator) -> tuple[UnetInputs, UnetInputs]:
        return condition_embeddings(pooled), null_condition(len(pooled), self.dim)


class UnclipConditioner:
    """Stable unCLIP's conditioning, as ``StableUnCLIPImg2ImgPipeline`` builds it from ``image_embeds``.

    The class labels are the embedding noise-augmented at ``noise_level`` (normalised, noised by the image
    noising scheduler, un-normalised) followed by the sinusoidal embedding of the noise level; the
    cross-attention context is the empty prompt's text embedding. The unconditional class labels are zeros.
    The pipeline's own ``__call__`` cannot start from a partly noised image (its ``image`` argument is the
    CLIP source, not an img2img init), so the sampler here reuses its components instead.
    """

    def __init__(self, image_normalizer: nn.Module, noising_scheduler: Any, prompt_embeds: Tensor,
                 negative_prompt_embeds: Tensor, *, noise_level: int = 0) -> None:
        self.image_normalizer = image_normalizer
        self.noising_scheduler = noising_scheduler
        self.prompt_embeds = prompt_embeds.detach().float().cpu()  # (1, L, Dt)
        self.negative_prompt_embeds = negative_prompt_embeds.detach().float().cpu()  # (1, L, Dt)
        self.noise_level = noise_level
        self.dim = int(image_normalizer.mean.shape[-1])

    def __call__(self, pooled: Tensor, generator: torch.Generator) -> tuple[UnetInputs, UnetInputs]:
        from diffusers.models.embeddings import get_timestep_embedding

        b = len(pooled)
        noise = torch.randn(pooled.shape, generator=generator)  # drawn first, as the pipeline does
        levels = torch.full((b,), self.noise_level, dtype=torch.long)
        mean = self.image_normalizer.mean.detach().float().cpu()  # (1, D)
        std = self.image_normalizer.std.detach().float().cpu()  # (1, D)
        embeds = self.noising_scheduler.add_noise((pooled.float() - mean) / std, timesteps=levels, noise=noise)
        embeds = embeds * std + mean
        level_embed = get_timestep_embedding(levels, self.dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        labels = torch.cat([embeds, level_embed.float()], dim=1)  # (B, 2D)
        cond = {"class_labels": labels, "encoder_hidden_states": self.prompt_embeds.expand(b, -1, -1)}
        uncond = {"class_labels": torch.zeros_like(labels),
                  "encoder_hidden_states": self.negative_prompt_embeds.expand(b, -1, -1)}
        return cond, uncond


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> Tensor:
    """The last ``int(steps * strength)`` timesteps of a ``steps``-step schedule (diffusers' img2img rule).

    Empty when ``strength * steps < 1``: the low-level image is then returned unchanged (up to the autoencoder).
    """
    scheduler.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    start = max(steps - init, 0)
    return scheduler.timesteps[start * getattr(scheduler, "order", 1) :]


def denoise(
    unet: nn.Module,
    scheduler: Any,
    latents: Tensor,
    timesteps: Tensor,
    cond: UnetInputs,
    uncond: UnetInputs,
    *,
    guidance: float,
    generator: torch.Generator | None = None,
    bar: Any = None,
) -> Tensor:
    """Run the sampler over ``timesteps`` from ``latents`` (B, C, h, w) with classifier-free guidance.

    ``pred = pred_uncond + guidance * (pred_cond - pred_uncond)`` (epsilon or v); guidance <= 1 uses the
    conditional branch only.
    """
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    use_cfg = guidance > 1.0
    inputs = {k: (torch.cat([uncond[k], cond[k]]) if use_cfg else cond[k]).to(device, dtype) for k in cond}
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    latents = latents.to(device)
    for t in timesteps:
        x = torch.cat([latents, latents]) if use_cfg else latents  # (2B or B, C, h, w)
        x = scheduler.scale_model_input(x, t)
        pred = unet(x.to(dtype), t, **inputs).sample.float()  # epsilon or v, as the scheduler expects
        if use_cfg:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance * (pred_cond - pred_uncond)
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
        if bar is not None:
            bar.update(1)
    return latents


class Reconstructor:
    """Image-variation diffusion from CLIP embeddings, with img2img from low-level images (MindEye's recipe).

    Build it with :meth:`tiny` (random, ``trained=False``), :meth:`from_model` / :meth:`load` (a trained tiny
    variation model) or :meth:`from_pretrained` (a local Stable unCLIP pipeline folder).

    Parameters
    ----------
    unet : a diffusers ``UNet2DConditionModel`` predicting what ``scheduler``'s ``prediction_type`` says.
    scheduler : a diffusers sampling scheduler (DDIM by default).
    vae : the autoencoder whose latents the UNet denoises.
    conditioner : maps pooled CLIP embeddings to the UNet's (conditional, unconditional) inputs.
    image_size : side of the generated images in pixels.
    trained : False when any part has random weights.
    source : where the weights came from.
    """

    def __init__(self, unet: nn.Module, scheduler: Any, vae: LoadedAutoencoder, conditioner: Conditioner, *,
                 image_size: int, trained: bool, source: str) -> None:
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.vae = vae
        self.conditioner = conditioner
        self.image_size = image_size
        self.trained = trained
        self.source = source

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: VariationModel) -> Reconstructor:
        """Wrap a tiny variation model (trained only if both the UNet and its autoencoder are)."""
        cfg = model.config
        return cls(model.unet, build_sample_scheduler(cfg), model.vae, EmbeddingConditioner(cfg.embed_dim),
                   image_size=cfg.latent_size * model.vae.downsample, trained=model.trained and model.vae.trained,
                   source=model.source)

    @classmethod
    def tiny(cls, embed_dim: int = 64, *, image_size: int = 64, seed: int = 0,
             vae: LoadedAutoencoder | None = None, config: VariationConfig | None = None) -> Reconstructor:
        """A randomly initialised tiny model (``trained=False``: its images are noise until trained)."""
        vae = vae or tiny_autoencoder(image_size, seed=seed)
        config = config or VariationConfig(embed_dim=embed_dim, latent_channels=vae.latent_channels,
                                           latent_size=image_size // vae.downsample)
        return cls.from_model(untrained_variation_model(vae, config, seed=seed))

    @classmethod
    def load(cls, run_dir: str | Path) -> Reconstructor:
        """A model trained by :func:`~neuroattn.decode.variation_model.train_variation_model` (run or checkpoint)."""
        return cls.from_model(load_variation_model(run_dir))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, noise_level: int = 0, trained: bool = True) -> Reconstructor:
        """Load a local ``StableUnCLIPImg2ImgPipeline`` folder (``save_pretrained`` layout); never downloads.

        ``noise_level`` is unCLIP's embedding noise augmentation (0 keeps the embedding as given). Weights load
        in float32 on the CPU; move with :meth:`to`. The pooled embeddings passed to :meth:`reconstruct` must
        live in that pipeline's CLIP space (e.g. 1024-d OpenCLIP ViT-H for stable-diffusion-2-1-unclip).
        """
        folder = Path(path)
        if not (folder / "model_index.json").is_file():
            raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
        try:
            from diffusers import StableUnCLIPImg2ImgPipeline
        except ImportError as err:
            raise CheckpointError(f"{folder}: Stable unCLIP needs the transformers package "
                                  f"(pip install transformers) ({err})") from err
        try:
            pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
            pipe.to(dtype=torch.float32)  # not a load argument: its name differs across diffusers versions
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{folder}: cannot load StableUnCLIPImg2ImgPipeline ({err})") from err
        with torch.no_grad():
            prompt, negative = pipe.encode_prompt(prompt="", device=torch.device("cpu"), num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True)
        conditioner = UnclipConditioner(pipe.image_normalizer, pipe.image_noising_scheduler, prompt, negative,
                                        noise_level=noise_level)
        vae = LoadedAutoencoder(pipe.vae.eval(), trained=trained, source=str(folder))
        image_size = int(pipe.unet.config.sample_size) * vae.downsample
        return cls(pipe.unet, pipe.scheduler, vae, conditioner, image_size=image_size, trained=trained,
                   source=str(folder))

    def to(self, device: str | torch.device) -> Reconstructor:
        """Move the UNet and autoencoder to ``device`` (in place); returns self."""
        self.unet.to(device)
        self.vae.model.to(device)
        return self

    # -- sampling ----------------------------------------------------------------------------------------
    def _check_inputs(self, clip_pooled: np.ndarray, lowlevel: np.ndarray | None, steps: int,
                      strength: float) -> None:
        if clip_pooled.ndim != 2 or clip_pooled.shape[1] != self.conditioner.dim:
            raise InvalidInputError(f"expected clip_pooled of shape (B, {self.conditioner.dim}), "
                                    f"got {clip_pooled.shape}", None)
        if lowlevel is not None and (lowlevel.ndim != 4 or lowlevel.shape[-1] != 3 or lowlevel.dtype != np.uint8
                                     or len(lowlevel) != len(clip_pooled)):
            raise InvalidInputError(f"expected {len(clip_pooled)} uint8 low-level images (B, H, W, 3), got "
                                    f"{lowlevel.dtype} {lowlevel.shape}", None)
        if not isinstance(steps, int) or steps < 1:
            raise InvalidInputError(f"'steps' must be a positive integer. {steps!r} was provided.", None)
        if not 0.0 <= strength <= 1.0:
            raise InvalidInputError(f"'strength' must be in [0, 1]. {strength!r} was provided.", None)

    def _resize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (B, H, W, 3) resized to the model's size (antialiased bilinear) when they differ."""
        if images.shape[1:3] == (self.image_size, self.image_size):
            return images
        tensor = F.interpolate(images_to_tensor(images), size=(self.image_size, self.image_size), mode="bilinear",
                               antialias=True, align_corners=False)  # (B, 3, S, S)
        return tensor_to_images(tensor)

    @torch.no_grad()
    def reconstruct(
        self,
        clip_pooled: np.ndarray,
        lowlevel_images: np.ndarray | None = None,
        *,
        steps: int = 20,
        strength: float = 0.85,
        guidance: float = 3.0,
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> np.ndarray:
        """Images (B, S, S, 3) uint8 from pooled CLIP embeddings (B, D).

        Parameters
        ----------
        clip_pooled : (B, D) predicted CLIP image embeddings (pooled = ``tokens[:, 0]``).
        lowlevel_images : optional (B, H, W, 3) uint8 low-level images (e.g. decoded predicted VAE latents);
            sampling then starts from their latents noised to ``strength`` (1 = ignore them, 0 = return them).
        steps : sampler steps of the full schedule (img2img runs ``int(steps * strength)`` of them).
        guidance : classifier-free guidance scale (<= 1 turns guidance off).
        seed : all noise comes from one CPU generator with this seed, so outputs repeat exactly.
        batch_size : samples per UNet call (doubled under guidance).
        """
        clip_pooled = np.asarray(clip_pooled)
        self._check_inputs(clip_pooled, lowlevel_images, steps, strength)
        b = len(clip_pooled)
        generator = torch.Generator().manual_seed(seed)
        cond, uncond = self.conditioner(torch.from_numpy(clip_pooled.astype(np.float32)), generator)
        side = self.image_size // self.vae.downsample
        noise = torch.randn((b, self.vae.latent_channels, side, side), generator=generator)  # (B, C, h, w)
        if lowlevel_images is None:
            self.scheduler.set_timesteps(steps)
            timesteps = self.scheduler.timesteps
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = encode_latents(self.vae, self._resize(lowlevel_images))  # (B, C, h, w)
            timesteps = img2img_timesteps(self.scheduler, steps, strength)
            if len(timesteps):
                latents = self.scheduler.add_noise(latents, noise, timesteps[:1].repeat(b))
        chunks = range(0, b, batch_size)
        bar = progress_bar(total=len(chunks) * len(timesteps), disable=not progress, desc="reconstruct",
                           unit="step")
        try:
            out = []
            for start in chunks:
                sl = slice(start, start + batch_size)
                out.append(denoise(self.unet, self.scheduler, latents[sl], timesteps,
                                   {k: v[sl] for k, v in cond.items()}, {k: v[sl] for k, v in uncond.items()},
                                   guidance=guidance, generator=generator, bar=bar).cpu())
        finally:
            bar.close()
        return decode_latents(self.vae, torch.cat(out))


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def save_pngs(images: np.ndarray, out_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Write uint8 images (N, H, W, 3) as ``out_dir/<name>.png`` (atomically); default names ``0000``, ``0001``…"""
    from PIL import Image

    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidInputError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}", None)
    names = [f"{i:04d}" for i in range(len(images))] if names is None else [str(n) for n in names]
    if len(names) != len(images):
        raise InvalidInputError(f"{len(names)} names for {len(images)} images", None)
    bad = [n for n in names if not _NAME.match(n)]
    if bad or len(set(names)) != len(names):
        raise InvalidInputError(f"image names must be unique plain file names; bad: {bad[:3] or 'duplicates'}", None)
    out_dir = Path(out_dir)
    paths = []
    for image, name in zip(images, names, strict=True):
        target = out_dir / f"{name}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        paths.append(target)
    return paths
