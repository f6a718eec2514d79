"""Attention pattern specs (Dense, Neighborhood, Window, Axial, Linear) and their validation against a token grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

IntOrTuple: TypeAlias = int | tuple[int, ...]
BoolOrTuple: TypeAlias = bool | tuple[bool, ...]

FEATURE_MAPS = ("elu",)
MAX_SPATIAL_AXES = 4  # 1-D sequences, 2-D slices, 3-D volumes, 4-D space-time


def _as_int_tuple(value: IntOrTuple, name: str) -> tuple[int, ...]:
    """Normalise an int or a tuple of ints; raise ValueError naming ``name`` when it is neither."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, tuple | list) or not items:
        raise ValueError(f"{name} must be an int or a non-empty tuple of ints, got {value!r}")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise ValueError(f"{name} must contain only ints, got {value!r}")
    return tuple(int(x) for x in items)


def _as_bool_tuple(value: BoolOrTuple, name: str) -> tuple[bool, ...]:
    items = (value,) if isinstance(value, bool) else value
    if not isinstance(items, tuple | list) or not items or not all(isinstance(x, bool) for x in items):
        raise ValueError(f"{name} must be a bool or a non-empty tuple of bools, got {value!r}")
    return tuple(items)


def _per_axis(values: tuple, n_axes: int, name: str) -> tuple:
    """Broadcast a length-1 tuple to ``n_axes`` axes; any other length must match exactly."""
    if len(values) == 1:
        return values * n_axes
    if len(values) != n_axes:
        raise ValueError(
            f"{name} has {len(values)} entries but the input has {n_axes} spatial axes; "
            f"give one value or exactly {n_axes}"
        )
    return values


@dataclass(frozen=True)
class Dense:
    """Full attention of every query to every key (optionally causal over the flattened token order)."""

    causal: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.causal, bool):
            raise ValueError(f"Dense.causal must be a bool, got {self.causal!r}")


@dataclass(frozen=True)
class Neighborhood:
    """Neighborhood attention with NATTEN semantics, per spatial axis.

    Non-causal axis of length ``L``, kernel ``k`` (odd), dilation ``d``: tokens are split into ``d``
    dilation groups (same index mod ``d``); inside its group of length ``Lg`` a query at group position ``i``
    sees the ``k`` group positions starting at ``clamp(i - k // 2, 0, Lg - k)`` -- the window is shifted at
    the borders so every query sees exactly ``k`` keys along the axis. Causal axis: the query sees group
    positions ``i - k + 1 ... i`` that exist (fewer than ``k`` near the start, never future ones), so even
    kernels are allowed there. Across axes the patterns combine by logical AND.
    """

    kernel_size: IntOrTuple
    dilation: IntOrTuple = 1
    causal: BoolOrTuple = False

    def __post_init__(self) -> None:
        kernels = _as_int_tuple(self.kernel_size, "Neighborhood.kernel_size")
        dilations = _as_int_tuple(self.dilation, "Neighborhood.dilation")
        causals = _as_bool_tuple(self.causal, "Neighborhood.causal")
        if any(k < 1 for k in kernels):
            raise ValueError(f"Neighborhood.kernel_size must be >= 1, got {self.kernel_size!r}")
        if any(d < 1 for d in dilations):
            raise ValueError(f"Neighborhood.dilation must be >= 1, got {self.dilation!r}")
        n = max(len(kernels), len(dilations), len(causals))
        for name, values in (("kernel_size", kernels), ("dilation", dilations), ("causal", causals)):
            if len(values) not in (1, n):
                raise ValueError(f"Neighborhood.{name} has {len(values)} entries but another argument has {n}")
        for k, c in zip(_per_axis(kernels, n, "kernel_size"), _per_axis(causals, n, "causal"), strict=True):
            if k % 2 == 0 and not c:
                raise ValueError(
                    f"Neighborhood.kernel_size must be odd on non-causal axes (a centred window needs one), got {k}"
                )

    def resolve(self, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
        """Per-axis (kernel, dilation, causal) for a token grid, raising ValueError when it does not fit."""
        n = len(spatial)
        kernels = _per_axis(_as_int_tuple(self.kernel_size, "kernel_size"), n, "Neighborhood.kernel_size")
        dilations = _per_axis(_as_int_tuple(self.dilation, "dilation"), n, "Neighborhood.dilation")
        causals = _per_axis(_as_bool_tuple(self.causal, "causal"), n, "Neighborhood.causal")
        for axis, (length, k, d) in enumerate(zip(spatial, kernels, dilations, strict=True)):
            if k > length:
                raise ValueError(f"Neighborhood kernel_size {k} is larger than spatial axis {axis} of length {length}")
            if k * d > length:
                raise ValueError(
                    f"Neighborhood kernel_size x dilation = {k}x{d} = {k * d} is larger than spatial axis {axis} "
                    f"of length {length}"
                )
        return kernels, dilations, causals


@dataclass(frozen=True)
class Window:
    """Non-overlapping window attention with an optional cyclic (Swin) shift per axis.

    The grid is rolled by ``-shift``, cut into windows of ``size`` tokens per axis, attention runs inside
    each window with the Swin region mask (tokens that wrapped around the border never attend to tokens
    that did not), and the result is rolled back. Equivalently, in the original coordinates the windows
    start at ``shift + m * size`` and the partial windows at both borders stay separate.
    """

    size: IntOrTuple
    shift: IntOrTuple = 0

    def __post_init__(self) -> None:
        sizes = _as_int_tuple(self.size, "Window.size")
        shifts = _as_int_tuple(self.shift, "Window.shift")
        if any(s < 1 for s in sizes):
            raise ValueError(f"Window.size must be >= 1, got {self.size!r}")
        if any(s < 0 for s in shifts):
            raise ValueError(f"Window.shift must be >= 0, got {self.shift!r}")
        n = max(len(sizes), len(shifts))
        for name, values in (("size", sizes), ("shift", shifts)):
            if len(values) not in (1, n):
                raise ValueError(f"Window.{name} has {len(values)} entries but another argument has {n}")
        for size, shift in zip(_per_axis(sizes, n, "size"), _per_axis(shifts, n, "shift"), strict=True):
            if shift >= size:
                raise ValueError(f"Window.shift {shift} must be smaller than the window size {size}")

    def resolve(self, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-axis (size, shift) for a token grid, raising ValueError when the windows do not tile it."""
        n = len(spatial)
        sizes = _per_axis(_as_int_tuple(self.size, "size"), n, "Window.size")
        shifts = _per_axis(_as_int_tuple(self.shift, "shift"), n, "Window.shift")
        for axis, (length, size) in enumerate(zip(spatial, sizes, strict=True)):
            if length % size != 0:
                raise ValueError(f"Window size {size} does not divide spatial axis {axis} of length {length}")
        return sizes, shifts


@dataclass(frozen=True)
class Axial:
    """Axial attention: full attention along each spatial axis separately, on the same q/k/v.

    The per-axis outputs are summed and divided by the number of axes (parallel axial attention, one
    softmax per axis), so for one spatial axis it equals dense attention.
    """


@dataclass(frozen=True)
class Linear:
    """Kernelized linear attention (Katharopoulos et al. 2020), O(N) in the number of tokens, non-causal.

    ``out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j))`` with ``phi(x) = elu(x) + 1``.
    An explicit ``scale`` multiplies the queries before the feature map; by default none is applied.
    """

    feature_map: str = "elu"

    def __post_init__(self) -> None:
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"Linear.feature_map must be one of {list(FEATURE_MAPS)}. {self.feature_map!r} was provided."
            )


AttentionSpec: TypeAlias = Dense | Neighborhood | Window | Axial | Linear
SPEC_TYPES = (Dense, Neighborhood, Window, Axial, Linear)


def check_spec(spec: object, q_spatial: tuple[int, ...], kv_spatial: tuple[int, ...]) -> None:
    """Raise ValueError when ``spec`` is not a spec or does not fit the query/key token grids."""
    if not isinstance(spec, SPEC_TYPES):
        names = [t.__name__ for t in SPEC_TYPES]
        raise ValueError(f"spec must be one of {names}. {type(spec).__name__} was provided.")
    if not 1 <= len(q_spatial) <= MAX_SPATIAL_AXES:
        raise ValueError(f"inputs need 1 to {MAX_SPATIAL_AXES} spatial axes, got {len(q_spatial)}: {q_spatial}")
    if isinstance(spec, Dense):
        if spec.causal and math.prod(q_spatial) != math.prod(kv_spatial):
            raise ValueError(
                f"Dense(causal=True) needs as many keys as queries, got {math.prod(q_spatial)} queries "
                f"and {math.prod(kv_spatial)} keys"
            )
        return
    if isinstance(spec, Linear):
        return
    if q_spatial != kv_spatial:
        raise ValueError(
            f"{type(spec).__name__} attention needs q and k/v on the same token grid, got {q_spatial} and {kv_spatial}"
        )
    if isinstance(spec, Neighborhood | Window):
        spec.resolve(q_spatial)
