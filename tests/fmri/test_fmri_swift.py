"""SwiFT-like 4-D window baseline: rank-4 windows, shifting, memory in T, contrastive pretraining, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroattn.attention import Window
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.fmri.swift import (
    SwiFT,
    SwiFTConfig,
    embed_swift,
    load_swift,
    nt_xent,
    pretrain_swift,
    saved_activation_bytes,
    stage1_tokens,
    stage_windows,
)
from neuroattn.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _runs(n_runs: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """Each run: its own static map plus a map modulated by a slow time course, plus noise, ``(T, 12, 12, 12)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)
    runs = []
    for _ in range(n_runs):
        static, dynamic = rng.standard_normal((2, 12, 12, 12))
        course = np.sin(2 * np.pi * t / rng.uniform(6, 12) + rng.uniform(0, 2 * np.pi))
        noise = rng.standard_normal((frames, 12, 12, 12))
        runs.append(static + 0.5 * course[:, None, None, None] * dynamic + 0.3 * noise)
    return [r.astype(np.float32) for r in runs]


def test_published_defaults_and_stage_windows():
    cfg = SwiFTConfig()
    assert (cfg.img_size, cfg.frames, cfg.patch_size, cfg.embed_dim, cfg.depths) == ((96,) * 3, 20, 6, 36, (2, 2, 6, 2))
    assert cfg.window == (4, 4, 4, 4) and stage1_tokens(cfg) == 16**3 * 20
    assert cfg.stage_grids() == [(16, 16, 16, 20), (8, 8, 8, 20), (4, 4, 4, 20), (2, 2, 2, 20)]
    # a window spanning a whole axis is not shifted along it; the last stage's window is clipped to 2 voxels
    assert stage_windows((4, 4, 4, 20), cfg.window) == ((4, 4, 4, 4), (0, 0, 0, 2))
    assert stage_windows((2, 2, 2, 20), cfg.window) == ((2, 2, 2, 4), (0, 0, 0, 2))
    assert SwiFTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError):
        SwiFTConfig(img_size=(90, 96, 96))
    with pytest.raises(ConfigError):
        SwiFTConfig.tiny(window=(3, 2, 2, 2))


def test_forward_backward_on_a_tiny_4d_input():
    torch.manual_seed(0)
    model = SwiFT(SwiFTConfig.tiny(num_outputs=3))
    blocks = list(model.stages[0])
    assert blocks[0].attn.spec == Window((2, 2, 2, 2), 0) and blocks[1].attn.spec == Window((2, 2, 2, 2), (1, 1, 1, 1))
    x = torch.randn(2, 4, 12, 12, 12)
    out = model(x)
    assert out.shape == (2, 3) and model.forward_features(x).shape == (2, 16)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        if not name.startswith("projector"):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(model.pos[0].grad.abs().sum()) > 0 and float(model.patch_embed.weight.grad.abs().sum()) > 0
    with pytest.raises(InvalidInputError):
        model(torch.randn(2, 5, 12, 12, 12))


def test_unshifted_block_is_local_to_its_4d_window():
    torch.manual_seed(0)
    block = SwiFT(SwiFTConfig.tiny()).stages[0][0].eval()
    h = torch.randn(1, 4, 4, 4, 4, 8)  # (B, X', Y', Z', T, C)
    bumped = h.clone()
    bumped[0, 1, 0, 1, 3] += 3.0 * torch.randn(8)  # a token of the window [0:2, 0:2, 0:2, 2:4]
    with torch.no_grad():
        diff = (block(bumped) - block(h)).abs().amax(dim=-1)[0]  # (X', Y', Z', T)
    inside = torch.zeros(4, 4, 4, 4, dtype=torch.bool)
    inside[0:2, 0:2, 0:2, 2:4] = True
    assert float(diff[~inside].max()) == 0.0
    assert bool((diff[inside] > 0).all())


def test_window_shift_changes_outputs():
    torch.manual_seed(0)
    shifted = SwiFT(SwiFTConfig.tiny()).eval()
    plain = SwiFT(SwiFTConfig.tiny(shift=False)).eval()
    plain.load_state_dict(shifted.state_dict())
    x = torch.randn(2, 4, 12, 12, 12)
    with torch.no_grad():
        a, b = shifted.forward_features(x), plain.forward_features(x)
    assert float((a - b).abs().max()) > 1e-3


def test_training_memory_grows_linearly_with_frames():
    sizes = {}
    for frames in (4, 8, 12):
        torch.manual_seed(0)
        model = SwiFT(SwiFTConfig.tiny(frames=frames))
        sizes[frames] = saved_activation_bytes(model, torch.randn(1, frames, 12, 12, 12))
    assert sizes[4] < sizes[8] < sizes[12]
    assert sizes[8] - sizes[4] == sizes[12] - sizes[8]  # every activation is per frame: exactly affine in T
    assert sizes[8] > 1.8 * sizes[4]


def test_nt_xent_closed_form():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    # every row: positive cosine 1, the two negatives cosine 0  ->  -log(e^{1/t} / (e^{1/t} + 2)) at t = 0.5
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 2.0))
    assert float(nt_xent(z, 0.5)) == pytest.approx(expected, rel=1e-6)
    swapped = torch.stack([z[0], z[1], z[3], z[2]])  # the positives are now orthogonal, a negative is parallel
    assert float(nt_xent(swapped, 0.5)) > expected + 1.0


def test_contrastive_pretraining_checkpoint_and_embedding(tmp_path):
    runs = _runs(6, 24)
    config = SwiFTConfig.tiny()
    train = TrainConfig(out_dir=tmp_path / "run", max_steps=60, batch_size=6, lr=2e-3, warmup_steps=5, device="cpu",
                        progress=False, amp="off", checkpoint_every=0, tensorboard=False, log_every=1)  # fmt: skip
    result = pretrain_swift(runs, config, train)
    assert result.finished
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/model"] for r in rows if "loss/model" in r]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    model = load_swift(tmp_path / "run")
    meta = json.loads((result.final_dir / "config.json").read_text())
    assert meta["model_class"] == "SwiFT" and SwiFTConfig.from_dict(meta["config"]) == config
    feats = embed_swift(model, runs, batch_size=2)
    assert feats.shape == (6, 16)
    np.testing.assert_allclose(feats, embed_swift(model, runs, batch_size=8), rtol=1e-5, atol=1e-6)
    # windows of one run are positives: each run's two halves embed closer to each other than to other runs
    halves = embed_swift(model, [r[:12] for r in runs] + [r[12:] for r in runs])
    unit = halves / np.linalg.norm(halves, axis=1, keepdims=True)
    sim = unit[:6] @ unit[6:].T  # (6, 6)
    assert (sim.argmax(axis=1) == np.arange(6)).mean() >= 5 / 6
    with pytest.raises(CheckpointError):
        load_swift(tmp_path)
