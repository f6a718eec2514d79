"""MindEye's contrastive losses, mixup and schedule against float64 references; prior and model shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroattn.decode.contrastive import (
    bimixco_loss,
    contrastive_phase,
    cosine_anneal,
    mixup_targets,
    mixup_voxels,
    soft_clip_loss,
    softclip_temperature,
)
from neuroattn.decode.mindeye import MindEye, MindEyeConfig
from neuroattn.decode.prior import DiffusionPrior, PriorConfig
from neuroattn.nn.transformer import TransformerBlock


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _unit(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_mixup_targets_put_weights_on_self_and_partner() -> None:
    perm = torch.tensor([2, 1, 0, 3])  # samples 1 and 3 are their own partners
    betas = torch.tensor([0.7, 0.2, 1.0, 0.4], dtype=torch.float64)
    probs = mixup_targets(perm, betas).numpy()
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2] = 0.7, 0.3
    expected[1, 1] = 1.0
    expected[2, 2] = 1.0
    expected[3, 3] = 1.0
    np.testing.assert_allclose(probs, expected, atol=1e-12)


def test_mixup_voxels_mixes_selected_rows_only() -> None:
    torch.manual_seed(0)
    voxels = torch.randn(256, 7, dtype=torch.float64)
    mix = mixup_voxels(voxels, beta=0.15, mix_prob=0.5)
    b = mix.betas[:, None]
    np.testing.assert_allclose(mix.voxels, b * voxels + (1 - b) * voxels[mix.perm], atol=1e-12)
    assert torch.all(mix.betas[~mix.select] == 1.0)
    assert 0.35 < mix.select.double().mean() < 0.65
    # Beta(0.15, 0.15) is U-shaped: most weights of mixed rows sit near 0 or 1.
    mixed = mix.betas[mix.select]
    assert ((mixed < 0.1) | (mixed > 0.9)).double().mean() > 0.5


def test_bimixco_loss_matches_float64_reference() -> None:
    rng = np.random.default_rng(1)
    preds, targets = rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 3, 4))
    perm = np.array([3, 1, 5, 0, 2, 4])
    betas = np.array([0.9, 1.0, 0.05, 0.6, 1.0, 0.3])
    tau = 0.5
    s = _unit(preds) @ _unit(targets).T / tau
    p = np.diag(betas)
    for i, j in enumerate(perm):
        p[i, j] += 1 - betas[i]
    ref = (-(_log_softmax(s) * p).sum(1).mean() - (_log_softmax(s.T) * p.T).sum(1).mean()) / 2
    got = bimixco_loss(torch.tensor(preds), torch.tensor(targets), torch.tensor(perm), torch.tensor(betas),
                       temperature=tau)
    assert got.item() == pytest.approx(ref, rel=1e-10)
    # Without mixing (identity weights) it is the symmetric InfoNCE cross-entropy.
    ce = torch.nn.functional.cross_entropy
    logits, labels = torch.tensor(s), torch.arange(6)
    plain = bimixco_loss(torch.tensor(preds), torch.tensor(targets), labels, torch.ones(6, dtype=torch.float64),
                         temperature=tau)
    assert plain.item() == pytest.approx(((ce(logits, labels) + ce(logits.T, labels)) / 2).item(), rel=1e-10)


def test_soft_clip_loss_matches_float64_reference() -> None:
    rng = np.random.default_rng(2)
    preds, targets = rng.standard_normal((5, 12)), rng.standard_normal((5, 12))
    tau = 0.3
    p, t = _unit(preds), _unit(targets)
    soft = np.exp(_log_softmax(t @ t.T / tau))
    logits = p @ t.T / tau
    ref = (-(_log_softmax(logits) * soft).sum(1).mean() - (_log_softmax(logits.T) * soft).sum(1).mean()) / 2
    got = soft_clip_loss(torch.tensor(preds), torch.tensor(targets), temperature=tau)
    assert got.item() == pytest.approx(ref, rel=1e-10)
    # The loss falls when predictions move onto their targets.
    better = soft_clip_loss(torch.tensor(targets + 0.01 * preds), torch.tensor(targets), temperature=tau)
    assert better.item() < got.item()


def test_schedule_switches_at_the_bimixco_fraction() -> None:
    phases = [contrastive_phase(s, 30, 1 / 3) for s in range(30)]
    assert phases == ["bimixco"] * 10 + ["softclip"] * 20
    assert cosine_anneal(0.004, 0.0075, 0.0) == pytest.approx(0.004)
    assert cosine_anneal(0.004, 0.0075, 0.5) == pytest.approx(0.00575)
    assert softclip_temperature(10, 30, 1 / 3, 0.004, 0.0075) == pytest.approx(0.004)
    assert softclip_temperature(29, 30, 1 / 3, 0.004, 0.0075) == pytest.approx(0.0075)


def test_prior_is_built_from_transformer_blocks_and_samples_reproducibly() -> None:
    torch.manual_seed(0)
    cfg = PriorConfig.tiny(n_tokens=3, clip_dim=8, timesteps=100, data_scale=2.0)
    prior = DiffusionPrior(cfg).eval()
    assert len(prior.blocks) == 2 and all(isinstance(b, TransformerBlock) for b in prior.blocks)
    assert prior.scheduler.config.num_train_timesteps == 100
    assert prior.scheduler.config.prediction_type == "sample"
    brain = torch.randn(4, 3, 8)
    a = prior.sample(brain, steps=5, generator=torch.Generator().manual_seed(3))
    b = prior.sample(brain, steps=5, generator=torch.Generator().manual_seed(3))
    c = prior.sample(brain, steps=5, generator=torch.Generator().manual_seed(4))
    assert a.shape == (4, 3, 8)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    loss = prior.loss(torch.randn(4, 3, 8), brain)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_mindeye_shapes_and_config_round_trip() -> None:
    cfg = MindEyeConfig.tiny(n_voxels=30, n_tokens=5, clip_dim=8)
    assert cfg.prior.n_tokens == 5 and cfg.prior.clip_dim == 8
    assert MindEyeConfig.from_dict(cfg.to_dict()) == cfg
    published = MindEyeConfig()
    assert (published.hidden_dim, published.n_blocks, published.n_tokens, published.clip_dim) == (4096, 4, 257, 768)
    assert (published.prior.depth, published.prior.timesteps, published.bimixco_temperature) == (6, 100, 0.006)
    model = MindEye(cfg).eval()
    voxels = torch.randn(3, 30)
    tokens, projected = model(voxels)
    assert tokens.shape == projected.shape == (3, 5, 8)
    emb = model.embed(voxels)
    assert emb.shape == (3, 40)
    np.testing.assert_allclose(emb.norm(dim=1).detach().numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="expected voxels"):
        model(torch.randn(3, 29))


def test_mixup_partners_stay_within_their_group() -> None:
    torch.manual_seed(1)
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1] * 8)
    voxels = torch.randn(len(groups), 5, dtype=torch.float64)
    mix = mixup_voxels(voxels, groups=groups)
    assert torch.equal(groups[mix.perm], groups)
    assert sorted(mix.perm.tolist()) == list(range(len(groups)))  # still a permutation
    b = mix.betas[:, None]
    np.testing.assert_allclose(mix.voxels, b * voxels + (1 - b) * voxels[mix.perm], atol=1e-12)
