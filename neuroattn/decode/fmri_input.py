"""Read a user's fMRI responses (``.npy`` betas or NIfTI with a mask) as a decoder's voxel vectors.

Decoders are trained on betas z-scored per voxel by the subject's training trials; a user's file gets
the same normalisation, read from the subject's raw training betas in the data folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuroattn.data.nsd import SubjectData, load_subject
from neuroattn.errors import InvalidInputError
from neuroattn.io.nifti import load_volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _voxels_from_nifti(path: Path, subject: SubjectData, mask_path: Path | None) -> np.ndarray:
    volume = load_volume(path)
    data = volume.data if volume.data.ndim == 4 else volume.data[..., None]  # (X, Y, Z, N)
    if mask_path is not None:
        mask = load_volume(mask_path, ndim=3).data > 0.5
        if mask.shape != data.shape[:3]:
            raise InvalidInputError(f"mask grid {mask.shape} differs from the betas grid {data.shape[:3]}", mask_path)
        if int(mask.sum()) != subject.n_voxels:
            raise InvalidInputError(f"mask holds {int(mask.sum())} voxels; the decoder reads {subject.n_voxels}",
                                    mask_path)
        return np.ascontiguousarray(data[mask].T, dtype=np.float32)  # (N, V)
    if data.shape[:3] != tuple(subject.mask_shape):
        raise InvalidInputError(f"grid {data.shape[:3]} differs from the subject's mask grid {subject.mask_shape}; "
                                "give --mask", path)
    return np.ascontiguousarray(data[tuple(subject.voxel_ijk.T)].T, dtype=np.float32)  # (N, V)


def read_betas(path: str | Path, root: str | Path, subject: str, *, mask: str | Path | None = None,
               zscore: bool = True) -> np.ndarray:
    """Voxel responses (N, V) from ``path``: ``.npy`` of shape (V,) or (N, V), or a 3-D/4-D NIfTI.

    NIfTI files are read at the subject's voxels (its ``nsdgeneral`` mask in the data folder) or at ``mask``.
    With ``zscore`` the responses are normalised like the subject's training trials.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    subject_data = load_subject(root, subject, zscore=False)
    if path.suffix == ".npy":
        try:
            betas = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise InvalidInputError(f"not a numeric .npy array ({err})", path) from None
        betas = np.atleast_2d(np.asarray(betas, dtype=np.float32))
    elif path.name.endswith(NIFTI_SUFFIXES):
        betas = _voxels_from_nifti(path, subject_data, None if mask is None else Path(mask))
    else:
        raise InvalidInputError("expected a .npy array or a NIfTI (.nii/.nii.gz) file", path)
    if betas.ndim != 2 or betas.shape[1] != subject_data.n_voxels:
        raise InvalidInputError(f"betas of shape {betas.shape}; the decoder of {subject} reads "
                                f"{subject_data.n_voxels} voxels per row", path)
    if not np.isfinite(betas).all():
        raise InvalidInputError("betas contain NaN or infinite values", path)
    if zscore:
        train = subject_data.betas[~subject_data.is_test].astype(np.float64)
        sd = train.std(axis=0)
        betas = ((betas - train.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
    return betas
