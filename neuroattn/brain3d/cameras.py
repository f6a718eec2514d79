"""Pinhole cameras on an orbit around the origin, and the rays through their pixel centres."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# World frame: y is up; an orbit camera at azimuth 0 and elevation 0 sits on the +z axis looking at the origin.


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking at the origin.

    Attributes
    ----------
    azimuth : degrees about the y (up) axis, counter-clockwise seen from above; 0 is the +z axis.
    elevation : degrees above the xz plane.
    radius : distance from the origin (world units).
    fov : full vertical field of view (degrees); pixels are square.
    """

    azimuth: float = 0.0
    elevation: float = 0.0
    radius: float = 3.0
    fov: float = 45.0

    @property
    def position(self) -> Tensor:
        """Camera centre (3,) in world coordinates, float64."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return torch.tensor([self.radius * math.cos(el) * math.sin(az), self.radius * math.sin(el),
                             self.radius * math.cos(el) * math.cos(az)], dtype=torch.float64)

    def basis(self) -> tuple[Tensor, Tensor, Tensor]:
        """Unit (right, up, forward) vectors (3,) each, float64; forward points from the camera to the origin."""
        eye = self.position
        forward = -eye / eye.norm()
        world_up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        right = torch.linalg.cross(forward, world_up)
        if right.norm() < 1e-9:  # looking straight down or up: any horizontal right vector will do
            right = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        return right, up, forward

    def focal(self, height: int) -> float:
        """Focal length in pixels for an image ``height`` pixels tall."""
        return 0.5 * height / math.tan(math.radians(self.fov) / 2)


def get_rays(camera: Camera, height: int, width: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Rays through the pixel centres of a ``height`` x ``width`` image.

    Returns
    -------
    origins : (H, W, 3) camera centre repeated.
    directions : (H, W, 3) unit directions; row 0 is the top of the image, column 0 its left.
    """
    right, up, forward = camera.basis()
    f = camera.focal(height)
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    v = (height / 2 - rows) / f  # (H,) upwards
    u = (cols - width / 2) / f  # (W,) rightwards
    dirs = forward + u[None, :, None] * right + v[:, None, None] * up  # (H, W, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = camera.position.expand(height, width, 3)
    return origins.to(dtype), dirs.to(dtype)


def project_points(camera: Camera, points: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel coordinates of world points (N, 3): (N, 2) as (row, col) in pixel units, and depth (N,) along forward."""
    right, up, forward = camera.basis()
    rel = points.to(torch.float64) - camera.position  # (N, 3)
    depth = rel @ forward
    f = camera.focal(height)
    col = width / 2 + f * (rel @ right) / depth
    row = height / 2 - f * (rel @ up) / depth
    return torch.stack([row, col], dim=-1), depth


def orbit_cameras(n: int, *, elevation: float = 15.0, radius: float = 3.0, fov: float = 45.0,
                  start: float = 0.0) -> list[Camera]:
    """``n`` cameras evenly spaced in azimuth (degrees from ``start``) at one elevation."""
    return [Camera(start + 360.0 * k / n, elevation, radius, fov) for k in range(n)]


def random_cameras(n: int, generator: torch.Generator, *, elevation_range: tuple[float, float] = (-10.0, 45.0),
                   radius: float = 3.0, fov: float = 45.0) -> list[Camera]:
    """``n`` cameras at uniform random azimuth and elevation in ``elevation_range`` (degrees)."""
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
    lo, hi = elevation_range
    return [Camera(360.0 * float(a), lo + (hi - lo) * float(e), radius, fov) for a, e in u]
