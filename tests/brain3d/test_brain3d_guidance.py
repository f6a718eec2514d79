"""Score distillation: exact surrogate gradient, v/epsilon handling, offline loading, descent on a planted target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuroattn.brain3d.cameras import Camera
from neuroattn.brain3d.field import FieldConfig, RadianceField
from neuroattn.brain3d.guidance import ScoreDistillation, load_guidance, tiny_guidance_scheduler, tiny_guidance_unet
from neuroattn.brain3d.render import render_view
from neuroattn.decode.autoencoder import tiny_autoencoder
from neuroattn.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, DIM = 16, 16


class _Out:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class _OracleUNet(torch.nn.Module):
    """Predicts the exact epsilon (or v) of a known clean image x0: the ideal denoiser of a one-image dataset."""

    def __init__(self, x0: torch.Tensor, scheduler: object, kind: str) -> None:
        super().__init__()
        self.x0, self.a = x0, scheduler.alphas_cumprod.float()  # type: ignore[attr-defined]
        self.config = type("C", (), {"cross_attention_dim": DIM, "class_embed_type": None})()
        self.kind = kind

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> _Out:
        a = self.a[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        return _Out(eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.x0)


def _target() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    disk = (((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) < (SIZE / 4) ** 2).float()
    return torch.stack([0.5 + 0.4 * disk, 0.5 - 0.4 * disk, 0.5 - 0.4 * disk])[None]  # (1, 3, S, S) red disk


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_sds_gradient_is_w_times_x_minus_x0_for_the_ideal_denoiser(kind: str) -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=kind, clip_sample=False)
    x0 = _target() * 2 - 1
    sds = ScoreDistillation(_OracleUNet(x0, sched, kind), sched, guidance_scale=1.0, t_range=(0.1, 0.9))
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = sds(images, torch.zeros(1, 1, DIM), generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    # closed form: eps_pred - eps = sqrt(a) (x - x0) / sqrt(1 - a), so the pixel gradient is
    # 2 (the [0,1] -> [-1,1] map) * (1 - a) * sqrt(a) / sqrt(1 - a) * (x - x0), averaged over all elements
    a = sched.alphas_cumprod[out.timesteps].float().view(-1, 1, 1, 1)
    expected = 2 * (1 - a) * a.sqrt() / (1 - a).sqrt() * (images.detach() * 2 - 1 - x0) / images.numel()
    assert torch.allclose(images.grad, expected, atol=1e-4, rtol=1e-3)
    assert out.timesteps.min() >= 100 and out.timesteps.max() < 900


def test_config_and_loading_errors(tmp_path) -> None:
    unet = tiny_guidance_unet(SIZE, cross_attention_dim=DIM, block_channels=(16, 32))
    with pytest.raises(ConfigError):
        ScoreDistillation(unet, tiny_guidance_scheduler(), t_range=(0.5, 0.2))
    sds = ScoreDistillation(unet, tiny_guidance_scheduler())
    with pytest.raises(ConfigError):
        sds(torch.rand(1, 3, SIZE, SIZE), torch.zeros(1, 1, DIM + 1))
    with pytest.raises(CheckpointError):
        load_guidance(tmp_path / "missing")


def test_load_guidance_round_trips_a_saved_pipeline_folder(tmp_path) -> None:
    unet = tiny_guidance_unet(SIZE, cross_attention_dim=DIM, block_channels=(16, 32), seed=3)
    sched = tiny_guidance_scheduler()
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    loaded = load_guidance(tmp_path, guidance_scale=3.0, trained=False)
    assert loaded.trained is False and loaded.guidance_scale == 3.0
    x, t, cond = torch.randn(1, 3, SIZE, SIZE), torch.tensor([300]), torch.randn(1, 1, DIM)
    with torch.no_grad():
        assert torch.allclose(loaded.unet(x, t, encoder_hidden_states=cond).sample,
                              unet(x, t, encoder_hidden_states=cond).sample, atol=1e-5)
    assert torch.allclose(loaded.alphas_cumprod, sched.alphas_cumprod.float())


def test_sds_through_a_latent_autoencoder_reaches_the_field() -> None:
    vae = tiny_autoencoder(32).model
    unet = tiny_guidance_unet(8, in_channels=vae.config.latent_channels, cross_attention_dim=DIM,
                              block_channels=(16, 32))
    sds = ScoreDistillation(unet, tiny_guidance_scheduler(), guidance_scale=5.0, vae=vae)
    field = RadianceField(FieldConfig(resolution=8, features=4, hidden=8, blob=3.0))
    rgb = render_view(field, Camera(30, 10), 32, n_samples=16).rgb[None]
    out = sds(rgb, torch.randn(1, 2, DIM), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.grad_norm > 0
    assert field.grid.grad is not None and field.grid.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def fitted_unet() -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny UNet trained for a few hundred steps on one image (a red disk on grey) under one condition."""
    torch.manual_seed(0)
    unet = tiny_guidance_unet(SIZE, cross_attention_dim=DIM, block_channels=(16, 32))
    sched = tiny_guidance_scheduler()
    cond = torch.randn(1, 1, DIM, generator=torch.Generator().manual_seed(0))
    x0 = _target() * 2 - 1
    opt = torch.optim.Adam(unet.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        noise = torch.randn(4, 3, SIZE, SIZE, generator=gen)
        t = torch.randint(0, 1000, (4,), generator=gen)
        pred = unet(sched.add_noise(x0.expand(4, -1, -1, -1), noise, t), t,
                    encoder_hidden_states=cond.expand(4, -1, -1)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unet, cond


def _distil_image(sds: ScoreDistillation, cond: torch.Tensor, steps: int = 100) -> list[float]:
    logits = torch.zeros(1, 3, SIZE, SIZE, requires_grad=True)  # a grey start
    opt = torch.optim.SGD([logits], lr=1.0 * logits.numel())  # the surrogate averages over elements
    gen = torch.Generator().manual_seed(2)
    errors = []
    for _ in range(steps):
        image = torch.sigmoid(logits)
        errors.append(float(F.mse_loss(image.detach(), _target())))
        out = sds(image, cond, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return [*errors, float(F.mse_loss(torch.sigmoid(logits).detach(), _target()))]


def test_sds_moves_an_image_towards_what_the_trained_denoiser_favours(fitted_unet) -> None:
    unet, cond = fitted_unet
    sched = tiny_guidance_scheduler()
    trained = _distil_image(ScoreDistillation(unet, sched, guidance_scale=1.0, t_range=(0.2, 0.8)), cond)
    untrained = _distil_image(ScoreDistillation(tiny_guidance_unet(SIZE, cross_attention_dim=DIM,
                                                                   block_channels=(16, 32)), sched,
                                                guidance_scale=1.0, t_range=(0.2, 0.8)), cond)
    assert trained[-1] < 0.6 * trained[0]  # measured 0.34x
    assert untrained[-1] > 0.8 * untrained[0]  # a random denoiser does not pull towards the planted image
