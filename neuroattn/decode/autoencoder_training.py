"""Training (or fine-tuning) the image ``AutoencoderKL`` on a stimulus set through the shared trainer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from neuroattn.decode.autoencoder import LoadedAutoencoder, images_to_tensor, tiny_autoencoder
from neuroattn.errors import CheckpointError, InvalidInputError
from neuroattn.io.checkpoints import load_model
from neuroattn.train import LossItem, TrainConfig, Trainer, adam_per_module

MODEL_CLASS = "AutoencoderKL"


def autoencoder_config(model: nn.Module) -> dict[str, Any]:
    """The ``AutoencoderKL`` constructor arguments as JSON-ready values (tuples become lists)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def build_autoencoder(config: dict[str, Any]) -> nn.Module:
    """An ``AutoencoderKL`` made from :func:`autoencoder_config`'s output (random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(config)


@torch.no_grad()
def latent_scaling_factor(model: nn.Module, images: Tensor, *, batch_size: int = 64) -> float:
    """``1 / std`` of the latent means of ``images`` (N, 3, H, W) in [-1, 1], as Stable Diffusion sets it.

    Diffusion in latent space assumes roughly unit-variance latents; a freshly trained autoencoder has an
    arbitrary latent scale, so the factor is measured on the training images.
    """
    device = next(model.parameters()).device
    chunks = [
        model.encode(images[i : i + batch_size].to(device)).latent_dist.mean.float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    std = float(torch.cat(chunks).std())
    return 1.0 / max(std, 1e-6)


class AutoencoderTask:
    """Reconstruction (mean squared error) plus a small KL term, the VAE objective without its GAN/LPIPS parts.

    Parameters
    ----------
    vae : the autoencoder to train (its weights are updated in place).
    images : float tensor (N, 3, H, W) in [-1, 1].
    kl_weight : weight of the KL divergence to N(0, I), averaged per latent element.
    """

    model_class = MODEL_CLASS

    def __init__(self, vae: nn.Module, images: Tensor, *, kl_weight: float = 1e-4) -> None:
        self.vae = vae
        self.images = images
        self.kl_weight = kl_weight

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules)

    def train_dataset(self) -> Dataset:
        return TensorDataset(self.images)

    def losses(self, batch: Any, step: int) -> Iterator[LossItem]:
        (x,) = batch  # (B, 3, H, W)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample()  # (B, C, h, w), reparameterised
        recon = self.vae.decode(z).sample  # (B, 3, H, W)
        mse = torch.mean((recon.float() - x.float()) ** 2)
        kl = torch.mean(0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar))
        psnr = 10.0 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # peak-to-peak range of [-1, 1] is 2
        yield "vae", mse + self.kl_weight * kl, {"mse": mse.detach(), "kl": kl.detach(), "psnr_db": psnr}

    def model_config(self) -> dict[str, Any]:
        """The constructor config, with the latent scaling factor measured on the fitted weights."""
        config = autoencoder_config(self.vae)
        config["scaling_factor"] = latent_scaling_factor(self.vae, self.images)
        return {"autoencoder": config, "kl_weight": self.kl_weight}

    def data_summary(self) -> dict[str, Any]:
        return {"n_images": len(self.images), "image_size": list(self.images.shape[-2:])}


def train_autoencoder(
    images: np.ndarray,
    train: TrainConfig,
    *,
    vae: LoadedAutoencoder | None = None,
    kl_weight: float = 1e-4,
    seed: int = 0,
) -> LoadedAutoencoder:
    """Train the tiny autoencoder (or fine-tune ``vae``) on uint8 images (N, H, W, 3).

    The run folder ``train.out_dir`` holds the trainer's outputs; ``final/`` is a checkpoint in the shared
    format (see :func:`load_trained_autoencoder`), whose config carries the measured latent scaling factor.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidInputError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}", None)
    if images.shape[1] != images.shape[2]:
        raise InvalidInputError(f"expected square images, got {images.shape[1]}x{images.shape[2]}", None)
    if vae is None:
        vae = tiny_autoencoder(images.shape[1], seed=seed)
    task = AutoencoderTask(vae.model, images_to_tensor(images), kl_weight=kl_weight)
    result = Trainer(task, train).fit()
    if result.final_dir is None:
        raise CheckpointError(f"{train.out_dir}: training stopped before writing the final model")
    return load_trained_autoencoder(result.final_dir)


def load_trained_autoencoder(run_dir: str | Path) -> LoadedAutoencoder:
    """The autoencoder of a :func:`train_autoencoder` run folder (its ``final/``) or checkpoint folder."""
    model = load_model(run_dir, MODEL_CLASS, lambda config: build_autoencoder(config["autoencoder"]))
    return LoadedAutoencoder(model.eval(), trained=True, source=str(run_dir))
