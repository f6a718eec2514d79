"""TransformerBlock over every attention spec: forward + backward, pre-LN structure, MLP variants, DropPath."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroattn.attention import Axial, Dense, Linear, Neighborhood, Window
from neuroattn.nn import DropPath, Mlp, SwiGLU, TransformerBlock

SPECS = {
    "dense": Dense(),
    "dense-causal": Dense(causal=True),
    "neighborhood": Neighborhood(3),
    "neighborhood-dilated-causal": Neighborhood(3, dilation=2, causal=(True, False)),
    "window": Window(2),
    "window-shifted": Window(2, shift=1),
    "axial": Axial(),
    "linear": Linear(),
}
SPATIAL = {2: (6, 6), 3: (4, 4, 4)}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_block_forward_backward_every_spec(name: str, mlp: str) -> None:
    torch.manual_seed(0)
    spec = SPECS[name]
    block = TransformerBlock(16, 2, spec, mlp=mlp, mlp_ratio=2.0, kv_heads=1, rope="axial", drop_path=0.1)
    x = torch.randn(2, *SPATIAL[2], 16, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["dense", "neighborhood", "window", "axial", "linear"])
def test_block_runs_on_3d_tokens_with_spatial_shape(name: str) -> None:
    torch.manual_seed(1)
    block = TransformerBlock(8, 2, SPECS[name], mlp_ratio=1.0).eval()
    x = torch.randn(1, 64, 8)
    out = block(x, spatial_shape=SPATIAL[3])
    assert out.shape == x.shape
    torch.testing.assert_close(out, block(x.reshape(1, 4, 4, 4, 8)).reshape(1, 64, 8))


def test_block_is_pre_ln_residual_composition() -> None:
    torch.manual_seed(2)
    block = TransformerBlock(16, 4, Neighborhood(3), layer_scale=0.5, cross_attention=True, context_dim=6).eval()
    x, ctx = torch.randn(2, 5, 5, 16), torch.randn(2, 3, 6)
    h = x + 0.5 * block.attn(block.norm1(x))
    h = h + 0.5 * block.cross_attn(block.norm_cross(h), context=ctx)
    expected = h + 0.5 * block.mlp(block.norm2(h))
    torch.testing.assert_close(block(x, context=ctx), expected)
    with torch.no_grad():
        for ls in (block.ls1, block.ls_cross, block.ls2):
            ls.gamma.zero_()
    assert torch.equal(block(x, context=ctx), x)  # zero layer scale: every branch is off
    with pytest.raises(ValueError, match="pass context"):
        block(x)


def test_cross_attention_context_mask_hides_padded_tokens() -> None:
    torch.manual_seed(3)
    block = TransformerBlock(16, 2, cross_attention=True, context_dim=12, mlp="swiglu").eval()
    x, ctx = torch.randn(2, 9, 16), torch.randn(2, 4, 12)
    keep = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = block(x, context=ctx, context_mask=keep)
    noisy = ctx.clone()
    noisy[0, 2:] = 50.0
    torch.testing.assert_close(block(x, context=noisy, context_mask=keep), out)
    assert (block(x, context=noisy) - block(x, context=ctx)).abs()[0].max() > 1e-3


def test_swiglu_and_mlp_formulas_and_sizes() -> None:
    torch.manual_seed(4)
    x = torch.randn(3, 8)
    swiglu = SwiGLU(8, 12)
    w1, w2 = swiglu.w12.weight[:12], swiglu.w12.weight[12:]
    b1, b2 = swiglu.w12.bias[:12], swiglu.w12.bias[12:]
    expected = swiglu.w3(nn.functional.silu(x @ w1.T + b1) * (x @ w2.T + b2))
    torch.testing.assert_close(swiglu(x), expected)
    mlp = Mlp(8, 12, act_layer=nn.ReLU)
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))))
    gelu_block = TransformerBlock(96, 4, mlp="gelu")
    swiglu_block = TransformerBlock(96, 4, mlp="swiglu")
    n_gelu = sum(p.numel() for p in gelu_block.mlp.parameters())
    n_swiglu = sum(p.numel() for p in swiglu_block.mlp.parameters())
    assert abs(n_swiglu - n_gelu) / n_gelu < 0.02  # 2/3 hidden width keeps the parameter count
    with pytest.raises(ValueError, match="'mlp' must be one of"):
        TransformerBlock(16, 2, mlp="relu")


def test_drop_path_drops_whole_samples_and_keeps_the_mean() -> None:
    torch.manual_seed(5)
    layer = DropPath(0.25)
    x = torch.ones(4000, 3, 2)
    y = layer(x)
    per_sample = y.flatten(1)
    values = per_sample.unique()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == torch.tensor(1.0) / 0.75
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)  # a sample is kept or dropped whole
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.03  # binomial sd ~0.007
    assert torch.equal(layer.eval()(x), x)
