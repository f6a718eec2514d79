"""``attend``: the one attention entry point every model calls; validates, picks a backend, plans memory, runs."""

from __future__ import annotations

import logging
import math
import warnings

import torch

from neuroattn.attention.blocked import blocked_attention
from neuroattn.attention.errors import NeuroattnAttentionWarning
from neuroattn.attention.flex_backend import flex_attention_call
from neuroattn.attention.inputs import AttentionCall, describe_call
from neuroattn.attention.linear_backend import linear_attention
from neuroattn.attention.natten_backend import natten_attention
from neuroattn.attention.planner import AttentionPlan, check_plan, plan_call
from neuroattn.attention.reference import reference_attention
from neuroattn.attention.registry import Backend
from neuroattn.attention.sdpa_backend import sdpa_attention
from neuroattn.attention.selection import select_backend
from neuroattn.attention.specs import AttentionSpec, Linear

logger = logging.getLogger("neuroattn.attention")
_LOGGED: set[tuple] = set()  # decisions already logged, so a training loop logs each one once


def forget_logged_decisions() -> None:
    """Log every backend decision again (each is otherwise logged once per process)."""
    _LOGGED.clear()


def _log_decision(spec: AttentionSpec, call: AttentionCall, plan: AttentionPlan) -> None:
    key = (spec, call.q_spatial, call.kv_spatial, call.device.type, call.dtype, plan.backend, plan.tile, plan.chunks)
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    extra = f", tile {plan.tile}, {plan.chunks} chunk(s)" if plan.tile else ""
    logger.info(
        "%s on %s tokens (%s, %s): backend '%s'%s, ~%.1f MiB predicted; %s",
        spec,
        call.q_spatial,
        call.device.type,
        str(call.dtype).removeprefix("torch."),
        plan.backend,
        extra,
        plan.estimated_peak_bytes / 2**20,
        plan.reason,
    )


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    backend: str | Backend = "auto",
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    memory_budget_bytes: int | None = None,
) -> torch.Tensor:
    """Attention of q over k/v with the pattern ``spec``, on the best (or the requested) backend.

    Parameters
    ----------
    q : Tensor, shape (B, heads, *spatial, head_dim)
        1 to 4 spatial axes (a flat sequence is 1-D).
    k, v : Tensor, shape (B, kv_heads, *kv_spatial, head_dim) and (B, kv_heads, *kv_spatial, value_dim)
        ``heads % kv_heads == 0``: grouped-query attention shares each k/v head among ``heads // kv_heads``
        query heads. ``kv_spatial`` differs from ``spatial`` only for Dense (cross-attention) and Linear.
    spec : Dense | Neighborhood | Window | Axial | Linear
    backend : "auto" (default: the ``use_backend`` / ``set_default_backend`` choice, else automatic),
        "reference", "sdpa", "blocked", "flex", "natten" or "linear". A backend that cannot serve the
        call is replaced with a ``NeuroattnAttentionWarning`` naming why.
    key_padding_mask : bool Tensor, shape (B, prod(kv_spatial)), True = attend; Dense only
    scale : float, default 1/sqrt(head_dim) (Linear: multiplies q before the feature map; default none)
    memory_budget_bytes : int, optional
        Budget for this call; default $NEUROATTN_ATTENTION_MEMORY_GB, else the device's free memory.

    Returns
    -------
    Tensor, shape (B, heads, *spatial, value_dim), dtype and device of q

    Raises
    ------
    ValueError
        Invalid spec, shapes or mask (the message names the problem).
    AttentionMemoryError
        The chosen backend is predicted to exceed the memory budget (raised before allocating).
    """
    call = describe_call(q, k, v, spec, key_padding_mask)
    chosen, reason = select_backend(backend, spec, call)
    plan = plan_call(chosen, reason, spec, call, memory_budget_bytes)
    check_plan(plan, spec, call)
    if logger.isEnabledFor(logging.INFO):
        _log_decision(spec, call, plan)
    if scale is None and not isinstance(spec, Linear):
        scale = 1.0 / math.sqrt(call.head_dim)
    if chosen == Backend.REFERENCE:
        return reference_attention(q, k, v, spec, key_padding_mask=key_padding_mask, scale=scale)
    if chosen == Backend.SDPA:
        return sdpa_attention(q, k, v, spec, key_padding_mask=key_padding_mask, scale=scale)
    if chosen == Backend.BLOCKED:
        return blocked_attention(q, k, v, spec, scale=scale, tile=plan.tile, chunks=plan.chunks)
    if chosen in (Backend.FLEX, Backend.NATTEN):
        run = flex_attention_call if chosen == Backend.FLEX else natten_attention
        try:
            return run(q, k, v, spec, scale=scale)
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise
        except Exception as exc:  # a kernel that turns this configuration down at run time
            warnings.warn(
                f"attention backend '{chosen.value}' failed on {spec} ({type(exc).__name__}: {exc}); "
                "using 'blocked' instead",
                NeuroattnAttentionWarning,
                stacklevel=2,
            )
            plan = plan_call(Backend.BLOCKED, f"fallback from '{chosen.value}'", spec, call, memory_budget_bytes)
            check_plan(plan, spec, call)
            return blocked_attention(q, k, v, spec, scale=scale, tile=plan.tile, chunks=plan.chunks)
    if chosen == Backend.LINEAR:
        return linear_attention(q, k, v, spec, scale=scale)
    raise ValueError(f"unknown backend {chosen!r}")
