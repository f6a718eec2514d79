"""TABLeT tokenization: cube preparation, latent regrouping against a closed form, autoencoders and the token cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuroattn.errors import ConfigError
from neuroattn.fmri.tablet_tokens import (
    TabletTokenizer,
    TabletTokenizerConfig,
    TokenCache,
    TokenWindows,
    build_autoencoder,
    cut_window,
    scale_and_pad,
    tokenize_runs,
    window_starts,
)

torch.set_num_threads(1)


class PoolEncoder:
    """A local stand-in autoencoder: channel ``k`` is the f x f mean of ``image ** (k + 1)`` (grey input checked)."""

    def __init__(self, f: int, channels: int) -> None:
        self.f, self.channels = f, channels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1] == 3 and torch.equal(images[:, 0], images[:, 2]), "grey must repeat to 3 channels"
        grey = images[:, :1]
        return torch.cat([F.avg_pool2d(grey ** (k + 1), self.f) for k in range(self.channels)], dim=1)


def reference_tokens(cube: np.ndarray, f: int, channels: int) -> np.ndarray:
    """Loop-by-loop tokens of one cube (S, S, S) under PoolEncoder, from the documented feature layout."""
    s = cube.shape[0]
    g = s // f
    out = np.zeros((g, g, g, 3 * f * channels))
    for i in range(g):
        for j in range(g):
            for k in range(g):
                cell = (i, j, k)
                feats = []
                for axis in range(3):
                    u, v = [cell[a] for a in range(3) if a != axis]
                    for sl in range(f):
                        image = np.take(cube, cell[axis] * f + sl, axis=axis)  # other two axes in order
                        block = image[u * f : (u + 1) * f, v * f : (v + 1) * f]
                        feats += [np.mean(block ** (ch + 1)) for ch in range(channels)]
                out[i, j, k] = feats
    return out.reshape(g**3, -1)


def test_scale_and_pad_centres_scales_and_crops() -> None:
    rng = np.random.default_rng(0)
    run = rng.normal(size=(3, 10, 12, 9)).astype(np.float32)
    run[1, 4, 5, 6] = -7.0  # the run's maximum |value|
    cube = scale_and_pad(run, 16).numpy()
    assert cube.shape == (3, 16, 16, 16)
    assert cube.min() == -1.0 and np.abs(cube).max() == 1.0
    np.testing.assert_allclose(cube[:, 3:13, 2:14, 3:12], run / 7.0, rtol=1e-6)  # centred: (16 - n) // 2 before
    mask = np.zeros(cube.shape, dtype=bool)
    mask[:, 3:13, 2:14, 3:12] = True
    assert not cube[~mask].any()
    cropped = scale_and_pad(rng.normal(size=(2, 20, 16, 4)), 16)
    assert cropped.shape == (2, 16, 16, 16)


def test_regrouping_matches_closed_form() -> None:
    """Tokens of a random 16³ cube at f = 4 (64 cells) equal the loop reference of the documented layout."""
    cfg = TabletTokenizerConfig(cube_size=16, compression=4, latent_channels=2, slice_batch=40)
    tokenizer = TabletTokenizer(cfg, PoolEncoder(4, 2))
    run = np.random.default_rng(1).uniform(-1, 1, size=(2, 16, 16, 16)).astype(np.float32)
    run[0, 0, 0, 0] = 1.0  # both frames already scaled: the run's max |value| is 1
    tokens = tokenizer(run)
    assert tokens.shape == (2, 64, 3 * 4 * 2)
    for t in range(2):
        np.testing.assert_allclose(tokens[t], reference_tokens(run[t].astype(np.float64), 4, 2), atol=1e-6)


def test_perturbing_one_cell_changes_only_its_token() -> None:
    cfg = TabletTokenizerConfig(cube_size=16, compression=8, latent_channels=1)
    tokenizer = TabletTokenizer(cfg, PoolEncoder(8, 1))
    cube = torch.zeros(1, 16, 16, 16)
    base = tokenizer.encode_cubes(cube)
    cube[0, 3, 9, 14] = 0.5  # cell (0, 1, 1): raster index 0 * 4 + 1 * 2 + 1 = 3
    diff = (tokenizer.encode_cubes(cube) - base)[0].abs()  # (8 cells, 24 features)
    assert diff.sum(dim=1).nonzero().flatten().tolist() == [3]
    changed = diff[3].reshape(3, 8).nonzero().tolist()  # (axis, slice in group)
    assert changed == [[0, 3], [1, 9 - 8], [2, 14 - 8]]  # each axis sees the voxel in the slice holding it
    np.testing.assert_allclose(diff[3][diff[3] > 0].numpy(), 0.5 / 64, rtol=1e-6)  # mean over an 8 x 8 block


def test_published_geometry_is_27_tokens_of_3072() -> None:
    cfg = TabletTokenizerConfig()  # 96³ cube, f 32, c 32
    assert (cfg.grid, cfg.n_cells, cfg.token_dim) == (3, 27, 3072)
    tokens = TabletTokenizer(cfg, PoolEncoder(32, 32))(np.ones((1, 91, 96, 91), dtype=np.float32))
    assert tokens.shape == (1, 27, 3072)


@pytest.mark.parametrize("kind", ["dc", "kl"])
def test_diffusers_autoencoders_are_seeded_frozen_and_loadable(kind: str, tmp_path) -> None:
    cfg = TabletTokenizerConfig(cube_size=16, autoencoder=kind, compression=8, latent_channels=4, width=4)
    run = np.random.default_rng(2).normal(size=(2, 12, 14, 12)).astype(np.float32)
    first, second = TabletTokenizer(cfg), TabletTokenizer(cfg)
    tokens = first(run)
    assert tokens.shape == (2, 8, 96) and np.isfinite(tokens).all() and tokens.std() > 0
    np.testing.assert_array_equal(tokens, second(run))
    assert first.fingerprint == second.fingerprint
    assert not any(p.requires_grad for p in first.encoder.parameters())
    assert not cfg.pretrained
    other = TabletTokenizer(TabletTokenizerConfig(**(cfg.to_dict() | {"seed": 1})))
    assert other.fingerprint != first.fingerprint
    build_autoencoder(cfg).save_pretrained(tmp_path / "ae")
    loaded_cfg = TabletTokenizerConfig(**(cfg.to_dict() | {"autoencoder_path": str(tmp_path / "ae")}))
    assert loaded_cfg.pretrained
    np.testing.assert_allclose(TabletTokenizer(loaded_cfg)(run), tokens, atol=1e-6)


def test_mismatched_latent_geometry_is_refused() -> None:
    cfg = TabletTokenizerConfig(cube_size=16, compression=8, latent_channels=3)
    with pytest.raises(ConfigError, match="expects"):
        TabletTokenizer(cfg, PoolEncoder(8, 2))(np.ones((1, 16, 16, 16), dtype=np.float32))
    with pytest.raises(ConfigError):
        TabletTokenizerConfig(cube_size=20, compression=8)


def test_cache_runs_the_encoder_once_per_frame(tmp_path) -> None:
    cfg = TabletTokenizerConfig(cube_size=16, compression=8, latent_channels=2, slice_batch=16)
    tokenizer = TabletTokenizer(cfg, PoolEncoder(8, 2))
    rng = np.random.default_rng(3)
    runs = [rng.normal(size=(3, 16, 16, 16)).astype(np.float32) for _ in range(2)]
    cache = TokenCache(tmp_path / "tokens")
    first = tokenize_runs(tokenizer, runs, cache=cache)
    calls = tokenizer.encoder_calls
    assert calls == 2 * 3 * 3  # 16-slice batches: one call per frame and axis
    again = tokenize_runs(tokenizer, runs, cache=cache)
    assert tokenizer.encoder_calls == calls  # memory hit
    fresh = TokenCache(tmp_path / "tokens")
    from_disk = tokenize_runs(tokenizer, runs, cache=fresh)
    assert tokenizer.encoder_calls == calls and fresh.hits == 2 and fresh.misses == 0  # disk hit
    assert len(list((tmp_path / "tokens").glob("*.safetensors"))) == 2
    for a, b, c in zip(first, again, from_disk, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    changed = runs[0].copy()
    changed[0, 0, 0, 0] += 1.0
    cache.tokens(tokenizer, changed)
    assert tokenizer.encoder_calls == calls + 9


def test_windows_tile_pad_and_sample() -> None:
    assert window_starts(10, 4) == [0, 4, 6]
    assert window_starts(8, 4) == [0, 4]
    assert window_starts(3, 4) == [0]
    assert window_starts(10, 4, stride=3) == [0, 3, 6]
    tokens = np.arange(3 * 2 * 5, dtype=np.float32).reshape(3, 2, 5)
    part, mask = cut_window(tokens, 0, 5)
    assert mask.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(part[:3], tokens)
    assert not part[3:].any()
    runs = [np.random.default_rng(i).normal(size=(12, 2, 5)).astype(np.float32) for i in range(3)]
    tiled = TokenWindows(runs, 4, targets=[0, 1, 0])
    assert len(tiled) == 9 and tiled[4]["run"] == 1 and float(tiled[4]["target"]) == 1.0
    sampled = TokenWindows(runs, 4, random_start=True)
    torch.manual_seed(0)
    a = [sampled[i]["tokens"] for i in range(len(sampled))]
    torch.manual_seed(0)
    b = [sampled[i]["tokens"] for i in range(len(sampled))]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for i, item in enumerate(a):
        run = runs[i % 3]
        starts = [s for s in range(9) if np.array_equal(run[s : s + 4], item.numpy())]
        assert starts, "a sampled window must be a contiguous part of its run"
