"""Two gloo ranks on CPU (launched by torchrun) train like one process with twice the batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_ddp_worker import ddp_config
from train_toy_tasks import ToyGanTask

from neuroattn.train import Trainer
from neuroattn.train.metrics import read_rows
from neuroattn.train.state import load_training_state

WORKER = Path(__file__).with_name("train_ddp_worker.py")


@pytest.mark.timeout(300)  # the subprocess has its own 180 s limit; this guards the whole test
def test_two_ranks_match_single_process_with_double_batch(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--max_restarts", "0", str(WORKER), str(tmp_path / "ddp"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0 = load_file(tmp_path / "ddp" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "ddp" / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # both ranks apply the same averaged gradients with the same arithmetic
        assert torch.equal(rank0[key], rank1[key]), key

    reference = ToyGanTask()
    Trainer(reference, ddp_config(tmp_path / "single", batch_size=8)).fit()
    single = {f"{n}.{k}": v for n, m in reference.modules().items() for k, v in m.state_dict().items()}
    start = ToyGanTask()
    initial = {f"{n}.{k}": v for n, m in start.modules().items() for k, v in m.state_dict().items()}
    for key, value in single.items():
        assert not torch.equal(value, initial[key])  # every tensor was trained
        # float64: the rank mean of two 4-sample means differs from one 8-sample mean by rounding only.
        torch.testing.assert_close(rank0[key], value, rtol=1e-10, atol=1e-13)

    # Only rank 0 wrote metrics and checkpoints; the checkpoint holds both ranks' random states.
    rows = [r["step"] for r in read_rows(tmp_path / "ddp" / "metrics.jsonl") if "loss/G" in r]
    assert rows == [1, 2, 3, 4]
    step, state = load_training_state(tmp_path / "ddp" / "checkpoints" / "step_00000004")
    assert step == 4 and state["setup"]["world_size"] == 2 and len(state["rng"]) == 2
    assert state["rng"][0]["torch"] != state["rng"][1]["torch"]  # ranks draw their own random numbers
