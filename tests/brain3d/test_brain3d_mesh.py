"""Marching-cubes meshes vs closed-form volume/area, export round trips, mesh/field turntables and GIFs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from neuroattn.brain3d.cameras import orbit_cameras
from neuroattn.brain3d.mesh import Mesh, extract_mesh, load_mesh, mesh_from_grid
from neuroattn.brain3d.shapes import default_scene, grid_points
from neuroattn.brain3d.turntable import render_turntable, save_gif
from neuroattn.errors import InvalidInputError

# exact volume of default_scene(): sphere r=0.45 + box 0.6 x 0.7 x 0.6 - the sphere's cap of height 0.1 inside the box
SCENE_VOLUME = 4 / 3 * math.pi * 0.45**3 + 0.6 * 0.7 * 0.6 - math.pi * 0.1**2 * (3 * 0.45 - 0.1) / 3


@pytest.mark.parametrize("resolution", [48, 64])
def test_sphere_mesh_volume_and_area_match_closed_forms(resolution: int) -> None:
    r, centre = 0.6, np.array([0.1, -0.05, 0.0])
    sdf = np.linalg.norm(grid_points(resolution).numpy() - centre, axis=-1) - r
    mesh = mesh_from_grid(-sdf, 0.0)
    assert abs(mesh.volume / (4 / 3 * math.pi * r**3) - 1) < 0.01
    assert abs(mesh.area / (4 * math.pi * r**2) - 1) < 0.01
    assert np.allclose(mesh.vertices.mean(0), centre, atol=0.01)


def test_scene_mesh_volume_and_colours() -> None:
    scene = default_scene()
    mesh = extract_mesh(scene, 64)  # the scene has an sdf: cut at its zero level set
    assert abs(mesh.volume / SCENE_VOLUME - 1) < 0.02
    red, blue = np.array(scene.primitives[0].color), np.array(scene.primitives[1].color)
    left, right = mesh.vertices[:, 0] < -0.5, mesh.vertices[:, 0] > 0.5
    assert np.allclose(mesh.vertex_colors[left], red, atol=1e-6)
    assert np.allclose(mesh.vertex_colors[right], blue, atol=1e-6)


def test_density_mesh_fills_enclosed_hollows() -> None:
    def shell(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        radius = points.norm(dim=-1)
        return ((radius > 0.3) & (radius < 0.6)).float() * 100.0, torch.full((len(points), 3), 0.5)

    mesh = extract_mesh(shell, 64, threshold=50.0)
    assert abs(mesh.volume / (4 / 3 * math.pi * 0.6**3) - 1) < 0.03  # the outer surface only, not outer - inner


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_export_round_trip(tmp_path, suffix: str) -> None:
    mesh = extract_mesh(default_scene(), 24)
    path = mesh.save(tmp_path / f"object{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # atomic: no temporary left behind
    back = load_mesh(path)
    assert np.allclose(back.vertices, mesh.vertices, atol=1e-5)
    assert np.array_equal(back.faces, mesh.faces)
    if suffix in (".ply", ".glb"):
        assert back.vertex_colors is not None
        assert np.abs(back.vertex_colors - mesh.vertex_colors).max() <= 0.5 / 255 + 1e-9
    assert abs(back.volume - mesh.volume) < 1e-4


def test_export_errors(tmp_path) -> None:
    mesh = extract_mesh(default_scene(), 16)
    with pytest.raises(InvalidInputError):
        mesh.save(tmp_path / "object.stl")
    with pytest.raises(InvalidInputError):
        Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)).save(tmp_path / "empty.obj")
    with pytest.raises(InvalidInputError):
        load_mesh(tmp_path / "absent.ply")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_turntables_of_field_and_mesh_match_the_exact_silhouettes(tmp_path) -> None:
    scene, n, size = default_scene(), 4, 48
    field_frames = render_turntable(scene, n, size, elevation=20.0)
    mesh_frames = render_turntable(extract_mesh(scene, 64), n, size, elevation=20.0)
    assert field_frames.shape == mesh_frames.shape == (n, size, size, 3) and field_frames.dtype == np.uint8
    for k, cam in enumerate(orbit_cameras(n, elevation=20.0)):
        exact = scene.render(cam, size).mask.numpy()
        for frames in (field_frames, mesh_frames):
            drawn = (frames[k].astype(int) != 255).any(-1)  # white background
            assert _iou(drawn, exact) >= 0.97
    path = save_gif(mesh_frames, tmp_path / "turntable.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == n and gif.size == (size, size)
    with pytest.raises(InvalidInputError):
        save_gif(mesh_frames.astype(np.float32), tmp_path / "bad.gif")
