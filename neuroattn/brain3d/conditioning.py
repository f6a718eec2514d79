"""Brain3D conditioning from fMRI: low-level areas -> a coarse image, high-level areas -> a semantic CLIP embedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from neuroattn.data.nsd import SubjectData
from neuroattn.decode.base import BrainDecoder
from neuroattn.decode.data_bundle import DecodingData
from neuroattn.errors import ConfigError, InvalidInputError

LOWLEVEL_GROUPS: tuple[str, ...] = ("V1", "V2", "V3", "V4")  # early visual cortex: appearance and shape
SEMANTIC_GROUPS: tuple[str, ...] = ("higher",)  # ventral stream / MTL: what the object is
ABLATION_MODES = ("zero", "perturb")


@dataclass
class RegionGroups:
    """Voxel masks (V,) of named region groups, and which groups feed each head."""

    masks: dict[str, np.ndarray]  # name -> bool (V,)
    lowlevel: tuple[str, ...] = LOWLEVEL_GROUPS
    semantic: tuple[str, ...] = SEMANTIC_GROUPS

    @property
    def names(self) -> list[str]:
        return list(self.masks)

    def head_mask(self, head: Literal["lowlevel", "semantic"]) -> np.ndarray:
        """Bool (V,): the voxels one head reads (union of its groups)."""
        names = self.lowlevel if head == "lowlevel" else self.semantic
        return np.logical_or.reduce([self.masks[n] for n in names])

    def counts(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.masks.items()}


def region_groups(subject: SubjectData, lowlevel: tuple[str, ...] = LOWLEVEL_GROUPS,
                  semantic: tuple[str, ...] = SEMANTIC_GROUPS) -> RegionGroups:
    """Region groups from a subject's ROI codes (``subject.roi`` (V,) with names ``subject.roi_names``)."""
    by_name = {name: code for code, name in subject.roi_names.items()}
    missing = [n for n in (*lowlevel, *semantic) if n not in by_name]
    if missing:
        raise InvalidInputError(f"subject {subject.subject} has no ROI label(s) {missing} (labels: "
                                f"{sorted(by_name)}); Brain3D needs the V1-V4 and higher-area labels", None)
    overlap = set(lowlevel) & set(semantic)
    if overlap:
        raise ConfigError(f"region groups {sorted(overlap)} are given to both heads; each group feeds one head")
    masks = {name: np.asarray(subject.roi == by_name[name]) for name in (*lowlevel, *semantic)}
    empty = [n for n, m in masks.items() if not m.any()]
    if empty:
        raise InvalidInputError(f"subject {subject.subject}: region group(s) {empty} hold no voxels", None)
    return RegionGroups(masks, tuple(lowlevel), tuple(semantic))


@dataclass
class Conditioning:
    """What the 3-D stages are conditioned on, decoded from one response pattern."""

    clip_tokens: np.ndarray  # (L, D) predicted CLIP tokens from the high-level voxels only
    pooled: np.ndarray  # (D,) the predicted pooled/CLS token (tokens[0])
    lowlevel_image: np.ndarray  # (3, H, W) float32 in [0, 1], decoded from the low-level voxels only
    reference_mask: np.ndarray | None  # (H, W) float32 {0, 1} foreground of the low-level image, or None
    info: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save in ``conditioning.npz``."""
        out = {"clip_tokens": self.clip_tokens, "pooled": self.pooled, "lowlevel_image": self.lowlevel_image}
        return out | ({} if self.reference_mask is None else {"reference_mask": self.reference_mask})


def ablate_betas(betas: np.ndarray, mask: np.ndarray, mode: str = "zero", *, seed: int = 0,
                 sd: float = 1.0) -> np.ndarray:
    """A copy of z-scored betas (V,) with the voxels in ``mask`` (V,) set to 0 (the training mean) or perturbed.

    ``perturb`` adds seeded Gaussian noise of ``sd`` z-units (the signal's scale) to those voxels.
    """
    if mode not in ABLATION_MODES:
        raise ConfigError(f"'mode' must be one of {list(ABLATION_MODES)}. {mode!r} was provided.")
    out = np.array(betas, dtype=np.float32, copy=True)
    if mode == "zero":
        out[mask] = 0.0
    else:
        noise = np.random.default_rng(seed).standard_normal(int(mask.sum())).astype(np.float32)
        out[mask] = out[mask] + np.float32(sd) * noise
    return out


def reference_foreground(image: np.ndarray, threshold: float = 0.1, *, min_fraction: float = 0.02,
                         max_fraction: float = 0.9) -> tuple[np.ndarray, str]:
    """Foreground (H, W) of an image (3, H, W): pixels unlike the border's median colour.

    When that leaves almost nothing or almost everything (a full scene, not an object on a background), a
    centred disc of radius 0.35 x side is used instead. Returns the mask and how it was made.
    """
    from neuroattn.brain3d.stage1 import estimate_background, foreground_mask

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    mask = foreground_mask(tensor, estimate_background(tensor), threshold).numpy()
    if min_fraction <= float(mask.mean()) <= max_fraction:
        return mask.astype(np.float32), "background"
    h, w = mask.shape
    rows, cols = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    disc = ((rows - h / 2) ** 2 + (cols - w / 2) ** 2) <= (0.35 * min(h, w)) ** 2
    return disc.astype(np.float32), "centre-disc"


def decode_conditioning(bundle: DecodingData, subject: str, decoder: BrainDecoder, betas: np.ndarray, *,
                        groups: RegionGroups | None = None, ablate: str | None = None, mode: str = "zero",
                        seed: int = 0, perturb_sd: float = 1.0) -> Conditioning:
    """Decode the two conditioning parts from z-scored betas (V,) of one trial.

    The low-level head (autoencoder latents) is fed only the low-level groups' voxels, the CLIP head only the
    semantic groups' voxels; every other voxel is 0, the training mean of z-scored betas. ``ablate`` names a
    group zeroed (``mode="zero"``) or perturbed with seeded noise (``mode="perturb"``) before both heads read.
    """
    from neuroattn.decode.autoencoder import decode_latents
    from neuroattn.decode.data_bundle import generator_autoencoder

    subject_data = bundle.subject(subject)
    groups = groups or region_groups(subject_data)
    betas = np.asarray(betas, dtype=np.float32)
    if betas.ndim == 2 and betas.shape[0] == 1:
        betas = betas[0]
    if betas.shape != (subject_data.n_voxels,):
        raise InvalidInputError(f"betas of shape {betas.shape}; {subject} has {subject_data.n_voxels} voxels "
                                "(one trial expected)", None)
    if ablate is not None:
        if ablate not in groups.masks:
            raise ConfigError(f"'ablate' must be one of {groups.names}. {ablate!r} was provided.")
        betas = ablate_betas(betas, groups.masks[ablate], mode, seed=seed, sd=perturb_sd)
    low_mask, sem_mask = groups.head_mask("lowlevel"), groups.head_mask("semantic")
    low_in = np.where(low_mask, betas, np.float32(0.0))[None]  # (1, V)
    sem_in = np.where(sem_mask, betas, np.float32(0.0))[None]  # (1, V)
    tokens = np.asarray(decoder.predict_clip(sem_in), dtype=np.float32)[0]  # (L, D)
    latents = decoder.predict_latents(low_in)
    if latents is None:
        raise ConfigError("the decoder has no low-level path (train it with `lowlevel: true`), so no reference "
                          "image can be decoded; give an image instead")
    vae = generator_autoencoder(bundle.root, bundle.source, bundle.stimuli.image_size)
    image = decode_latents(vae, torch.as_tensor(np.asarray(latents, dtype=np.float32)))[0]  # (H, W, 3) uint8
    low_image = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)  # (3, H, W)
    mask, mask_source = reference_foreground(low_image)
    info = {
        "subject": subject,
        "groups": groups.counts(),
        "lowlevel_groups": list(groups.lowlevel),
        "semantic_groups": list(groups.semantic),
        "lowlevel_voxels": int(low_mask.sum()),
        "semantic_voxels": int(sem_mask.sum()),
        "unused_voxels": int((~(low_mask | sem_mask)).sum()),
        "ablate": ablate,
        "mode": None if ablate is None else mode,
        "seed": seed,
        "decoder_trained": bool(getattr(decoder, "trained", False)),
        "clip_trained": bundle.clip_trained,
        "clip_source": bundle.clip_info.get("source"),
        "autoencoder_trained": vae.trained,
        "autoencoder_source": vae.source,
        "reference_mask": mask_source,
    }
    return Conditioning(tokens, tokens[0].copy(), low_image, mask, info)
