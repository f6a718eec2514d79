"""2.5D slices of volumes: robust intensity scaling and its inverse, stacks, whole-volume inference and plane fusion.

Volumes are channel-first ``(C, X, Y, Z)`` float arrays in RAS voxel order (C modalities; a 3-D ``(X, Y, Z)``
array is one channel). A *plane* names the slicing axis: ``axial`` slices along Z (images ``(X, Y)``),
``coronal`` along Y (``(X, Z)``), ``sagittal`` along X (``(Y, Z)``). A 2.5D stack of slice ``z`` holds slices
``z - k//2 ... z + k//2`` (indices clamped at the volume's ends, i.e. replicate padding), slice-major:
channel ``s * C + c`` is modality ``c`` of the ``s``-th slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.progress import progress_bar

PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"axial": 3, "coronal": 2, "sagittal": 1}  # slicing axis of a (C, X, Y, Z) array
FUSIONS = ("median", "mean")
DEFAULT_PERCENTILES = (0.5, 99.5)  # in-mask percentiles mapped to -1 and +1


def as_channels(volume: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` → ``(1, X, Y, Z)``; ``(C, X, Y, Z)`` unchanged; anything else is an error."""
    volume = np.asarray(volume)
    if volume.ndim == 3:
        return volume[None]  # (1, X, Y, Z)
    if volume.ndim == 4:
        return volume
    raise InvalidInputError(f"expected a (X, Y, Z) or (C, X, Y, Z) volume, got shape {volume.shape}", None)


def resolve_planes(planes: str | Sequence[str]) -> tuple[str, ...]:
    """``"axial"`` → ``("axial",)``; ``"all"`` or ``3`` → the three planes; a sequence is checked."""
    if isinstance(planes, int | str) and str(planes) in ("all", "3"):
        return PLANES
    names = (planes,) if isinstance(planes, str) else tuple(planes)
    bad = [p for p in names if p not in PLANES]
    if bad or not names:
        raise ConfigError(f"'planes' must be one of {[*PLANES, 'all']} or a list of them. {planes!r} was provided.")
    return names


# -- intensity scaling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntensityScaling:
    """Per-channel affine map of intensities ``[low, high]`` onto ``[-1, 1]``, exactly invertible (no clipping).

    ``scale(x) = 2 (x - low) / (high - low) - 1`` and ``unscale(y) = low + (y + 1) (high - low) / 2``, per
    channel. Values outside ``[low, high]`` go outside ``[-1, 1]``.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high):
            raise ValueError(f"low has {len(self.low)} channels, high {len(self.high)}")
        for lo, hi in zip(self.low, self.high, strict=True):
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ValueError(f"scaling needs finite low < high per channel, got low={self.low}, high={self.high}")

    @property
    def channels(self) -> int:
        return len(self.low)

    def _params(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.channels,) + (1,) * (ndim - 1)
        return np.reshape(self.low, shape), np.reshape(self.high, shape)

    def scale(self, volume: np.ndarray) -> np.ndarray:
        """``(C, ...)`` intensities → float32 ``(C, ...)`` with ``low → -1``, ``high → +1``."""
        volume = np.asarray(volume, dtype=np.float64)
        self._check(volume)
        low, high = self._params(volume.ndim)
        return (2.0 * (volume - low) / (high - low) - 1.0).astype(np.float32)

    def unscale(self, scaled: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`scale`: float32 ``(C, ...)`` back on the ``[low, high]`` intensity scale."""
        scaled = np.asarray(scaled, dtype=np.float64)
        self._check(scaled)
        low, high = self._params(scaled.ndim)
        return (low + (scaled + 1.0) * 0.5 * (high - low)).astype(np.float32)

    def _check(self, array: np.ndarray) -> None:
        if array.shape[0] != self.channels:
            raise ValueError(f"scaling has {self.channels} channel(s), array has shape {array.shape}")

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": [float(v) for v in self.low], "high": [float(v) for v in self.high]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntensityScaling:
        return cls(tuple(float(v) for v in data["low"]), tuple(float(v) for v in data["high"]))


def fit_scaling(
    volume: np.ndarray, mask: np.ndarray | None = None, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> IntensityScaling:
    """Robust per-channel scaling of one volume from its in-mask intensity percentiles.

    Parameters
    ----------
    volume : ``(C, X, Y, Z)`` or ``(X, Y, Z)``.
    mask : ``(X, Y, Z)`` brain mask (> 0.5 is inside); None uses every voxel.
    percentiles : the (low, high) percentiles mapped to -1 and +1.
    """
    vol = as_channels(volume)
    inside = np.ones(vol.shape[1:], dtype=bool) if mask is None else np.asarray(mask) > 0.5
    if inside.shape != vol.shape[1:]:
        raise InvalidInputError(f"mask has shape {inside.shape}, volume {vol.shape[1:]}", None)
    if not inside.any():
        raise InvalidInputError("the brain mask is empty", None)
    lows, highs = [], []
    for channel in vol:
        values = channel[inside].astype(np.float64)
        if not np.isfinite(values).all():
            raise InvalidInputError("the volume holds NaN or infinite values inside the mask", None)
        lo, hi = np.percentile(values, percentiles)
        if not hi > lo:  # a flat channel: keep the map invertible
            lo, hi = float(values.min()) - 0.5, float(values.max()) + 0.5
        lows.append(float(lo))
        highs.append(float(hi))
    return IntensityScaling(tuple(lows), tuple(highs))


def pool_scalings(scalings: Sequence[IntensityScaling]) -> IntensityScaling:
    """One site's scale: the per-channel median of its volumes' ``low`` and ``high``."""
    if not scalings:
        raise ValueError("pool_scalings needs at least one scaling")
    low = np.median([s.low for s in scalings], axis=0)
    high = np.median([s.high for s in scalings], axis=0)
    return IntensityScaling(tuple(float(v) for v in low), tuple(float(v) for v in high))


# -- slices and stacks ------------------------------------------------------------------------------------


def plane_view(volume: np.ndarray | torch.Tensor, plane: str) -> Any:
    """A view ``(C, H, W, D)`` of a ``(C, X, Y, Z)`` array with the slicing axis last (writes go through)."""
    axis = PLANE_AXIS[plane]
    if isinstance(volume, torch.Tensor):
        return volume.movedim(axis, -1)
    return np.moveaxis(volume, axis, -1)


def stack_indices(centres: np.ndarray | torch.Tensor, depth: int, context_slices: int) -> Any:
    """Slice indices of 2.5D stacks ``(N, context_slices)`` around ``centres``, clamped to ``[0, depth)``."""
    half = context_slices // 2
    if isinstance(centres, torch.Tensor):
        offsets = torch.arange(-half, half + 1, device=centres.device)
        return (centres[:, None] + offsets).clamp(0, depth - 1)
    offsets = np.arange(-half, half + 1)
    return np.clip(np.asarray(centres)[:, None] + offsets, 0, depth - 1)


def gather_stacks(view: torch.Tensor, centres: torch.Tensor, context_slices: int) -> torch.Tensor:
    """2.5D stacks from a ``(C, H, W, D)`` view: ``(N, context_slices * C, H, W)``, slice-major channels."""
    channels, depth = view.shape[0], view.shape[-1]
    idx = stack_indices(centres, depth, context_slices)  # (N, k)
    stacks = view[..., idx.reshape(-1)]  # (C, H, W, N*k)
    stacks = stacks.reshape(channels, *view.shape[1:3], len(centres), context_slices)  # (C, H, W, N, k)
    return stacks.permute(3, 4, 0, 1, 2).reshape(len(centres), context_slices * channels, *view.shape[1:3])


# -- whole-volume inference -------------------------------------------------------------------------------


@dataclass
class TranslatedVolume:
    """The result of :func:`translate_volume`."""

    data: np.ndarray  # same shape as the input volume, on the output scale
    planes: tuple[str, ...]
    per_plane: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # outputs before fusion ("all")
    consistency: dict[str, float] = field(default_factory=dict)  # see plane_consistency()


@torch.no_grad()
def translate_plane(
    generator: nn.Module,
    scaled: np.ndarray,
    plane: str,
    *,
    context_slices: int = 3,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Run ``generator`` on every slice of ``scaled`` ``(C, X, Y, Z)`` along ``plane``; returns ``(C, X, Y, Z)``.

    Edge slices see their missing neighbours replaced by the edge slice itself (replicate padding).
    """
    view = plane_view(torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)), plane).to(device)
    out = np.empty_like(scaled, dtype=np.float32)
    out_view = plane_view(out, plane)  # (C, H, W, D), writes land in out
    depth = view.shape[-1]
    starts = range(0, depth, batch_size)
    for start in progress_bar(starts, desc=f"{plane} slices", unit="batch", disable=not progress):
        centres = torch.arange(start, min(start + batch_size, depth), device=device)
        stacks = gather_stacks(view, centres, context_slices)  # (b, k*C, H, W)
        result = generator(stacks).float().cpu().numpy()  # (b, C, H, W)
        out_view[..., start : start + len(centres)] = np.moveaxis(result, 0, -1)  # (C, H, W, b)
    return out


def fuse_planes(outputs: Sequence[np.ndarray], method: str = "median") -> np.ndarray:
    """HACA3-style fusion of per-plane translations of one volume: voxel-wise median (default) or mean."""
    if method not in FUSIONS:
        raise ConfigError(f"'method' must be one of {list(FUSIONS)}. {method!r} was provided.")
    stacked = np.stack(outputs)  # (P, ...)
    fused = np.median(stacked, axis=0) if method == "median" else stacked.mean(axis=0)
    return fused.astype(np.float32)


def slice_jitter(volume: np.ndarray, mask: np.ndarray | None, plane: str) -> float:
    """Mean in-mask ``|x[d+1] - 2 x[d] + x[d-1]|`` along the slicing axis of ``plane``.

    Slice-by-slice inference that flickers between slices raises this second difference; compare it to the
    input's value. ``volume`` is ``(C, X, Y, Z)``; ``mask`` ``(X, Y, Z)`` (None = every voxel).
    """
    vol = plane_view(as_channels(volume).astype(np.float64), plane)  # (C, H, W, D)
    second = np.abs(vol[..., 2:] - 2 * vol[..., 1:-1] + vol[..., :-2])  # (C, H, W, D-2)
    if mask is None:
        return float(second.mean()) if second.size else 0.0
    inside = plane_view(np.asarray(mask)[None] > 0.5, plane)[..., 1:-1]  # (1, H, W, D-2)
    inside = np.broadcast_to(inside, second.shape)
    return float(second[inside].mean()) if inside.any() else 0.0


def plane_consistency(outputs: dict[str, np.ndarray], mask: np.ndarray | None) -> dict[str, float]:
    """How much slice-wise outputs agree: per-plane slice jitter and, for several planes, their spread.

    Keys: ``jitter_<plane>`` (:func:`slice_jitter` of that plane's output along its own slicing axis) and,
    with two or more planes, ``plane_std`` (mean in-mask standard deviation across the plane outputs).
    """
    stats = {f"jitter_{p}": slice_jitter(v, mask, p) for p, v in outputs.items()}
    if len(outputs) > 1:
        spread = np.stack(list(outputs.values())).astype(np.float64).std(axis=0)  # (C, X, Y, Z)
        if mask is not None:
            spread = spread[np.broadcast_to(np.asarray(mask)[None] > 0.5, spread.shape)]
        stats["plane_std"] = float(spread.mean()) if spread.size else 0.0
    return stats


def translate_volume(
    generator: nn.Module,
    volume: np.ndarray,
    mask: np.ndarray | None = None,
    scaling: IntensityScaling | None = None,
    *,
    output_scaling: IntensityScaling | None = None,
    planes: str | Sequence[str] = "axial",
    batch_size: int = 16,
    fusion: str = "median",
    context_slices: int = 3,
    background: float | None = 0.0,
    clip_input: bool = True,
    device: str | torch.device = "cpu",
    keep_planes: bool = False,
    progress: bool = False,
) -> TranslatedVolume:
    """Translate a whole volume slice by slice and rebuild it with exactly the input's shape.

    Parameters
    ----------
    generator : maps ``(B, context_slices * C, H, W)`` stacks in [-1, 1] to centre slices ``(B, C, H, W)``.
    volume : ``(X, Y, Z)`` or ``(C, X, Y, Z)`` intensities.
    mask : ``(X, Y, Z)`` brain mask; voxels outside are set to ``background`` in the output.
    scaling : the input's :class:`IntensityScaling`; None fits it from ``volume`` and ``mask``.
    output_scaling : maps the generator's [-1, 1] output back to intensities (the target site's pooled
        scaling for harmonization); None uses ``scaling``.
    planes : ``"axial"``, ``"coronal"``, ``"sagittal"``, ``"all"`` or a list; several are fused with ``fusion``.
    background : output value outside ``mask`` (None keeps the generator's output there).
    clip_input : saturate the scaled input at [-1, 1] as in training (the tails beyond the scaling's
        percentiles); False feeds it unclipped.
    keep_planes : also return each plane's unfused output.

    Returns
    -------
    TranslatedVolume
        ``data`` float32 with the input's shape; ``consistency`` from :func:`plane_consistency` on the
        output scale.
    """
    vol = as_channels(volume)
    if mask is not None and np.asarray(mask).shape != vol.shape[1:]:
        raise InvalidInputError(f"mask has shape {np.asarray(mask).shape}, volume {vol.shape[1:]}", None)
    if not np.isfinite(vol).all():
        raise InvalidInputError("the volume holds NaN or infinite values", None)
    names = resolve_planes(planes)
    scaling = fit_scaling(vol, mask) if scaling is None else scaling
    output_scaling = scaling if output_scaling is None else output_scaling
    scaled = scaling.scale(vol)  # (C, X, Y, Z)
    if clip_input:
        scaled = np.clip(scaled, -1.0, 1.0)
    was_training = generator.training
    generator.eval()
    try:
        outputs = {
            p: output_scaling.unscale(
                translate_plane(generator, scaled, p, context_slices=context_slices, batch_size=batch_size,
                                device=device, progress=progress)
            )
            for p in names
        }
    finally:
        generator.train(was_training)
    if mask is not None and background is not None:
        outside = np.broadcast_to(np.asarray(mask)[None] <= 0.5, vol.shape)
        for out in outputs.values():
            out[outside] = background
    fused = outputs[names[0]] if len(names) == 1 else fuse_planes(list(outputs.values()), fusion)
    consistency = plane_consistency(outputs, mask)
    if len(names) > 1:
        consistency["jitter_fused_" + names[0]] = slice_jitter(fused, mask, names[0])
    data = fused.reshape(np.shape(volume)).astype(np.float32)
    return TranslatedVolume(data, names, outputs if keep_planes else {}, consistency)


__all__ = [
    "DEFAULT_PERCENTILES",
    "PLANES",
    "IntensityScaling",
    "TranslatedVolume",
    "as_channels",
    "fit_scaling",
    "fuse_planes",
    "gather_stacks",
    "plane_consistency",
    "plane_view",
    "pool_scalings",
    "resolve_planes",
    "slice_jitter",
    "stack_indices",
    "translate_plane",
    "translate_volume",
]
