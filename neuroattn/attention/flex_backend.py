"""FlexAttention: the pattern as a mask_mod, block masks cached per shape, flex_attention compiled once and cached.

``torch.nn.attention.flex_attention`` is imported lazily. Compilation is on by default; set the environment
variable ``NEUROATTN_FLEX_COMPILE=0`` (or call ``set_flex_compile(False)``) to run eager flex_attention,
which materialises the full score matrix and is meant for testing only. If compiling fails (for example no
C++ compiler on a CPU machine), a warning is given once and the eager path is used. Compiled CPU
FlexAttention has no float64 kernel, so float64 on the CPU always runs eager.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

from neuroattn.attention.cache import ByteLRU
from neuroattn.attention.errors import NeuroattnAttentionWarning
from neuroattn.attention.specs import AttentionSpec, Dense, Neighborhood, Window

BLOCK_MASK_CACHE = ByteLRU(max_bytes=256 << 20, max_items=32)
_COMPILED: dict[str, Callable] = {}
_COMPILE_BROKEN: set[tuple[str, torch.dtype]] = set()
_compile_override: bool | None = None
FLEX_SHAPES = 64  # compiled graphs kept per function (one per input shape and dtype)


def flex_import_error() -> str | None:
    """None when FlexAttention can be imported, else the reason."""
    try:
        import torch.nn.attention.flex_attention
    except ImportError as exc:
        return f"torch {torch.__version__} has no FlexAttention ({exc}); pip install 'torch>=2.5'"
    return None


def set_flex_compile(enabled: bool | None) -> None:
    """Force torch.compile of flex_attention on (True) or off (False); None restores the default (env or on)."""
    global _compile_override
    _compile_override = enabled


def flex_compile_enabled() -> bool:
    if _compile_override is not None:
        return _compile_override
    return os.environ.get("NEUROATTN_FLEX_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


def make_mask_mod(spec: AttentionSpec, spatial: tuple[int, ...]) -> Callable | None:
    """mask_mod(b, h, q_idx, kv_idx) -> bool for ``spec`` on the row-major flattened ``spatial`` grid."""
    n = len(spatial)
    strides = [1] * n
    for a in range(n - 2, -1, -1):
        strides[a] = strides[a + 1] * spatial[a + 1]
    if isinstance(spec, Dense):
        if not spec.causal:
            return None
        return lambda b, h, q_idx, kv_idx: q_idx >= kv_idx
    if isinstance(spec, Neighborhood):
        kernels, dilations, causals = spec.resolve(spatial)

        def neighborhood_mod(b, h, q_idx, kv_idx):
            allowed = None
            for a in range(n):
                length, kernel, dil = spatial[a], kernels[a], dilations[a]
                xq, xk = (q_idx // strides[a]) % length, (kv_idx // strides[a]) % length
                gq, pq, pk = xq % dil, xq // dil, xk // dil
                same_group = gq == xk % dil
                if causals[a]:
                    ok = same_group & (pk <= pq) & (pk > pq - kernel)
                else:
                    group_length = (length - gq + dil - 1) // dil
                    start = torch.minimum(torch.clamp(pq - kernel // 2, min=0), group_length - kernel)
                    ok = same_group & (pk >= start) & (pk < start + kernel)
                allowed = ok if allowed is None else allowed & ok
            return allowed

        return neighborhood_mod
    if isinstance(spec, Window):
        sizes, shifts = spec.resolve(spatial)

        def window_mod(b, h, q_idx, kv_idx):
            allowed = None
            for a in range(n):
                xq, xk = (q_idx // strides[a]) % spatial[a], (kv_idx // strides[a]) % spatial[a]
                # window id in original coordinates, +size keeps the floor division non-negative
                ok = (xq - shifts[a] + sizes[a]) // sizes[a] == (xk - shifts[a] + sizes[a]) // sizes[a]
                allowed = ok if allowed is None else allowed & ok
            return allowed

        return window_mod
    raise ValueError(f"the flex backend does not serve {type(spec).__name__} attention")


def _create_block_mask(mask_mod: Callable, n_q: int, n_kv: int, device: torch.device, compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask

    if compiled and device.type == "cuda":
        # compiled creation never materialises the (N, N) mask
        key = "create_block_mask"
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(create_block_mask)
        with _enough_recompiles():
            return _COMPILED[key](mask_mod, None, None, n_q, n_kv, device=device)
    return create_block_mask(mask_mod, None, None, n_q, n_kv, device=device)


def get_block_mask(spec: AttentionSpec, q_spatial: tuple[int, ...], n_kv: int, device: torch.device):
    """Block mask for ``spec``, cached per (spec, shape, device); None for non-causal Dense."""
    mask_mod = make_mask_mod(spec, q_spatial)
    if mask_mod is None:
        return None
    n_q = 1
    for s in q_spatial:
        n_q *= s
    compiled = flex_compile_enabled()
    return BLOCK_MASK_CACHE.get_or_create(
        (spec, q_spatial, n_kv, str(device), compiled),
        lambda: _create_block_mask(mask_mod, n_q, n_kv, device, compiled),
    )


def will_compile(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether flex_attention runs compiled for this device and dtype (compiled CPU flex has no float64)."""
    if not flex_compile_enabled() or (device.type, dtype) in _COMPILE_BROKEN:
        return False
    return not (device.type == "cpu" and dtype == torch.float64)


def _flex_fn(device: torch.device, dtype: torch.dtype) -> tuple[Callable, bool]:
    """flex_attention, compiled once per device type when compilation is on and has not failed."""
    from torch.nn.attention.flex_attention import flex_attention

    if not will_compile(device, dtype):
        return flex_attention, False
    if device.type not in _COMPILED:
        _COMPILED[device.type] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED[device.type], True


def _enough_recompiles():
    """Let the compiled flex_attention keep one graph per shape for up to ``FLEX_SHAPES`` shapes.

    dynamo's default limit (8) would otherwise send later shapes to eager flex_attention, which
    materialises the full score matrix.
    """
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch({name: max(getattr(config, name), FLEX_SHAPES)})


def flex_attention_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Serve Dense, Neighborhood or Window with FlexAttention; shapes as in ``attend``."""
    batch, heads = q.shape[:2]
    q_spatial = tuple(q.shape[2:-1])
    qf = q.reshape(batch, heads, -1, q.shape[-1])  # (B, h, N, d)
    kf = k.reshape(batch, k.shape[1], -1, k.shape[-1])  # (B, h_kv, M, d)
    vf = v.reshape(batch, v.shape[1], -1, v.shape[-1])
    block_mask = get_block_mask(spec, q_spatial, kf.shape[2], q.device)
    fn, compiled = _flex_fn(q.device, q.dtype)
    gqa = heads != k.shape[1]
    if compiled:
        try:
            with _enough_recompiles():
                out = fn(qf, kf, vf, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        except Exception as exc:  # compilation problems surface on the first call
            _COMPILE_BROKEN.add((q.device.type, q.dtype))
            warnings.warn(
                f"compiling flex_attention failed on {q.device.type} ({type(exc).__name__}: {exc}); "
                "using eager flex_attention, which materialises the full score matrix",
                NeuroattnAttentionWarning,
                stacklevel=3,
            )
            fn, compiled = _flex_fn(q.device, q.dtype)
    if not compiled:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = fn(qf, kf, vf, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    return out.reshape(batch, heads, *q_spatial, v.shape[-1])
