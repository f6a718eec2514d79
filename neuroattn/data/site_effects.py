"""Known scanner effects for synthetic sites: contrast, slice thickness, blur, bias field, intensity curve, noise."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

# Ranges non-reference sites draw from (uniform unless said otherwise).
BIAS_AMPLITUDE_RANGE = (0.15, 0.35)  # max |log bias| over the grid: ±16 % to ±42 % intensity
LOG_GAIN_RANGE = (0.20, 0.50)  # |log gain|, sign random: gain in [0.61, 0.82] or [1.22, 1.65]
# |log gamma|; its sign opposes the gain's so that, for intensities below 1, curve and gain push the same way
# and never cancel back to the reference: gamma in [0.70, 0.86] with gain > 1, in [1.16, 1.42] with gain < 1.
LOG_GAMMA_RANGE = (0.15, 0.35)
CONTRAST_RANGE = (0.85, 1.15)  # per-tissue multipliers; keeps each modality's tissue order
NOISE_SIGMA_RANGE = (0.02, 0.05)  # per complex channel, intensity units (reference WM on T1w is 0.9)
BLUR_SIGMA_RANGE_MM = (0.6, 1.5)
SLICE_THICKNESS_RANGE_MM = (4.0, 6.0)  # rounded to a whole number (>= 2) of voxels
REFERENCE_NOISE_SIGMA = 0.01  # the reference site's only effect: mild Rician noise


@dataclass
class ModalityEffects:
    """A site's effect on one modality: tissue contrast and the intensity curve ``y = gain * x**gamma``."""

    gain: float = 1.0  # overall intensity scale (unitless)
    gamma: float = 1.0  # curve exponent (1 = linear)
    contrast: dict[str, float] = field(default_factory=lambda: {"csf": 1.0, "gm": 1.0, "wm": 1.0})  # per tissue

    def multipliers(self, tissues: tuple[str, ...] = ("csf", "gm", "wm")) -> np.ndarray:
        """Contrast multipliers in ``tissues`` order, float64 ``(T,)``."""
        return np.array([self.contrast[t] for t in tissues], dtype=np.float64)


@dataclass
class SiteEffects:
    """Every known parameter of one site. Effects apply in the order of the fields below the first three."""

    name: str
    index: int
    is_reference: bool
    modalities: dict[str, ModalityEffects] = field(default_factory=dict)  # contrast + intensity curve
    slice_thickness_mm: float | None = None  # thick slices along ``slice_axis``; None = native resolution
    slice_axis: int = 2  # voxel axis of the slice direction (2 = axial slices in RAS)
    blur_sigma_mm: float = 0.0  # isotropic Gaussian point-spread sigma, mm
    bias_amplitude: float = 0.0  # max |log bias field| over the grid
    bias_order: int = 2  # polynomial degree of the log bias field
    bias_coefficients: list[float] = field(default_factory=list)  # one per term of ``bias_terms(bias_order)``
    noise_sigma: float = REFERENCE_NOISE_SIGMA  # std of each complex Gaussian channel (Rician magnitude)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SiteEffects:
        d = dict(d)
        d["modalities"] = {m: ModalityEffects(**v) for m, v in d.get("modalities", {}).items()}
        d["bias_coefficients"] = [float(c) for c in d.get("bias_coefficients", [])]
        return cls(**d)


def apply_tissue_contrast(
    probs: np.ndarray, intensities: np.ndarray, multipliers: np.ndarray | None = None
) -> np.ndarray:
    """Partial-volume image ``sum_t probs[t] * intensities[t] * multipliers[t]``.

    ``probs`` is ``(T, X, Y, Z)``, ``intensities`` and ``multipliers`` are ``(T,)``; returns float32 ``(X, Y, Z)``.
    """
    w = np.asarray(intensities, dtype=np.float64)
    if multipliers is not None:
        w = w * np.asarray(multipliers, dtype=np.float64)
    return np.tensordot(w.astype(np.float32), probs.astype(np.float32, copy=False), axes=(0, 0))


def change_slice_thickness(img: np.ndarray, factor: int, axis: int = 2) -> np.ndarray:
    """Simulate slices ``factor`` voxels thick: average blocks of ``factor`` slices, then interpolate back.

    Each thick slice is the mean of its ``factor`` voxels (box slice profile) and sits at their centre; the
    original grid is refilled by linear interpolation between thick-slice centres. Shape is kept.
    """
    if factor <= 1:
        return img.astype(np.float32, copy=True)
    x = np.moveaxis(img, axis, -1)
    n = x.shape[-1]
    m = -(-n // factor)  # number of thick slices
    pad = m * factor - n
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], mode="edge")
    thick = xp.reshape(*x.shape[:-1], m, factor).mean(axis=-1)  # (..., m)
    pos = np.clip((np.arange(n) - (factor - 1) / 2.0) / factor, 0.0, m - 1)  # position in thick-slice units
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, m - 1)
    w = (pos - lo).astype(np.float32)
    out = thick[..., lo] * (1.0 - w) + thick[..., hi] * w
    return np.moveaxis(out, -1, axis).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma_mm: float, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """Isotropic Gaussian blur of ``sigma_mm`` on a grid of ``voxel_size`` mm (edge values repeated)."""
    if sigma_mm <= 0:
        return img.astype(np.float32, copy=True)
    sigma_vox = [sigma_mm / v for v in voxel_size]
    return ndi.gaussian_filter(img.astype(np.float32), sigma_vox, mode="nearest")


def bias_terms(order: int) -> list[tuple[int, int, int]]:
    """Exponents ``(px, py, pz)`` of the monomials of degree 1..``order`` (9 terms for order 2)."""
    return [p for d in range(1, order + 1) for p in itertools.product(range(d + 1), repeat=3) if sum(p) == d]


def bias_field(shape: tuple[int, int, int], coefficients: list[float], amplitude: float, order: int = 2) -> np.ndarray:
    """Smooth multiplicative field ``exp(amplitude * P / max|P|)`` with ``P`` a polynomial in [-1, 1]^3.

    ``P = sum_k coefficients[k] * x**px * y**py * z**pz`` over :func:`bias_terms`; the maximum of
    ``|log field|`` over the grid is exactly ``amplitude``. Returns float32 ``(X, Y, Z)``.
    """
    if amplitude == 0:
        return np.ones(shape, dtype=np.float32)
    terms = bias_terms(order)
    if len(coefficients) != len(terms):
        raise ValueError(f"order {order} needs {len(terms)} coefficients, got {len(coefficients)}")
    axes = [np.linspace(-1.0, 1.0, s) for s in shape]
    poly = np.zeros(shape, dtype=np.float64)
    for c, (px, py, pz) in zip(coefficients, terms, strict=True):
        poly += c * (axes[0] ** px)[:, None, None] * (axes[1] ** py)[None, :, None] * (axes[2] ** pz)[None, None, :]
    return np.exp(amplitude * poly / np.abs(poly).max()).astype(np.float32)


def intensity_curve(img: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    """Monotone non-linear intensity map ``gain * max(x, 0) ** gamma`` (identity for gain = gamma = 1)."""
    if gain == 1.0 and gamma == 1.0:
        return img.astype(np.float32, copy=True)
    return (gain * np.power(np.maximum(img, 0.0), gamma)).astype(np.float32)


def add_rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of complex Gaussian noise: ``sqrt((x + n1)**2 + n2**2)``, ``n1, n2 ~ N(0, sigma**2)``."""
    if sigma <= 0:
        return img.astype(np.float32, copy=True)
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt((img.astype(np.float32) + n1) ** 2 + n2**2)


def apply_scanner_effects(
    img: np.ndarray,
    effects: SiteEffects,
    modality: str,
    voxel_size: tuple[float, float, float],
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Apply a site's effects after tissue contrast: slices, blur, bias, intensity curve, then noise.

    ``img`` is ``(X, Y, Z)``; ``rng`` draws the noise (None = no noise). Returns float32 ``(X, Y, Z)``.
    """
    out = img
    if effects.slice_thickness_mm is not None:
        factor = round(effects.slice_thickness_mm / voxel_size[effects.slice_axis])
        out = change_slice_thickness(out, factor, effects.slice_axis)
    out = gaussian_blur(out, effects.blur_sigma_mm, voxel_size)
    out = out * bias_field(out.shape, effects.bias_coefficients, effects.bias_amplitude, effects.bias_order)
    m = effects.modalities.get(modality, ModalityEffects())
    out = intensity_curve(out, m.gain, m.gamma)
    if rng is not None:
        out = add_rician_noise(out, effects.noise_sigma, rng)
    return out.astype(np.float32, copy=False)


def reference_site_effects(
    name: str, modalities: tuple[str, ...], noise_sigma: float = REFERENCE_NOISE_SIGMA
) -> SiteEffects:
    """The reference site: identity contrast, curve, resolution and bias; mild Rician noise only."""
    mods = {m: ModalityEffects() for m in modalities}
    return SiteEffects(name=name, index=0, is_reference=True, modalities=mods, noise_sigma=noise_sigma)


def _gain_and_gamma(rng: np.random.Generator) -> tuple[float, float]:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    log_gain = sign * rng.uniform(*LOG_GAIN_RANGE)
    log_gamma = -sign * rng.uniform(*LOG_GAMMA_RANGE)
    return float(np.exp(log_gain)), float(np.exp(log_gamma))


def sample_site_effects(
    name: str,
    index: int,
    modalities: tuple[str, ...],
    rng: np.random.Generator,
    *,
    voxel_size: float,
    resolution_change: bool,
    bias_order: int = 2,
) -> SiteEffects:
    """Draw a non-reference site's parameters from the module's ranges (``*_RANGE`` constants)."""
    mods = {}
    for m in modalities:
        gain, gamma = _gain_and_gamma(rng)
        mods[m] = ModalityEffects(
            gain=gain,
            gamma=gamma,
            contrast={t: float(rng.uniform(*CONTRAST_RANGE)) for t in ("csf", "gm", "wm")},
        )
    thickness_draw = float(rng.uniform(*SLICE_THICKNESS_RANGE_MM))
    thickness = max(2, round(thickness_draw / voxel_size)) * voxel_size if resolution_change else None
    return SiteEffects(
        name=name,
        index=index,
        is_reference=False,
        modalities=mods,
        slice_thickness_mm=None if thickness is None else float(thickness),
        blur_sigma_mm=float(rng.uniform(*BLUR_SIGMA_RANGE_MM)),
        bias_amplitude=float(rng.uniform(*BIAS_AMPLITUDE_RANGE)),
        bias_order=bias_order,
        bias_coefficients=[float(c) for c in rng.standard_normal(len(bias_terms(bias_order)))],
        noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)),
    )
