"""The ``BrainDecoder`` protocol every fMRI -> image decoder implements, and small shared helpers."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from neuroattn.errors import InvalidInputError


@runtime_checkable
class BrainDecoder(Protocol):
    """What evaluation, retrieval and reconstruction need from a trained decoder.

    Attributes
    ----------
    name : str
        ``"mindeye"``, ``"brain-it"`` or ``"ridge"``.
    trained : bool
        False when any weight the decoder depends on (itself, its CLIP targets) is a random initialisation.
    """

    name: str
    trained: bool

    def brain_embeddings(self, betas: np.ndarray) -> np.ndarray:
        """Voxel responses (B, V) -> retrieval-space embeddings (B, L*D), each row L2-normalised."""
        ...

    def predict_clip(self, betas: np.ndarray) -> np.ndarray:
        """Voxel responses (B, V) -> predicted CLIP tokens (B, L, D) for reconstruction."""
        ...

    def predict_latents(self, betas: np.ndarray) -> np.ndarray | None:
        """Voxel responses (B, V) -> predicted VAE latents (B, C, h, w), or None without a low-level path."""
        ...


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Each row of ``x`` (N, E) divided by its L2 norm; all-zero rows stay zero. Returns float32 (N, E)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidInputError(f"expected a 2-D array (N, E), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def as_betas(betas: np.ndarray, n_voxels: int | None = None) -> np.ndarray:
    """Validate voxel responses: a finite float32 array (B, V), with V == ``n_voxels`` when given."""
    arr = np.asarray(betas, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]  # (1, V): a single trial
    if arr.ndim != 2:
        raise InvalidInputError(f"voxel responses must be (n_trials, n_voxels), got shape {arr.shape}")
    if n_voxels is not None and arr.shape[1] != n_voxels:
        raise InvalidInputError(f"expected {n_voxels} voxels per trial, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("voxel responses contain NaN or infinite values")
    return arr
