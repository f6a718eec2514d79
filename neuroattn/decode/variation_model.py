"""A tiny image-variation diffusion model (diffusers UNet conditioned on CLIP image embeddings) and its training."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from neuroattn.decode.autoencoder import LoadedAutoencoder, encode_latents
from neuroattn.decode.autoencoder_training import autoencoder_config, build_autoencoder
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint, load_state_strict
from neuroattn.train import LossItem, TrainConfig, Trainer, adam_per_module

MODEL_CLASS = "ImageVariationUNet"


@dataclass
class VariationConfig:
    """Shape of the tiny variation UNet and its noise schedule."""

    embed_dim: int = 64  # D of the CLIP joint space (pooled embedding)
    latent_channels: int = 4  # channels of the autoencoder's latent grid
    latent_size: int = 16  # latent grid side (image side / autoencoder downsampling)
    block_channels: tuple[int, ...] = (64, 128)  # UNet stages; the last one also holds self/cross-attention
    layers_per_block: int = 1
    heads: int = 4  # attention heads in the attention stages
    norm_groups: int = 16  # GroupNorm groups; must divide every entry of block_channels
    num_train_timesteps: int = 1000  # diffusion steps of the training schedule
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule: better than linear for small latent grids
    cond_drop: float = 0.1  # probability of training a sample unconditionally (classifier-free guidance)
    # "v_prediction" (Stable unCLIP 2.1's target) | "epsilon". With epsilon the loss barely rewards using the
    # condition at high noise, where the sampler commits to an image, so small runs learn to ignore it.
    prediction_type: str = "v_prediction"

    def __post_init__(self) -> None:
        self.block_channels = tuple(int(c) for c in self.block_channels)
        if any(c % self.norm_groups for c in self.block_channels):
            raise ConfigError(f"'norm_groups' must divide every block channel {self.block_channels}. "
                              f"{self.norm_groups!r} was provided.")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"'prediction_type' must be one of ['epsilon', 'v_prediction']. "
                              f"{self.prediction_type!r} was provided.")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"'cond_drop' must be in [0, 1). {self.cond_drop!r} was provided.")
        if self.latent_size % 2 ** (len(self.block_channels) - 1):
            raise ConfigError(f"'latent_size' must be divisible by {2 ** (len(self.block_channels) - 1)}. "
                              f"{self.latent_size!r} was provided.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_channels"] = list(self.block_channels)
        return data


def build_variation_unet(config: VariationConfig) -> nn.Module:
    """A ``UNet2DConditionModel`` conditioned on a CLIP image embedding the way unCLIP is.

    The embedding enters twice: projected and added to the timestep embedding (``class_embed_type=
    "projection"``, as Stable unCLIP does) and as a single cross-attention token in the attention stages,
    whose self-attention gives the low-resolution grid global context.
    """
    from diffusers import UNet2DConditionModel

    n = len(config.block_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=config.block_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_groups,
        cross_attention_dim=config.embed_dim,
        attention_head_dim=config.heads,  # diffusers' name for the number of heads in this UNet
        class_embed_type="projection",
        projection_class_embeddings_input_dim=config.embed_dim,
    )


def build_train_scheduler(config: VariationConfig) -> Any:
    """The DDPM noise schedule the UNet is trained under."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         clip_sample=False, prediction_type=config.prediction_type)


def build_sample_scheduler(config: VariationConfig) -> Any:
    """A DDIM sampler on the same noise schedule (deterministic with eta = 0)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         clip_sample=False, set_alpha_to_one=False, prediction_type=config.prediction_type)


def condition_embeddings(pooled: Tensor) -> dict[str, Tensor]:
    """UNet conditioning from pooled CLIP embeddings (B, D): L2-normalised and scaled to unit variance per entry.

    Brain-predicted embeddings have another norm than true ones; only their direction is kept. Returns
    ``class_labels`` (B, D) and ``encoder_hidden_states`` (B, 1, D).
    """
    unit = F.normalize(pooled.float(), dim=-1) * math.sqrt(pooled.shape[-1])  # (B, D)
    return {"class_labels": unit, "encoder_hidden_states": unit[:, None, :]}


def null_condition(batch: int, dim: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The unconditional input of classifier-free guidance: a zero embedding, as Stable unCLIP uses."""
    zeros = torch.zeros(batch, dim, device=device)
    return {"class_labels": zeros, "encoder_hidden_states": zeros[:, None, :]}


@dataclass
class VariationModel:
    """A variation UNet with the autoencoder whose latents it denoises."""

    unet: nn.Module
    vae: LoadedAutoencoder
    config: VariationConfig
    trained: bool
    source: str


class VariationTask:
    """Diffusion loss in latent space (v or epsilon target, per the config), with condition dropout for guidance.

    Parameters
    ----------
    unet : the variation UNet (trained in place).
    vae : the frozen autoencoder; saved with the UNet so a run folder holds the whole model.
    latents : scaled latent means (N, C, h, w) of the training images.
    pooled : CLIP pooled embeddings (N, D) of the same images.
    """

    model_class = MODEL_CLASS

    def __init__(self, unet: nn.Module, vae: LoadedAutoencoder, latents: Tensor, pooled: Tensor,
                 config: VariationConfig) -> None:
        self.unet = unet
        self.vae = vae
        self.latents = latents
        self.pooled = pooled
        self.config = config
        self.scheduler = build_train_scheduler(config)

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, decoupled=True, weight_decay=1e-2)

    def train_dataset(self) -> Dataset:
        return TensorDataset(self.latents, self.pooled)

    def losses(self, batch: Any, step: int) -> Iterator[LossItem]:
        latents, pooled = batch  # (B, C, h, w), (B, D)
        b = latents.shape[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)  # (B, C, h, w)
        cond = condition_embeddings(pooled)
        keep = (torch.rand(b, device=latents.device) >= self.config.cond_drop).float()  # (B,)
        cond = {"class_labels": cond["class_labels"] * keep[:, None],
                "encoder_hidden_states": cond["encoder_hidden_states"] * keep[:, None, None]}
        pred = self.unet(noisy, t, **cond).sample  # (B, C, h, w)
        velocity = self.config.prediction_type == "v_prediction"
        target = self.scheduler.get_velocity(latents, noise, t) if velocity else noise  # (B, C, h, w)
        loss = F.mse_loss(pred.float(), target.float())
        yield "unet", loss, {"uncond_fraction": 1.0 - keep.mean()}

    def export_state_dict(self, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
        state = {f"unet.{k}": v for k, v in modules["unet"].state_dict().items()}
        return state | {f"vae.{k}": v for k, v in self.vae.model.state_dict().items()}

    def model_config(self) -> dict[str, Any]:
        return {"variation": self.config.to_dict(), "autoencoder": autoencoder_config(self.vae.model),
                "autoencoder_trained": self.vae.trained, "autoencoder_source": self.vae.source}

    def data_summary(self) -> dict[str, Any]:
        return {"n_images": len(self.latents), "embed_dim": int(self.pooled.shape[1])}


def train_variation_model(
    images: np.ndarray,
    clip_pooled: np.ndarray,
    vae: LoadedAutoencoder,
    train: TrainConfig,
    *,
    config: VariationConfig | None = None,
    seed: int = 0,
) -> VariationModel:
    """Train the tiny variation model on uint8 images (N, H, W, 3) and their CLIP pooled embeddings (N, D).

    ``vae`` stays frozen (train it first with :func:`~neuroattn.decode.autoencoder_training.train_autoencoder`);
    its latents are computed once. Returns the trained model loaded back from ``train.out_dir/final``.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidInputError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}", None)
    if clip_pooled.ndim != 2 or len(clip_pooled) != len(images):
        raise InvalidInputError(f"expected clip_pooled (N={len(images)}, D), got {clip_pooled.shape}", None)
    vae.model.eval().requires_grad_(False)
    latents = encode_latents(vae, images)  # (N, C, h, w)
    if config is None:
        config = VariationConfig(embed_dim=clip_pooled.shape[1], latent_channels=latents.shape[1],
                                 latent_size=latents.shape[-1])
    if (config.embed_dim, config.latent_channels, config.latent_size) != (
        clip_pooled.shape[1], latents.shape[1], latents.shape[-1]
    ):
        raise ConfigError(f"config expects embeddings of {config.embed_dim} and latents "
                          f"{config.latent_channels}x{config.latent_size}^2; data has {clip_pooled.shape[1]} and "
                          f"{tuple(latents.shape[1:])}")
    torch.manual_seed(seed)
    unet = build_variation_unet(config)
    pooled = torch.from_numpy(np.ascontiguousarray(clip_pooled, dtype=np.float32))
    task = VariationTask(unet, vae, latents, pooled, config)
    result = Trainer(task, train).fit()
    if result.final_dir is None:
        raise CheckpointError(f"{train.out_dir}: training stopped before writing the final model")
    return load_variation_model(result.final_dir)


def untrained_variation_model(vae: LoadedAutoencoder, config: VariationConfig, *, seed: int = 0) -> VariationModel:
    """A randomly initialised variation UNet (``trained=False``) around ``vae``."""
    torch.manual_seed(seed)
    return VariationModel(build_variation_unet(config).eval(), vae, config, trained=False, source="tiny-random")


def load_variation_model(run_dir: str | Path) -> VariationModel:
    """The model of a :func:`train_variation_model` run folder (its ``final/``) or checkpoint folder."""
    path = Path(run_dir)
    if (path / "final" / "config.json").is_file():
        path = path / "final"
    ckpt = load_checkpoint(path, expected_class=MODEL_CLASS)
    try:
        config = VariationConfig(**ckpt.config["variation"])
        unet = build_variation_unet(config)
        vae_model = build_autoencoder(ckpt.config["autoencoder"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: bad {MODEL_CLASS} config ({exc})") from None
    parts: dict[str, dict[str, Tensor]] = {"unet": {}, "vae": {}}
    for key, value in ckpt.state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"{path}: unexpected weight {key!r}")
        parts[prefix][rest] = value
    load_state_strict(unet, parts["unet"], path)
    load_state_strict(vae_model, parts["vae"], path)
    vae = LoadedAutoencoder(vae_model.eval(), trained=bool(ckpt.config.get("autoencoder_trained", False)),
                            source=str(ckpt.config.get("autoencoder_source", path)))
    return VariationModel(unet.eval(), vae, config, trained=ckpt.trained, source=str(path))
