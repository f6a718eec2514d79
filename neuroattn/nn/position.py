"""Positional encodings for attention on grids: rotary embeddings (1-D or per-axis) and a learned relative bias."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

ROPE_MODES = ("1d", "axial")


def _axis_pairs(pairs: int, rank: int) -> list[int]:
    """Split ``pairs`` rotation pairs over ``rank`` axes as evenly as possible (first axes get the remainder)."""
    return [pairs // rank + (1 if a < pairs % rank else 0) for a in range(rank)]


def rope_angles(
    spatial_shape: Sequence[int],
    head_dim: int,
    *,
    mode: str = "axial",
    base: float = 10000.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Rotation angles (radians, float64) of every grid position for rotary embeddings.

    Parameters
    ----------
    spatial_shape : grid shape ``(*S)``; a flat sequence is ``(N,)``.
    head_dim : per-head channel count; must be even (channels rotate in interleaved pairs ``(2j, 2j+1)``).
    mode : ``"1d"`` numbers the positions in raster order and rotates every pair by ``index * base**(-j/P)``;
        ``"axial"`` gives each spatial axis its own contiguous block of pairs (as even a split as possible),
        rotated by the coordinate along that axis, so scores depend only on the per-axis offset.
    base : frequency base (10000 in RoFormer).

    Returns
    -------
    Tensor of shape ``(*S, head_dim // 2)``.
    """
    if mode not in ROPE_MODES:
        raise ValueError(f"'mode' must be one of {list(ROPE_MODES)}. {mode!r} was provided.")
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim; got {head_dim}")
    shape = tuple(int(s) for s in spatial_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"spatial_shape must be a non-empty tuple of positive sizes; got {shape}")
    pairs = head_dim // 2
    if mode == "1d":
        pos = torch.arange(math.prod(shape), dtype=torch.float64, device=device)  # (N,)
        inv_freq = base ** (-torch.arange(pairs, dtype=torch.float64, device=device) / pairs)  # (P,)
        return (pos[:, None] * inv_freq[None, :]).reshape(*shape, pairs)  # (*S, P)
    rank = len(shape)
    if pairs < rank:
        raise ValueError(f"axial rotary embeddings need head_dim >= 2 * rank = {2 * rank}; got {head_dim}")
    coords = torch.meshgrid(*[torch.arange(s, dtype=torch.float64, device=device) for s in shape], indexing="ij")
    blocks = []
    for axis, m in enumerate(_axis_pairs(pairs, rank)):
        inv_freq = base ** (-torch.arange(m, dtype=torch.float64, device=device) / m)  # (m,)
        blocks.append(coords[axis][..., None] * inv_freq)  # (*S, m)
    return torch.cat(blocks, dim=-1)  # (*S, P)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs of ``x`` by the given angles.

    Parameters
    ----------
    x : ``(..., *S, head_dim)``.
    cos, sin : ``(*S, head_dim // 2)``, broadcast over the leading dimensions.

    Returns
    -------
    Tensor shaped like ``x``, same dtype.
    """
    pairs = x.unflatten(-1, (-1, 2))  # (..., *S, P, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]  # (..., *S, P) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., *S, P, 2)
    return rotated.flatten(-2)  # (..., *S, head_dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding applied to queries and keys laid out as ``(B, heads, *S, head_dim)``.

    The angle table is computed in float64 once per grid shape and device and kept in a small cache
    (not in the state dict: it has no learned part).
    """

    def __init__(self, head_dim: int, mode: str = "axial", base: float = 10000.0) -> None:
        super().__init__()
        if mode not in ROPE_MODES:
            raise ValueError(f"'rope' must be one of {[None, *ROPE_MODES]}. {mode!r} was provided.")
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim; got {head_dim}")
        self.head_dim, self.mode, self.base = head_dim, mode, base
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def tables(self, spatial_shape: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
        """Return ``(cos, sin)`` of shape ``(*S, head_dim // 2)`` in float32 on ``device``."""
        key = (tuple(spatial_shape), str(device))
        if key not in self._cache:
            angles = rope_angles(spatial_shape, self.head_dim, mode=self.mode, base=self.base, device=device)
            self._cache[key] = (angles.cos().float(), angles.sin().float())
        return self._cache[key]

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` and ``k`` (``(B, h, *S, head_dim)``, possibly different head counts) by position."""
        spatial = tuple(q.shape[2:-1])
        cos, sin = self.tables(spatial, q.device)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, mode={self.mode!r}, base={self.base}"


def _as_tuple(value: int | Sequence[int], rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ValueError(f"{name} has {len(value)} entries but the grid has rank {rank}")
    return value


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by the per-axis offset between query and key (Swin / NATTEN style).

    Offsets along axis ``a`` are measured in units of ``step[a]`` (the dilation for neighborhood attention,
    1 for windows) and cover ``[-(extent[a]-1), extent[a]-1]``, so the table has shape
    ``(heads, *(2 * extent - 1))``. Pairs whose offset falls outside the table must be masked out by the
    caller's pattern; they get index 0 here and are never used.

    Parameters
    ----------
    heads : number of attention heads.
    extent : kernel or window size per axis.
    step : offset unit per axis (dilation).
    """

    def __init__(self, heads: int, extent: Sequence[int], step: Sequence[int] | None = None) -> None:
        super().__init__()
        self.extent = tuple(int(e) for e in extent)
        self.step = tuple(int(s) for s in step) if step is not None else (1,) * len(self.extent)
        if len(self.step) != len(self.extent):
            raise ValueError(f"step has {len(self.step)} entries but extent has {len(self.extent)}")
        self.table = nn.Parameter(torch.zeros(heads, *[2 * e - 1 for e in self.extent]))  # (h, *(2E-1))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, coords: Tensor) -> Tensor:
        """Bias for every query/key pair from integer coordinates in the frame where offsets are measured.

        Parameters
        ----------
        coords : ``(N, rank)`` integer coordinates of the N tokens in raster order.

        Returns
        -------
        Tensor ``(heads, N, N)``.
        """
        rank = len(self.extent)
        if coords.shape[-1] != rank:
            raise ValueError(f"relative position bias was built for rank {rank}; the grid has rank {coords.shape[-1]}")
        delta = coords[:, None, :] - coords[None, :, :]  # (N, N, rank)
        step = torch.tensor(self.step, device=coords.device)
        extent = torch.tensor(self.extent, device=coords.device)
        index = torch.div(delta, step, rounding_mode="floor") + extent - 1  # (N, N, rank)
        inside = ((delta % step) == 0).all(-1) & ((index >= 0) & (index <= 2 * extent - 2)).all(-1)  # (N, N)
        index = torch.where(inside[..., None], index, torch.zeros_like(index))
        sizes = [2 * e - 1 for e in self.extent]
        flat = torch.zeros_like(index[..., 0])  # (N, N)
        for a in range(rank):
            flat = flat * sizes[a] + index[..., a]
        return self.table.flatten(1)[:, flat]  # (h, N, N)

    def extra_repr(self) -> str:
        return f"heads={self.table.shape[0]}, extent={self.extent}, step={self.step}"
