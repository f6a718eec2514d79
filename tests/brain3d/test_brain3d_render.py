"""Volume renderer vs closed-form silhouettes and depths of analytic spheres and boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull
from skimage.draw import polygon

from neuroattn.brain3d.cameras import Camera, get_rays, project_points
from neuroattn.brain3d.field import FieldConfig, RadianceField
from neuroattn.brain3d.render import ray_box, render_view
from neuroattn.brain3d.shapes import Box, PrimitiveScene, Sphere


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("camera", [Camera(0, 0, 3.0, 45), Camera(70, 30, 2.6, 50)])
def test_sphere_silhouette_is_the_projected_disk(camera: Camera) -> None:
    r, size = 0.6, 65
    out = render_view(PrimitiveScene((Sphere((0, 0, 0), r),)), camera, size, n_samples=96)
    # closed form: a pixel sees the sphere when its ray's angle to the optical axis is below asin(r / d)
    _, dirs = get_rays(camera, size, size, dtype=torch.float64)
    forward = camera.basis()[2]
    angle = torch.arccos((dirs @ forward).clamp(-1, 1)).numpy()
    disk = angle <= math.asin(r / camera.radius)
    assert disk.sum() > 500
    assert _iou(out.opacity.numpy() > 0.5, disk) >= 0.95
    # the centre pixel (odd size) looks straight at the centre: first surface at distance - r
    # the renderer's depth is a sample midpoint, so it lies within one sample bin behind the surface
    depth = float(out.depth[size // 2, size // 2])
    t_near, t_far, _ = ray_box(camera.position[None], forward[None], 1.0)
    bin_length = float(t_far - t_near) / 96
    assert 0.0 <= depth - (camera.radius - r) <= bin_length


@pytest.mark.parametrize("camera", [Camera(0, 0, 3.0, 45), Camera(35, 25, 3.0, 45)])
def test_box_silhouette_is_the_projected_hull(camera: Camera) -> None:
    size = 64
    box = Box((0.1, -0.1, 0.05), (0.4, 0.3, 0.5))
    out = render_view(PrimitiveScene((box,)), camera, size, n_samples=96)
    corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=torch.float64)
    corners = corners * torch.tensor(box.half_size) + torch.tensor(box.center)
    rc, _ = project_points(camera, corners, size, size)
    hull = rc.numpy()[ConvexHull(rc.numpy()).vertices]
    truth = np.zeros((size, size), dtype=bool)
    rr, cc = polygon(hull[:, 0] - 0.5, hull[:, 1] - 0.5, shape=(size, size))  # pixel (i, j) has centre (i+.5, j+.5)
    truth[rr, cc] = True
    assert truth.sum() > 300
    assert _iou(out.opacity.numpy() > 0.5, truth) >= 0.95
    # and against the exact ray-cast render of the same scene
    exact = PrimitiveScene((box,)).render(camera, size)
    assert _iou(out.opacity.numpy() > 0.5, exact.mask.numpy()) >= 0.97


def test_transparent_field_renders_the_background_exactly() -> None:
    def empty(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(points.shape[0]), torch.rand(points.shape[0], 3)

    bg = torch.tensor([0.2, 0.5, 0.9])
    out = render_view(empty, Camera(10, 20), 16, background=bg)
    assert torch.equal(out.rgb, bg[:, None, None].expand(3, 16, 16))
    assert torch.equal(out.opacity, torch.zeros(16, 16))


def test_colour_of_an_opaque_sphere_and_gradients_reach_the_field() -> None:
    out = render_view(PrimitiveScene((Sphere((0, 0, 0), 0.5, (0.9, 0.1, 0.3)),)), Camera(), 33, background=0.0)
    assert torch.allclose(out.rgb[:, 16, 16], torch.tensor([0.9, 0.1, 0.3]), atol=1e-4)
    field = RadianceField(FieldConfig(resolution=8, features=4, hidden=8))
    render_view(field, Camera(), 8, n_samples=16).rgb.sum().backward()
    assert field.grid.grad is not None and field.grid.grad.abs().sum() > 0
