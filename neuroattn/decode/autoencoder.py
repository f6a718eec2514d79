"""The image autoencoder (diffusers ``AutoencoderKL``) shared by the low-level path and reconstruction.

A tiny randomly initialised configuration works offline; real weights (e.g. a Stable Diffusion VAE
folder saved with ``save_pretrained``) load from a local path only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neuroattn.errors import CheckpointError

TINY_BLOCK_CHANNELS: tuple[int, ...] = (32, 64, 64)
"""Channels of the tiny encoder/decoder stages; three stages downsample by 4."""


@dataclass
class LoadedAutoencoder:
    """An ``AutoencoderKL`` and whether its weights are trained (random tiny configs are not)."""

    model: torch.nn.Module
    trained: bool
    source: str

    @property
    def downsample(self) -> int:
        """Spatial reduction factor from image to latent grid."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent grid."""
        return int(self.model.config.latent_channels)


def tiny_autoencoder(image_size: int = 64, *, seed: int = 0, latent_channels: int = 4) -> LoadedAutoencoder:
    """A small randomly initialised ``AutoencoderKL`` (untrained) for offline runs and tests."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(TINY_BLOCK_CHANNELS)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=TINY_BLOCK_CHANNELS,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=image_size,
    )
    return LoadedAutoencoder(model.eval(), trained=False, source="tiny-random")


def load_autoencoder(path: Path | str | None, *, image_size: int = 64, seed: int = 0) -> LoadedAutoencoder:
    """Load ``AutoencoderKL`` weights from a local folder, or build the tiny untrained one when ``path`` is None.

    The folder is what ``AutoencoderKL.save_pretrained`` writes (``config.json`` + safetensors), or a
    pipeline folder with a ``vae/`` subfolder.
    """
    if path is None:
        return tiny_autoencoder(image_size, seed=seed)
    from diffusers import AutoencoderKL

    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{path}: not an AutoencoderKL folder (no config.json)")
    try:
        model = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot load AutoencoderKL weights ({err})") from err
    return LoadedAutoencoder(model.eval(), trained=True, source=str(folder))


def images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 images (N, H, W, 3) → float tensor (N, 3, H, W) scaled to [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    return tensor / 127.5 - 1.0


def tensor_to_images(tensor: Tensor) -> np.ndarray:
    """Float tensor (N, 3, H, W) in [-1, 1] → uint8 images (N, H, W, 3)."""
    scaled = ((tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_latents(vae: LoadedAutoencoder, images: np.ndarray, *, batch_size: int = 64) -> Tensor:
    """Latent means (N, C, H/f, W/f), times the model's scaling factor, of uint8 images (N, H, W, 3)."""
    device = next(vae.model.parameters()).device
    scale = float(getattr(vae.model.config, "scaling_factor", 1.0))
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size]).to(device)
        chunks.append(vae.model.encode(batch).latent_dist.mean.float().cpu() * scale)
    return torch.cat(chunks)


@torch.no_grad()
def decode_latents(vae: LoadedAutoencoder, latents: Tensor, *, batch_size: int = 64) -> np.ndarray:
    """uint8 images (N, H, W, 3) decoded from scaled latents (N, C, h, w)."""
    device = next(vae.model.parameters()).device
    scale = float(getattr(vae.model.config, "scaling_factor", 1.0))
    chunks = []
    for start in range(0, len(latents), batch_size):
        batch = latents[start : start + batch_size].to(device) / scale
        chunks.append(tensor_to_images(vae.model.decode(batch).sample))
    return np.concatenate(chunks)
