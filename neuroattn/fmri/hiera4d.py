"""A 4-D Hiera encoder over fMRI windows: mask-unit attention early, pooling between stages, global attention late."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from neuroattn.attention import Dense
from neuroattn.configs import dataclass_from_dict
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.nn.transformer import TransformerBlock

AXES = 4  # t, x, y, z


def _four(value: Any, name: str) -> tuple[int, int, int, int]:
    """A positive int per axis (t, x, y, z) from a 4-sequence."""
    items = tuple(int(v) for v in value)
    if len(items) != AXES or any(v < 1 for v in items):
        raise ConfigError(f"'{name}' must hold 4 positive ints (t, x, y, z). {value!r} was provided.")
    return items  # type: ignore[return-value]


@dataclass
class Hiera4DConfig:
    """Architecture of the 4-D Hiera encoder; defaults are SLIM-Brain's published encoder.

    A window ``(T, X, Y, Z)`` is cut into ``patch`` cubes, giving a token grid; ``mask_unit`` groups of
    tokens are the units that are kept or dropped together and the extent of the early (mask-unit)
    attention. Each stage after the first pools the tokens by ``pool`` per axis inside every unit and
    doubles width and heads, so a unit of ``mask_unit`` tokens shrinks to ``mask_unit / pool**(stages-1)``.
    """

    patch: tuple[int, int, int, int] = (1, 4, 4, 4)  # frames, voxels, voxels, voxels per token
    embed_dim: int = 64  # channels of stage 1; x2 per stage
    heads: int = 1  # attention heads of stage 1; x2 per stage
    stages: tuple[int, ...] = (2, 3, 16, 3)  # blocks per stage
    pool: tuple[int, int, int, int] = (2, 2, 2, 2)  # max-pool stride in t, x, y, z between stages
    mask_unit: tuple[int, int, int, int] = (8, 8, 8, 8)  # tokens per mask unit in t, x, y, z (stage 1)
    unit_attention_stages: int = 2  # the first stages attend only inside a mask unit (Hiera: 2 of 4)
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    drop_path: float = 0.0  # stochastic depth at the last block, linear from 0 (0 for JEPA pretraining)
    qk_norm: bool = False  # LayerNorm on q and k (off in Hiera)

    def __post_init__(self) -> None:
        self.patch = _four(self.patch, "patch")
        self.pool = _four(self.pool, "pool")
        self.mask_unit = _four(self.mask_unit, "mask_unit")
        self.stages = tuple(int(s) for s in self.stages)
        if not self.stages or any(s < 1 for s in self.stages):
            raise ConfigError(f"'stages' must be a non-empty tuple of positive ints. {self.stages!r} was provided.")
        if not 0 <= self.unit_attention_stages <= len(self.stages):
            raise ConfigError(
                f"'unit_attention_stages' must be in [0, {len(self.stages)}]. {self.unit_attention_stages!r} "
                "was provided."
            )
        shrink = [p ** (len(self.stages) - 1) for p in self.pool]
        if any(u % s for u, s in zip(self.mask_unit, shrink, strict=True)):
            raise ConfigError(
                f"'mask_unit' {self.mask_unit} must be divisible by pool**(stages - 1) = {tuple(shrink)} so every "
                "unit pools to whole tokens"
            )
        if self.embed_dim % (2 * AXES) or self.embed_dim % self.heads:
            raise ConfigError(
                f"'embed_dim' ({self.embed_dim}) must be divisible by 8 (4-D sin-cos positions) and by "
                f"'heads' ({self.heads})"
            )

    @property
    def dims(self) -> list[int]:
        """Token width of each stage."""
        return [self.embed_dim * 2**i for i in range(len(self.stages))]

    @property
    def stage_heads(self) -> list[int]:
        """Attention heads of each stage."""
        return [self.heads * 2**i for i in range(len(self.stages))]

    @property
    def out_dim(self) -> int:
        """Width of the embeddings ``forward_features`` returns."""
        return self.dims[-1]

    def unit_tokens(self, stage: int) -> tuple[int, int, int, int]:
        """Tokens per mask unit along t, x, y, z at ``stage`` (0-based)."""
        return tuple(u // p**stage for u, p in zip(self.mask_unit, self.pool, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hiera4DConfig:
        return dataclass_from_dict(cls, data)


def sincos_embedding(coords: Tensor, dim: int) -> Tensor:
    """Fixed sin-cos position embedding of integer coordinates, ``dim / rank`` channels per axis.

    Parameters
    ----------
    coords : ``(N, rank)`` coordinates.
    dim : output width, a multiple of ``2 * rank``.

    Returns
    -------
    ``(N, dim)`` float32 embedding (each axis: ``sin`` then ``cos`` of geometric frequencies, as in MAE).
    """
    rank = coords.shape[-1]
    per_axis = dim // rank
    if per_axis * rank != dim or per_axis % 2:
        raise ValueError(f"dim ({dim}) must be a multiple of 2 * rank ({2 * rank})")
    freqs = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float32, device=coords.device) / (per_axis // 2))
    angles = coords.to(torch.float32)[..., None] * freqs  # (N, rank, per_axis/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (N, dim)


def grid_coords(shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """``(prod(shape), len(shape))`` integer coordinates of a grid in raster order."""
    axes = [torch.arange(s, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))  # (N, rank)


class PatchEmbed4D(nn.Module):
    """Linear embedding of non-overlapping ``(pt, px, py, pz)`` patches of ``(B, T, X, Y, Z)`` windows."""

    def __init__(self, patch: tuple[int, int, int, int], dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(math.prod(patch), dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, X, Y, Z)`` → token grid ``(B, T/pt, X/px, Y/py, Z/pz, dim)``."""
        b, t, xs, ys, zs = x.shape
        pt, px, py, pz = self.patch
        x = x.reshape(b, t // pt, pt, xs // px, px, ys // py, py, zs // pz, pz)  # (B, Tt, pt, Xt, px, ...)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8).flatten(-4)  # (B, Tt, Xt, Yt, Zt, pt*px*py*pz)
        return self.proj(x)  # (B, Tt, Xt, Yt, Zt, dim)


def to_units(grid: Tensor, unit: tuple[int, int, int, int]) -> Tensor:
    """Token grid ``(B, Tt, Xt, Yt, Zt, C)`` → unit-major ``(B, U, N_u, C)``, units and their tokens in raster order."""
    b, tt, xt, yt, zt, c = grid.shape
    ut, ux, uy, uz = unit
    g = grid.reshape(b, tt // ut, ut, xt // ux, ux, yt // uy, uy, zt // uz, uz, c)  # (B, nT, uT, nX, uX, ...)
    g = g.permute(0, 1, 3, 5, 7, 2, 4, 6, 8, 9)  # (B, nT, nX, nY, nZ, uT, uX, uY, uZ, C)
    return g.reshape(b, -1, ut * ux * uy * uz, c)  # (B, U, N_u, C)


def pool_units(x: Tensor, unit: tuple[int, int, int, int], pool: tuple[int, int, int, int]) -> Tensor:
    """Max-pool the tokens of every unit by ``pool`` per axis: ``(B, K, N_u, C)`` → ``(B, K, N_u / prod(pool), C)``."""
    b, k, _, c = x.shape
    ut, ux, uy, uz = unit
    pt, px, py, pz = pool
    x = x.reshape(b, k, ut // pt, pt, ux // px, px, uy // py, py, uz // pz, pz, c)  # (B, K, uT/pt, pt, ...)
    x = x.amax(dim=(3, 5, 7, 9))  # (B, K, uT/pt, uX/px, uY/py, uZ/pz, C)
    return x.reshape(b, k, -1, c)  # (B, K, N_u', C)


class StageTransition(nn.Module):
    """Between stages: LayerNorm, a linear map to the wider stage, then max-pooling inside each mask unit.

    Hiera projects and max-pools the residual in the first block of a stage (with query pooling inside
    that block's attention); here the projection and pooling are one step before the stage's blocks, so
    every block stays a shared :class:`~neuroattn.nn.transformer.TransformerBlock`.
    """

    def __init__(self, dim_in: int, dim_out: int, unit: tuple[int, int, int, int], pool: tuple[int, int, int, int]):
        super().__init__()
        self.unit, self.pool = unit, pool
        self.norm = nn.LayerNorm(dim_in)
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, K, N_u, dim_in)`` → ``(B, K, N_u / prod(pool), dim_out)``."""
        return pool_units(self.proj(self.norm(x)), self.unit, self.pool)


@dataclass
class Hiera4DOutput:
    """What one encoder pass returns (``K`` = units it saw)."""

    units: Tensor  # (B, K, D) final-stage features of each unit (mean over its tokens), after the last norm
    keep: Tensor  # (B, K) indices of the units it saw, into the window's raster unit order
    stages: list[Tensor]  # per stage (B, K, N_u_s, C_s), only with return_stages=True
    unit_grid: tuple[int, int, int, int]  # units along t, x, y, z of the full window


class Hiera4D(nn.Module):
    """4-D Hiera encoder on ``(B, T, X, Y, Z)`` fMRI windows (SLIM-Brain stage 2).

    Tokens are kept unit-major, ``(B, K, N_u, C)``, so dropping mask units is an index ``gather`` before
    the first block: every later tensor holds only the kept units and memory scales with what is kept.
    Stages ``< unit_attention_stages`` attend inside each unit (Dense attention over the unit's gathered
    tokens); later stages attend globally over all kept tokens. Positions are fixed 4-D sin-cos
    embeddings of each token's place in the full window, added before any unit is dropped.
    """

    def __init__(self, config: Hiera4DConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or Hiera4DConfig()
        self.patch_embed = PatchEmbed4D(cfg.patch, cfg.embed_dim)
        total = sum(cfg.stages)
        rates = torch.linspace(0, cfg.drop_path, total).tolist() if total > 1 else [cfg.drop_path]
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        depth = 0
        for s, (blocks, dim, heads) in enumerate(zip(cfg.stages, cfg.dims, cfg.stage_heads, strict=True)):
            if s > 0:
                self.transitions.append(StageTransition(cfg.dims[s - 1], dim, cfg.unit_tokens(s - 1), cfg.pool))
            self.stages.append(
                nn.ModuleList(
                    TransformerBlock(
                        dim, heads, Dense(), cfg.mlp_ratio, drop_path=rates[depth + i], qk_norm=cfg.qk_norm
                    )
                    for i in range(blocks)
                )
            )
            depth += blocks
        self.norm = nn.LayerNorm(cfg.out_dim)

    @staticmethod
    def check_window(cfg: Hiera4DConfig, window: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Tokens along t, x, y, z of a ``(T, X, Y, Z)`` window; raises InvalidInputError when it does not tile."""
        step = [p * u for p, u in zip(cfg.patch, cfg.mask_unit, strict=True)]
        if len(window) != AXES or any(w % s for w, s in zip(window, step, strict=True)):
            raise InvalidInputError(
                f"window {tuple(window)} must be (T, X, Y, Z) with each axis a multiple of patch x mask_unit = "
                f"{tuple(step)}",
                None,
            )
        return tuple(w // p for w, p in zip(window, cfg.patch, strict=True))  # type: ignore[return-value]

    def token_grid(self, window: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Tokens along t, x, y, z of a ``(T, X, Y, Z)`` window (see :meth:`check_window`)."""
        return self.check_window(self.config, window)

    def unit_grid(self, window: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Mask units along t, x, y, z of a ``(T, X, Y, Z)`` window."""
        tokens = self.token_grid(window)
        return tuple(t // u for t, u in zip(tokens, self.config.mask_unit, strict=True))  # type: ignore[return-value]

    def embed(self, x: Tensor) -> Tensor:
        """Patch-embedded, position-encoded tokens of ``(B, T, X, Y, Z)`` windows, unit-major ``(B, U, N_u, C)``."""
        if x.dim() != 5:
            raise InvalidInputError(f"expected windows (B, T, X, Y, Z), got shape {tuple(x.shape)}", None)
        tokens = self.token_grid(tuple(x.shape[1:]))
        grid = self.patch_embed(x)  # (B, Tt, Xt, Yt, Zt, C)
        pos = sincos_embedding(grid_coords(tokens, x.device), self.config.embed_dim)  # (Tt*Xt*Yt*Zt, C)
        grid = grid + pos.reshape(*tokens, -1).to(grid.dtype)  # (B, Tt, Xt, Yt, Zt, C)
        return to_units(grid, self.config.mask_unit)  # (B, U, N_u, C)

    def forward(self, x: Tensor, keep: Tensor | None = None, *, return_stages: bool = False) -> Hiera4DOutput:
        """Encode windows, seeing only the units in ``keep``.

        Parameters
        ----------
        x : ``(B, T, X, Y, Z)`` windows.
        keep : ``(B, K)`` long indices of the units to encode (raster unit order); None = every unit.
        return_stages : also return each stage's output tokens.

        Returns
        -------
        :class:`Hiera4DOutput` with ``units`` ``(B, K, out_dim)``.
        """
        cfg = self.config
        units = self.embed(x)  # (B, U, N_u, C)
        b, n_units, _, c = units.shape
        if keep is None:
            keep = torch.arange(n_units, device=x.device).expand(b, n_units)  # (B, U)
        elif keep.dim() != 2 or keep.shape[0] != b:
            raise ValueError(f"keep must be (B={b}, K) unit indices, got shape {tuple(keep.shape)}")
        h = torch.gather(units, 1, keep[:, :, None, None].expand(-1, -1, units.shape[2], c))  # (B, K, N_u, C)
        k = h.shape[1]
        stages: list[Tensor] = []
        for s, blocks in enumerate(self.stages):
            if s > 0:
                h = self.transitions[s - 1](h)  # (B, K, N_u', C')
            n_u, width = h.shape[2], h.shape[3]
            unit_attention = s < cfg.unit_attention_stages
            # (B*K, N_u, C): attention inside each unit, or (B, K*N_u, C): global attention over kept tokens
            flat = h.reshape(b * k, n_u, width) if unit_attention else h.reshape(b, k * n_u, width)
            for block in blocks:
                flat = block(flat)
            h = flat.reshape(b, k, n_u, width)  # (B, K, N_u, C)
            if return_stages:
                stages.append(h)
        out = self.norm(h.mean(dim=2))  # (B, K, D)
        return Hiera4DOutput(units=out, keep=keep, stages=stages, unit_grid=self.unit_grid(tuple(x.shape[1:])))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, T, X, Y, Z)`` windows → ``(B, out_dim)`` embeddings (mean of the unit features of the full window)."""
        return self(x).units.mean(dim=1)  # (B, D)


__all__ = [
    "Hiera4D",
    "Hiera4DConfig",
    "Hiera4DOutput",
    "PatchEmbed4D",
    "StageTransition",
    "grid_coords",
    "pool_units",
    "sincos_embedding",
    "to_units",
]
