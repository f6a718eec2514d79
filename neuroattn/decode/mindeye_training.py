"""Training MindEye with the shared trainer, and the trained decoder loaded back from its run folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from neuroattn.decode.base import as_betas, normalize_rows
from neuroattn.decode.contrastive import (
    bimixco_loss,
    bimixco_steps,
    contrastive_phase,
    mixup_voxels,
    soft_clip_loss,
    softclip_temperature,
)
from neuroattn.decode.lowlevel import LowLevelConfig, LowLevelDecoder, lowlevel_loss
from neuroattn.decode.mindeye import MindEye, MindEyeConfig
from neuroattn.errors import CheckpointError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint, load_state_strict
from neuroattn.train import LossItem, Trainer, TrainResult, adam_per_module
from neuroattn.train.config import TrainConfig

MODEL_CLASS = "MindEye"


class MindEyeDataset(Dataset):
    """Single trials: item ``i`` is ``{"betas": (V,), "tokens": (L, D)[, "latents": (C, h, w)]}`` float32.

    Parameters
    ----------
    betas : ``(N, V)`` z-scored voxel responses, one row per trial.
    tokens : ``(N, L, D)`` CLIP tokens of the image seen on each trial.
    latents : optional ``(N, C, h, w)`` VAE latents of those images.
    """

    def __init__(self, betas: np.ndarray, tokens: np.ndarray, latents: np.ndarray | Tensor | None = None) -> None:
        self.betas = torch.from_numpy(as_betas(betas))
        tok = np.asarray(tokens, dtype=np.float32)
        if tok.ndim != 3 or len(tok) != len(self.betas):
            raise InvalidInputError(f"tokens must be (n_trials={len(self.betas)}, L, D); got shape {tok.shape}")
        if not np.all(np.isfinite(tok)):
            raise InvalidInputError("CLIP tokens contain NaN or infinite values")
        self.tokens = torch.from_numpy(tok)
        self.latents = None
        if latents is not None:
            lat = torch.as_tensor(latents, dtype=torch.float32)
            if lat.ndim != 4 or len(lat) != len(self.betas):
                raise InvalidInputError(
                    f"latents must be (n_trials={len(self.betas)}, C, h, w); got shape {tuple(lat.shape)}"
                )
            self.latents = lat

    def __len__(self) -> int:
        return len(self.betas)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"betas": self.betas[i], "tokens": self.tokens[i]}
        if self.latents is not None:
            item["latents"] = self.latents[i]
        return item


class MindEyeTask:
    """The :class:`~neuroattn.train.TrainTask` of MindEye: optimizer ``"mindeye"`` (backbone, projector and
    prior, AdamW) and, with latents, ``"lowlevel"`` (its own AdamW).

    ``mindeye`` loss: ``contrastive + prior_weight * prior``, where contrastive is BiMixCo on mixed voxels for
    the first ``bimixco_fraction`` of ``max_steps`` and SoftCLIP (annealed temperature) after; the prior
    learns from the backbone tokens of the same (possibly mixed) voxels, as in MindEye. ``lowlevel`` loss: L1
    to the latents, on the unmixed voxels.
    """

    model_class = MODEL_CLASS

    def __init__(
        self,
        model: MindEye,
        dataset: MindEyeDataset,
        max_steps: int,
        *,
        lowlevel: LowLevelDecoder | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        if (lowlevel is None) != (dataset.latents is None):
            raise InvalidInputError("a low-level decoder needs latents in the dataset, and latents need the decoder")
        self.model, self.dataset, self.lowlevel = model, dataset, lowlevel
        self.max_steps = max_steps
        self.summary = summary or {}

    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"mindeye": self.model}
        if self.lowlevel is not None:
            modules["lowlevel"] = self.lowlevel
        return modules

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, weight_decay=1e-2, decoupled=True)

    def train_dataset(self) -> Dataset:
        return self.dataset

    def losses(self, batch: dict[str, Tensor], step: int) -> Iterator[LossItem]:
        c = self.model.config
        voxels, tokens = batch["betas"], batch["tokens"]
        phase = contrastive_phase(step, self.max_steps, c.bimixco_fraction)
        if phase == "bimixco":
            mix = mixup_voxels(voxels, beta=c.mixup_beta, mix_prob=c.mixup_prob)
            backbone, projected = self.model(mix.voxels)
            temperature = c.bimixco_temperature
            contrastive = bimixco_loss(projected, tokens, mix.perm, mix.betas, temperature=temperature)
        else:
            backbone, projected = self.model(voxels)
            temperature = softclip_temperature(
                step, self.max_steps, c.bimixco_fraction, c.softclip_temperature_start, c.softclip_temperature_end
            )
            contrastive = soft_clip_loss(projected, tokens, temperature=temperature)
        prior = self.model.prior.loss(tokens, backbone)
        loss = contrastive + c.prior_weight * prior
        yield "mindeye", loss, {
            "mindeye/contrastive": contrastive.detach(),
            "mindeye/prior": prior.detach(),
            "mindeye/bimixco": float(phase == "bimixco"),
            "mindeye/temperature": temperature,
        }
        if self.lowlevel is not None:
            l1 = lowlevel_loss(self.lowlevel(voxels), batch["latents"])
            yield "lowlevel", l1, {"lowlevel/l1": l1.detach()}

    def model_config(self) -> dict[str, Any]:
        return {
            "mindeye": self.model.config.to_dict(),
            "lowlevel": None if self.lowlevel is None else self.lowlevel.config.to_dict(),
        }

    def export_state_dict(self, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
        return dict(nn.ModuleDict(dict(modules)).state_dict())  # keys "mindeye.*" and "lowlevel.*"

    def data_summary(self) -> dict[str, Any]:
        return {"bimixco_steps": bimixco_steps(self.max_steps, self.model.config.bimixco_fraction)} | self.summary


def train_mindeye(
    betas: np.ndarray,
    tokens: np.ndarray,
    latents: np.ndarray | Tensor | None,
    config: MindEyeConfig,
    train: TrainConfig,
    *,
    lowlevel_config: LowLevelConfig | None = None,
    clip_trained: bool = True,
    vae_trained: bool = True,
    summary: dict[str, Any] | None = None,
) -> TrainResult:
    """Train MindEye (and its low-level path when ``latents`` are given) on single trials.

    Parameters
    ----------
    betas : ``(N, V)`` voxel responses, z-scored per voxel over the training trials by the caller.
    tokens : ``(N, L, D)`` CLIP tokens of each trial's image (``ImageFeatures.tokens``).
    latents : ``(N, C, h, w)`` VAE latents of each trial's image (``encode_latents``), or None.
    config : architecture and losses; ``n_voxels``, ``n_tokens``, ``clip_dim`` must match the data, and
        ``prior.data_scale`` is set here to the tokens' standard deviation.
    train : the trainer's configuration (``out_dir``, ``max_steps``, ``batch_size``, ``lr`` ...).
    lowlevel_config : low-level decoder; default :meth:`LowLevelConfig.tiny` sized to the latents.
    clip_trained, vae_trained : whether the CLIP / VAE that produced the targets had trained weights; recorded
        in the checkpoint so decoders built on random targets report ``trained=False``.
    summary : extra entries for the checkpoint's data summary.

    Returns
    -------
    The trainer's :class:`~neuroattn.train.TrainResult`; the model is in ``result.final_dir``.
    """
    dataset = MindEyeDataset(betas, tokens, latents)
    v, (n_tok, dim) = dataset.betas.shape[1], dataset.tokens.shape[1:]
    wanted = {"n_voxels": v, "n_tokens": n_tok, "clip_dim": dim}
    wrong = {k: (getattr(config, k), val) for k, val in wanted.items() if getattr(config, k) != val}
    if wrong:
        raise InvalidInputError(f"MindEyeConfig does not fit the data (config, data): {wrong}")
    config = MindEyeConfig.from_dict(config.to_dict())  # a copy: the caller's config stays as given
    config.prior.data_scale = float(dataset.tokens.std()) or 1.0
    torch.manual_seed(train.seed)  # the trainer seeds again before its own draws; this fixes the weights
    model = MindEye(config)
    lowlevel = None
    if dataset.latents is not None:
        c, h, w = dataset.latents.shape[1:]
        if h != w:
            raise InvalidInputError(f"latents must be square, got {h} x {w}")
        lowlevel_config = lowlevel_config or LowLevelConfig.tiny(v, latent_channels=c, latent_size=h)
        if (lowlevel_config.n_voxels, lowlevel_config.latent_channels, lowlevel_config.latent_size) != (v, c, h):
            raise InvalidInputError(f"LowLevelConfig does not fit voxels {v} and latents {c} x {h} x {w}")
        lowlevel = LowLevelDecoder(lowlevel_config)
    info = {
        "n_trials": len(dataset),
        "n_voxels": v,
        "token_shape": [n_tok, dim],
        "latent_shape": None if dataset.latents is None else list(dataset.latents.shape[1:]),
        "clip_trained": bool(clip_trained),
        "vae_trained": bool(vae_trained),
    } | (summary or {})
    task = MindEyeTask(model, dataset, train.max_steps, lowlevel=lowlevel, summary=info)
    return Trainer(task, train).fit()


class MindEyeDecoder:
    """A trained MindEye as a :class:`~neuroattn.decode.base.BrainDecoder`.

    Attributes
    ----------
    name : ``"mindeye"``.
    trained : the checkpoint's flag, and False when the CLIP (or, with a low-level path, VAE) targets came
        from random weights.
    model : :class:`MindEye` in eval mode; ``lowlevel`` the :class:`LowLevelDecoder` or None.
    """

    name = "mindeye"

    def __init__(
        self,
        model: MindEye,
        lowlevel: LowLevelDecoder | None = None,
        *,
        trained: bool = False,
        device: str | torch.device = "cpu",
        prior_steps: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.lowlevel = None if lowlevel is None else lowlevel.to(self.device).eval()
        self.trained = trained
        self.prior_steps = prior_steps
        self.seed = seed
        self.batch_size = batch_size

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str | torch.device = "cpu", **kwargs: Any) -> MindEyeDecoder:
        """Load a run folder (its ``final/``) or a checkpoint folder written by :func:`train_mindeye`."""
        path = Path(run_dir)
        if (path / "final" / "config.json").is_file():
            path = path / "final"
        ckpt = load_checkpoint(path, expected_class=MODEL_CLASS)
        try:
            model = MindEye(MindEyeConfig.from_dict(dict(ckpt.config["mindeye"])))
            low_cfg = ckpt.config.get("lowlevel")
            lowlevel = None if low_cfg is None else LowLevelDecoder(LowLevelConfig.from_dict(dict(low_cfg)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad MindEye config ({exc})") from None
        modules: dict[str, nn.Module] = {"mindeye": model} | ({} if lowlevel is None else {"lowlevel": lowlevel})
        load_state_strict(nn.ModuleDict(modules), ckpt.state_dict, path)
        summary = ckpt.data_summary
        trained = ckpt.trained and bool(summary.get("clip_trained", True))
        if lowlevel is not None:
            trained = trained and bool(summary.get("vae_trained", True))
        return cls(model, lowlevel, trained=trained, device=device, **kwargs)

    @property
    def n_voxels(self) -> int:
        return self.model.config.n_voxels

    def _batches(self, betas: np.ndarray) -> Iterator[Tensor]:
        arr = as_betas(betas, self.n_voxels)
        for start in range(0, len(arr), self.batch_size):
            yield torch.from_numpy(arr[start : start + self.batch_size]).to(self.device)

    @torch.no_grad()
    def brain_embeddings(self, betas: np.ndarray) -> np.ndarray:
        """Voxel responses ``(B, V)`` → retrieval embeddings ``(B, L*D)`` float32, rows L2-normalised."""
        out = [self.model(x)[1].flatten(1).float().cpu().numpy() for x in self._batches(betas)]
        return normalize_rows(np.concatenate(out))

    @torch.no_grad()
    def predict_clip(self, betas: np.ndarray, *, steps: int | None = None, seed: int | None = None) -> np.ndarray:
        """CLIP tokens ``(B, L, D)`` float32 sampled by the prior (seeded: the same call gives the same draw)."""
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        steps = steps or self.prior_steps
        out = [self.model.predict_clip(x, steps, generator).float().cpu().numpy() for x in self._batches(betas)]
        return np.concatenate(out)

    @torch.no_grad()
    def predict_backbone(self, betas: np.ndarray) -> np.ndarray:
        """Backbone tokens ``(B, L, D)`` float32 (the prior's condition), without sampling."""
        return np.concatenate([self.model.forward_features(x).float().cpu().numpy() for x in self._batches(betas)])

    @torch.no_grad()
    def predict_latents(self, betas: np.ndarray) -> np.ndarray | None:
        """VAE latents ``(B, C, h, w)`` float32 from the low-level path, or None when the model has none."""
        if self.lowlevel is None:
            return None
        return np.concatenate([self.lowlevel(x).float().cpu().numpy() for x in self._batches(betas)])


__all__ = ["MODEL_CLASS", "MindEyeDataset", "MindEyeDecoder", "MindEyeTask", "train_mindeye"]
