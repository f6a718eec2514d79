"""Turntables: frames of a field or mesh seen from cameras circling it, and their atomic GIF export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neuroattn.brain3d.cameras import Camera, orbit_cameras, project_points
from neuroattn.brain3d.mesh import Mesh
from neuroattn.brain3d.render import Renderable, render_view
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_path

LIGHT = (0.4, 0.8, 0.45)  # direction towards the key light of mesh renders (world, normalised on use)


def rasterize(mesh: Mesh, camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of a mesh at pixel centres (vectorised over faces, looping over bounding-box offsets).

    Returns the linear pixel indices (n,) covered, the nearest face (n,) and its screen-space barycentrics (n, 3).
    """
    rc, depth = project_points(camera, torch.from_numpy(mesh.vertices), size, size)
    rc, depth = rc.numpy() - 0.5, depth.numpy()  # pixel (i, j) has its centre at (i + .5, j + .5)
    faces = mesh.faces[(depth[mesh.faces] > 1e-6).all(1)]
    tri, z = rc[faces], depth[faces]  # (F, 3, 2), (F, 3)
    lo = np.floor(tri.min(1)).astype(np.int64)  # (F, 2)
    extent = np.clip(np.ceil(tri.max(1)).astype(np.int64) - lo, 0, size)  # (F, 2)
    (a, b, c) = (tri[:, 0], tri[:, 1], tri[:, 2])
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # (F,)
    keep = np.abs(area) > 1e-12
    pix, zs, fid, bar = [], [], [], []
    for dr in range(int(extent[:, 0].max(initial=0)) + 1):
        for dc in range(int(extent[:, 1].max(initial=0)) + 1):
            p = lo + np.array([dr, dc])  # (F, 2) candidate pixel per face
            ok = keep & (dr <= extent[:, 0]) & (dc <= extent[:, 1]) & (p >= 0).all(1) & (p < size).all(1)
            w0 = ((b[:, 0] - p[:, 0]) * (c[:, 1] - p[:, 1]) - (b[:, 1] - p[:, 1]) * (c[:, 0] - p[:, 0])) / np.where(
                keep, area, 1.0)
            w1 = ((c[:, 0] - p[:, 0]) * (a[:, 1] - p[:, 1]) - (c[:, 1] - p[:, 1]) * (a[:, 0] - p[:, 0])) / np.where(
                keep, area, 1.0)
            w = np.stack([w0, w1, 1.0 - w0 - w1], axis=1)  # (F, 3)
            ok &= (w >= -1e-9).all(1)
            idx = np.nonzero(ok)[0]
            pix.append(p[idx, 0] * size + p[idx, 1])
            zs.append((w[idx] * z[idx]).sum(1))
            fid.append(idx)
            bar.append(w[idx])
    if not pix:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    pix_a, z_a, f_a, b_a = np.concatenate(pix), np.concatenate(zs), np.concatenate(fid), np.concatenate(bar)
    order = np.lexsort((z_a, pix_a))  # by pixel, then nearest first
    first = order[np.unique(pix_a[order], return_index=True)[1]]
    return pix_a[first], faces[f_a[first]], b_a[first]


def render_mesh(mesh: Mesh, camera: Camera, size: int, background: float | tuple[float, ...] = 1.0) -> np.ndarray:
    """Float image (H, W, 3) in [0, 1] of a mesh: vertex colours (grey if none) under Lambert + ambient light."""
    bg = np.broadcast_to(np.asarray(background, dtype=np.float64), (3,))
    image = np.tile(bg, (size * size, 1))  # (H*W, 3)
    if len(mesh.faces) == 0:
        return image.reshape(size, size, 3)
    hit, faces, b = rasterize(mesh, camera, size)
    colours = mesh.vertex_colors if mesh.vertex_colors is not None else np.full((len(mesh.vertices), 3), 0.7)
    albedo = (colours[faces] * b[..., None]).sum(1)  # (n, 3)
    tri = mesh.vertices[faces]  # (n, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    light = np.asarray(LIGHT) / np.linalg.norm(LIGHT)
    shade = 0.35 + 0.65 * np.abs(normal @ light)  # two-sided: winding errors must not paint holes
    image[hit] = albedo * shade[:, None]
    return image.reshape(size, size, 3)


def render_turntable(obj: Renderable | Mesh, n_frames: int = 24, size: int = 64, *, elevation: float = 20.0,
                     radius: float = 3.0, fov: float = 45.0, background: float | tuple[float, ...] = 1.0,
                     n_samples: int = 64) -> np.ndarray:
    """uint8 frames (F, H, W, 3) of ``obj`` (a field, volume-rendered, or a :class:`Mesh`, rasterised) turning once."""
    if n_frames < 1 or size < 2:
        raise InvalidInputError(f"a turntable needs n_frames >= 1 and size >= 2; got {n_frames} and {size}")
    frames = []
    for cam in orbit_cameras(n_frames, elevation=elevation, radius=radius, fov=fov):
        if isinstance(obj, Mesh):
            image = render_mesh(obj, cam, size, background)
        else:
            with torch.no_grad():
                bg = torch.as_tensor(background, dtype=torch.float32)
                image = render_view(obj, cam, size, n_samples=n_samples, background=bg, chunk=8192).rgb
            image = image.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
        frames.append(np.clip(np.round(image * 255), 0, 255).astype(np.uint8))
    return np.stack(frames)


def save_gif(frames: np.ndarray, path: str | Path, fps: float = 12.0) -> Path:
    """Write uint8 frames (F, H, W, 3) as a looping GIF, atomically."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise InvalidInputError(f"frames must be uint8 (F, H, W, 3); got {frames.dtype} {frames.shape}", path)
    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=round(1000 / fps))
    return Path(path)
