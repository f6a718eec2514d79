"""The training configuration shared by every model: steps, batch, learning rates, precision, outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neuroattn.errors import ConfigError

AMP_MODES = ("off", "bf16", "fp16", "auto")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """How to train: every trainer run is fully described by one of these plus the task.

    One *step* is one optimizer step per optimizer; it consumes ``grad_accum_steps`` micro-batches of
    ``batch_size`` samples on every rank, so the effective batch is
    ``batch_size * grad_accum_steps * world_size`` samples.
    """

    out_dir: str | Path  # run folder: checkpoints/, final/, metrics.jsonl, metrics.csv, train_summary.json
    max_steps: int = 1000  # optimizer steps in the whole run (resumes included)
    batch_size: int = 8  # samples per micro-batch, per rank
    lr: float | dict[str, float] = 1e-3  # peak learning rate, one value or one per optimizer name
    warmup_steps: int = 0  # steps of linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = 0.1  # the cosine decay ends at min_lr_ratio * lr on the last step
    grad_accum_steps: int = 1  # micro-batches whose gradients are summed (mean-scaled) per step
    clip_grad_norm: float | None = None  # max global L2 norm of each optimizer's gradients; None = off
    amp: str = "auto"  # "off" | "bf16" | "fp16" | "auto" (bf16 on CUDA if supported, else fp16; off on CPU)
    checkpoint_every: int = 500  # steps between training-state checkpoints; 0 = only at the end
    keep_last: int = 2  # training-state checkpoints kept on disk (the newest ones)
    log_every: int = 10  # steps between metric rows
    validate_every: int = 0  # steps between task.validate calls; 0 = only at the end
    seed: int = 0  # seeds python, numpy and torch, and the data order
    num_workers: int = 0  # DataLoader worker processes per rank
    drop_last: bool = True  # drop each epoch's incomplete last batch so every batch has batch_size samples
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda"
    progress: bool = True  # tqdm progress bar on rank 0
    tensorboard: bool = True  # also write TensorBoard events when the tensorboard package is installed
    extra: dict[str, Any] = field(default_factory=dict)  # free-form values recorded in the run summary

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        positive = {
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "keep_last": self.keep_last,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        non_negative = {
            "warmup_steps": self.warmup_steps,
            "checkpoint_every": self.checkpoint_every,
            "validate_every": self.validate_every,
            "num_workers": self.num_workers,
        }
        for name, value in non_negative.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"'{name}' must be a non-negative integer. {value!r} was provided.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"'min_lr_ratio' must be in [0, 1]. {self.min_lr_ratio!r} was provided.")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"'clip_grad_norm' must be None or > 0. {self.clip_grad_norm!r} was provided.")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"'amp' must be one of {list(AMP_MODES)}. {self.amp!r} was provided.")
        if self.device not in DEVICES:
            raise ConfigError(f"'device' must be one of {list(DEVICES)}. {self.device!r} was provided.")
        lrs = self.lr.values() if isinstance(self.lr, dict) else [self.lr]
        for value in lrs:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"'lr' values must be positive numbers. {self.lr!r} was provided.")

    def lr_for(self, name: str) -> float:
        """Peak learning rate of optimizer ``name``."""
        if not isinstance(self.lr, dict):
            return float(self.lr)
        if name not in self.lr:
            raise ConfigError(
                f"'lr' has no value for optimizer {name!r}; it has {sorted(self.lr)}. "
                "Give one float or one value per optimizer."
            )
        return float(self.lr[name])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (``out_dir`` as a string)."""
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data
