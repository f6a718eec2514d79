"""Explicit boolean masks over flattened tokens: the definition of each pattern (True = query may attend key)."""

from __future__ import annotations

import functools
import math

import torch

from neuroattn.attention.cache import ByteLRU
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Neighborhood, Window

MASK_CACHE = ByteLRU(max_bytes=1 << 30, max_items=16)  # (N, N) masks for the sdpa backend, per shape and device


def neighborhood_keys_1d(length: int, kernel: int, dilation: int = 1, causal: bool = False) -> list[list[int]]:
    """Keys each query sees along one axis, in NATTEN's semantics, written out one query at a time.

    A query ``i`` belongs to dilation group ``i % dilation``, the tokens ``g, g + d, g + 2d, ...``. Inside
    that group it sits at position ``p = i // dilation``. Non-causal: the ``kernel`` group members starting
    at ``clamp(p - kernel // 2, 0, len(group) - kernel)``. Causal: the members ``p - kernel + 1 ... p`` that
    exist.
    """
    keys = []
    for i in range(length):
        g, p = i % dilation, i // dilation
        group_length = len(range(g, length, dilation))
        if causal:
            members = range(max(p - kernel + 1, 0), p + 1)
        else:
            start = min(max(p - kernel // 2, 0), group_length - kernel)
            members = range(start, start + kernel)
        keys.append([g + m * dilation for m in members])
    return keys


@functools.lru_cache(maxsize=256)
def neighborhood_axis_mask(length: int, kernel: int, dilation: int = 1, causal: bool = False) -> torch.Tensor:
    """(L, L) bool: query row may attend key column along one axis (see ``neighborhood_keys_1d``)."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    for i, keys in enumerate(neighborhood_keys_1d(length, kernel, dilation, causal)):
        mask[i, keys] = True
    return mask


@functools.lru_cache(maxsize=256)
def window_axis_mask(length: int, size: int, shift: int = 0) -> torch.Tensor:
    """(L, L) bool: same shifted window along one axis.

    In the original coordinates the shifted windows start at ``shift + m * size``; the partial windows at
    both ends (``[0, shift)`` and ``[L - size + shift, L)``) stay apart, which is what Swin's region mask
    enforces after its cyclic roll.
    """
    pos = torch.arange(length)
    segment = torch.div(pos - shift, size, rounding_mode="floor")  # (L,)
    return segment[:, None] == segment[None, :]


def axis_masks(spec: AttentionSpec, spatial: tuple[int, ...]) -> list[torch.Tensor]:
    """Per-axis (L_a, L_a) masks of a separable pattern (Neighborhood, Window)."""
    if isinstance(spec, Neighborhood):
        kernels, dilations, causals = spec.resolve(spatial)
        return [
            neighborhood_axis_mask(n, k, d, c) for n, k, d, c in zip(spatial, kernels, dilations, causals, strict=True)
        ]
    if isinstance(spec, Window):
        sizes, shifts = spec.resolve(spatial)
        return [window_axis_mask(n, s, t) for n, s, t in zip(spatial, sizes, shifts, strict=True)]
    raise ValueError(f"{type(spec).__name__} is not a separable per-axis pattern")


def combine_axis_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """AND of per-axis masks over the row-major flattened grid: (N, N) with N = prod(L_a)."""
    n = len(masks)
    full = None
    for a, m in enumerate(masks):
        shape = [1] * (2 * n)
        shape[a], shape[n + a] = m.shape
        part = m.reshape(shape)
        full = part if full is None else full & part  # (L1, .., Ln, L1, .., Ln) after broadcasting
    size = math.prod(m.shape[0] for m in masks)
    return full.reshape(size, size)


def axial_axis_masks(spatial: tuple[int, ...]) -> list[torch.Tensor]:
    """For each axis, the (N, N) mask 'same coordinates on every other axis' (full attention along that axis)."""
    n = len(spatial)
    result = []
    for a in range(n):
        parts = [torch.eye(length, dtype=torch.bool) for length in spatial]
        parts[a] = torch.ones(spatial[a], spatial[a], dtype=torch.bool)
        result.append(combine_axis_masks(parts))
    return result


def token_mask(
    spec: AttentionSpec, spatial: tuple[int, ...], device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """(N, N) bool mask for ``spec`` on ``spatial`` (None when every pair attends), cached per shape and device."""
    device = torch.device(device)
    if isinstance(spec, Dense):
        if not spec.causal:
            return None
        n = math.prod(spatial)
        return MASK_CACHE.get_or_create(
            ("causal", n, str(device)),
            lambda: torch.ones(n, n, dtype=torch.bool, device=device).tril(),
        )
    if isinstance(spec, Neighborhood | Window):
        return MASK_CACHE.get_or_create(
            (spec, spatial, str(device)),
            lambda: combine_axis_masks([m.to(device) for m in axis_masks(spec, spatial)]),
        )
    if isinstance(spec, Axial):
        raise ValueError("Axial attention is a sum of per-axis attentions, not one mask; use axial_axis_masks")
    raise ValueError(f"{type(spec).__name__} attention has no token mask")
