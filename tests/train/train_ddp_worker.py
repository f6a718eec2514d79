"""Script run by torchrun in the data-parallel test: trains the toy GAN and saves each rank's weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from safetensors.torch import save_file
from train_toy_tasks import ToyGanTask, quiet_cpu_config

from neuroattn.train import TrainConfig, Trainer


def ddp_config(out_dir: str | Path, batch_size: int) -> TrainConfig:
    """The run both the 2-rank job and its single-process reference use (only batch size differs)."""
    return quiet_cpu_config(
        out_dir,
        max_steps=4,
        batch_size=batch_size,
        grad_accum_steps=2,
        lr={"G": 0.01, "D": 0.02},
        warmup_steps=1,
        clip_grad_norm=5.0,
        checkpoint_every=2,
        log_every=1,
        seed=1,
    )


def main() -> None:
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    task = ToyGanTask()
    Trainer(task, ddp_config(out_dir, batch_size=4)).fit()
    rank = int(os.environ["RANK"])
    weights = {f"{n}.{k}": v.contiguous() for n, m in task.modules().items() for k, v in m.state_dict().items()}
    save_file(weights, str(out_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
