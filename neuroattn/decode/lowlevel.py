"""MindEye's low-level path: voxels -> MLP -> convolutional upsampler -> VAE latents (the img2img start)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.decode.mindeye import ResidualMlpBlock
from neuroattn.errors import ConfigError

IMG2IMG_STRENGTH = 0.85
"""Share of the diffusion run that img2img re-noises the low-level image to (MindEye's published 0.85)."""


@dataclass
class LowLevelConfig:
    """Low-level decoder; defaults follow MindEye (Stable Diffusion latents 4 x 64 x 64 of 512 px images)."""

    n_voxels: int = 15724
    latent_channels: int = 4  # VAE latent channels C
    latent_size: int = 64  # latent grid side h = w (image side / VAE downsampling)
    hidden_dim: int = 4096  # MLP width
    n_blocks: int = 4  # residual MLP blocks
    dropout: float = 0.15
    base_channels: int = 64  # channels of the coarse grid the MLP writes
    n_upsample: int = 2  # 2x upsampling stages from the coarse grid to the latent grid

    def __post_init__(self) -> None:
        for name in ("n_voxels", "latent_channels", "latent_size", "hidden_dim", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        if self.latent_size % (2**self.n_upsample):
            raise ConfigError(
                f"'latent_size' ({self.latent_size}) must be divisible by 2**n_upsample ({2**self.n_upsample})."
            )

    @property
    def base_size(self) -> int:
        """Side of the coarse grid the MLP writes."""
        return self.latent_size // 2**self.n_upsample

    @classmethod
    def tiny(cls, n_voxels: int, latent_channels: int = 4, latent_size: int = 16, **overrides: Any) -> LowLevelConfig:
        """A small low-level decoder for CPU runs (64 px images with the tiny VAE: 4 x 16 x 16 latents)."""
        values: dict[str, Any] = {"hidden_dim": 256, "n_blocks": 1, "dropout": 0.1, "base_channels": 32}
        return cls(n_voxels=n_voxels, latent_channels=latent_channels, latent_size=latent_size, **(values | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LowLevelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown LowLevelConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def _groups(channels: int) -> int:
    """Largest GroupNorm group count <= 32 dividing ``channels``."""
    return next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)


class UpStage(nn.Module):
    """Nearest 2x upsampling, then conv 3x3, GroupNorm, SiLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C, 2h, 2w)
        return self.act(self.norm(self.conv(x)))


class LowLevelDecoder(nn.Module):
    """Voxels ``(B, V)`` → VAE latents ``(B, C, h, w)``, trained with L1 to the VAE encoding of the seen image."""

    def __init__(self, config: LowLevelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.stem = nn.Sequential(
            nn.Linear(c.n_voxels, c.hidden_dim), nn.LayerNorm(c.hidden_dim), nn.SiLU(), nn.Dropout(c.dropout)
        )
        self.blocks = nn.Sequential(*(ResidualMlpBlock(c.hidden_dim, c.dropout) for _ in range(c.n_blocks)))
        self.to_grid = nn.Linear(c.hidden_dim, c.base_channels * c.base_size**2)
        self.upsampler = nn.Sequential(*(UpStage(c.base_channels) for _ in range(c.n_upsample)))
        self.out = nn.Conv2d(c.base_channels, c.latent_channels, 3, padding=1)

    def forward(self, voxels: Tensor) -> Tensor:
        c = self.config
        if voxels.ndim != 2 or voxels.shape[1] != c.n_voxels:
            raise ValueError(f"expected voxels (B, {c.n_voxels}), got shape {tuple(voxels.shape)}")
        x = self.to_grid(self.blocks(self.stem(voxels)))  # (B, C0 * s * s)
        x = x.unflatten(-1, (c.base_channels, c.base_size, c.base_size))  # (B, C0, s, s)
        return self.out(self.upsampler(x))  # (B, C, h, w)


def lowlevel_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error between predicted and target latents ``(B, C, h, w)``."""
    return F.l1_loss(pred, target)


__all__ = ["IMG2IMG_STRENGTH", "LowLevelConfig", "LowLevelDecoder", "UpStage", "lowlevel_loss"]
