"""Static figures a person can open: slice montages of volumes side by side, written as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from neuroattn.io.atomic import atomic_path


def orthogonal_slices(
    volume: np.ndarray, index: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sagittal, coronal and axial slices of a RAS ``(X, Y, Z)`` array through voxel ``index``, display-oriented.

    Each slice is transposed so that, drawn with ``origin='lower'``, superior (or anterior) is up.
    """
    x, y, z = index if index is not None else tuple(s // 2 for s in volume.shape[:3])
    sag = volume[x, :, :].T  # (Z, Y)
    cor = volume[:, y, :].T  # (Z, X)
    axi = volume[:, :, z].T  # (Y, X)
    return sag, cor, axi


def mid_slices(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central sagittal, coronal and axial slices of a RAS ``(X, Y, Z)`` array, oriented for display."""
    return orthogonal_slices(volume)


def robust_window(volume: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Display window from percentiles of the non-zero voxels (falls back to min/max)."""
    values = volume[volume != 0]
    if values.size == 0:
        return float(volume.min()), float(volume.max()) + 1e-6
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def save_montage(
    rows: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    path: str | Path,
    title: str | None = None,
    cmap: str = "gray",
) -> Path:
    """Write a grid of axial/coronal mid-slices: one row per key, one column pair per (label, volume).

    Each volume gets its own robust intensity window, so scanners on different scales stay readable.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = max(len(items) for items in rows.values()) * 2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.0 * n_rows), squeeze=False)
    for r, (row_label, items) in enumerate(rows.items()):
        for c, (label, vol) in enumerate(items):
            _, cor, axi = mid_slices(vol)
            lo, hi = robust_window(vol)
            for k, (view, img) in enumerate((("axial", axi), ("coronal", cor))):
                ax = axes[r, 2 * c + k]
                ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
                ax.set_title(f"{label} · {view}", fontsize=7)
        axes[r, 0].set_ylabel(row_label, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
