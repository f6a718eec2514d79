"""Config dicts become dataclasses only when every key is known; trainer checkpoints load through one function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from neuroattn.configs import dataclass_from_dict
from neuroattn.errors import CheckpointError, ConfigError
from neuroattn.io.checkpoints import load_model, save_checkpoint


@dataclass
class _Config:
    width: int = 4
    depth: int = 2


def test_known_keys_build_and_typos_are_refused() -> None:
    assert dataclass_from_dict(_Config, {"width": 8}) == _Config(width=8, depth=2)
    with pytest.raises(ConfigError, match=r"unknown _Config keys \['widht'\]; known keys are \['depth', 'width'\]"):
        dataclass_from_dict(_Config, {"widht": 8})


def test_load_model_from_run_folder_strict_and_bad_config(tmp_path: Path) -> None:
    def build(config: dict) -> torch.nn.Module:
        cfg = dataclass_from_dict(_Config, config)
        return torch.nn.Linear(cfg.width, cfg.depth)

    module = build({"width": 3, "depth": 2})
    save_checkpoint(tmp_path / "run" / "final", module.state_dict(), {"width": 3, "depth": 2},
                    model_class="Toy", trained=True)
    loaded = load_model(tmp_path / "run", "Toy", build)
    assert not loaded.training and torch.equal(loaded.weight, module.weight)
    save_checkpoint(tmp_path / "bad", module.state_dict(), {"width": 3, "colour": 1}, model_class="Toy", trained=True)
    with pytest.raises(CheckpointError, match="bad Toy config"):
        load_model(tmp_path / "bad", "Toy", build)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "run", "Other", build)
