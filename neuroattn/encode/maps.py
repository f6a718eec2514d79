"""Voxel maps of encoding results: per-voxel values as NIfTI volumes, and their surface/slice figures."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from neuroattn.encode.data import EncodingSubject
from neuroattn.io.atomic import atomic_path
from neuroattn.io.nifti import Volume, save_volume, volume_from_array


def voxel_volume(subject: EncodingSubject, values: np.ndarray) -> Volume:
    """Per-voxel ``values`` (V,) or (V, K) placed on the subject's grid (0 outside its voxels), float32."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape[0] != subject.n_voxels:
        raise ValueError(f"{values.shape[0]} values for {subject.n_voxels} voxels of {subject.name}")
    data = np.zeros((*subject.mask_shape, *values.shape[1:]), dtype=np.float32)  # (X, Y, Z[, K])
    data[tuple(subject.voxel_ijk.T)] = values
    return volume_from_array(data, subject.affine)


def save_voxel_map(subject: EncodingSubject, values: np.ndarray, path: str | Path) -> Path:
    """Write ``values`` as a NIfTI volume on the subject's grid (atomically)."""
    return save_volume(voxel_volume(subject, values), path)


def plot_voxel_map(volume: Volume, path: str | Path, title: str, *, mni: bool, symmetric: bool = True) -> Path:
    """A PNG of a voxel map: on the fsaverage5 surface (left/right, lateral/medial/ventral) for MNI-space data,
    else orthogonal slices. Nilearn ships the surface meshes, so nothing is downloaded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn import plotting

    img = nib.Nifti1Image(volume.data, volume.affine)
    peak = float(np.nanmax(np.abs(volume.data))) or 1.0
    if mni:
        with warnings.catch_warnings():  # nilearn warns about surface vertices with no voxel below them
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            fig, _ = plotting.plot_img_on_surf(
                img, surf_mesh="fsaverage5", views=["lateral", "medial", "ventral"], hemispheres=["left", "right"],
                title=title, colorbar=True, cmap="cold_hot" if symmetric else "hot", symmetric_cbar=symmetric,
                vmax=peak, threshold=1e-6, cbar_tick_format="%.2f",
            )
    else:
        display = plotting.plot_stat_map(img, bg_img=None, title=title, cmap="cold_hot" if symmetric else "hot",
                                         symmetric_cbar=symmetric, vmax=peak, threshold=1e-6, draw_cross=False)
        fig = display.frame_axes.figure
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
