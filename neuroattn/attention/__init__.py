"""One attention entry point, ``attend(q, k, v, spec)``, over dense, neighborhood, window, axial and linear patterns.

Backends (``Backend``): reference (float64 truth), sdpa, blocked, flex, natten, linear; "auto" picks per
spec and device and logs why on the ``neuroattn.attention`` logger. See ``available_backends()``.
"""

from neuroattn.attention.cache import ByteLRU
from neuroattn.attention.dispatch import attend
from neuroattn.attention.errors import AttentionMemoryError, NeuroattnAttentionWarning
from neuroattn.attention.planner import AttentionPlan, estimate_peak_bytes, memory_budget, plan_attention
from neuroattn.attention.reference import reference_attention
from neuroattn.attention.registry import (
    REGISTRY,
    Backend,
    BackendInfo,
    available_backends,
    get_default_backend,
    set_default_backend,
    use_backend,
)
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Linear, Neighborhood, Window


def clear_caches() -> None:
    """Drop every cached mask, tiling and block mask (they are rebuilt on the next call)."""
    from neuroattn.attention import blocked, dispatch, flex_backend, masks, sdpa_backend

    for cache in (
        masks.MASK_CACHE,
        sdpa_backend.ADDITIVE_MASK_CACHE,
        blocked.TILING_CACHE,
        flex_backend.BLOCK_MASK_CACHE,
    ):
        cache.clear()
    masks.neighborhood_axis_mask.cache_clear()
    masks.window_axis_mask.cache_clear()
    dispatch.forget_logged_decisions()


__all__ = [
    "REGISTRY",
    "AttentionMemoryError",
    "AttentionPlan",
    "AttentionSpec",
    "Axial",
    "Backend",
    "BackendInfo",
    "ByteLRU",
    "Dense",
    "Linear",
    "Neighborhood",
    "NeuroattnAttentionWarning",
    "Window",
    "attend",
    "available_backends",
    "clear_caches",
    "estimate_peak_bytes",
    "get_default_backend",
    "memory_budget",
    "plan_attention",
    "reference_attention",
    "set_default_backend",
    "use_backend",
]
