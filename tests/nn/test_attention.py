"""MultiHeadAttention and SpatialSelfAttention2d against float64 multi-head attention written out by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from neuroattn.attention import AttentionMemoryError, Axial, Dense, Linear, Neighborhood, Window, attend
from neuroattn.attention.masks import token_mask
from neuroattn.nn import MultiHeadAttention, SpatialSelfAttention2d
from neuroattn.nn.position import apply_rope, rope_angles


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)  # module initialisation
    return torch.Generator().manual_seed(seed)


def _hand_mha(
    mha: MultiHeadAttention,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float64 multi-head attention with mha's weights; x (B, N, C) tokens, allowed (B|1, N, M), bias (h, N, M)."""
    h, kvh, hd = mha.heads, mha.kv_heads, mha.head_dim
    w = {name: p.detach().double() for name, p in mha.named_parameters()}
    x = x.double()
    ctx = x if context is None else context.double()
    q = x @ w["q_proj.weight"].T + w["q_proj.bias"]  # (B, N, h*hd)
    kv = ctx @ w["kv_proj.weight"].T + w["kv_proj.bias"]  # (B, M, 2*kvh*hd)
    k, v = kv[..., : kvh * hd], kv[..., kvh * hd :]
    out_heads = []
    for head in range(h):
        g = head // (h // kvh)
        qh = q[..., head * hd : (head + 1) * hd]  # (B, N, hd)
        kh, vh = k[..., g * hd : (g + 1) * hd], v[..., g * hd : (g + 1) * hd]  # (B, M, hd)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(hd)  # (B, N, M)
        if bias is not None:
            scores = scores + bias[head]
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        out_heads.append(scores.softmax(-1) @ vh)  # (B, N, hd)
    out = torch.cat(out_heads, dim=-1)  # (B, N, h*hd)
    return out @ w["out_proj.weight"].T + w["out_proj.bias"]


def test_dense_matches_hand_written_float64_and_grid_layouts_agree() -> None:
    gen = _seeded(0)
    mha = MultiHeadAttention(24, 3)
    x = torch.randn(2, 12, 24, generator=gen)
    out = mha(x)
    torch.testing.assert_close(out.double(), _hand_mha(mha, x), rtol=1e-5, atol=1e-6)
    # a (3, 4) grid given as tokens + spatial_shape or channels-last is the same raster-ordered sequence
    out_tokens = mha(x, spatial_shape=(3, 4))
    out_grid = mha(x.reshape(2, 3, 4, 24))
    assert out_grid.shape == (2, 3, 4, 24)
    torch.testing.assert_close(out_tokens, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_grid.reshape(2, 12, 24), out, rtol=1e-6, atol=1e-6)
    causal = MultiHeadAttention(24, 3, Dense(causal=True))
    causal.load_state_dict(mha.state_dict())
    tril = torch.ones(12, 12, dtype=torch.bool).tril()[None]
    torch.testing.assert_close(causal(x).double(), _hand_mha(mha, x, allowed=tril), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("spatial", "spec"),
    [
        ((5, 6), Neighborhood(3)),
        ((7, 6), Neighborhood((3, 5), dilation=(2, 1))),
        ((4, 5, 4), Neighborhood(3, causal=(True, False, False))),
        ((4, 6), Window(2, shift=1)),
    ],
)
def test_local_patterns_match_masked_float64_and_reference_backend(spatial: tuple[int, ...], spec) -> None:
    gen = _seeded(1)
    mha = MultiHeadAttention(16, 2, spec, kv_heads=1)
    n = math.prod(spatial)
    x = torch.randn(2, n, 16, generator=gen)
    out = mha(x, spatial_shape=spatial)
    allowed = token_mask(spec, spatial)[None]  # (1, N, N) the core's definition of the pattern
    torch.testing.assert_close(out.double(), _hand_mha(mha, x, allowed=allowed), rtol=1e-5, atol=1e-6)
    ref = MultiHeadAttention(16, 2, spec, kv_heads=1, backend="reference")
    ref.load_state_dict(mha.state_dict())
    torch.testing.assert_close(out, ref(x, spatial_shape=spatial), rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_equals_repeated_kv_heads() -> None:
    gen = _seeded(2)
    gqa = MultiHeadAttention(32, 4, Neighborhood(3), kv_heads=2)
    assert gqa.kv_proj.weight.shape == (2 * 2 * 8, 32)
    full = MultiHeadAttention(32, 4, Neighborhood(3))
    hd = 8
    with torch.no_grad():
        full.q_proj.load_state_dict(gqa.q_proj.state_dict())
        full.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for part in range(2):  # k then v: kv head g serves query heads 2g and 2g+1
            for head in range(4):
                src = slice(part * 2 * hd + (head // 2) * hd, part * 2 * hd + (head // 2 + 1) * hd)
                dst = slice(part * 4 * hd + head * hd, part * 4 * hd + (head + 1) * hd)
                full.kv_proj.weight[dst] = gqa.kv_proj.weight[src]
                full.kv_proj.bias[dst] = gqa.kv_proj.bias[src]
    x = torch.randn(2, 5, 6, 32, generator=gen)
    out = gqa(x)
    assert out.shape == (2, 5, 6, 32)
    torch.testing.assert_close(out, full(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        MultiHeadAttention(32, 4, kv_heads=3)


def test_cross_attention_shapes_and_padding_mask() -> None:
    gen = _seeded(3)
    mha = MultiHeadAttention(16, 4, kv_heads=2, context_dim=10)
    x = torch.randn(3, 7, 16, generator=gen)
    context = torch.randn(3, 5, 10, generator=gen)
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    out = mha(x, context=context, key_padding_mask=keep)
    assert out.shape == (3, 7, 16)
    torch.testing.assert_close(
        out.double(), _hand_mha(mha, x, context=context, allowed=keep[:, None, :]), rtol=1e-5, atol=1e-6
    )
    scrambled = torch.where(keep[..., None], context, 100 * torch.randn(3, 5, 10, generator=gen))
    torch.testing.assert_close(mha(x, context=scrambled, key_padding_mask=keep), out, rtol=0, atol=1e-6)
    # without the mask the padded tokens do matter (the check above can fail)
    assert (mha(x, context=scrambled) - mha(x, context=context)).abs()[1:].max() > 1e-2
    # grid queries against a flat context
    out_grid = mha(x[:, :6].reshape(3, 2, 3, 16), context=context)
    assert out_grid.shape == (3, 2, 3, 16)
    with pytest.raises(ValueError, match="needs a Dense spec"):
        MultiHeadAttention(16, 4, Neighborhood(3), context_dim=10)(x, context=context)


def test_rope_module_equals_attention_on_rotated_queries_and_keys() -> None:
    gen = _seeded(4)
    spatial = (3, 4)
    rotary = MultiHeadAttention(16, 4, rope="axial", kv_heads=2)
    x = torch.randn(2, 3, 4, 16, generator=gen)
    angles = rope_angles(spatial, 4, mode="axial")  # (3, 4, 2) float64, checked against closed forms
    w = {name: p.detach().double() for name, p in rotary.named_parameters()}
    xd = x.double()
    q = (xd @ w["q_proj.weight"].T + w["q_proj.bias"]).unflatten(-1, (4, 4)).movedim(-2, 1)  # (B, h, 3, 4, hd)
    kv = (xd @ w["kv_proj.weight"].T + w["kv_proj.bias"]).unflatten(-1, (2, 2, 4))  # (B, 3, 4, 2, kvh, hd)
    k, v = kv.movedim(-2, 1).unbind(-2)  # (B, kvh, 3, 4, hd)
    q, k = apply_rope(q, angles.cos(), angles.sin()), apply_rope(k, angles.cos(), angles.sin())
    q, k, v = (t.flatten(2, 3) for t in (q, k, v))  # (B, heads, N, hd)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    att = (q @ k.transpose(-1, -2) / 2.0).softmax(-1) @ v  # (B, h, N, hd)
    expected = att.transpose(1, 2).flatten(-2) @ w["out_proj.weight"].T + w["out_proj.bias"]  # (B, N, C)
    out = rotary(x)
    torch.testing.assert_close(out.double().reshape(2, 12, 16), expected, rtol=1e-5, atol=1e-6)
    plain = MultiHeadAttention(16, 4, kv_heads=2)
    plain.load_state_dict(rotary.state_dict())  # the rotation has no parameters
    assert (plain(x) - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="self-attention only"):
        MultiHeadAttention(16, 4, rope="1d")(x.flatten(1, 2), context=x.flatten(1, 2))


def test_relative_position_bias_matches_hand_written_float64() -> None:
    gen = _seeded(5)
    spatial = (6, 5)
    cases = [(Neighborhood((3, 3), dilation=(2, 1)), (3, 3), (2, 1)), (Window((3, 5), shift=(1, 0)), (3, 5), (1, 1))]
    for spec, extent, step in cases:
        mha = MultiHeadAttention(16, 2, spec, rel_pos_bias=True, rank=2)
        with torch.no_grad():
            mha.rel_pos.table.normal_(0, 1.0, generator=gen)
        table = mha.rel_pos.table.detach().double()  # (h, 2E0-1, 2E1-1)
        coords = list(itertools.product(*[range(s) for s in spatial]))
        n = len(coords)
        allowed = token_mask(spec, spatial)
        bias = torch.zeros(2, n, n, dtype=torch.float64)
        for i, j in itertools.product(range(n), range(n)):
            if allowed[i, j]:
                off = [(coords[i][a] - coords[j][a]) // step[a] + extent[a] - 1 for a in range(2)]
                bias[:, i, j] = table[:, off[0], off[1]]
        x = torch.randn(2, n, 16, generator=gen)
        out = mha(x, spatial_shape=spatial)
        expected = _hand_mha(mha, x, allowed=allowed[None], bias=bias)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
        # a zero table gives back the bias-free result
        plain = MultiHeadAttention(16, 2, spec)
        plain.load_state_dict({k: v for k, v in mha.state_dict().items() if not k.startswith("rel_pos")})
        with torch.no_grad():
            mha.rel_pos.table.zero_()
        torch.testing.assert_close(mha(x, spatial_shape=spatial), plain(x, spatial_shape=spatial), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs the grid rank"):
        MultiHeadAttention(16, 2, Neighborhood(3), rel_pos_bias=True)
    with pytest.raises(ValueError, match="Neighborhood and Window"):
        MultiHeadAttention(16, 2, Dense(), rel_pos_bias=True, rank=2)


def test_attention_dropout_only_where_supported_and_inactive_in_eval() -> None:
    gen = _seeded(6)
    mha = MultiHeadAttention(16, 2, attn_drop=0.5)
    x = torch.randn(2, 9, 16, generator=gen)
    mha.eval()
    torch.testing.assert_close(mha(x).double(), _hand_mha(mha, x), rtol=1e-5, atol=1e-6)
    mha.train()
    assert (mha(x) - mha.eval()(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="attn_drop"):
        MultiHeadAttention(16, 2, Linear(), attn_drop=0.1)


def test_spatial_self_attention_identity_at_init_and_sagan_formula() -> None:
    gen = _seeded(7)
    layer = SpatialSelfAttention2d(16, reduction=8)
    x = torch.randn(2, 16, 5, 6, generator=gen, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, x)  # gamma = 0: exactly the identity
    out.square().sum().backward()
    assert layer.gamma.grad is not None and layer.gamma.grad.abs() > 0
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = x.detach()
    w = {name: p.detach().double() for name, p in layer.named_parameters()}
    flat = x.double().flatten(2)  # (B, C, HW)
    f = torch.einsum("oc,bcn->bon", w["query.weight"][..., 0, 0], flat) + w["query.bias"][:, None]  # (B, C/8, HW)
    g = torch.einsum("oc,bcn->bon", w["key.weight"][..., 0, 0], flat) + w["key.bias"][:, None]
    h = torch.einsum("oc,bcn->bon", w["value.weight"][..., 0, 0], flat) + w["value.bias"][:, None]  # (B, C, HW)
    beta = torch.einsum("bci,bcj->bij", f, g).softmax(-1)  # (B, HW query, HW key), SAGAN: no temperature
    expected = flat + 0.7 * torch.einsum("bij,bcj->bci", beta, h)
    torch.testing.assert_close(layer(x).double(), expected.reshape(x.shape), rtol=1e-5, atol=1e-5)
    local = SpatialSelfAttention2d(16, spec=Neighborhood(3))
    assert local(x).shape == x.shape


def test_attend_is_the_only_dense_path() -> None:
    """The module's Dense path equals attend on its projections (no private attention inside)."""
    gen = _seeded(8)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(1, 10, 16, generator=gen)
    with torch.no_grad():
        q = mha.q_proj(x).unflatten(-1, (4, 4)).transpose(1, 2)  # (B, h, N, hd)
        k, v = mha.kv_proj(x).unflatten(-1, (2, 4, 4)).permute(2, 0, 3, 1, 4)  # (B, h, N, hd) each
        out = attend(q, k, v, Dense()).transpose(1, 2).flatten(-2)  # (B, N, C)
        torch.testing.assert_close(mha(x), mha.out_proj(out))


GRIDS = {1: (12,), 2: (6, 6), 3: (6, 4, 6)}
RANK_SPECS = {
    "dense": lambda r: Dense(),
    "dense-causal": lambda r: Dense(causal=True),
    "neighborhood": lambda r: Neighborhood(3),
    "neighborhood-dilated-causal": lambda r: Neighborhood(3, dilation=(2,) + (1,) * (r - 1), causal=True),
    "window-shifted": lambda r: Window(2, shift=1),
    "axial": lambda r: Axial(),
    "linear": lambda r: Linear(),
}


@pytest.mark.parametrize("rank", sorted(GRIDS))
@pytest.mark.parametrize("name", sorted(RANK_SPECS))
def test_every_spec_and_rank_matches_reference_backend_forward_and_backward(name: str, rank: int) -> None:
    """Registry-wide: the module on the automatic backend equals the float64 reference, values and gradients."""
    gen = _seeded(9)
    spec = RANK_SPECS[name](rank)
    fast = MultiHeadAttention(32, 4, spec, kv_heads=2, rope="axial")
    ref = MultiHeadAttention(32, 4, spec, kv_heads=2, rope="axial", backend="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, *GRIDS[rank], 32, generator=gen)
    outs, grads = [], []
    for module in (fast, ref):
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.square().sum().backward()
        outs.append(out)
        grads.append([xi.grad, *[p.grad for p in module.parameters()]])
    assert outs[0].shape == x.shape
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for g_fast, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-5)


def test_relative_position_bias_refuses_grids_over_the_memory_budget(monkeypatch) -> None:
    monkeypatch.setenv("NEUROATTN_ATTENTION_MEMORY_GB", "0.01")
    mha = MultiHeadAttention(8, 2, Neighborhood(3), rel_pos_bias=True, rank=2)
    x = torch.zeros(1, 48, 48, 8)  # (2 heads x 2304^2 tokens) bias copies = 85 MB > 10 MB budget
    with pytest.raises(AttentionMemoryError, match="use rope instead"):
        mha(x)
