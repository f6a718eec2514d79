"""Stage 1 recovers a planted 3-D object from its views; single view + score distillation runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroattn.brain3d.cameras import Camera, orbit_cameras
from neuroattn.brain3d.field import DENSITY_THRESHOLD, RadianceField, query_grid
from neuroattn.brain3d.guidance import ScoreDistillation, tiny_guidance_scheduler, tiny_guidance_unet
from neuroattn.brain3d.render import render_view
from neuroattn.brain3d.shapes import default_scene
from neuroattn.brain3d.stage1 import ReferenceView, Stage1Config, estimate_background, foreground_mask, run_stage1
from neuroattn.errors import ConfigError, InvalidInputError

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
# ten training views alternating above and below the equator; held-out views lie between them at another height
TRAIN = [Camera(36.0 * k + 10, 40.0 if k % 2 else -15.0) for k in range(10)]
HELD_OUT = orbit_cameras(5, elevation=25.0, start=47.0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _views() -> list[ReferenceView]:
    scene = default_scene()
    return [ReferenceView(cam, (r := scene.render(cam, SIZE)).rgb, r.mask.float()) for cam in TRAIN]


def _scores(field: RadianceField) -> tuple[float, float]:
    scene = default_scene()
    sil = []
    for cam in HELD_OUT:
        with torch.no_grad():
            opacity = render_view(field, cam, SIZE, n_samples=64).opacity.numpy()
        sil.append(_iou(opacity > 0.5, scene.render(cam, SIZE).mask.numpy()))
    density, _ = query_grid(field, SIZE)
    return float(np.mean(sil)), _iou(density.numpy() > DENSITY_THRESHOLD, scene.occupancy(SIZE))


@pytest.fixture(scope="module")
def fitted():
    config = Stage1Config(steps=250, background=(1.0, 1.0, 1.0))
    return run_stage1(None, None, None, config, progress=False, views=_views())


def test_multi_view_reconstruction_recovers_the_planted_shape(fitted) -> None:
    sil, vox = _scores(fitted.field)
    assert sil >= 0.9  # measured 0.975 mean held-out silhouette IoU
    assert vox >= 0.7  # measured 0.83 voxel IoU at 32^3
    untrained = run_stage1(None, None, None, Stage1Config(steps=0, background=(1.0, 1.0, 1.0)), progress=False,
                           views=_views())
    sil0, vox0 = _scores(untrained.field)
    assert sil0 < sil - 0.3 and vox0 < vox - 0.3  # the same field before optimisation
    loss = fitted.history["loss"]
    assert np.mean(loss[-20:]) < 0.05 * np.mean(loss[:5])
    assert fitted.guidance_trained is None


def test_single_view_with_score_distillation_runs_end_to_end() -> None:
    scene = default_scene()
    image = scene.render(Camera(0.0, 0.0), SIZE, background=0.5).rgb  # the "decoded" 2-D image, grey background
    unet = tiny_guidance_unet(SIZE, cross_attention_dim=16, block_channels=(16, 32))
    guidance = ScoreDistillation(unet, tiny_guidance_scheduler(), guidance_scale=5.0)
    config = Stage1Config(steps=30, n_samples=24)
    result = run_stage1(image, torch.randn(1, 2, 16), guidance, config, progress=False)
    assert torch.allclose(result.background, torch.tensor([0.5, 0.5, 0.5]))
    assert result.guidance_trained is False
    hist = result.history
    assert len(hist["sds"]) == 30 and all(np.isfinite(v) for v in hist["loss"]) and max(hist["sds"]) > 0
    assert np.mean(hist["recon"][-5:]) < np.mean(hist["recon"][:5])  # the reference view is being fitted
    mask = result.views[0].mask.bool().numpy()
    assert _iou(mask, scene.render(Camera(0.0, 0.0), SIZE).mask.numpy()) > 0.99  # mask from the background


def test_background_and_mask_estimation() -> None:
    image = torch.full((3, 8, 8), 0.2)
    image[:, 2:5, 3:6] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    bg = estimate_background(image)
    assert torch.allclose(bg, torch.tensor([0.2, 0.2, 0.2]))
    assert foreground_mask(image, bg).sum() == 9


def test_input_errors() -> None:
    with pytest.raises(ConfigError):
        run_stage1(None, None, None, Stage1Config(steps=1), progress=False)
    with pytest.raises(ConfigError):
        run_stage1(torch.rand(3, 8, 8), None, ScoreDistillation(tiny_guidance_unet(8, block_channels=(16, 32)),
                                                                tiny_guidance_scheduler()), progress=False)
    with pytest.raises(InvalidInputError):
        run_stage1(torch.rand(8, 8, 3), None, None, Stage1Config(steps=1), progress=False)
    with pytest.raises(ConfigError):
        Stage1Config(recon_loss="huber")  # type: ignore[arg-type]


def test_settings_put_the_field_on_the_resolved_device() -> None:
    from neuroattn.brain3d.pipeline import Brain3DSettings

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Brain3DSettings(device="auto").stage1_config().device == expected
    assert Brain3DSettings(device="cpu").stage1_config().device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stage1_and_refine_on_cuda_match_the_cpu_run() -> None:
    from neuroattn.brain3d.refine import RefineConfig, run_refine

    views = _views()[:3]
    results = {}
    for device in ("cpu", "cuda"):
        config = Stage1Config(steps=20, background=(1.0, 1.0, 1.0), device=device)
        s1 = run_stage1(None, None, None, config, progress=False, views=views)
        assert s1.field.grid.device.type == device
        refined = run_refine(s1, None, None, None, RefineConfig(steps=5, resolution=16, mesh_resolution=24),
                             progress=False)
        assert refined.field.sdf_grid.device.type == device
        results[device] = (s1.history["loss"], refined.history["loss"], len(refined.mesh.faces))
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-3, atol=1e-5)
    assert results["cuda"][2] > 0
