"""MindEye's contrastive objectives: voxel mixup, BiMixCo, SoftCLIP and the schedule that switches between them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PHASES = ("bimixco", "softclip")


@dataclass
class MixupBatch:
    """Voxels after mixup and what the BiMixCo targets need to know about the mixing."""

    voxels: Tensor  # (B, V) mixed voxels
    perm: Tensor  # (B,) int64, the partner of each sample
    betas: Tensor  # (B,) weight of each sample's own voxels (1 where it was not mixed)
    select: Tensor  # (B,) bool, True where the sample was mixed


def mixup_voxels(
    voxels: Tensor, *, beta: float = 0.15, mix_prob: float = 0.5, generator: torch.Generator | None = None,
    groups: Tensor | None = None,
) -> MixupBatch:
    """MixCo on voxels: ``x_i <- b_i x_i + (1 - b_i) x_perm(i)`` for a random half of the batch.

    Parameters
    ----------
    voxels : ``(B, V)`` voxel responses (not modified).
    beta : both parameters of the Beta distribution the mixing weights ``b_i`` are drawn from (0.15 published,
        so most weights lie near 0 or 1).
    mix_prob : probability that a sample is mixed (0.5 published); unmixed samples get ``b_i = 1``.
    generator : torch generator on the voxels' device for the permutation and the selection; the Beta draw
        uses the global stream (torch distributions take no generator).
    groups : ``(B,)`` labels; each sample's partner comes from its own group (e.g. the same subject's voxels).

    Returns
    -------
    :class:`MixupBatch`.
    """
    n = voxels.shape[0]
    device = voxels.device
    if groups is None:
        perm = torch.randperm(n, generator=generator, device=device)
    else:
        perm = torch.arange(n, device=device)
        for label in torch.unique(groups):
            rows = torch.nonzero(groups == label).flatten()  # (b,)
            perm[rows] = rows[torch.randperm(len(rows), generator=generator, device=device)]
    betas = torch.distributions.Beta(beta, beta).sample((n,)).to(device=device, dtype=voxels.dtype)
    select = torch.rand(n, generator=generator, device=device) <= mix_prob
    betas = torch.where(select, betas, torch.ones_like(betas))
    mixed = voxels * betas[:, None] + voxels[perm] * (1 - betas[:, None])  # (B, V)
    return MixupBatch(voxels=mixed, perm=perm, betas=betas, select=select)


def mixup_targets(perm: Tensor, betas: Tensor) -> Tensor:
    """BiMixCo target matrix ``(B, B)``: row ``i`` puts ``b_i`` on ``i`` and ``1 - b_i`` on ``perm[i]``.

    The two weights are added, so a sample paired with itself keeps a row summing to one (the published code
    overwrote the diagonal there instead).
    """
    n = perm.shape[0]
    probs = torch.diag(betas)  # (B, B)
    return probs.index_put((torch.arange(n, device=perm.device), perm), 1 - betas, accumulate=True)


def _normalized(x: Tensor) -> Tensor:
    """``(B, ...)`` → ``(B, E)`` flattened, each row L2-normalised, computed in float32 or wider."""
    flat = x.flatten(1)  # (B, E)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.normalize(flat, dim=-1)


def bimixco_loss(
    preds: Tensor, targets: Tensor, perm: Tensor, betas: Tensor, *, temperature: float = 0.006,
    bidirectional: bool = True,
) -> Tensor:
    """BiMixCo: contrastive cross-entropy whose targets are the mixup weights, brain→image and image→brain.

    Parameters
    ----------
    preds : ``(B, ...)`` brain embeddings of the mixed voxels; flattened and L2-normalised here.
    targets : ``(B, ...)`` CLIP targets of the unmixed samples; flattened and L2-normalised here.
    perm, betas : from :func:`mixup_voxels`.
    temperature : logit temperature (0.006 published).

    Returns
    -------
    Scalar ``-mean_i sum_j P_ij log softmax_j(S_ij / tau)``, averaged with the same on ``S^T`` and ``P^T``.
    """
    logits = _normalized(preds) @ _normalized(targets).T / temperature  # (B, B)
    probs = mixup_targets(perm, betas.to(logits.dtype))
    loss = -(logits.log_softmax(-1) * probs).sum(-1).mean()
    if bidirectional:
        loss = (loss - (logits.T.log_softmax(-1) * probs.T).sum(-1).mean()) / 2
    return loss


def soft_clip_loss(preds: Tensor, targets: Tensor, *, temperature: float = 0.005) -> Tensor:
    """SoftCLIP: cross-entropy of brain→image logits against the softmax of the CLIP–CLIP similarities.

    Parameters
    ----------
    preds, targets : ``(B, ...)``; flattened and L2-normalised here.
    temperature : shared by the logits and the soft targets (annealed 0.004 → 0.0075 in MindEye).

    Returns
    -------
    Scalar, the mean of the brain→image and image→brain terms; the soft targets ``softmax(T T^T / tau)`` are
    symmetric so both directions use the same rows.
    """
    p, t = _normalized(preds), _normalized(targets)
    soft = (t @ t.T / temperature).softmax(-1)  # (B, B)
    logits = p @ t.T / temperature  # (B, B)
    loss_b2i = -(logits.log_softmax(-1) * soft).sum(-1).mean()
    loss_i2b = -(logits.T.log_softmax(-1) * soft).sum(-1).mean()
    return (loss_b2i + loss_i2b) / 2


def cosine_anneal(start: float, end: float, fraction: float) -> float:
    """Value at ``fraction`` in [0, 1] of a half-cosine from ``start`` (0) to ``end`` (1)."""
    fraction = min(max(fraction, 0.0), 1.0)
    return start + (end - start) * (1 - math.cos(math.pi * fraction)) / 2


def bimixco_steps(max_steps: int, bimixco_fraction: float) -> int:
    """Number of leading steps trained with BiMixCo (the rest use SoftCLIP)."""
    return round(bimixco_fraction * max_steps)


def contrastive_phase(step: int, max_steps: int, bimixco_fraction: float) -> str:
    """``"bimixco"`` for 0-based steps before ``bimixco_fraction * max_steps``, else ``"softclip"``."""
    return PHASES[0] if step < bimixco_steps(max_steps, bimixco_fraction) else PHASES[1]


def softclip_temperature(step: int, max_steps: int, bimixco_fraction: float, start: float, end: float) -> float:
    """SoftCLIP temperature at ``step``: cosine-annealed from ``start`` to ``end`` over the SoftCLIP steps."""
    first = bimixco_steps(max_steps, bimixco_fraction)
    span = max(max_steps - first - 1, 1)
    return cosine_anneal(start, end, (step - first) / span)


__all__ = [
    "PHASES",
    "MixupBatch",
    "bimixco_loss",
    "bimixco_steps",
    "contrastive_phase",
    "cosine_anneal",
    "mixup_targets",
    "mixup_voxels",
    "soft_clip_loss",
    "softclip_temperature",
]
