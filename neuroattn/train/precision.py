"""Mixed precision: which autocast dtype to use on which device, and whether gradients need loss scaling."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from neuroattn.errors import ConfigError


@dataclass(frozen=True)
class AmpPlan:
    """The resolved precision of a run."""

    device_type: str  # "cpu" | "cuda"
    dtype: torch.dtype | None  # autocast dtype; None = full precision
    use_scaler: bool  # fp16 needs a GradScaler so small gradients do not flush to zero

    @property
    def name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context for forward passes (a no-op context when precision is full)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (a disabled scaler passes losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)


def resolve_amp(mode: str, device: torch.device) -> AmpPlan:
    """Turn ``"off" | "bf16" | "fp16" | "auto"`` into a plan for ``device``.

    ``auto``: bf16 on CUDA devices that support it, else fp16 with loss scaling; full precision on CPU.
    ``bf16`` on CPU uses CPU autocast. ``fp16`` needs CUDA.
    """
    kind = device.type
    if mode == "off":
        return AmpPlan(kind, None, False)
    if mode == "auto":
        if kind != "cuda":
            return AmpPlan(kind, None, False)
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("'amp' is 'bf16' but this CUDA device has no bf16 support. Use 'fp16' or 'auto'.")
        return AmpPlan(kind, torch.bfloat16, False)
    if mode == "fp16":
        if kind != "cuda":
            raise ConfigError("'amp' is 'fp16', which needs a CUDA device. Use 'bf16' or 'off' on CPU.")
        return AmpPlan(kind, torch.float16, True)
    raise ConfigError(f"'amp' must be one of ['off', 'bf16', 'fp16', 'auto']. {mode!r} was provided.")
