"""Network-labelled ROI atlases bundled with nilearn, placed as spheres on a brain-masked MNI voxel grid."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from neuroattn.errors import ConfigError


@dataclass(frozen=True)
class AtlasSpec:
    """How to read one bundled coordinate atlas and which of its networks play the standard roles."""

    name: str
    roles: dict[str, str]  # role ('default', 'frontoparietal', 'visual', 'motor') -> the atlas's network name
    drop_networks: tuple[str, ...] = ()  # ROIs left out (e.g. unassigned ones)


ATLASES: dict[str, AtlasSpec] = {
    "dosenbach_2010": AtlasSpec(
        name="dosenbach_2010",
        roles={
            "default": "default",
            "frontoparietal": "fronto-parietal",
            "visual": "occipital",
            "motor": "sensorimotor",
        },
    ),
    # Seitzman 2018 = the Power 2011 264 ROIs plus subcortical/cerebellar ones, with network labels.
    "seitzman_2018": AtlasSpec(
        name="seitzman_2018",
        roles={
            "default": "DefaultMode",
            "frontoparietal": "FrontoParietal",
            "visual": "Visual",
            "motor": "SomatomotorDorsal",
        },
        drop_networks=("unassigned",),
    ),
}


@dataclass(frozen=True)
class CoordinateAtlas:
    """ROI centres in MNI millimetres with a network label and a name each."""

    name: str
    coords: np.ndarray  # (R, 3) MNI mm
    networks: tuple[str, ...]  # (R,) network of each ROI
    roi_names: tuple[str, ...]  # (R,) unique names, usable as table columns
    roles: dict[str, str]

    @property
    def network_names(self) -> list[str]:
        """Networks in order of first appearance."""
        return list(dict.fromkeys(self.networks))

    def network_index(self) -> np.ndarray:
        """Index into :attr:`network_names` of each ROI, shape ``(R,)``."""
        lookup = {n: i for i, n in enumerate(self.network_names)}
        return np.array([lookup[n] for n in self.networks], dtype=int)

    def resolve(self, network: str) -> str:
        """Accept either a network name of this atlas or a role name; return the network name."""
        if network in self.network_names:
            return network
        if network in self.roles:
            return self.roles[network]
        raise ConfigError(
            f"'network' must be one of {self.network_names} or a role in {sorted(self.roles)}. "
            f"'{network}' was provided."
        )


@functools.lru_cache(maxsize=4)
def load_coordinate_atlas(name: str) -> CoordinateAtlas:
    """Load a network-labelled coordinate atlas that ships inside nilearn (no download).

    ``name`` is one of :data:`ATLASES`: ``'dosenbach_2010'`` (160 ROIs, 6 networks) or ``'seitzman_2018'``
    (300 ROIs of which 285 carry one of 13 network labels).
    """
    if name not in ATLASES:
        raise ConfigError(f"'atlas' must be one of {sorted(ATLASES)}. '{name}' was provided.")
    from nilearn import datasets

    spec = ATLASES[name]
    if name == "dosenbach_2010":
        bunch = datasets.fetch_coords_dosenbach_2010(ordered_regions=True)
        coords = bunch.rois[["x", "y", "z"]].to_numpy(float)
        networks = [str(n) for n in np.asarray(bunch.networks)]
        names = [str(label).replace(" ", "_") for label in bunch.labels]
    else:
        bunch = datasets.fetch_coords_seitzman_2018(ordered_regions=True)
        coords = bunch.rois[["x", "y", "z"]].to_numpy(float)
        networks = [str(n) for n in np.asarray(bunch.networks)]
        names = [f"{n}_{int(i):03d}" for n, i in zip(networks, bunch.rois.index, strict=True)]
    keep = np.array([n not in spec.drop_networks for n in networks])
    coords = coords[keep]
    networks = [n for n, k in zip(networks, keep, strict=True) if k]
    names = [n for n, k in zip(names, keep, strict=True) if k]
    if len(set(names)) != len(names):
        raise RuntimeError(f"atlas {name} has duplicate ROI names")
    coords.setflags(write=False)
    return CoordinateAtlas(name, coords, tuple(networks), tuple(names), dict(spec.roles))


@dataclass(frozen=True)
class BrainGrid:
    """A brain-masked voxel grid in MNI space with every ROI's voxels.

    ``roi_voxels[r]`` holds the flat indices (into ``mask.ravel()``) of the voxels of ROI ``r``: brain voxels
    within ``radius`` mm of its centre, each voxel given to the nearest centre when spheres overlap.
    """

    affine: np.ndarray  # (4, 4) RAS voxel -> MNI mm
    mask: np.ndarray  # (X, Y, Z) bool brain mask
    radius: float  # mm
    roi_voxels: tuple[np.ndarray, ...]  # R arrays of flat voxel indices

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mask.shape)

    @property
    def voxel_size(self) -> float:
        return float(abs(self.affine[0, 0]))

    def voxel_coords(self, flat_index: np.ndarray) -> np.ndarray:
        """MNI mm of flat voxel indices, shape ``(N, 3)``."""
        ijk = np.stack(np.unravel_index(flat_index, self.shape), axis=1)  # (N, 3)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def mni_brain_mask(voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's bundled MNI152 brain mask resampled to ``voxel_size`` mm and cropped to the brain.

    Returns
    -------
    mask : np.ndarray
        Bool, shape ``(X, Y, Z)`` in RAS order.
    affine : np.ndarray
        ``(4, 4)`` diagonal affine (voxel edge ``voxel_size`` mm) to MNI millimetres.
    """
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    if not voxel_size > 0:
        raise ConfigError(f"'voxel_size' must be positive (mm). {voxel_size} was provided.")
    template = load_mni152_brain_mask(resolution=1 if voxel_size < 2 else 2)
    # float input: nilearn warns when it has to cast the int8 mask itself
    template = nib.Nifti1Image(template.get_fdata(dtype=np.float32), template.affine)
    target = np.diag([voxel_size] * 3)
    img = resample_img(template, target_affine=target, interpolation="nearest", force_resample=True, copy_header=True)
    mask = np.asarray(img.get_fdata()) > 0.5
    if not mask.any():
        raise ConfigError(f"voxel size {voxel_size} mm leaves no brain voxels")
    lo = np.maximum(np.argwhere(mask).min(axis=0) - 1, 0)
    hi = np.argwhere(mask).max(axis=0) + 2
    mask = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = np.array(img.affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return np.ascontiguousarray(mask), affine


@functools.lru_cache(maxsize=4)
def build_brain_grid(atlas_name: str, voxel_size: float, radius: float) -> BrainGrid:
    """Place every ROI of an atlas as a sphere of ``radius`` mm inside the MNI brain mask at ``voxel_size`` mm.

    An ROI whose sphere holds no free brain voxel (possible at coarse voxels) gets the nearest free brain
    voxel to its centre, so every ROI has at least one voxel.
    """
    from scipy.spatial import cKDTree

    if not radius > 0:
        raise ConfigError(f"'roi_radius' must be positive (mm). {radius} was provided.")
    atlas = load_coordinate_atlas(atlas_name)
    mask, affine = mni_brain_mask(voxel_size)
    brain = np.flatnonzero(mask.ravel())
    ijk = np.stack(np.unravel_index(brain, mask.shape), axis=1)  # (N, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    dist, nearest = cKDTree(atlas.coords).query(xyz, k=1)
    owner = np.where(dist <= radius, nearest, -1)  # (N,) ROI of each brain voxel, -1 = none
    voxels = [brain[owner == r] for r in range(len(atlas.coords))]
    for r, vox in enumerate(voxels):
        if vox.size == 0:
            free = np.flatnonzero(owner < 0)
            k = free[np.argmin(np.linalg.norm(xyz[free] - atlas.coords[r], axis=1))]
            owner[k] = r
            voxels[r] = brain[[k]]
    for v in voxels:
        v.setflags(write=False)
    mask.setflags(write=False)
    affine.setflags(write=False)
    return BrainGrid(affine=affine, mask=mask, radius=float(radius), roi_voxels=tuple(voxels))
