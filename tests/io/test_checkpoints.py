"""Checkpoints: safetensors + JSON round trip, strict class/version/key checks, no pickle anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neuroattn import __version__
from neuroattn.errors import CheckpointError
from neuroattn.io.checkpoints import load_checkpoint, load_state_strict, save_checkpoint


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_round_trip_restores_identical_weights_and_metadata(tmp_path: Path) -> None:
    model = _model()
    cfg = {"in_features": 4, "hidden": 8, "note": "tiny"}
    save_checkpoint(tmp_path / "run", model.state_dict(), cfg, model_class="TinyMLP", trained=False,
                    data_summary={"n_subjects": 3})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    ckpt = load_checkpoint(tmp_path / "run", expected_class="TinyMLP")
    assert ckpt.config == cfg and ckpt.trained is False and ckpt.version == __version__
    assert ckpt.data_summary == {"n_subjects": 3}
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    load_state_strict(other, ckpt.state_dict, tmp_path / "run")
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)


def test_overwrite_replaces_folder_atomically(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {}, model_class="M", trained=False)
    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {}, model_class="M", trained=True)
    ckpt = load_checkpoint(tmp_path / "c")
    assert torch.equal(ckpt.state_dict["w"], torch.ones(2)) and ckpt.trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_wrong_class_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(1)}, {}, model_class="SACycleGAN", trained=True)
    with pytest.raises(CheckpointError, match="holds a SACycleGAN, expected a BrainMAE"):
        load_checkpoint(tmp_path / "c", expected_class="BrainMAE")


def test_incompatible_version_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(1)}, {}, model_class="M", trained=True)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["neuroattn_version"] = "99.0.0"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"written by neuroattn 99\.0\.0"):
        load_checkpoint(tmp_path / "c")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "missing model.safetensors"),
        (lambda d: (d / "config.json").unlink(), "missing config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "unreadable config"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04garbage pickle-like"), "unreadable weights"),
    ],
)
def test_damaged_checkpoint_messages(tmp_path: Path, damage, fragment: str) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(3)}, {}, model_class="M", trained=True)
    damage(tmp_path / "c")
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(tmp_path / "c")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")


def test_strict_loading_names_the_mismatch(tmp_path: Path) -> None:
    model = _model()
    state = model.state_dict()
    state["2.weight"] = torch.zeros(3, 8)
    state.pop("0.bias")
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(_model(), state, "ckpt")
    msg = str(info.value)
    assert "missing 1 key(s)" in msg and "0.bias" in msg
    assert "unexpected 1 key(s)" in msg and "shape mismatch" in msg and "2.weight" in msg


def test_non_json_config_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "c", {"w": torch.zeros(1)}, {"bad": object()}, model_class="M", trained=False)
    assert not (tmp_path / "c").exists()


def test_no_pickle_or_unsafe_torch_load_in_package() -> None:
    root = Path(__file__).resolve().parents[2] / "neuroattn"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        if "import pickle" in text or "torch.save(" in text:
            offenders.append(f"{path.name}: pickle/torch.save")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []
