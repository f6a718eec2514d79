"""BrainMAE: graph operator, planted communities in E, masked reconstruction against baselines, I/O, SVM-FC."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from neuroattn.data.planted_networks import PlantedNetworkConfig, simulate_planted_networks
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.fmri.brainmae import (
    BrainMAE,
    BrainMAEConfig,
    embed_brainmae,
    finetune_brainmae,
    load_brainmae,
    masked_reconstruction_baselines,
    pretrain_brainmae,
    region_graph,
    svm_fc_baseline,
)
from neuroattn.fmri.roi_series import cut_segments, standardize_rois
from neuroattn.nn.transformer import TransformerBlock
from neuroattn.train import TrainConfig

N_TRAIN, N_TEST = 16, 4


def _train_config(out_dir: Path, steps: int, **kw) -> TrainConfig:
    base = dict(max_steps=steps, batch_size=16, lr=3e-3, warmup_steps=10, device="cpu", progress=False, amp="off",
                checkpoint_every=0, tensorboard=False, log_every=1, seed=0)  # fmt: skip
    return TrainConfig(out_dir=out_dir, **(base | kw))


def _communities_ari(embed: np.ndarray, truth: np.ndarray, k: int) -> float:
    unit = embed / np.linalg.norm(embed, axis=1, keepdims=True)  # cosine geometry of the rows of E
    labels = KMeans(k, n_init=10, random_state=0).fit(unit).labels_
    return float(adjusted_rand_score(truth, labels))


@pytest.fixture(scope="module")
def planted():
    return simulate_planted_networks(PlantedNetworkConfig(), N_TRAIN + N_TEST, seed=0)


@pytest.fixture(scope="module")
def pretrained(planted, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("brainmae") / "run"
    result = pretrain_brainmae(planted.runs[:N_TRAIN], BrainMAEConfig.tiny(), _train_config(out, 600))
    return result, load_brainmae(out)


def test_region_graph_has_no_self_loops_and_is_a_row_softmax():
    e = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = region_graph(e)
    assert torch.equal(torch.diagonal(a), torch.zeros(7, dtype=torch.float64))
    torch.testing.assert_close(a.sum(dim=1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-12)
    logits = (e @ e.T / math.sqrt(5)).numpy()
    for r in range(7):  # float64 closed form: softmax over the other six ROIs
        others = np.delete(np.arange(7), r)
        w = np.exp(logits[r, others] - logits[r, others].max())
        np.testing.assert_allclose(a[r, others].numpy(), w / w.sum(), rtol=1e-12)


def test_random_mask_hides_exact_count_and_loss_weights(planted):
    torch.manual_seed(0)
    model = BrainMAE(BrainMAEConfig.tiny(mask_ratio=0.25))
    mask = model.random_mask(3, 8, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (3, 8, 24) and mask.dtype == torch.bool
    assert mask.reshape(3, -1).sum(dim=1).tolist() == [48, 48, 48]  # round(0.25 * 8 * 24)
    x = torch.from_numpy(np.stack([standardize_rois(r)[:32] for r in planted.runs[:3]]))  # (3, 32, 24)
    loss, metrics = model.pretrain_loss(x, mask)
    err = (model.reconstruct(x, mask) - model.segments(x)).pow(2).mean(-1).detach()  # (B, S, R)
    torch.testing.assert_close(metrics["mse/masked"], err[mask].mean())
    torch.testing.assert_close(metrics["mse/unmasked"], err[~mask].mean())
    torch.testing.assert_close(loss.detach(), 0.75 * err[mask].mean() + 0.25 * err[~mask].mean())


def test_masking_hides_the_masked_samples():
    torch.manual_seed(0)
    model = BrainMAE(BrainMAEConfig.tiny()).eval()
    x = torch.randn(2, 32, 24)
    mask = model.random_mask(2, 8, generator=torch.Generator().manual_seed(0))
    changed = x + 5.0 * mask.repeat_interleave(4, dim=1).float()  # (B, T, R): only masked tokens differ
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(changed, mask), model.reconstruct(x, mask))
        assert not torch.allclose(model.reconstruct(changed), model.reconstruct(x))


def test_pretraining_recovers_planted_communities(planted, pretrained):
    torch.manual_seed(0)
    init_ari = _communities_ari(BrainMAE(BrainMAEConfig.tiny()).roi_embed.detach().numpy(), planted.communities, 4)
    _, model = pretrained
    ari = _communities_ari(model.roi_embed.detach().numpy(), planted.communities, 4)
    assert init_ari < 0.3
    assert ari >= 0.9, f"ARI of KMeans on learned E = {ari:.3f}"
    a = model.graph().detach()
    assert torch.equal(torch.diagonal(a), torch.zeros(24))
    same = planted.communities[:, None] == planted.communities[None, :]
    np.fill_diagonal(same, False)
    # within-community share of each row: 5/23 = 0.22 for a uniform graph, 0.75 measured after pretraining
    assert float(a.numpy()[same].sum() / 24) > 0.6


def test_masked_reconstruction_beats_roi_mean_and_ridge(planted, pretrained):
    result, model = pretrained
    cfg = model.config
    segs = [cut_segments(standardize_rois(r), cfg.segment_frames) for r in planted.runs]  # (S_run, R, L) each
    windows = [s[i : i + cfg.n_segments] for s in segs for i in range(0, len(s) - cfg.n_segments + 1, cfg.n_segments)]
    n_train = N_TRAIN * (len(segs[0]) // cfg.n_segments)
    train_seg, test_seg = np.stack(windows[:n_train]), np.stack(windows[n_train:])  # (N, S, R, L)
    mask = model.random_mask(len(test_seg), cfg.n_segments, generator=torch.Generator().manual_seed(123))
    x = torch.from_numpy(test_seg).permute(0, 1, 3, 2).reshape(len(test_seg), -1, cfg.n_rois)  # (M, T, R)
    with torch.no_grad():
        pred = model.reconstruct(x, mask).numpy()  # (M, S, R, L)
    model_mse = float(((pred - test_seg) ** 2)[mask.numpy()].mean())
    base = masked_reconstruction_baselines(train_seg, test_seg, mask.numpy(), mask_ratio=cfg.mask_ratio)
    assert base["roi_mean"] > 0.9  # standardized series: the mean predictor explains nothing
    assert model_mse < base["ridge"] < base["roi_mean"], (model_mse, base)
    assert result.finished and result.last_metrics["mse/masked"] < 0.6


def test_checkpoint_round_trip_and_strict_loading(pretrained, planted, tmp_path):
    result, model = pretrained
    meta = json.loads((result.final_dir / "config.json").read_text())
    assert meta["model_class"] == "BrainMAE" and meta["config"] == BrainMAEConfig.tiny().to_dict()
    again = load_brainmae(result.final_dir)
    x = torch.from_numpy(standardize_rois(planted.runs[-1])[:32])[None]
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(x), model.forward_features(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError):
        load_brainmae(tmp_path)


def test_embed_is_deterministic_and_batch_invariant(pretrained, planted):
    _, model = pretrained
    runs = planted.runs[-3:]
    a = embed_brainmae(model, runs, batch_size=2)
    b = embed_brainmae(model, runs, batch_size=64)
    assert a.shape == (3, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a, embed_brainmae(model, runs, batch_size=2))
    with torch.no_grad():  # the mean over the run's whole windows, by hand
        z = torch.from_numpy(standardize_rois(runs[0]))
        wins = z[: 6 * 32].reshape(6, 32, 24)
        np.testing.assert_allclose(a[0], model.forward_features(wins).mean(0).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInputError):
        embed_brainmae(model, [np.zeros((50, 5), np.float32)])


def test_adaptive_variant_adds_shared_self_attention_blocks():
    torch.manual_seed(0)
    model = BrainMAE(BrainMAEConfig.tiny(variant="adaptive", adaptive_blocks=2))
    assert len(model.adaptive_blocks) == 2 and all(isinstance(b, TransformerBlock) for b in model.adaptive_blocks)
    assert len(BrainMAE(BrainMAEConfig.tiny()).adaptive_blocks) == 0
    x = torch.randn(2, 32, 24)
    loss, _ = model.pretrain_loss(x)
    loss.backward()
    assert model.roi_embed.grad is not None and model.adaptive_blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        BrainMAEConfig.tiny(variant="dynamic")


def test_published_defaults():
    cfg = BrainMAEConfig()
    assert (cfg.n_rois, cfg.segment_seconds, cfg.graph_blocks, cfg.adaptive_blocks, cfg.masked_weight) == (
        100, 15.0, 3, 2, 0.75,
    )  # fmt: skip
    assert cfg.segment_frames == 21  # 15 s at TR 0.72 s
    assert BrainMAEConfig.from_dict(cfg.to_dict()) == cfg


def _two_group_cohort(n_per_group: int):
    """Group 1 has weaker private noise, so stronger within-community connectivity (same communities)."""
    weak = simulate_planted_networks(PlantedNetworkConfig(noise_std=1.0, n_frames=120), n_per_group, seed=3)
    strong = simulate_planted_networks(PlantedNetworkConfig(noise_std=0.6, n_frames=120), n_per_group, seed=3)
    return weak.runs + strong.runs, np.repeat([0, 1], n_per_group)


def test_svm_fc_baseline_separates_connectivity_groups():
    runs, labels = _two_group_cohort(20)
    result = svm_fc_baseline(runs, labels, n_folds=5)
    assert result.score >= 0.9 and result.chance == 0.5
    shuffled = [svm_fc_baseline(runs, np.random.default_rng(s).permutation(labels)).score for s in range(5)]
    assert np.mean(shuffled) < 0.65  # label permutations: chance level (0.56 measured)


def test_finetuning_through_the_trainer_fits_the_head(tmp_path):
    torch.set_num_threads(1)
    slow = simulate_planted_networks(PlantedNetworkConfig(n_frames=120, source_band=(0.01, 0.08)), 8, seed=4)
    fast = simulate_planted_networks(PlantedNetworkConfig(n_frames=120, source_band=(0.15, 0.3)), 8, seed=5)
    runs, labels = slow.runs + fast.runs, np.repeat([0, 1], 8)  # the label is the sources' frequency band
    torch.manual_seed(0)
    model = BrainMAE(BrainMAEConfig.tiny(num_outputs=2))
    result = finetune_brainmae(model, runs, labels, _train_config(tmp_path / "ft", 60, batch_size=8))
    assert result.finished
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/model"] for r in rows if "loss/model" in r]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert load_brainmae(tmp_path / "ft").head.out_features == 2


def test_nitime_roi_series_pretrain_smoke(tmp_path):
    nitime = pytest.importorskip("nitime")
    table = Path(nitime.__file__).parent / "data" / "fmri_timeseries.csv"
    series = np.loadtxt(table, delimiter=",", skiprows=1, dtype=np.float32)[:, 3:]  # (250, 28): drop WM/Vent/Brain
    cfg = BrainMAEConfig.tiny(n_rois=series.shape[1], tr=1.35, segment_seconds=5.4, n_segments=6)
    assert cfg.segment_frames == 4
    torch.set_num_threads(1)
    result = pretrain_brainmae([series], cfg, _train_config(tmp_path / "real", 60, batch_size=6))
    rows = [json.loads(line) for line in (tmp_path / "real" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/model"] for r in rows if "loss/model" in r]
    assert result.finished and len(losses) == 60
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    feats = embed_brainmae(load_brainmae(tmp_path / "real"), [series])
    assert feats.shape == (1, 32) and np.isfinite(feats).all()
