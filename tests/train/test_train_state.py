"""Pickle-free state flattening, random-state capture/restore and the resumable sampler."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from neuroattn.errors import ConfigError
from neuroattn.train import ShardedBatchSampler, TrainConfig
from neuroattn.train.seed import capture_rng_state, restore_rng_state, rng_isolated
from neuroattn.train.state import flatten_state, unflatten_state


def test_flatten_roundtrip_of_adam_state_through_json() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "extra": (1, None, float("inf"), "x"), "nested": [{"t": torch.ones(2)}]}
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten_state(state, tensors)))  # must survive JSON as is
    back = unflatten_state(skeleton, tensors)
    assert back["extra"] == (1, None, float("inf"), "x")
    assert back["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert set(back["opt"]["state"]) == {0, 1}  # integer keys survive
    for idx in (0, 1):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(back["opt"]["state"][idx][key], opt.state_dict()["state"][idx][key])
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["opt"])
    assert fresh.state_dict()["param_groups"][0]["betas"] == (0.5, 0.9)
    with pytest.raises(TypeError, match="cannot store a object"):
        flatten_state({"bad": object()}, {})


def test_rng_capture_restore_replays_every_stream() -> None:
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(json.loads(json.dumps(state)))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
    with rng_isolated():
        torch.rand(10), np.random.rand(10), random.random()
    after = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    random.random(), np.random.rand(), torch.rand(3)  # the block's draws left no trace
    expected = (random.random(), np.random.rand(), torch.rand(3))
    assert after[0] == expected[0] and after[1] == expected[1] and torch.equal(after[2], expected[2])


def test_sharded_sampler_partitions_and_matches_double_batch() -> None:
    n, b = 22, 3
    single = list(ShardedBatchSampler(n, 2 * b, seed=9, epoch=1))
    ranks = [list(ShardedBatchSampler(n, b, seed=9, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3  # 22 // 6 full batches
    for k, batch in enumerate(single):
        assert sorted(batch) == sorted(ranks[0][k] + ranks[1][k])
        assert not set(ranks[0][k]) & set(ranks[1][k])
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(10)).tolist()  # seed + epoch
    assert [i for batch in single for i in batch] == expected[:18]
    resumed = list(ShardedBatchSampler(n, 2 * b, seed=9, epoch=1, start_batch=2))
    assert resumed == single[2:]
    padded = list(ShardedBatchSampler(5, 2, seed=0, rank=1, world_size=2, drop_last=False))
    assert [len(x) for x in padded] == [2, 1]


def test_config_validation_messages() -> None:
    with pytest.raises(ConfigError, match="'amp' must be one of"):
        TrainConfig(out_dir="x", amp="half")
    with pytest.raises(ConfigError, match="'grad_accum_steps' must be a positive integer"):
        TrainConfig(out_dir="x", grad_accum_steps=0)
    with pytest.raises(ConfigError, match="no value for optimizer 'D'"):
        TrainConfig(out_dir="x", lr={"G": 1e-3}).lr_for("D")
