"""Rotary embeddings keep norms and make scores depend only on offsets; relative bias indexes offsets correctly."""

from __future__ import annotations

import itertools

import pytest
import torch

from neuroattn.nn.position import RelativePositionBias, RotaryEmbedding, apply_rope, rope_angles


def _rotated(x: torch.Tensor, spatial: tuple[int, ...], mode: str) -> torch.Tensor:
    """x (*S, d) in float64 rotated by its own grid position."""
    angles = rope_angles(spatial, x.shape[-1], mode=mode)
    return apply_rope(x, angles.cos(), angles.sin())


def test_rope_1d_matches_complex_rotation() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 9, 8
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    out = _rotated(x, (n,), "1d")
    # closed form: pair j of token p is the complex number x_2j + i x_2j+1 times exp(i p 10000^(-j/(d/2)))
    z = torch.complex(x[:, 0::2], x[:, 1::2])
    theta = torch.arange(n, dtype=torch.float64)[:, None] * 10000.0 ** (
        -torch.arange(d // 2, dtype=torch.float64) / (d // 2)
    )
    expected = z * torch.polar(torch.ones_like(theta), theta)
    torch.testing.assert_close(out[:, 0::2], expected.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, 1::2], expected.imag, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("spatial", "mode", "d"), [((16,), "1d", 8), ((5, 6), "axial", 8), ((4, 5, 3), "axial", 14)])
def test_rope_scores_depend_only_on_offset(spatial: tuple[int, ...], mode: str, d: int) -> None:
    gen = torch.Generator().manual_seed(1)
    q_vec = torch.randn(d, generator=gen, dtype=torch.float64)
    k_vec = torch.randn(d, generator=gen, dtype=torch.float64)
    q = _rotated(q_vec.expand(*spatial, d), spatial, mode)  # the same query placed at every position
    k = _rotated(k_vec.expand(*spatial, d), spatial, mode)
    torch.testing.assert_close(q.norm(dim=-1), q_vec.norm().expand(spatial), rtol=0, atol=1e-12)

    def score(p: tuple[int, ...], r: tuple[int, ...]) -> float:
        return float(q[p] @ k[r])

    rank = len(spatial)
    p, r = (1,) * rank, (2,) + (0,) * (rank - 1)  # offset (1, -1, -1, ...)
    shift = (1,) * rank
    shifted = tuple(a + s for a, s in zip(p, shift, strict=True)), tuple(a + s for a, s in zip(r, shift, strict=True))
    assert score(*shifted) == pytest.approx(score(p, r), abs=1e-12)
    # ... and the score does change with the offset, so the embedding is not a no-op
    other = tuple(a + 1 for a in r)
    assert abs(score(p, other) - score(p, r)) > 1e-3
    assert abs(score(p, r) - float(q_vec @ k_vec)) > 1e-3


def test_rope_axial_splits_pairs_over_axes() -> None:
    angles = rope_angles((3, 4, 5), 14, mode="axial")  # 7 pairs: 3 on axis 0, 2 on axis 1, 2 on axis 2
    assert angles.shape == (3, 4, 5, 7)
    # pairs of axis 0 change only along axis 0, etc.
    assert torch.equal(angles[0, :, :, :3], torch.zeros(4, 5, 3, dtype=torch.float64))
    assert torch.equal(angles[:, 0, :, 3:5], torch.zeros(3, 5, 2, dtype=torch.float64))
    assert torch.equal(angles[:, :, 0, 5:], torch.zeros(3, 4, 2, dtype=torch.float64))
    assert angles[2, 0, 0, 0] == pytest.approx(2.0)  # the lowest-frequency-index pair turns 1 rad per step


def test_rotary_module_handles_gqa_heads_and_rejects_odd_dims() -> None:
    rope = RotaryEmbedding(8, "axial")
    q, k = torch.randn(2, 4, 3, 5, 8), torch.randn(2, 2, 3, 5, 8)
    rq, rk = rope(q, k)
    assert rq.shape == q.shape and rk.shape == k.shape
    torch.testing.assert_close(rq[0, 1, 0, 0], q[0, 1, 0, 0])  # position (0, 0) is not rotated
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="'rope' must be one of"):
        RotaryEmbedding(8, "spiral")


def test_relative_position_bias_indexes_offsets_in_dilation_units() -> None:
    bias = RelativePositionBias(heads=2, extent=(3, 5), step=(2, 1))
    with torch.no_grad():
        bias.table.copy_(torch.arange(2 * 5 * 9, dtype=torch.float32).reshape(2, 5, 9))
    coords = torch.tensor(list(itertools.product(range(5), range(6))))  # (30, 2) raster order of a 5x6 grid
    out = bias(coords)
    assert out.shape == (2, 30, 30)
    i, j = 6 * 4 + 1, 6 * 0 + 3  # query (4, 1), key (0, 3): offset (4, -2) = (2 steps of 2, -2)
    assert out[1, i, j] == bias.table[1, 2 + 2, -2 + 4]
    i, j = 6 * 1 + 2, 6 * 3 + 1  # query (1, 2), key (3, 1): offset (-2, 1)
    assert out[0, i, j] == bias.table[0, -1 + 2, 1 + 4]
