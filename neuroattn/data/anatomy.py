"""Subject anatomy for synthetic MRI: MNI152 tissue maps, cropped, resampled and varied per subject."""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

TISSUES = ("csf", "gm", "wm")  # order of the tissue axis everywhere; dseg labels are index + 1
DSEG_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}


@dataclass
class TissueMaps:
    """Partial-volume tissue fractions on one RAS voxel grid.

    ``csf``, ``gm`` and ``wm`` are float32 arrays of shape ``(X, Y, Z)`` in [0, 1] whose sum is at most 1
    (the rest is background). ``affine`` maps RAS voxel indices to MNI millimetres.
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.csf.shape)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def probs(self) -> np.ndarray:
        """Tissue fractions stacked in :data:`TISSUES` order, shape ``(3, X, Y, Z)``."""
        return np.stack([self.csf, self.gm, self.wm])

    @property
    def brain(self) -> np.ndarray:
        """Brain fraction ``csf + gm + wm``, shape ``(X, Y, Z)``."""
        return self.csf + self.gm + self.wm

    def mask(self) -> np.ndarray:
        """Binary brain mask (brain fraction >= 0.5), bool ``(X, Y, Z)``."""
        return self.brain >= 0.5

    def labels(self) -> np.ndarray:
        """Hard tissue labels, uint8 ``(X, Y, Z)``: 0 background, 1 CSF, 2 GM, 3 WM (majority tissue in the mask)."""
        lab = (np.argmax(self.probs, axis=0) + 1).astype(np.uint8)
        lab[~self.mask()] = 0
        return lab

    def volumes_ml(self) -> dict[str, float]:
        """Tissue volumes in millilitres (sum of fractions times voxel volume)."""
        vox_ml = float(np.prod(self.voxel_size)) / 1000.0
        return {t: float(getattr(self, t).sum(dtype=np.float64)) * vox_ml for t in TISSUES}


@dataclass
class AnatomyVariation:
    """Known anatomical differences of one subject from the MNI152 template."""

    scale: float = 1.0  # isotropic size factor about the brain centre (1 = template size)
    deformation_mm: float = 0.0  # peak length of the smooth displacement field, mm
    deformation_spacing_mm: float = 24.0  # control-point spacing of that field, mm (larger = smoother)
    ventricle_enlargement: float = 0.0  # in [0, 1]: share of the tissue rim around deep CSF turned into CSF
    gm_thinning: float = 0.0  # in [0, 1]: share of GM bordering CSF turned into CSF (sulcal widening)
    texture_amplitude: float = 0.0  # peak relative within-tissue intensity modulation (0.03 = ±3 %)
    seed: int = 0  # seeds the displacement field and texture

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AnatomyVariation:
        return cls(**d)


@dataclass
class SubjectAnatomy:
    """One simulated subject: its tissue maps, a smooth texture and the variation that produced them.

    ``texture`` is float32 ``(X, Y, Z)`` around 1; it multiplies every modality of this subject alike.
    """

    tissues: TissueMaps
    texture: np.ndarray
    variation: AnatomyVariation


def _ball(radius_vox: float) -> np.ndarray:
    r = max(1, round(radius_vox))
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]  # (3, 2r+1, 2r+1, 2r+1)
    return (g**2).sum(axis=0) <= radius_vox**2 + 1e-9


@functools.lru_cache(maxsize=4)
def _template_cached(voxel_size: float, margin_mm: float) -> TissueMaps:
    from nilearn import datasets, image

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = np.asarray(mask_img.dataobj) > 0
    idx = np.argwhere(mask)  # (N, 3) voxel indices
    aff1 = mask_img.affine
    lo = aff1[:3, :3] @ idx.min(axis=0) + aff1[:3, 3] - margin_mm  # world mm, RAS (diagonal affine)
    hi = aff1[:3, :3] @ idx.max(axis=0) + aff1[:3, 3] + margin_mm
    shape = tuple(int(n) for n in np.ceil((hi - lo) / voxel_size) + 1)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = lo

    def resample(img) -> np.ndarray:
        with warnings.catch_warnings():
            # Linear resampling of the binary mask is on purpose: it yields partial-volume brain fractions.
            warnings.filterwarnings("ignore", message="Resampling binary images", category=UserWarning)
            out = image.resample_img(
                img,
                target_affine=affine,
                target_shape=shape,
                interpolation="linear",
                force_resample=True,
                copy_header=True,
            )
        return np.clip(np.asarray(out.dataobj, dtype=np.float32), 0.0, 1.0)

    brain = resample(image.new_img_like(mask_img, mask.astype(np.float32)))
    gm = resample(datasets.load_mni152_gm_template(resolution=1))
    wm = resample(datasets.load_mni152_wm_template(resolution=1))
    # nilearn ships no CSF map: CSF is the brain mask minus GM and WM.
    total = np.maximum(brain, gm + wm)
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(total - gm - wm, 0.0, 1.0)
    maps = TissueMaps(csf=csf, gm=gm, wm=wm, affine=affine)
    for a in (maps.csf, maps.gm, maps.wm):
        a.setflags(write=False)
    return maps


def load_template_tissues(voxel_size: float = 2.0, margin_mm: float = 10.0) -> TissueMaps:
    """MNI152 (2009a, shipped with nilearn) CSF/GM/WM fractions on a grid cropped to the brain.

    The grid has isotropic ``voxel_size`` mm voxels and spans the brain mask's bounding box plus ``margin_mm``
    on each side; at 2 mm and a 10 mm margin it is ``(83, 101, 88)`` voxels. Results are cached per process.
    """
    t = _template_cached(float(voxel_size), float(margin_mm))
    return TissueMaps(csf=t.csf.copy(), gm=t.gm.copy(), wm=t.wm.copy(), affine=t.affine.copy())


def smooth_displacement(
    shape: tuple[int, int, int], voxel_size: float, amplitude_mm: float, spacing_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement field whose longest vector is exactly ``amplitude_mm``.

    Gaussian noise on a control grid of ``spacing_mm`` is interpolated (cubic spline) to every voxel.
    Returns float32 of shape ``(3, X, Y, Z)`` in voxels.
    """
    shape = tuple(int(s) for s in shape)
    n_ctrl = [max(2, int(np.ceil(s * voxel_size / spacing_mm)) + 1) for s in shape]
    ctrl = rng.standard_normal((3, *n_ctrl))  # (3, cx, cy, cz)
    if amplitude_mm == 0:
        return np.zeros((3, *shape), dtype=np.float32)
    axes = [np.linspace(0, c - 1, s) for c, s in zip(n_ctrl, shape, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))  # (3, X, Y, Z) control-grid coordinates
    field = np.stack([ndi.map_coordinates(c, coords, order=3, mode="nearest") for c in ctrl])
    peak = float(np.sqrt((field**2).sum(axis=0)).max())
    return (field * (amplitude_mm / voxel_size / peak)).astype(np.float32)


def thin_gray_matter(t: TissueMaps, fraction: float) -> TissueMaps:
    """Turn ``fraction`` of the GM that borders CSF (within one voxel) into CSF; other tissue untouched."""
    if fraction <= 0:
        return t
    near_csf = ndi.grey_dilation(t.csf, footprint=_ball(1.0))
    loss = (fraction * t.gm * near_csf).astype(np.float32)
    return TissueMaps(csf=t.csf + loss, gm=t.gm - loss, wm=t.wm, affine=t.affine)


def enlarge_ventricles(t: TissueMaps, fraction: float, depth_mm: float = 15.0, radius_mm: float = 3.0) -> TissueMaps:
    """Grow the deep CSF (ventricles): tissue within ``radius_mm`` of CSF lying deeper than ``depth_mm``
    from the brain surface turns into CSF by ``fraction`` of the dilated CSF fraction (GM and WM lose
    in proportion)."""
    if fraction <= 0:
        return t
    vs = float(np.mean(t.voxel_size))
    depth = ndi.distance_transform_edt(t.mask(), sampling=t.voxel_size)  # mm to the brain surface
    deep = np.clip((depth - depth_mm) / 5.0, 0.0, 1.0)  # soft edge over 5 mm
    grown = ndi.grey_dilation(t.csf, footprint=_ball(radius_mm / vs))
    tissue = t.gm + t.wm
    gain = np.minimum(fraction * deep * np.clip(grown - t.csf, 0.0, None), tissue)
    keep = np.where(tissue > 0, 1.0 - gain / np.maximum(tissue, 1e-12), 1.0)
    return TissueMaps(
        csf=(t.csf + gain).astype(np.float32),
        gm=(t.gm * keep).astype(np.float32),
        wm=(t.wm * keep).astype(np.float32),
        affine=t.affine,
    )


def warp_tissues(t: TissueMaps, scale: float, displacement: np.ndarray) -> TissueMaps:
    """Resample tissue maps through an isotropic scaling about the brain centre plus ``displacement``.

    ``displacement`` is ``(3, X, Y, Z)`` in voxels; output voxel ``x`` reads the input at
    ``c + (x - c) / scale + displacement(x)`` with ``c`` the brain's centre of mass (trilinear).
    """
    centre = np.array(ndi.center_of_mass(t.brain))
    grid = np.indices(t.shape, dtype=np.float32)  # (3, X, Y, Z)
    coords = centre[:, None, None, None] + (grid - centre[:, None, None, None]) / scale + displacement
    warped = [ndi.map_coordinates(a, coords, order=1, mode="constant", cval=0.0) for a in (t.csf, t.gm, t.wm)]
    csf, gm, wm = (np.clip(a, 0.0, 1.0).astype(np.float32) for a in warped)
    return TissueMaps(csf=csf, gm=gm, wm=wm, affine=t.affine)


def smooth_texture(
    shape: tuple[int, int, int], voxel_size: float, amplitude: float, rng: np.random.Generator, sigma_mm: float = 4.0
) -> np.ndarray:
    """Multiplicative texture ``1 + amplitude * n`` with ``n`` smoothed noise scaled to peak |n| = 1, float32."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma_mm / voxel_size, mode="nearest")
    if amplitude == 0:
        return np.ones(shape, dtype=np.float32)
    return (1.0 + amplitude * noise / np.abs(noise).max()).astype(np.float32)


def sample_variation(
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.94, 1.06),
    deformation_mm: float = 5.0,
    max_ventricle_enlargement: float = 0.6,
    max_gm_thinning: float = 0.3,
    texture_amplitude: float = 0.03,
) -> AnatomyVariation:
    """Draw one subject's :class:`AnatomyVariation` (scale, enlargement and thinning uniform in their ranges)."""
    return AnatomyVariation(
        scale=float(rng.uniform(*scale_range)),
        deformation_mm=float(deformation_mm),
        ventricle_enlargement=float(rng.uniform(0.0, max_ventricle_enlargement)),
        gm_thinning=float(rng.uniform(0.0, max_gm_thinning)),
        texture_amplitude=float(texture_amplitude),
        seed=int(rng.integers(2**31)),
    )


def simulate_subject(variation: AnatomyVariation, template: TissueMaps | None = None) -> SubjectAnatomy:
    """Build one subject's anatomy from the template: thinning and ventricle growth, then the warp.

    ``template`` defaults to :func:`load_template_tissues` at 2 mm. Deterministic given ``variation``.
    """
    t = load_template_tissues() if template is None else template
    vs = float(np.mean(t.voxel_size))
    rng = np.random.default_rng(variation.seed)
    t = thin_gray_matter(t, variation.gm_thinning)
    t = enlarge_ventricles(t, variation.ventricle_enlargement)
    disp = smooth_displacement(t.shape, vs, variation.deformation_mm, variation.deformation_spacing_mm, rng)
    t = warp_tissues(t, variation.scale, disp)
    texture = smooth_texture(t.shape, vs, variation.texture_amplitude, rng)
    return SubjectAnatomy(tissues=t, texture=texture, variation=variation)
