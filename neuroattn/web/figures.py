"""Pictures for the viewer: coloured orthogonal slices, difference maps, histograms and header summaries."""

from __future__ import annotations

from typing import Any

import numpy as np

from neuroattn.io.nifti import Volume
from neuroattn.viz import orthogonal_slices, robust_window

VIEW_NAMES = ("sagittal", "coronal", "axial")
COLORMAPS = ("gray", "viridis", "magma", "inferno", "hot", "coolwarm", "RdBu_r")


def colorize(image: np.ndarray, window: tuple[float, float], cmap: str = "gray", min_pixels: int = 256) -> np.ndarray:
    """A 2-D slice as RGB ``uint8`` ``(H, W, 3)``, rows flipped so superior is up, upscaled (nearest) for display."""
    from matplotlib import colormaps

    lo, hi = window
    scaled = np.clip((np.asarray(image, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgb = (colormaps[cmap](scaled[::-1])[..., :3] * 255).astype(np.uint8)
    factor = max(1, int(np.ceil(min_pixels / max(rgb.shape[:2]))))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def slice_images(
    data: np.ndarray, index: tuple[int, int, int], window: tuple[float, float], cmap: str = "gray"
) -> dict[str, np.ndarray]:
    """The three orthogonal views of ``(X, Y, Z)`` data through ``index`` as RGB images, keyed by view name."""
    return {name: colorize(img, window, cmap) for name, img in zip(VIEW_NAMES, orthogonal_slices(data, index),
                                                                    strict=True)}


def difference_window(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """``after - before`` and a symmetric display window around zero (99th percentile of |difference|)."""
    diff = np.asarray(after, dtype=np.float32) - np.asarray(before, dtype=np.float32)
    bound = float(np.percentile(np.abs(diff), 99)) or float(np.abs(diff).max()) or 1.0
    return diff, (-bound, bound)


def default_window(data: np.ndarray) -> tuple[float, float]:
    """The viewer's starting window: 1st–99th percentile of the non-zero voxels."""
    return robust_window(data)


def histogram(data: np.ndarray, bins: int = 100, nonzero: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin centres of the voxel values (background zeros left out by default)."""
    values = data[data != 0] if nonzero else data.ravel()
    if values.size == 0:
        values = data.ravel()
    counts, edges = np.histogram(values, bins=bins)
    return counts, (edges[:-1] + edges[1:]) / 2


def header_summary(volume: Volume) -> dict[str, Any]:
    """What a researcher checks first: shape, voxel size, orientation, data type, TR and the affine."""
    zooms = volume.header.get_zooms()
    summary: dict[str, Any] = {
        "file": volume.path.name if volume.path is not None else "",
        "shape": " × ".join(str(s) for s in volume.shape),
        "voxel size (mm)": " × ".join(f"{v:.3g}" for v in volume.voxel_size),
        "orientation (file)": volume.orientation,
        "data type (file)": str(volume.header.get_data_dtype()),
        "value range": f"{float(volume.data.min()):.4g} … {float(volume.data.max()):.4g}",
    }
    if volume.data.ndim == 4:
        summary["frames"] = volume.shape[3]
        summary["TR (s)"] = f"{float(zooms[3]):.3g}" if len(zooms) > 3 else "unknown"
    summary["affine (RAS)"] = "\n".join(" ".join(f"{v:9.3f}" for v in row) for row in volume.affine)
    return summary


def voxel_time_course(volume: Volume, index: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Time (s, from the header's TR or frame numbers) and the signal of one voxel of a 4-D volume."""
    if volume.data.ndim != 4:
        raise ValueError("a time course needs a 4-D volume")
    zooms = volume.header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 and zooms[3] > 0 else 1.0
    series = volume.data[index[0], index[1], index[2], :]
    return np.arange(series.shape[0]) * tr, series
