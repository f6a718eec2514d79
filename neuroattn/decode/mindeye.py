"""MindEye (Scotti et al. 2023): voxel MLP backbone to the CLIP token grid, retrieval projector, diffusion prior."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.decode.prior import DiffusionPrior, PriorConfig
from neuroattn.errors import ConfigError


@dataclass
class MindEyeConfig:
    """MindEye architecture and losses; defaults are the published NSD settings (ViT-L/14 tokens).

    ``n_voxels``, ``n_tokens`` and ``clip_dim`` come from the data; ``prior.n_tokens`` / ``prior.clip_dim``
    follow them.
    """

    n_voxels: int = 15724  # nsdgeneral voxels of NSD subject 1
    n_tokens: int = 257  # CLIP tokens L: CLS + 16 x 16 patches of ViT-L/14
    clip_dim: int = 768  # CLIP joint-space width D
    hidden_dim: int = 4096  # backbone width
    n_blocks: int = 4  # residual MLP blocks
    input_dropout: float = 0.5  # after the first linear layer
    block_dropout: float = 0.15  # inside each residual block
    projector_dim: int = 2048  # hidden width of the per-token retrieval projector
    prior: PriorConfig = field(default_factory=PriorConfig)
    # losses
    bimixco_fraction: float = 1 / 3  # leading share of training steps using BiMixCo, then SoftCLIP
    mixup_beta: float = 0.15  # Beta(a, a) of the mixup weights
    mixup_prob: float = 0.5  # probability that a sample is mixed during BiMixCo
    bimixco_temperature: float = 0.006
    softclip_temperature_start: float = 0.004  # SoftCLIP temperature, cosine-annealed over its steps
    softclip_temperature_end: float = 0.0075
    # total loss = contrastive + prior_weight * prior MSE; 30 is the published code's value for the 257-token
    # space (0.03 for the final-layer space; the paper writes the weight as alpha)
    prior_weight: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.prior, dict):
            self.prior = PriorConfig(**self.prior)
        self.prior.n_tokens, self.prior.clip_dim = self.n_tokens, self.clip_dim
        for name in ("n_voxels", "n_tokens", "clip_dim", "hidden_dim", "projector_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        if not isinstance(self.n_blocks, int) or self.n_blocks < 0:
            raise ConfigError(f"'n_blocks' must be a non-negative integer. {self.n_blocks!r} was provided.")
        if not 0.0 <= self.bimixco_fraction <= 1.0:
            raise ConfigError(f"'bimixco_fraction' must be in [0, 1]. {self.bimixco_fraction!r} was provided.")
        for name in ("bimixco_temperature", "softclip_temperature_start", "softclip_temperature_end", "mixup_beta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"'{name}' must be > 0. {getattr(self, name)!r} was provided.")
        if self.prior_weight < 0:
            raise ConfigError(f"'prior_weight' must be >= 0. {self.prior_weight!r} was provided.")

    @classmethod
    def tiny(cls, n_voxels: int, n_tokens: int, clip_dim: int, **overrides: Any) -> MindEyeConfig:
        """A small MindEye for CPU runs: width 256, 2 blocks, light dropout, a depth-2 prior.

        Its prior weight is 300: in a run of a few hundred steps the backbone must align its tokens with the
        prior's quickly, against a contrastive gradient that scales with 1 / temperature.
        """
        values: dict[str, Any] = {
            "hidden_dim": 256, "n_blocks": 2, "input_dropout": 0.1, "block_dropout": 0.1, "projector_dim": 256,
            "prior": PriorConfig.tiny(), "prior_weight": 300.0,
        }  # fmt: skip
        return cls(n_voxels=n_voxels, n_tokens=n_tokens, clip_dim=clip_dim, **(values | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MindEyeConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown MindEyeConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


class ResidualMlpBlock(nn.Module):
    """``x + drop(gelu(norm(linear(x))))``: one block of the MindEye backbone."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MindEyeBackbone(nn.Module):
    """Voxels ``(B, V)`` → CLIP token grid ``(B, L, D)``: linear, residual MLP blocks, linear."""

    def __init__(self, config: MindEyeConfig) -> None:
        super().__init__()
        c = config
        self.n_tokens, self.clip_dim = c.n_tokens, c.clip_dim
        self.stem = nn.Sequential(
            nn.Linear(c.n_voxels, c.hidden_dim), nn.LayerNorm(c.hidden_dim), nn.GELU(), nn.Dropout(c.input_dropout)
        )
        self.blocks = nn.Sequential(*(ResidualMlpBlock(c.hidden_dim, c.block_dropout) for _ in range(c.n_blocks)))
        self.head = nn.Linear(c.hidden_dim, c.n_tokens * c.clip_dim)

    def forward(self, voxels: Tensor) -> Tensor:
        x = self.blocks(self.stem(voxels))  # (B, hidden)
        return self.head(x).unflatten(-1, (self.n_tokens, self.clip_dim))  # (B, L, D)


class Projector(nn.Module):
    """Per-token MLP head ``(B, L, D) → (B, L, D)`` for contrastive retrieval (MindEye's projector)."""

    def __init__(self, clip_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(clip_dim), nn.GELU(), nn.Linear(clip_dim, hidden_dim),
            nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, clip_dim),
        )  # fmt: skip

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)


class MindEye(nn.Module):
    """Backbone (voxels → CLIP tokens), projector (retrieval head) and diffusion prior (tokens → CLIP tokens).

    ``forward_features`` gives the backbone tokens the prior is conditioned on; ``embed`` gives the
    L2-normalised flattened projector output, the retrieval-space embedding.
    """

    def __init__(self, config: MindEyeConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MindEyeBackbone(config)
        self.projector = Projector(config.clip_dim, config.projector_dim)
        self.prior = DiffusionPrior(config.prior)

    def _check(self, voxels: Tensor) -> None:
        if voxels.ndim != 2 or voxels.shape[1] != self.config.n_voxels:
            raise ValueError(f"expected voxels (B, {self.config.n_voxels}), got shape {tuple(voxels.shape)}")

    def forward_features(self, voxels: Tensor) -> Tensor:
        """Backbone tokens ``(B, L, D)`` of voxels ``(B, V)``."""
        self._check(voxels)
        return self.backbone(voxels)

    def forward(self, voxels: Tensor) -> tuple[Tensor, Tensor]:
        """``(backbone tokens (B, L, D), projected tokens (B, L, D))``."""
        tokens = self.forward_features(voxels)
        return tokens, self.projector(tokens)

    def embed(self, voxels: Tensor) -> Tensor:
        """Retrieval embeddings ``(B, L*D)``, each row L2-normalised."""
        return F.normalize(self(voxels)[1].flatten(1), dim=-1)  # (B, L*D)

    @torch.no_grad()
    def predict_clip(
        self, voxels: Tensor, steps: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """CLIP tokens ``(B, L, D)`` sampled by the prior from the backbone tokens."""
        return self.prior.sample(self.forward_features(voxels), steps=steps, generator=generator)


__all__ = ["MindEye", "MindEyeBackbone", "MindEyeConfig", "Projector", "ResidualMlpBlock"]
