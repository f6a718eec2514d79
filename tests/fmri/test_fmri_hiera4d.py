"""4-D Hiera encoder: token layout, pooling, mask-unit attention locality, unit dropping and its memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.fmri.hiera4d import (
    Hiera4D,
    Hiera4DConfig,
    grid_coords,
    pool_units,
    sincos_embedding,
    to_units,
)

torch.set_num_threads(1)

TINY = dict(patch=(1, 2, 2, 2), embed_dim=16, heads=1, mask_unit=(2, 2, 2, 2), mlp_ratio=2.0)


def _encoder(stages: tuple[int, ...], unit_attention_stages: int, mask_unit=(2, 2, 2, 2), seed: int = 0) -> Hiera4D:
    torch.manual_seed(seed)
    cfg = Hiera4DConfig(**(TINY | {"mask_unit": mask_unit}), stages=stages, unit_attention_stages=unit_attention_stages)
    return Hiera4D(cfg).eval()


def test_published_config_geometry() -> None:
    cfg = Hiera4DConfig()
    assert cfg.dims == [64, 128, 256, 512] and cfg.stage_heads == [1, 2, 4, 8] and cfg.stages == (2, 3, 16, 3)
    assert Hiera4D.check_window(cfg, (40, 96, 96, 96)) == (40, 24, 24, 24)
    units = tuple(t // u for t, u in zip((40, 24, 24, 24), cfg.mask_unit, strict=True))
    assert units == (5, 3, 3, 3) and math.prod(units) == 135  # the paper's 135 mask units per window
    assert [cfg.unit_tokens(s) for s in range(4)] == [(8,) * 4, (4,) * 4, (2,) * 4, (1,) * 4]
    assert Hiera4DConfig.from_dict(cfg.to_dict()) == cfg


def test_config_and_window_validation() -> None:
    with pytest.raises(ConfigError, match="divisible by pool"):
        Hiera4DConfig(mask_unit=(4, 8, 8, 8))  # 4 cannot be pooled 3 times by 2
    with pytest.raises(ConfigError, match="unknown"):
        Hiera4DConfig.from_dict({"depth": 3})
    with pytest.raises(InvalidInputError, match="multiple of patch x mask_unit"):
        Hiera4D.check_window(Hiera4DConfig(), (40, 96, 96, 90))


def test_shapes_through_every_stage() -> None:
    enc = _encoder(stages=(1, 1, 1), unit_attention_stages=2, mask_unit=(4, 4, 4, 4))
    x = torch.randn(2, 8, 16, 8, 8)  # tokens (8, 8, 4, 4) -> units (2, 2, 1, 1)
    out = enc(x, return_stages=True)
    assert out.unit_grid == (2, 2, 1, 1)
    assert [tuple(s.shape) for s in out.stages] == [(2, 4, 256, 16), (2, 4, 16, 32), (2, 4, 1, 64)]
    assert tuple(out.units.shape) == (2, 4, 64) and tuple(enc.forward_features(x).shape) == (2, 64)
    keep = torch.tensor([[0, 3], [1, 2]])
    part = enc(x, keep, return_stages=True)
    assert [tuple(s.shape) for s in part.stages] == [(2, 2, 256, 16), (2, 2, 16, 32), (2, 2, 1, 64)]


def test_unit_major_layout_matches_explicit_indexing() -> None:
    grid = torch.arange(4 * 6 * 2 * 4, dtype=torch.float32).reshape(1, 4, 6, 2, 4, 1)  # (B, Tt, Xt, Yt, Zt, C)
    unit = (2, 3, 1, 2)
    units = to_units(grid, unit)  # (1, U, N_u, 1)
    n_grid = (2, 2, 2, 2)
    for t, x, y, z in np.ndindex(4, 6, 2, 4):
        u = np.ravel_multi_index((t // 2, x // 3, y // 1, z // 2), n_grid)
        n = np.ravel_multi_index((t % 2, x % 3, y % 1, z % 2), unit)
        assert units[0, u, n, 0] == grid[0, t, x, y, z, 0]


def test_pooling_inside_units_is_a_4d_max_pool() -> None:
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((2, 4, 8, 4, 4, 3)).astype(np.float32)  # (B, Tt, Xt, Yt, Zt, C)
    unit, pool = (4, 4, 2, 4), (2, 2, 2, 1)
    ref = grid.reshape(2, 2, 2, 4, 2, 2, 2, 4, 1, 3).max(axis=(2, 4, 6, 8))  # (B, 2, 4, 2, 4, C) 4-D max pool
    pooled = pool_units(to_units(torch.from_numpy(grid), unit), unit, pool)
    expected = to_units(torch.from_numpy(np.ascontiguousarray(ref)), (2, 2, 1, 4))
    assert torch.equal(pooled, expected)


def test_mask_unit_attention_stays_inside_units_and_global_attention_does_not() -> None:
    x = torch.randn(1, 8, 8, 8, 8)
    bumped = x.clone()
    bumped[0, :2, :4, :4, :4] += 3.0  # only unit 0 (frames 0-1, first 4^3 voxels) changes
    local = _encoder(stages=(1, 1), unit_attention_stages=2)
    delta = (local(bumped).units - local(x).units).abs().amax(dim=-1)[0]  # (U,)
    assert delta[0] > 1e-2 and delta[1:].max() == 0  # no other unit sees it
    mixed = _encoder(stages=(1, 1), unit_attention_stages=1)
    delta = (mixed(bumped).units - mixed(x).units).abs().amax(dim=-1)[0]
    assert delta[1:].min() > 1e-5  # the global stage spreads it to every unit


def test_dropped_units_never_reach_the_kept_ones() -> None:
    enc = _encoder(stages=(1, 1), unit_attention_stages=2)
    x = torch.randn(2, 8, 8, 8, 8)
    keep = torch.tensor([[1, 5, 6, 30], [0, 2, 17, 31]])
    full = torch.gather(enc(x).units, 1, keep[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(enc(x, keep).units, full, rtol=1e-5, atol=1e-5)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while ``fn`` runs (the activation memory)."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().units.sum().backward()
    return sum(seen.values())


def test_dropping_70_percent_of_units_cuts_activation_memory() -> None:
    enc = _encoder(stages=(1, 1), unit_attention_stages=1).train()
    x = torch.randn(4, 8, 8, 8, 8)  # 32 units of 16 tokens
    keep = torch.rand(4, 32, generator=torch.Generator().manual_seed(0)).argsort(dim=1)[:, :10].sort(dim=1).values
    full, kept = _saved_bytes(lambda: enc(x)), _saved_bytes(lambda: enc(x, keep))
    first_block = enc.stages[0][0]
    tokens: list[int] = []
    first_block.register_forward_hook(lambda m, args, out: tokens.append(out.shape[:2].numel()))
    enc(x), enc(x, keep)
    assert tokens == [4 * 32 * 16, 4 * 10 * 16]  # the encoder only ever holds the kept tokens
    ratio = kept / full
    assert ratio < 0.45, f"activation bytes with 10/32 units kept are {ratio:.2f} of the full window's"


def test_sincos_embedding_closed_form_and_distinct_positions() -> None:
    coords = grid_coords((3, 2, 2, 2))
    emb = sincos_embedding(coords, 16)  # 4 channels per axis: sin(c), sin(c/100), cos(c), cos(c/100)
    row = coords.tolist().index([2, 1, 0, 1])
    axis_t = [math.sin(2), math.sin(2 / 100), math.cos(2), math.cos(2 / 100)]
    torch.testing.assert_close(emb[row, :4], torch.tensor(axis_t, dtype=torch.float32))
    assert torch.cdist(emb, emb).add(torch.eye(len(emb)) * 9).min() > 0.1
