"""Which backend serves a call: the automatic choice per spec/device, and fallback with a warning."""

from __future__ import annotations

import warnings

from neuroattn.attention.errors import NeuroattnAttentionWarning
from neuroattn.attention.inputs import AttentionCall
from neuroattn.attention.registry import REGISTRY, Backend, get_default_backend, parse_backend
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Linear, Neighborhood, Window


def auto_backend(spec: AttentionSpec, call: AttentionCall) -> tuple[Backend, str]:
    """The automatic choice and its reason; it always names a backend that can serve the call."""
    device = call.device.type
    if isinstance(spec, Linear):
        return Backend.LINEAR, "Linear attention runs in O(N) on the linear backend"
    if isinstance(spec, Dense):
        return Backend.SDPA, "Dense attention runs on torch SDPA (fused flash / memory-efficient kernels)"
    if isinstance(spec, Axial):
        return Backend.SDPA, "Axial attention is composed from one SDPA call per spatial axis"
    if isinstance(spec, Window):
        return Backend.BLOCKED, "windows are independent blocks: one batched SDPA call over all windows"
    if isinstance(spec, Neighborhood):
        skipped = []
        if device == "cuda":
            for candidate in (Backend.NATTEN, Backend.FLEX):
                reason = REGISTRY[candidate].unsupported_reason(spec, call)
                if reason is None:
                    return candidate, f"Neighborhood attention on CUDA runs on {candidate.value}"
                skipped.append(f"{candidate.value}: {reason}")
        why = f" ({'; '.join(skipped)})" if skipped else ""
        return Backend.BLOCKED, f"Neighborhood attention on {device} runs on the blocked backend{why}"
    return Backend.REFERENCE, f"no efficient backend for {type(spec).__name__}"


def select_backend(requested: str | Backend, spec: AttentionSpec, call: AttentionCall) -> tuple[Backend, str]:
    """Resolve ``requested`` ("auto" = the active default) to a backend that can serve the call.

    A backend that cannot serve it is replaced by the automatic choice with a ``NeuroattnAttentionWarning``
    naming why, so a call is never silently served by something other than what was asked for.
    """
    backend = parse_backend(requested)
    if backend == Backend.AUTO:
        backend = get_default_backend()
    if backend == Backend.AUTO:
        return auto_backend(spec, call)
    reason = REGISTRY[backend].unsupported_reason(spec, call)
    if reason is None:
        return backend, f"backend '{backend.value}' was requested"
    fallback, why = auto_backend(spec, call)
    warnings.warn(
        f"attention backend '{backend.value}' cannot serve {type(spec).__name__} attention on "
        f"{call.device.type} with {call.dtype}: it {reason}; using '{fallback.value}' instead ({why})",
        NeuroattnAttentionWarning,
        stacklevel=3,
    )
    return fallback, f"fallback from '{backend.value}' ({reason}); {why}"
