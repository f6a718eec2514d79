"""MultiHeadAttention.attention_weights: the Dense path's softmax probabilities, checked against forward."""

from __future__ import annotations

import pytest
import torch

from neuroattn.attention import Dense, Neighborhood
from neuroattn.nn.attention import MultiHeadAttention


def _pre_out_proj(attn: MultiHeadAttention, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Forward's output just before ``out_proj`` ``(B, N, h*hd)``, captured by a pre-hook."""
    seen: list[torch.Tensor] = []
    handle = attn.out_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        attn(x, **kwargs)
    finally:
        handle.remove()
    return seen[0]


def _values(attn: MultiHeadAttention, kv_in: torch.Tensor) -> torch.Tensor:
    """Value vectors ``(B, heads, M, hd)`` with the grouped-query kv heads repeated."""
    kv = attn.kv_proj(kv_in).unflatten(-1, (2, attn.kv_heads, attn.head_dim))  # (B, M, 2, kvh, hd)
    v = kv[:, :, 1].transpose(1, 2)  # (B, kvh, M, hd)
    return v.repeat_interleave(attn.heads // attn.kv_heads, dim=1)


def _assert_weights_reproduce_output(attn: MultiHeadAttention, x: torch.Tensor, context: torch.Tensor | None,
                                     mask: torch.Tensor | None) -> None:
    weights = attn.attention_weights(x, context=context, key_padding_mask=mask)  # (B, h, N, M)
    kv_in = x if context is None else context
    assert weights.shape == (x.shape[0], attn.heads, x.shape[1], kv_in.shape[1])
    out = (weights @ _values(attn, kv_in)).transpose(1, 2).flatten(-2)  # (B, N, h*hd)
    expected = _pre_out_proj(attn, x, context=context, key_padding_mask=mask)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), rtol=0, atol=1e-12)
    if mask is not None:
        assert bool((weights.masked_select(~mask[:, None, None, :].expand_as(weights)) == 0).all())
        assert bool((weights.masked_select(mask[:, None, None, :].expand_as(weights)) > 0).all())


@pytest.mark.parametrize("kv_heads,qk_norm,rope", [(4, False, None), (2, True, None), (1, True, "1d")])
def test_weights_reproduce_self_attention(kv_heads: int, qk_norm: bool, rope: str | None) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, Dense(), kv_heads=kv_heads, qk_norm=qk_norm, rope=rope).double().eval()
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 0] = False
    _assert_weights_reproduce_output(attn, x, None, None)
    _assert_weights_reproduce_output(attn, x, None, mask)


def test_weights_reproduce_cross_attention_with_padding() -> None:
    torch.manual_seed(1)
    attn = MultiHeadAttention(16, 4, Dense(), kv_heads=2, context_dim=12, qk_norm=True).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    context = torch.randn(2, 9, 12, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 3:] = False
    _assert_weights_reproduce_output(attn, x, context, mask)


def test_causal_weights_are_lower_triangular() -> None:
    torch.manual_seed(2)
    attn = MultiHeadAttention(16, 2, Dense(causal=True)).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    weights = attn.attention_weights(x)
    assert bool((weights.triu(diagonal=1) == 0).all())
    _assert_weights_reproduce_output(attn, x, None, None)


def test_padding_changes_only_the_masked_columns() -> None:
    """Appending masked garbage keys leaves the weights of the real keys unchanged."""
    torch.manual_seed(3)
    attn = MultiHeadAttention(16, 2, Dense()).double().eval()
    context = torch.randn(1, 4, 16, dtype=torch.float64)
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    padded = torch.cat([context, 1e3 * torch.randn(1, 2, 16, dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    short = attn.attention_weights(x, context=context)
    long = attn.attention_weights(x, context=padded, key_padding_mask=mask)
    torch.testing.assert_close(long[..., :4], short, rtol=1e-12, atol=1e-12)


def test_errors() -> None:
    attn = MultiHeadAttention(16, 2, Neighborhood(3))
    with pytest.raises(ValueError, match="Dense"):
        attn.attention_weights(torch.randn(1, 5, 16))
    dense = MultiHeadAttention(16, 2, Dense())
    with pytest.raises(ValueError, match="no key"):
        dense.attention_weights(torch.randn(1, 3, 16), key_padding_mask=torch.zeros(1, 3, dtype=torch.bool))
