"""Score distillation sampling (DreamFusion's SDS) from a conditioned image diffusion UNet (diffusers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.errors import CheckpointError, ConfigError


def tiny_guidance_unet(sample_size: int = 32, *, in_channels: int = 3, cross_attention_dim: int = 32,
                       block_channels: tuple[int, ...] = (32, 64), heads: int = 4, seed: int = 0) -> nn.Module:
    """A small randomly initialised ``UNet2DConditionModel`` (pixels by default) for offline runs and tests.

    The last stage holds self- and cross-attention to the conditioning tokens (B, L, ``cross_attention_dim``).
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    n = len(block_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=block_channels,
        layers_per_block=1,
        norm_num_groups=min(16, *block_channels),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,  # diffusers' name for the number of heads in this UNet
    )


def tiny_guidance_scheduler(num_train_timesteps: int = 1000) -> Any:
    """The DDPM noise schedule a tiny guidance UNet is trained and distilled under (cosine betas, epsilon target)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False, prediction_type="epsilon")


@dataclass
class SDSOutput:
    """One score-distillation evaluation."""

    loss: Tensor  # scalar surrogate whose gradient w.r.t. the input is the SDS gradient
    timesteps: Tensor  # (B,) diffusion steps drawn
    grad_norm: float  # mean L2 norm of w(t) (eps_pred - eps) per sample


class ScoreDistillation:
    """SDS gradient ``w(t) (eps_pred(x_t; y) - eps)`` on rendered images, with classifier-free guidance.

    Parameters
    ----------
    unet : a diffusers ``UNet2DConditionModel`` predicting epsilon or v (per ``scheduler.config.prediction_type``).
    scheduler : the DDPM-style scheduler of its training noise schedule (``alphas_cumprod``).
    guidance_scale : classifier-free guidance weight (1 = conditional prediction only).
    t_range : fractions of the training steps between which t is drawn uniformly.
    vae : optional ``AutoencoderKL``; when set, images are encoded to scaled latents and SDS acts on those.
    resolution : side the images are resized to before encoding/denoising (None keeps the render size).
    null_conditioning : the unconditional tokens (1, L, C); zeros (Stable unCLIP's choice) when None.
    trained : whether the UNet holds trained weights; outputs made with untrained guidance say so.

    The loss is the detached-target trick: ``0.5 * mean((x - sg(x - g))^2)`` has gradient ``g / x.numel()``
    w.r.t. ``x``: the SDS gradient averaged over elements, so its weight compares with mean reconstruction losses.
    UNets with ``class_embed_type="projection"`` also get the mean conditioning token as ``class_labels``.
    """

    def __init__(self, unet: nn.Module, scheduler: Any, guidance_scale: float = 7.5,
                 t_range: tuple[float, float] = (0.02, 0.98), *, vae: nn.Module | None = None,
                 resolution: int | None = None, null_conditioning: Tensor | None = None, trained: bool = False,
                 source: str = "tiny-random") -> None:
        lo, hi = t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"'t_range' must satisfy 0 <= low < high <= 1. {t_range!r} was provided.")
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.guidance_scale = float(guidance_scale)
        self.t_range = (float(lo), float(hi))
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.resolution = resolution
        self.null_conditioning = null_conditioning
        self.trained = trained
        self.source = source
        self.alphas_cumprod = scheduler.alphas_cumprod.float()  # (T,)
        self.num_steps = int(scheduler.config.num_train_timesteps)

    @property
    def cross_attention_dim(self) -> int:
        """Width C of the conditioning tokens the UNet attends to."""
        return int(self.unet.config.cross_attention_dim)

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> the diffusion model's input space ((B, C, h, w), differentiable)."""
        if self.resolution is not None and images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False)
        weight = next(self.unet.parameters(), None)
        if weight is not None:  # differentiable move: gradients flow back to the renders' device
            images = images.to(weight.device)
        x = images * 2.0 - 1.0  # (B, 3, H, W) in [-1, 1]
        if self.vae is None:
            return x
        scale = float(getattr(self.vae.config, "scaling_factor", 1.0))
        return self.vae.encode(x).latent_dist.mean * scale  # (B, C, h, w)

    def predict_noise(self, x_t: Tensor, t: Tensor, conditioning: Tensor) -> Tensor:
        """Classifier-free-guided epsilon (B, C, h, w) at noisy inputs ``x_t`` and steps ``t`` (B,)."""
        b = x_t.shape[0]
        cond = conditioning.to(x_t).expand(b, -1, -1) if conditioning.shape[0] == 1 else conditioning.to(x_t)
        null = torch.zeros_like(cond) if self.null_conditioning is None else self.null_conditioning.to(x_t).expand(
            b, -1, -1)
        tokens = torch.cat([null, cond])  # (2B, L, C)
        kwargs: dict[str, Tensor] = {"encoder_hidden_states": tokens}
        if getattr(self.unet.config, "class_embed_type", None) == "projection":
            kwargs["class_labels"] = tokens.mean(1)  # (2B, C)
        pred = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs).sample.float()  # (2B, C, h, w)
        if self.scheduler.config.prediction_type == "v_prediction":
            a = self.alphas_cumprod.to(x_t.device)[torch.cat([t, t])].view(-1, 1, 1, 1)
            pred = a.sqrt() * pred + (1 - a).sqrt() * torch.cat([x_t, x_t])  # v -> epsilon
        uncond, cond_pred = pred.chunk(2)
        return uncond + self.guidance_scale * (cond_pred - uncond)

    def __call__(self, images: Tensor, conditioning: Tensor, generator: torch.Generator | None = None) -> SDSOutput:
        """SDS on rendered images (B, 3, H, W) in [0, 1] conditioned on tokens (1 or B, L, C)."""
        if conditioning.ndim != 3 or conditioning.shape[-1] != self.cross_attention_dim:
            raise ConfigError(f"'conditioning' must have shape (B, L, {self.cross_attention_dim}). "
                              f"{tuple(conditioning.shape)!r} was provided.")
        x = self.encode(images)
        b = x.shape[0]
        lo, hi = int(self.t_range[0] * self.num_steps), max(int(self.t_range[1] * self.num_steps), 1)
        t = torch.randint(lo, hi, (b,), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x)
        a = self.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
        with torch.no_grad():
            x_t = a.sqrt() * x.detach() + (1 - a).sqrt() * noise
            eps = self.predict_noise(x_t, t, conditioning)
            grad = torch.nan_to_num((1 - a) * (eps - noise))  # w(t) = 1 - alpha_bar_t (DreamFusion)
        target = (x - grad).detach()
        loss = 0.5 * F.mse_loss(x, target).to(images.device)  # on the renders' device
        return SDSOutput(loss=loss, timesteps=t, grad_norm=float(grad.flatten(1).norm(dim=1).mean()))


def load_guidance(path: Path | str, *, guidance_scale: float = 7.5, t_range: tuple[float, float] = (0.02, 0.98),
                  resolution: int | None = None, trained: bool = True) -> ScoreDistillation:
    """Load guidance from a local diffusers folder (``local_files_only=True``; nothing is downloaded).

    ``path`` is a pipeline folder with ``unet/`` (and ``scheduler/``, optional ``vae/``) subfolders, or a bare
    UNet folder (``config.json`` + weights), in which case the tiny DDPM schedule is assumed. Pass
    ``trained=False`` for a folder holding a randomly initialised model, so its outputs are labelled untrained.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(path)
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet_dir / "config.json").is_file():
        raise CheckpointError(f"{path}: not a diffusers UNet or pipeline folder (no config.json)")
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
        sched_dir = folder / "scheduler"
        scheduler = (DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
                     if (sched_dir / "scheduler_config.json").is_file() else tiny_guidance_scheduler())
        vae_dir = folder / "vae"
        vae = (AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
               if (vae_dir / "config.json").is_file() else None)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot load guidance model ({err})") from err
    return ScoreDistillation(unet, scheduler, guidance_scale, t_range, vae=vae, resolution=resolution, trained=trained,
                             source=str(folder))
