"""Analytic shapes (spheres, boxes) and scenes of coloured primitives: the planted truth for Brain3D tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from neuroattn.brain3d.cameras import Camera, get_rays
from neuroattn.data.scene_generator import COLOURS

SOLID_DENSITY = 1e4  # 1/world unit: opaque within a hundredth of a world unit, a solid for any practical sampling


@dataclass(frozen=True)
class Sphere:
    """A solid sphere; ``color`` is RGB in [0, 1]."""

    center: tuple[float, float, float]
    radius: float
    color: tuple[float, float, float] = (0.8, 0.2, 0.2)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (N,) of points (N, 3): negative inside."""
        return (points - torch.as_tensor(self.center, dtype=points.dtype)).norm(dim=-1) - self.radius

    def ray_hit(self, origins: Tensor, directions: Tensor) -> Tensor:
        """First hit distance (N,) of unit-direction rays (N, 3); +inf where the ray misses."""
        oc = origins - torch.as_tensor(self.center, dtype=origins.dtype)
        b = (oc * directions).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - self.radius**2)
        t = -b - torch.sqrt(disc.clamp_min(0.0))
        return torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, float("inf")))


@dataclass(frozen=True)
class Box:
    """A solid axis-aligned box of half side lengths ``half_size``; ``color`` is RGB in [0, 1]."""

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    color: tuple[float, float, float] = (0.2, 0.3, 0.9)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (N,) of points (N, 3): negative inside."""
        q = (points - torch.as_tensor(self.center, dtype=points.dtype)).abs() - torch.as_tensor(
            self.half_size, dtype=points.dtype)
        return q.clamp_min(0.0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0.0)

    def ray_hit(self, origins: Tensor, directions: Tensor) -> Tensor:
        """First hit distance (N,) of rays (N, 3) by the slab test; +inf where the ray misses."""
        c = torch.as_tensor(self.center, dtype=origins.dtype)
        h = torch.as_tensor(self.half_size, dtype=origins.dtype)
        safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
        t0, t1 = (c - h - origins) / safe, (c + h - origins) / safe  # (N, 3)
        near = torch.minimum(t0, t1).amax(-1)
        far = torch.maximum(t0, t1).amin(-1)
        return torch.where((far >= near) & (near > 0), near, torch.full_like(near, float("inf")))


Primitive = Sphere | Box


@dataclass(frozen=True)
class PrimitiveScene:
    """Coloured solid primitives; where they overlap the earlier one's colour wins. Callable as a renderable field.

    Outside every primitive the colour is the nearest primitive's, so colours sampled on a surface are right.
    """

    primitives: tuple[Primitive, ...]
    density: float = SOLID_DENSITY  # 1/world unit inside any primitive

    def sdf(self, points: Tensor) -> Tensor:
        """Union signed distance (N,) (exact outside, a lower bound of depth inside)."""
        return torch.stack([p.sdf(points) for p in self.primitives]).amin(0)

    def __call__(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density (N,) and colour (N, 3) at points (N, 3)."""
        sdf = torch.stack([p.sdf(points) for p in self.primitives])  # (P, N)
        order = torch.arange(len(self.primitives), dtype=sdf.dtype)[:, None] * 1e-9  # ties: the earlier wins
        which = (sdf.clamp_min(0.0) + order).argmin(0)  # (N,) first containing primitive, else the nearest
        colours = torch.tensor([p.color for p in self.primitives], dtype=points.dtype)  # (P, 3)
        return (sdf <= 0).any(0).to(points.dtype) * self.density, colours[which]

    def occupancy(self, resolution: int, bound: float = 1.0) -> np.ndarray:
        """Boolean (R, R, R) grid, indexed (x, y, z), of which grid points lie inside (see ``grid_points``)."""
        pts = grid_points(resolution, bound).reshape(-1, 3)
        return (self.sdf(pts) <= 0).reshape(resolution, resolution, resolution).numpy()

    def render(self, camera: Camera, size: int, background: float | Sequence[float] = 1.0) -> AnalyticRender:
        """Exact render by ray casting (float64): colour of the first primitive hit, its depth, the silhouette."""
        origins, dirs = get_rays(camera, size, size, dtype=torch.float64)
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)  # (H*W, 3)
        hits = torch.stack([p.ray_hit(origins, dirs) for p in self.primitives])  # (P, H*W)
        depth, which = hits.min(0)
        mask = torch.isfinite(depth)
        colours = torch.tensor([p.color for p in self.primitives], dtype=torch.float64)
        bg = torch.as_tensor(background, dtype=torch.float64).expand(3)
        rgb = torch.where(mask[:, None], colours[which], bg)  # (H*W, 3)
        return AnalyticRender(rgb=rgb.T.reshape(3, size, size).float(), mask=mask.reshape(size, size),
                              depth=torch.where(mask, depth, torch.zeros_like(depth)).reshape(size, size))


@dataclass
class AnalyticRender:
    """An exact view of a primitive scene."""

    rgb: Tensor  # (3, H, W) float32 in [0, 1]
    mask: Tensor  # (H, W) bool silhouette
    depth: Tensor  # (H, W) float64 distance to the first hit along the ray; 0 off the silhouette


def grid_points(resolution: int, bound: float = 1.0) -> Tensor:
    """Points (R, R, R, 3) of a regular grid spanning [-bound, bound]^3 corner to corner, indexed (x, y, z)."""
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def default_scene() -> PrimitiveScene:
    """A red sphere beside a blue box, both inside the unit cube: the standard planted 3-D object."""
    return PrimitiveScene((Sphere((-0.3, 0.0, 0.0), 0.45, _rgb("red")),
                           Box((0.35, -0.05, 0.0), (0.3, 0.35, 0.3), _rgb("blue"))))


def random_scene(rng: np.random.Generator, max_primitives: int = 3) -> PrimitiveScene:
    """1..``max_primitives`` spheres and boxes at random places inside [-0.7, 0.7]^3, in the scene colours."""
    prims: list[Primitive] = []
    names = list(COLOURS)
    for _ in range(int(rng.integers(1, max_primitives + 1))):
        centre = tuple(float(c) for c in rng.uniform(-0.35, 0.35, size=3))
        colour = _rgb(names[int(rng.integers(len(names)))])
        if rng.random() < 0.5:
            prims.append(Sphere(centre, float(rng.uniform(0.2, 0.35)), colour))  # type: ignore[arg-type]
        else:
            half = tuple(float(h) for h in rng.uniform(0.15, 0.3, size=3))
            prims.append(Box(centre, half, colour))  # type: ignore[arg-type]
    return PrimitiveScene(tuple(prims))


def _rgb(name: str) -> tuple[float, float, float]:
    r, g, b = COLOURS[name]
    return (r / 255.0, g / 255.0, b / 255.0)
