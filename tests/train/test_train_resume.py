"""Checkpoint + resume reproduce an uninterrupted run bit for bit; checkpoints hold no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_toy_tasks import RegressionTask, ToyGanTask, quiet_cpu_config

from neuroattn.errors import CheckpointError, ConfigError
from neuroattn.io.checkpoints import load_checkpoint
from neuroattn.train import TrainConfig, Trainer
from neuroattn.train.metrics import read_rows
from neuroattn.train.state import latest_checkpoint, load_training_state


def _config(out_dir: Path, **overrides) -> TrainConfig:
    defaults = dict(
        max_steps=6,
        batch_size=4,
        grad_accum_steps=2,
        lr={"model": 1e-2, "G": 2e-3, "D": 5e-3},
        warmup_steps=2,
        min_lr_ratio=0.2,
        checkpoint_every=3,
        log_every=1,
        seed=3,
    )
    return quiet_cpu_config(out_dir, **{**defaults, **overrides})


def _assert_same_modules(a: dict[str, torch.nn.Module], b: dict[str, torch.nn.Module]) -> None:
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key} differs"


def test_stop_and_resume_equals_straight_run_with_dropout(tmp_path: Path) -> None:
    # 20 samples, 5 micro-batches per epoch: 6 steps x 2 micro-batches cross two epoch ends.
    straight = RegressionTask(n=20, dropout=0.3)
    Trainer(straight, _config(tmp_path / "a")).fit()

    first = RegressionTask(n=20, dropout=0.3)
    paused = Trainer(first, _config(tmp_path / "b")).fit(stop_after=3)
    assert (paused.steps, paused.finished, paused.final_dir) == (3, False, None)
    second = RegressionTask(n=20, dropout=0.3)
    resumed = Trainer(second, _config(tmp_path / "b")).fit(resume=True)
    assert (resumed.resumed_from, resumed.steps, resumed.finished) == (3, 6, True)

    _assert_same_modules(straight.modules(), second.modules())
    # The checkpoints of both runs at step 6 hold identical optimizer moments and data position.
    _, state_a = load_training_state(tmp_path / "a" / "checkpoints" / "step_00000006")
    _, state_b = load_training_state(tmp_path / "b" / "checkpoints" / "step_00000006")
    for key in ("exp_avg", "exp_avg_sq", "step"):
        for idx in state_a["optimizers"]["model"]["state"]:
            assert torch.equal(
                state_a["optimizers"]["model"]["state"][idx][key], state_b["optimizers"]["model"]["state"][idx][key]
            )
    assert state_a["data"] == state_b["data"] == {"epoch": 2, "batch": 2}  # 12 micro-batches = 5 + 5 + 2
    # Dropout draws matter: another seed gives other weights, so the equality above is not vacuous.
    other = RegressionTask(n=20, dropout=0.3)
    Trainer(other, _config(tmp_path / "c", seed=4)).fit()
    assert not torch.equal(other.net[0].weight, straight.net[0].weight)


def test_crash_and_resume_gan_bit_exact_and_metrics_not_duplicated(tmp_path: Path) -> None:
    straight = ToyGanTask(dropout=0.2)
    Trainer(straight, _config(tmp_path / "a")).fit()

    crashing = ToyGanTask(dropout=0.2, crash_at_step=4)  # dies in the 5th step, after checkpoint 3
    with pytest.raises(RuntimeError, match="injected crash"):
        Trainer(crashing, _config(tmp_path / "b")).fit()
    rows_before = [r["step"] for r in read_rows(tmp_path / "b" / "metrics.jsonl")]
    assert rows_before == [1, 2, 3, 4]  # step 4 was logged but not checkpointed
    resumed_task = ToyGanTask(dropout=0.2)
    Trainer(resumed_task, _config(tmp_path / "b")).fit(resume=True)

    _assert_same_modules(straight.modules(), resumed_task.modules())
    rows_a = [r for r in read_rows(tmp_path / "a" / "metrics.jsonl") if "loss/G" in r]
    rows_b = [r for r in read_rows(tmp_path / "b" / "metrics.jsonl") if "loss/G" in r]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("loss/G", "loss/D", "G/identity", "lr/G", "lr/D", "epoch"):
            assert ra[key] == rb[key], (ra["step"], key)
    csv_lines = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,") and len(csv_lines) == 1 + 6 + 1  # header, steps, final validation


def test_validation_does_not_disturb_training_randomness(tmp_path: Path) -> None:
    plain = ToyGanTask(dropout=0.2)
    Trainer(plain, _config(tmp_path / "a")).fit()
    validated = ToyGanTask(dropout=0.2)
    result = Trainer(validated, _config(tmp_path / "b", validate_every=1)).fit()
    _assert_same_modules(plain.modules(), validated.modules())
    val_rows = [r for r in read_rows(tmp_path / "b" / "metrics.jsonl") if "val/fake_mean" in r]
    assert [r["step"] for r in val_rows] == [1, 2, 3, 4, 5, 6]
    assert result.validation.keys() == {"fake_mean"}


def test_checkpoint_files_final_model_and_pruning(tmp_path: Path) -> None:
    task = ToyGanTask()
    result = Trainer(task, _config(tmp_path, checkpoint_every=1, keep_last=2)).fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step_00000005", "step_00000006"]
    assert json.loads((root / "latest.json").read_text())["step"] == 6
    assert latest_checkpoint(root) == root / "step_00000006" == result.checkpoint_dir
    suffixes = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".jsonl", ".csv", ".safetensors"}  # no pickle anywhere
    step, state = load_training_state(root / "step_00000006")
    assert step == 6 and len(state["rng"]) == 1 and isinstance(state["rng"][0]["python"][1], list)

    final = load_checkpoint(tmp_path / "final", expected_class="ToyGan")
    assert final.trained and final.data_summary["num_samples"] == 48
    assert final.data_summary["samples_per_step"] == 8
    live = {f"{name}.{k}": v for name, m in task.modules().items() for k, v in m.state_dict().items()}
    assert final.state_dict.keys() == live.keys()
    assert all(torch.equal(final.state_dict[k], live[k]) for k in live)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["finished"] and summary["world_size"] == 1


def test_resume_refuses_changed_setup_and_fresh_run_refuses_used_dir(tmp_path: Path) -> None:
    Trainer(RegressionTask(), _config(tmp_path)).fit(stop_after=3)
    with pytest.raises(CheckpointError, match="batch_size: 4 -> 8"):
        Trainer(RegressionTask(), _config(tmp_path, batch_size=8)).fit(resume=True)
    with pytest.raises(ConfigError, match="already holds a training run"):
        Trainer(RegressionTask(), _config(tmp_path)).fit()


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    a, b = RegressionTask(), RegressionTask()
    Trainer(a, _config(tmp_path / "a", max_steps=2)).fit()
    result = Trainer(b, _config(tmp_path / "b", max_steps=2)).fit(resume=True)
    assert result.resumed_from is None
    _assert_same_modules(a.modules(), b.modules())
