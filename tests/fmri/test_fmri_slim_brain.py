"""SLIM-Brain on planted windows: saliency recall, probe on top-k vs random windows, JEPA, EMA and checkpoints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neuroattn.data.planted_windows import PlantedWindowsConfig, make_planted_windows, recall_at_k
from neuroattn.errors import CheckpointError, ConfigError
from neuroattn.fmri.slim_brain import (
    SlimBrain,
    SlimBrainConfig,
    SlimBrainPretrainTask,
    WindowBank,
    ema_momentum,
    embed_slim_brain,
    load_slim_brain,
    pretrain_slim_brain,
    probe_slim_brain,
    split_units,
    top_k_windows,
)
from neuroattn.train import TrainConfig, Trainer

torch.set_num_threads(1)

CONFIG = dataclasses.replace(SlimBrainConfig.tiny(), extractor_steps=60)


def _train_config(out_dir, **overrides) -> TrainConfig:
    base = dict(out_dir=out_dir, max_steps=10, batch_size=8, lr=1e-3, device="cpu", progress=False,
                checkpoint_every=0, log_every=1, tensorboard=False)  # fmt: skip
    return TrainConfig(**(base | overrides))


@pytest.fixture(scope="module")
def cohort():
    return make_planted_windows(PlantedWindowsConfig(n_runs=40, seed=3), progress=False)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("slim")
    result = pretrain_slim_brain(cohort.runs, CONFIG, _train_config(out))
    return result, load_slim_brain(out)


def test_extractor_top_k_recovers_the_planted_windows(cohort, trained) -> None:
    _, model = trained
    n_windows = cohort.config.n_frames // cohort.config.window_frames
    chance = CONFIG.top_k / n_windows  # 2 of 12 windows
    torch.manual_seed(0)
    untrained = SlimBrain(CONFIG).eval()  # zero head: "no change" predictor
    recall = recall_at_k([model.select_windows(r) for r in cohort.runs], cohort.signal_starts)
    recall_untrained = recall_at_k([untrained.select_windows(r) for r in cohort.runs], cohort.signal_starts)
    assert recall >= 0.8, f"recall@{CONFIG.top_k} = {recall:.3f} (chance {chance:.3f})"
    assert recall >= recall_untrained + 0.15, f"trained {recall:.3f} vs untrained {recall_untrained:.3f}"


def test_probe_on_top_k_windows_beats_random_windows(cohort, trained) -> None:
    _, model = trained
    kwargs = dict(groups=cohort.subjects, progress=False, seed=0)
    top = probe_slim_brain(model, cohort.runs, cohort.labels, selection="saliency", **kwargs)
    rand = probe_slim_brain(model, cohort.runs, cohort.labels, selection="random", **kwargs)
    assert top.chance == pytest.approx(0.5)
    assert top.score >= 0.75, f"top-k probe accuracy {top.score:.3f}"
    assert top.score >= rand.score + 0.2, f"top-k {top.score:.3f} vs random windows {rand.score:.3f}"


def test_pretraining_writes_a_strict_checkpoint_of_both_stages(cohort, trained, tmp_path) -> None:
    result, model = trained
    assert result.finished and (result.out_dir / "extractor" / "final" / "model.safetensors").is_file()
    meta = json.loads((result.final_dir / "config.json").read_text())
    assert meta["model_class"] == "SlimBrain" and SlimBrainConfig.from_dict(meta["config"]) == CONFIG
    assert len(meta["data_summary"]["selected_starts"]) == len(cohort.runs)
    assert result.last_metrics["jepa/units_kept"] == round(32 * 0.3)  # 10 of 32 units reach the encoder
    stage1 = load_slim_brain(result.final_dir)  # the folder itself loads too
    for a, b in zip(stage1.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError):
        load_slim_brain(result.out_dir / "extractor")  # a SlimBrainExtractor, not a SlimBrain
    first = embed_slim_brain(model, cohort.runs[:4], progress=False)
    assert first.shape == (4, CONFIG.encoder.out_dim)
    np.testing.assert_array_equal(first, embed_slim_brain(model, cohort.runs[:4], progress=False))


def test_no_representation_collapse_after_a_few_jepa_steps(cohort, tmp_path) -> None:
    bank = WindowBank(cohort.runs[:16], cohort.signal_starts[:16], CONFIG.window_frames)
    windows = torch.stack([bank[i] for i in range(len(bank))])  # (32, 8, 8, 8, 8)
    torch.manual_seed(0)
    model = SlimBrain(CONFIG)
    with torch.no_grad():
        before = model.forward_features(windows).std(dim=0)  # (D,) across windows
    task = SlimBrainPretrainTask(model, bank, total_steps=20)
    Trainer(task, _train_config(tmp_path, max_steps=20)).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/jepa"] for r in rows if "loss/jepa" in r]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses  # it learns something
    model.eval()
    with torch.no_grad():
        after = model.forward_features(windows).std(dim=0)
    assert after.min() > 5e-3, f"min per-dimension std {after.min():.4f}"
    assert after.mean() > 0.4 * before.mean(), f"mean std {after.mean():.4f} vs {before.mean():.4f} at init"
    assert min(r["jepa/target_std"] for r in rows if "jepa/target_std" in r) > 0.2


def test_ema_target_gets_no_gradient_and_moves_by_the_ema_rule(cohort) -> None:
    bank = WindowBank(cohort.runs[:4], cohort.signal_starts[:4], CONFIG.window_frames)
    batch = torch.stack([bank[i] for i in range(4)])
    torch.manual_seed(0)
    task = SlimBrainPretrainTask(SlimBrain(CONFIG), bank, total_steps=10)
    optimizer = task.configure_optimizers(task.modules())["jepa"]
    encoder, target = task.model.encoder, task.target
    before = [p.detach().clone() for p in target.parameters()]
    steps = task.losses(batch, 0)
    name, loss, _ = next(steps)
    loss.backward()
    assert name == "jepa" and not any(p.requires_grad or p.grad is not None for p in target.parameters())
    assert all(p.grad is not None for p in encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters(), strict=True))
    optimizer.step()
    with pytest.raises(StopIteration):
        next(steps)  # the task folds the update into the target here
    m = ema_momentum(0, 10, CONFIG.ema_start, CONFIG.ema_end)
    assert m == pytest.approx(0.996)
    for old, new, online in zip(before, target.parameters(), encoder.parameters(), strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * online.detach(), rtol=0, atol=1e-7)
    snapshot = [p.detach().clone() for p in target.parameters()]
    steps = task.losses(batch, 1)
    next(steps)[1].backward()  # an accumulation micro-batch: no optimizer step, so no EMA update
    with pytest.raises(StopIteration):
        next(steps)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, target.parameters(), strict=True))


def test_ema_schedule_and_unit_split() -> None:
    assert [ema_momentum(s, 4, 0.996, 1.0) for s in (0, 2, 4, 9)] == pytest.approx([0.996, 0.998, 1.0, 1.0])
    keep, dropped = split_units(3, 135, 0.7, torch.device("cpu"))
    assert keep.shape == (3, 41) and dropped.shape == (3, 94)  # published: 135 units, ~70% dropped
    for k, d in zip(keep, dropped, strict=True):
        assert sorted(torch.cat([k, d]).tolist()) == list(range(135))


def test_top_k_windows_never_overlap() -> None:
    starts = np.arange(0, 50, 4)  # stride 4 < window 8: neighbours overlap
    scores = np.array([0, 9, 8, 0, 0, 7, 6.5, 0, 0, 0, 0, 0, 1.0])
    assert top_k_windows(scores, starts, 3, 8).tolist() == [4, 20, 48]


def test_config_round_trip_and_published_defaults() -> None:
    cfg = SlimBrainConfig()
    assert (cfg.window_frames, cfg.window_shape, cfg.mask_ratio) == (40, (96, 96, 96), 0.7)
    assert (cfg.ema_start, cfg.ema_end) == (0.996, 1.0)
    assert SlimBrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError):
        SlimBrainConfig(mask_ratio=1.0)
