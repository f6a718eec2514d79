"""Triangle meshes: marching cubes of a density or SDF grid, vertex colours, atomic .obj/.ply/.glb export, loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuroattn.brain3d.field import DENSITY_THRESHOLD, query_grid
from neuroattn.brain3d.render import field_device
from neuroattn.errors import InvalidInputError
from neuroattn.io.atomic import atomic_path

MESH_SUFFIXES = (".obj", ".ply", ".glb")


@dataclass
class Mesh:
    """A triangle mesh in world units; ``vertex_colors`` (V, 3) in [0, 1] or None."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    vertex_colors: np.ndarray | None = None  # (V, 3) float in [0, 1]

    def to_trimesh(self) -> object:
        """The same mesh as a ``trimesh.Trimesh`` (not re-processed: vertex order and count are kept)."""
        import trimesh

        colors = None
        if self.vertex_colors is not None:
            rgb = np.clip(np.round(self.vertex_colors * 255), 0, 255).astype(np.uint8)
            colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)  # (V, 4) RGBA
        return trimesh.Trimesh(vertices=self.vertices, faces=self.faces, vertex_colors=colors, process=False)

    @property
    def volume(self) -> float:
        """Enclosed volume (world units^3) by the divergence theorem; meaningful for closed meshes."""
        tri = self.vertices[self.faces]  # (F, 3, 3)
        return float(np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)

    @property
    def area(self) -> float:
        """Total surface area (world units^2)."""
        tri = self.vertices[self.faces]  # (F, 3, 3)
        return float(0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())

    def save(self, path: str | Path) -> Path:
        """Write .obj, .ply or .glb (chosen by suffix) atomically; vertex colours are kept when present."""
        path = Path(path)
        if path.suffix.lower() not in MESH_SUFFIXES:
            raise InvalidInputError(f"mesh format must be one of {list(MESH_SUFFIXES)}; got {path.suffix!r}", path)
        if len(self.faces) == 0:
            raise InvalidInputError("the mesh is empty (no surface at this threshold)", path)
        with atomic_path(path) as tmp:
            self.to_trimesh().export(tmp, file_type=path.suffix.lower()[1:])  # type: ignore[attr-defined]
        return path


def load_mesh(path: str | Path) -> Mesh:
    """Read a mesh file written by :meth:`Mesh.save` (or any single-mesh .obj/.ply/.glb)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError("no such mesh file", path)
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many kinds on a broken file
        raise InvalidInputError(f"cannot read mesh ({err})", path) from err
    colors = None
    visual = getattr(loaded, "visual", None)
    if visual is not None and getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    return Mesh(np.asarray(loaded.vertices, dtype=np.float64), np.asarray(loaded.faces, dtype=np.int64), colors)


def mesh_from_grid(values: np.ndarray, level: float, bound: float = 1.0) -> Mesh:
    """Marching cubes of a grid (R, R, R) indexed (x, y, z) spanning [-bound, bound]^3 corner to corner.

    ``values`` must be larger inside (a density, or a negated SDF). The grid is padded with its minimum so the
    mesh is closed even where the object touches the box. No colours: see :func:`colour_vertices`.
    """
    from skimage.measure import marching_cubes

    values = np.asarray(values, dtype=np.float64)
    r = values.shape[0]
    if not values.min() < level < values.max():
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    padded = np.pad(values, 1, constant_values=min(values.min(), level - 1.0))  # (R+2, R+2, R+2)
    h = 2.0 * bound / (r - 1)
    verts, faces, _, _ = marching_cubes(padded, level=level, spacing=(h, h, h))
    verts = verts - bound - h  # grid index 0 of the padded grid sits one voxel outside -bound
    return Mesh(verts, faces[:, ::-1].astype(np.int64))  # skimage winds inward for "larger inside"


def colour_vertices(mesh: Mesh, field: object, chunk: int = 65536) -> Mesh:
    """The mesh with vertex colours from a renderable's colour output at its vertices."""
    if len(mesh.vertices) == 0:
        return mesh
    pts = torch.from_numpy(mesh.vertices).float().to(field_device(field))
    with torch.no_grad():
        colours = torch.cat([field(pts[i : i + chunk])[1] for i in range(0, len(pts), chunk)])  # type: ignore[operator]
    return Mesh(mesh.vertices, mesh.faces, colours.double().clamp(0, 1).cpu().numpy())


def extract_mesh(field: object, resolution: int = 64, threshold: float | None = None) -> Mesh:
    """Coloured surface mesh of a field.

    Fields with an ``sdf`` method (the refined stage) are cut at the SDF level ``threshold`` (default 0); others
    at the density ``threshold`` (default ``DENSITY_THRESHOLD``, 1/world unit). Enclosed hollows of a density
    field are filled first, so the mesh is a solid's outer surface.
    """
    from scipy.ndimage import binary_fill_holes

    bound = float(getattr(getattr(field, "config", None), "bound", 1.0))
    if hasattr(field, "sdf"):
        level = 0.0 if threshold is None else float(threshold)
        axis = torch.linspace(-bound, bound, resolution, device=field_device(field))
        pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)  # (R^3, 3)
        with torch.no_grad():
            sdf = field.sdf(pts).reshape(resolution, resolution, resolution).double().cpu().numpy()  # type: ignore
        mesh = mesh_from_grid(-sdf, -level, bound)
    else:
        level = DENSITY_THRESHOLD if threshold is None else float(threshold)
        density, _ = query_grid(field, resolution, bound)
        values = density.numpy().astype(np.float64)
        hollow = binary_fill_holes(values > level) & ~(values > level)
        values[hollow] = 2.0 * level  # enclosed low-density pockets are inside the solid
        mesh = mesh_from_grid(values, level, bound)
    return colour_vertices(mesh, field)
