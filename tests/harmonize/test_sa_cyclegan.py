"""SA-CycleGAN-2.5D architecture, the real 2.5D cycle pass, spectral norm and the loss functions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch import nn

from neuroattn.attention import Dense, Neighborhood
from neuroattn.errors import ConfigError
from neuroattn.harmonize.sa_cyclegan import Generator, SACycleGAN, SACycleGANConfig, count_parameters
from neuroattn.harmonize.training import (
    CycleGANTask,
    SliceBank,
    UnpairedStacks,
    cycle_pass,
    lsgan_loss,
    restack,
    ssim_map,
    sub_stacks,
    weighted_mean,
)
from neuroattn.nn import SpatialSelfAttention2d
from neuroattn.nn.conv import CBAM, MultiScaleDiscriminator, ResnetBlock

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(base_channels=8, n_res_blocks=3, disc_channels=8, disc_layers=2)


def attention_layers(module: nn.Module) -> list[SpatialSelfAttention2d]:
    return [m for m in module.modules() if isinstance(m, SpatialSelfAttention2d)]


@pytest.mark.parametrize(("modalities", "size"), [(1, (21, 27)), (4, (16, 19))])
def test_generator_shapes_with_padding(modalities, size):
    torch.manual_seed(0)
    gen = Generator(SACycleGANConfig(modalities=modalities, **SMALL))
    x = torch.rand(2, 3 * modalities, *size) * 2 - 1
    y = gen(x)
    assert y.shape == (2, modalities, *size)
    assert y.abs().max() < 1  # tanh
    y.mean().backward()
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad and p.dim() > 1)
    with pytest.raises(ValueError, match="expects"):
        gen(torch.zeros(1, 3 * modalities + 1, 8, 8))


def test_published_layout_at_base_64():
    gen = Generator(SACycleGANConfig(modalities=4))
    assert gen.stem[1].in_channels == 12 and gen.stem[1].out_channels == 64 and gen.stem[1].kernel_size == (7, 7)
    assert gen.down2[0].out_channels == 256 and gen.head[1].kernel_size == (7, 7)
    kinds = [type(b).__name__ for b in gen.blocks]
    assert kinds == ["ResnetBlock"] * 3 + ["AttentionResBlock"] * 3 + ["ResnetBlock"] * 3
    assert all(isinstance(gen.blocks[i].gate, CBAM) for i in (0, 1, 2, 6, 7, 8))
    layers = attention_layers(gen)
    assert len(layers) == 4 and layers[-1] is gen.global_attention  # 3 block layers + the global one
    assert all(a.query.out_channels == 256 // 8 and isinstance(a.spec, Dense) for a in layers)
    assert isinstance(gen.up2.fuse[1], nn.Conv2d) and gen.up2.fuse[1].in_channels == 64 + 64  # U-Net skip
    assert 12_000_000 < count_parameters(gen) < 12_300_000


def test_attention_starts_as_identity():
    torch.manual_seed(1)
    gen = Generator(SACycleGANConfig(**SMALL))
    layers = attention_layers(gen)
    assert len(layers) == 2 and all(float(a.gamma.detach()) == 0.0 for a in layers)
    stripped = copy.deepcopy(gen)
    for module in list(stripped.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SpatialSelfAttention2d):
                setattr(module, child_name, nn.Identity())
    assert not attention_layers(stripped)
    x = torch.rand(2, 3, 20, 24) * 2 - 1
    torch.testing.assert_close(gen(x), stripped(x), rtol=0, atol=0)
    with torch.no_grad():
        layers[0].gamma.fill_(0.5)
    assert not torch.allclose(gen(x), stripped(x))  # a non-zero gamma does mix attention in


def test_ablation_and_neighborhood_variants():
    none = SACycleGAN(SACycleGANConfig(attention="none", n_res_blocks=9, base_channels=4, disc_channels=4))
    assert not attention_layers(none)
    assert isinstance(none.g_ab.global_attention, nn.Identity)
    middle = [none.g_ab.blocks[i] for i in (3, 4, 5)]
    assert all(type(b) is ResnetBlock and isinstance(b.gate, nn.Identity) for b in middle)
    torch.manual_seed(2)
    hood = Generator(SACycleGANConfig(attention="neighborhood", neighborhood_kernel=5, **SMALL))
    layers = attention_layers(hood)
    assert len(layers) == 2 and all(a.spec == Neighborhood(kernel_size=5) for a in layers)
    with torch.no_grad():
        for a in layers:
            a.gamma.fill_(1.0)
        assert hood(torch.rand(1, 3, 28, 36)).shape == (1, 1, 28, 36)  # 7 x 9 bottleneck tokens
    with pytest.raises(ConfigError, match="'attention' must be one of"):
        SACycleGANConfig(attention="global")
    with pytest.raises(ConfigError, match="context_slices"):
        SACycleGANConfig(context_slices=2)


def test_discriminator_is_spectrally_normalized():
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(2, base_channels=16, n_layers=3, n_scales=2)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 5  # per scale: 4 strided/unstrided convs + the 1-channel output conv
    assert all(torch.nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    assert all(c.kernel_size == (4, 4) for c in convs)
    x = torch.randn(2, 2, 64, 64)
    for _ in range(30):  # one power iteration per training-mode forward
        outputs = disc(x)
    assert [o.shape for o in outputs] == [(2, 1, 6, 6), (2, 1, 2, 2)]
    raw = []
    for conv in convs:
        weight = conv.weight.detach()  # W / sigma
        assert torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2) == pytest.approx(1.0, abs=0.05)
        original = conv.parametrizations.weight.original.detach()
        raw.append(float(torch.linalg.matrix_norm(original.reshape(original.shape[0], -1), ord=2)))
    assert max(abs(r - 1) for r in raw) > 0.2  # the unnormalized weights are not 1-Lipschitz by themselves
    pooled = nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    disc.eval()
    torch.testing.assert_close(disc(x)[1], disc.scales[1](pooled))


def test_cycle_uses_real_neighbouring_slices():
    """The A->B->A cycle of centre slice z feeds G_BA the translations of slices z-1, z, z+1 (never z three times)."""
    torch.manual_seed(3)
    model = SACycleGAN(SACycleGANConfig(modalities=2, **SMALL))
    batch, m = 2, 2
    window_a = torch.rand(batch, 5 * m, 20, 24) * 2 - 1  # slices z-2 .. z+2, slice-major channels
    window_b = torch.rand(batch, 5 * m, 20, 24) * 2 - 1
    seen: list[torch.Tensor] = []
    hook = model.g_ba.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    out = cycle_pass(model, window_a, window_b)
    hook.remove()
    reconstruction_inputs = [s for s in seen if s.shape[0] == batch]
    assert len(reconstruction_inputs) == 1
    fed = reconstruction_inputs[0]  # (B, 3M, H, W)
    with torch.no_grad():
        expected = [model.g_ab(window_a[:, j * m : (j + 3) * m]) for j in range(3)]  # stacks around z-1, z, z+1
    for j in range(3):
        torch.testing.assert_close(fed[:, j * m : (j + 1) * m], expected[j], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)
    assert not torch.allclose(expected[1], expected[2], atol=1e-3)
    torch.testing.assert_close(out.fake_b, expected[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.real_a, window_a[:, 2 * m : 3 * m])
    with torch.no_grad():
        torch.testing.assert_close(out.rec_a, model.g_ba(fed), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.idt_b, model.g_ab(window_b[:, m : 4 * m]), atol=1e-5, rtol=1e-4)


def test_sub_stacks_and_restack_are_inverse_layouts():
    window = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 15, 1, 1)  # B=2, 5 slices x M=3
    subs = sub_stacks(window, 3, 3)  # (3B, 9, 1, 1), offset-major
    assert subs.shape == (6, 9, 1, 1)
    torch.testing.assert_close(subs[2 + 1], window[1, 3:12])  # offset 1 of sample 1: slices 1..3
    centres = subs[:, 3:6]  # each sub-stack's centre slice: slices 1, 2, 3 of the window
    torch.testing.assert_close(restack(centres, 3), window[:, 3:12])


def test_ssim_matches_skimage_in_the_interior():
    rng = np.random.default_rng(0)
    x = rng.random((30, 34))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    ours = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0, 0].numpy()
    _, ref = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, full=True)
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-6)
    same = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(x)[None, None])
    torch.testing.assert_close(same, torch.ones_like(same))


def test_loss_helpers_closed_forms():
    values = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])  # (2, 1, 1, 2)
    weights = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    assert float(weighted_mean(values, weights)) == pytest.approx((1 + 5 + 7) / 3)
    scores = [torch.full((2, 1, 3, 3), 0.5), torch.full((2, 1, 1, 1), 2.0)]
    assert float(lsgan_loss(scores, 1.0)) == pytest.approx((0.25 + 1.0) / 2)
    assert float(lsgan_loss(scores, 0.0)) == pytest.approx((0.25 + 4.0) / 2)


def test_task_losses_respect_the_mask():
    torch.manual_seed(0)
    model = SACycleGAN(SACycleGANConfig(**SMALL))
    rng = np.random.default_rng(0)
    vol = [rng.uniform(-1, 1, (1, 24, 28, 6)).astype(np.float32) for _ in range(2)]
    mask = np.zeros((24, 28, 6), dtype=bool)
    mask[4:20, 4:24] = True
    data = UnpairedStacks(SliceBank(vol[:1], [mask]), SliceBank(vol[1:], [mask]))
    task = CycleGANTask(model, data)
    fake = torch.zeros(1, 1, 24, 28)
    real = torch.zeros(1, 1, 24, 28)
    weight = torch.from_numpy(mask[None, None, :, :, 0].astype(np.float32))  # background weight 0
    outside = fake.clone()
    outside[..., :2, :] = 1.0
    assert float(task._image_terms(outside, real, weight)[0]) == 0.0
    inside = fake.clone()
    inside[..., 10, 10] = 1.0
    assert float(task._image_terms(inside, real, weight)[0]) == pytest.approx(1 / mask[:, :, 0].sum())
    batch = {k: torch.stack([data[i][k] for i in range(2)]) for k in ("a", "a_mask", "b", "b_mask")}
    items = list(task.losses(batch, 0))
    assert [name for name, _, _ in items] == ["G", "D"]
    assert all(loss.ndim == 0 and torch.isfinite(loss) for _, loss, _ in items)
    g_metrics = items[0][2]
    recomputed = (g_metrics["G/adv"] + 10 * g_metrics["G/cycle"] + 5 * g_metrics["G/identity"]
                  + g_metrics["G/1-ssim"])
    assert float(items[0][1].detach()) == pytest.approx(float(recomputed), rel=1e-5)  # published weights 1, 10, 5, 1
