"""Backend names, what each backend can serve (spec, device, dtype, rank, import), and the default-backend switch."""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from neuroattn.attention.flex_backend import flex_import_error
from neuroattn.attention.inputs import AttentionCall
from neuroattn.attention.natten_backend import NATTEN_PIP_HINT, natten_import_error
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Linear, Neighborhood, Window

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Backend(enum.StrEnum):
    """Names accepted by ``attend(..., backend=...)``, ``use_backend`` and ``set_default_backend``."""

    AUTO = "auto"
    REFERENCE = "reference"
    SDPA = "sdpa"
    BLOCKED = "blocked"
    FLEX = "flex"
    NATTEN = "natten"
    LINEAR = "linear"


@dataclass(frozen=True)
class BackendInfo:
    """What one backend serves; ``unsupported_reason`` returns None when it can serve a call."""

    name: Backend
    specs: tuple[type, ...]
    devices: tuple[str, ...]  # device types; "*" = any
    dtypes: dict[str, tuple[torch.dtype, ...]]  # per device type ("*" = default)
    max_rank: int = 4  # spatial axes
    padding_mask: bool = False
    backward_devices: tuple[str, ...] = ("*",)  # device types where gradients work
    import_error: Callable[[], str | None] = lambda: None
    extra_check: Callable[[AttentionSpec, AttentionCall], str | None] | None = None
    summary: str = ""

    def unavailable_reason(self, device: torch.device | str = "cpu") -> str | None:
        device = torch.device(device)
        reasons = []
        if "*" not in self.devices and device.type not in self.devices:
            reasons.append(f"runs on {', '.join(self.devices)} only, not {device.type}")
        import_error = self.import_error()
        if import_error:
            reasons.append(import_error)
        return "; ".join(reasons) or None

    def unsupported_reason(self, spec: AttentionSpec, call: AttentionCall) -> str | None:
        """Why this backend cannot serve ``spec`` for ``call`` (None when it can)."""
        if not isinstance(spec, self.specs):
            return f"does not serve {type(spec).__name__} attention"
        reason = self.unavailable_reason(call.device)
        if reason:
            return reason
        dtypes = self.dtypes.get(call.device.type, self.dtypes.get("*", FLOATS))
        if call.dtype not in dtypes:
            return f"does not support {call.dtype} on {call.device.type}"
        if call.rank > self.max_rank:
            return f"supports at most {self.max_rank} spatial axes, got {call.rank}"
        if call.has_padding_mask and not self.padding_mask:
            return "does not support key_padding_mask"
        if call.requires_grad and "*" not in self.backward_devices and call.device.type not in self.backward_devices:
            return f"has no backward pass on {call.device.type} and gradients are required"
        return self.extra_check(spec, call) if self.extra_check else None


def _flex_check(spec: AttentionSpec, call: AttentionCall) -> str | None:
    if call.device.type == "cuda" and call.head_dim < 16:
        return f"needs head_dim >= 16 on CUDA, got {call.head_dim}"
    return None


def _natten_check(spec: AttentionSpec, call: AttentionCall) -> str | None:
    if call.value_dim != call.head_dim:
        return "needs value_dim == head_dim"
    return None


REGISTRY: dict[Backend, BackendInfo] = {
    Backend.REFERENCE: BackendInfo(
        Backend.REFERENCE,
        (Dense, Neighborhood, Window, Axial, Linear),
        ("*",),
        {"*": FLOATS},
        padding_mask=True,
        summary="float64 explicit (N, N) mask; the truth for tests, O(N^2) memory",
    ),
    Backend.SDPA: BackendInfo(
        Backend.SDPA,
        (Dense, Neighborhood, Window, Axial),
        ("*",),
        {"*": FLOATS},
        padding_mask=True,
        summary="torch SDPA; Dense natively, Neighborhood/Window with a cached (N, N) bool mask, Axial per axis",
    ),
    Backend.BLOCKED: BackendInfo(
        Backend.BLOCKED,
        (Neighborhood, Window),
        ("*",),
        {"*": FLOATS},
        summary="query tiles + key halo gathered into one batched SDPA call; O(N * halo) memory",
    ),
    Backend.FLEX: BackendInfo(
        Backend.FLEX,
        (Dense, Neighborhood, Window),
        ("cpu", "cuda"),
        {"cpu": FLOATS, "cuda": (torch.float16, torch.bfloat16, torch.float32)},
        max_rank=4,
        backward_devices=("cuda",),
        import_error=flex_import_error,
        extra_check=_flex_check,
        summary="torch FlexAttention with block masks (compiled once per shape); no backward on CPU",
    ),
    Backend.NATTEN: BackendInfo(
        Backend.NATTEN,
        (Neighborhood,),
        ("cuda",),
        {"cuda": (torch.float16, torch.bfloat16, torch.float32)},
        max_rank=3,
        import_error=natten_import_error,
        extra_check=_natten_check,
        summary=f"NATTEN fused neighborhood attention (CUDA); {NATTEN_PIP_HINT}",
    ),
    Backend.LINEAR: BackendInfo(
        Backend.LINEAR,
        (Linear,),
        ("*",),
        {"*": FLOATS},
        summary="kernelized linear attention, O(N)",
    ),
}


def parse_backend(name: str | Backend) -> Backend:
    """Backend from a name; unknown names raise ValueError listing the known ones."""
    try:
        return Backend(str(name).lower())
    except ValueError:
        known = [b.value for b in Backend]
        raise ValueError(f"'backend' must be one of {known}. {name!r} was provided.") from None


_default_backend: Backend = Backend.AUTO
_context_backend: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("neuroattn_backend", default=None)


def set_default_backend(name: str | Backend) -> None:
    """Backend used when ``attend`` is called with ``backend="auto"`` outside any ``use_backend`` block."""
    global _default_backend
    _default_backend = parse_backend(name)


def get_default_backend() -> Backend:
    """The backend ``backend="auto"`` resolves to right now (innermost ``use_backend``, else the default)."""
    current = _context_backend.get()
    return current if current is not None else _default_backend


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Within the block, ``attend(..., backend="auto")`` uses ``name`` (it still falls back, with a warning)."""
    token = _context_backend.set(parse_backend(name))
    try:
        yield _context_backend.get()
    finally:
        _context_backend.reset(token)


def available_backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """Each backend's name mapped to "available" or the reason it is not (with a pip hint where one helps)."""
    return {backend.value: info.unavailable_reason(device) or "available" for backend, info in REGISTRY.items()}
