"""One trainer for every model: AMP, accumulation, checkpoints and resume, DDP, progress, metrics."""
