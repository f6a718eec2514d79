"""One trainer for every model: AMP, accumulation, checkpoints and resume, DDP, progress, metrics."""

from neuroattn.train.config import TrainConfig
from neuroattn.train.data import DataPosition, ShardedBatchSampler
from neuroattn.train.distributed import DistContext, setup_distributed
from neuroattn.train.export import default_export_state_dict
from neuroattn.train.schedule import lr_factor
from neuroattn.train.task import LossItem, TrainTask, adam_per_module
from neuroattn.train.trainer import Trainer, TrainResult

__all__ = [
    "DataPosition",
    "DistContext",
    "LossItem",
    "ShardedBatchSampler",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "adam_per_module",
    "default_export_state_dict",
    "lr_factor",
    "setup_distributed",
]
