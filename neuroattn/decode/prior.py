"""A DALL-E 2 style diffusion prior: brain tokens + timestep -> clean CLIP token grid, on a diffusers schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.attention import Dense
from neuroattn.errors import ConfigError
from neuroattn.nn.transformer import TransformerBlock

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


@dataclass
class PriorConfig:
    """Diffusion prior architecture and noise schedule (MindEye / DALL-E 2 published values by default)."""

    n_tokens: int = 257  # CLIP tokens L (ViT-L/14: CLS + 16 x 16 patches)
    clip_dim: int = 768  # CLIP joint-space width D
    dim: int = 768  # transformer width
    depth: int = 6  # transformer blocks
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    timesteps: int = 100  # diffusion steps of the training schedule
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule (DALL-E 2)
    data_scale: float = 1.0  # CLIP token std; the prior diffuses tokens / data_scale so the data is unit-scale

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"'beta_schedule' must be one of {list(BETA_SCHEDULES)}. {self.beta_schedule!r} was provided."
            )
        for name in ("n_tokens", "clip_dim", "dim", "depth", "heads", "timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        if self.dim % self.heads:
            raise ConfigError(f"'dim' ({self.dim}) must be a multiple of 'heads' ({self.heads}).")
        if not self.data_scale > 0:
            raise ConfigError(f"'data_scale' must be > 0. {self.data_scale!r} was provided.")

    @classmethod
    def tiny(cls, **overrides: Any) -> PriorConfig:
        """A small prior for CPU tests and demos (depth 2, width 64)."""
        return cls(**({"dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2.0} | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_scheduler(config: PriorConfig) -> Any:
    """The diffusers ``DDPMScheduler`` of the prior: x0 prediction, no clipping (tokens are unbounded)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="sample",
        clip_sample=False,
    )


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of integer timesteps ``(B,)`` (the DDPM / transformer one)."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class DiffusionPrior(nn.Module):
    """Denoiser of CLIP token grids conditioned on brain tokens.

    One sequence per sample, ``[brain tokens (L) | timestep token (1) | noisy CLIP tokens (L)]`` plus learned
    position embeddings, runs through ``depth`` Dense :class:`~neuroattn.nn.transformer.TransformerBlock` s;
    the last ``L`` outputs are projected to the clean tokens (x0 prediction, as MindEye's prior).
    """

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.brain_in = nn.Linear(c.clip_dim, c.dim)
        self.noisy_in = nn.Linear(c.clip_dim, c.dim)
        self.aligned_in = nn.Linear(c.clip_dim, c.dim)
        self.time_mlp = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 * c.n_tokens + 1, c.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.heads, Dense(), c.mlp_ratio, drop=c.dropout) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.clip_dim)
        self.scheduler = build_scheduler(c)

    def forward(self, noisy: Tensor, t: Tensor, brain: Tensor) -> Tensor:
        """Predict clean tokens.

        Parameters
        ----------
        noisy : ``(B, L, D)`` noised tokens, in units of ``data_scale``.
        t : ``(B,)`` int64 timesteps.
        brain : ``(B, L, D)`` brain backbone tokens (raw CLIP units).

        Returns
        -------
        ``(B, L, D)`` predicted clean tokens, in units of ``data_scale``.
        """
        n = self.config.n_tokens
        time = self.time_mlp(timestep_embedding(t, self.config.dim).to(noisy.dtype))[:, None]  # (B, 1, dim)
        brain_tok = self.brain_in(brain / self.config.data_scale)  # (B, L, dim)
        noisy_tok = self.noisy_in(noisy) + self.aligned_in(brain / self.config.data_scale)  # (B, L, dim)
        x = torch.cat([brain_tok, time, noisy_tok], dim=1) + self.pos_embed  # (B, 2L+1, dim)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x[:, -n:]))  # (B, L, D)

    def loss(self, target: Tensor, brain: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error of the x0 prediction at a uniformly drawn timestep.

        Parameters
        ----------
        target : ``(B, L, D)`` CLIP tokens the brain tokens should map to (raw units).
        brain : ``(B, L, D)`` brain backbone tokens.
        generator : torch generator on the tokens' device for the noise and the timesteps (default: global).
        """
        x0 = target / self.config.data_scale  # (B, L, D)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, self.config.timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        return F.mse_loss(self(noisy, t, brain), x0)

    @torch.no_grad()
    def sample(self, brain: Tensor, steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw CLIP tokens ``(B, L, D)`` (raw units) for brain tokens ``(B, L, D)`` by ancestral DDPM sampling.

        ``steps`` inference steps (default: the training schedule's ``timesteps``) evenly spaced over it;
        ``generator`` (a CPU generator is fine on any device) makes the draw reproducible.
        """
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(self.scheduler.config)  # own copy: set_timesteps mutates it
        scheduler.set_timesteps(steps or self.config.timesteps, device=brain.device)
        shape = (brain.shape[0], self.config.n_tokens, self.config.clip_dim)
        x = torch.randn(shape, generator=generator, device=generator.device if generator else brain.device)
        x = x.to(brain.device, brain.dtype)
        for t in scheduler.timesteps:
            batch_t = torch.full((shape[0],), int(t), device=brain.device, dtype=torch.long)
            x0 = self(x, batch_t, brain)
            x = scheduler.step(x0, t, x, generator=generator).prev_sample
        return x * self.config.data_scale


__all__ = ["BETA_SCHEDULES", "DiffusionPrior", "PriorConfig", "build_scheduler", "timestep_embedding"]
