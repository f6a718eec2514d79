"""Memory planning: predicted peak bytes per backend, the memory budget, tiles/chunks, and the refusal to OOM."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from neuroattn.attention.blocked import choose_tile, tiling_shape
from neuroattn.attention.errors import AttentionMemoryError
from neuroattn.attention.flex_backend import will_compile
from neuroattn.attention.inputs import AttentionCall
from neuroattn.attention.registry import Backend
from neuroattn.attention.selection import select_backend
from neuroattn.attention.specs import AttentionSpec, Axial, Dense, Neighborhood, Window, check_spec
from neuroattn.attention.tiling import tiling_classes

GIB = float(1 << 30)
BUDGET_ENV = "NEUROATTN_ATTENTION_MEMORY_GB"
CPU_BUDGET_FRACTION = 0.8  # of the RAM available right now; the rest is left to the model and the OS
SMALL_CALL_BYTES = 64 << 20  # below this prediction attend does not ask the system for free memory
# Blocked inference runs its tiles in pieces of about a quarter of the output's bytes (gathered q/k/v and
# piece outputs), within these (smallest, largest) bytes per device: on the CPU a small piece stays in L2/L3,
# so what a call needs beyond its output stays a few MiB, while large calls keep their number of pieces (and
# per-call overhead) down; on a GPU large pieces keep the kernels busy.
BLOCKED_CHUNK_BYTES = {"cpu": (2 << 20, 8 << 20), "cuda": (512 << 20, 512 << 20)}
BLOCKED_CHUNK_OUTPUT_FRACTION = 0.25
SCORE_COPIES = 3  # score matrices alive at once in a naive softmax (scores, masked scores, probabilities)


@dataclass(frozen=True)
class AttentionPlan:
    """How one attention call will run and what it is predicted to cost."""

    backend: str
    tile: tuple[int, ...] | None  # blocked: queries per tile along each spatial axis
    chunks: int  # blocked: tiles run in this many sequential pieces (each checkpointed when training)
    estimated_peak_bytes: int  # inputs, outputs and everything the call allocates, forward (+ backward if asked)
    budget_bytes: int | None  # None: not checked (small call, no budget given)
    reason: str
    tokens: int
    dominant: str = ""  # what the largest allocation is

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.estimated_peak_bytes <= self.budget_bytes


def _available_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_budget(device: torch.device | str = "cpu", override: int | None = None) -> int | None:
    """Bytes one attention call may use: ``override``, else $NEUROATTN_ATTENTION_MEMORY_GB, else the device's.

    Device default: on CUDA the free memory plus what torch's caching allocator holds unused; on the CPU
    ``CPU_BUDGET_FRACTION`` of the available RAM. None when it cannot be determined.
    """
    if override is not None:
        return int(override)
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        try:
            return int(float(env) * GIB)
        except ValueError:
            raise ValueError(f"{BUDGET_ENV} must be a number of GiB, got {env!r}") from None
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + held)
    if device.type == "cpu":
        ram = _available_ram_bytes()
        return None if ram is None else int(ram * CPU_BUDGET_FRACTION)
    return None


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _io_bytes(call: AttentionCall) -> int:
    """q, k, v and the output."""
    e = _elem(call.dtype)
    b = call.batch
    return e * (
        b * call.heads * call.q_tokens * (call.head_dim + call.value_dim)
        + b * call.kv_heads * call.kv_tokens * (call.head_dim + call.value_dim)
    )


def blocked_working_bytes(spec: AttentionSpec, call: AttentionCall, tile: tuple[int, ...] | None) -> int:
    """Bytes the blocked backend gathers for one forward pass: q/output tiles and the k/v halos."""
    t_count, tq, hk = tiling_shape(spec, call.q_spatial, tile)
    e, b = _elem(call.dtype), call.batch
    gathered = e * (
        b * call.heads * t_count * tq * (call.head_dim + 2 * call.value_dim)
        + b * call.kv_heads * t_count * hk * (call.head_dim + call.value_dim)
    )
    if call.device.type == "cuda" and call.dtype == torch.float64:  # math kernel: explicit scores
        gathered += 8 * b * call.heads * t_count * tq * hk * SCORE_COPIES
    return gathered


def estimate_peak_bytes(
    backend: Backend,
    spec: AttentionSpec,
    call: AttentionCall,
    *,
    tile: tuple[int, ...] | None = None,
    chunks: int = 1,
    backward: bool | None = None,
) -> tuple[int, str]:
    """Predicted peak bytes of one call (forward, plus backward when ``backward``) and what dominates it."""
    backward = call.requires_grad if backward is None else backward
    e, cuda = _elem(call.dtype), call.device.type == "cuda"
    b, h, n, m = call.batch, call.heads, call.q_tokens, call.kv_tokens
    io = _io_bytes(call) * (2 if backward else 1)  # gradients mirror the inputs
    pairs = n * m
    scores = b * h * pairs
    if backend == Backend.REFERENCE:
        mask = pairs * (b if call.has_padding_mask else 1)
        f64 = 8 * (b * h * (n + m) * (call.head_dim + call.value_dim))
        work = 8 * scores * SCORE_COPIES * (2 if backward else 1)
        return io + f64 + mask + work, f"float64 score matrices ({scores:,} scores)"
    if backend == Backend.SDPA:
        if isinstance(spec, Axial):
            return 3 * io, "per-axis copies of q/k/v and outputs"
        math_kernel = cuda and call.dtype == torch.float64  # no fused CUDA kernel for float64
        mask_pairs = 0
        if isinstance(spec, Neighborhood | Window):
            mask_pairs = pairs
        elif isinstance(spec, Dense) and call.has_padding_mask:
            mask_pairs = b * pairs if spec.causal else b * m
        mask = mask_pairs * (1 + e)  # the bool mask and the float copy SDPA converts it to (CPU and CUDA)
        work = scores * e * SCORE_COPIES * (2 if backward else 1) if math_kernel else 0
        gqa = e * b * h * m * (call.head_dim + call.value_dim) if call.groups > 1 and cuda else 0
        dominant = "inputs and outputs"
        if mask >= io:
            dominant = f"(N, N) boolean mask and its float copy ({mask_pairs:,} entries)"
        if work:
            dominant = f"score matrices of the math kernel ({scores:,} scores)"
        return io + mask + work + gqa, dominant
    if backend == Backend.BLOCKED:
        t_count, tq, hk = tiling_shape(spec, call.q_spatial, tile)
        gathered = blocked_working_bytes(spec, call, tile)
        classes = tiling_classes(spec, call.q_spatial, tile)  # tiles share one (Tq, Hk) mask per class
        mask = classes * tq * hk * (1 + call.groups * e)  # bool masks and their additive copies per query head
        mask += 8 * (t_count * tq + n) + 4 * t_count * hk  # int64 query/inverse and int32 key indices
        # one chunk's tiles at a time; training keeps them for backward (one chunk: all of them at once,
        # several chunks: each is recomputed in backward, so again one chunk at a time)
        work = math.ceil(gathered / max(chunks, 1)) * (2 if backward else 1)
        return io + mask + work, f"gathered tiles ({t_count} tiles x {tq} queries x {hk} keys)"
    if backend == Backend.FLEX:
        if will_compile(call.device, call.dtype):
            blocks = math.ceil(n / 128) * math.ceil(m / 128) * 4 * 4
            mask = 0 if cuda else pairs  # CPU builds the block mask from a full (N, N) evaluation
            return io + blocks + mask + 4 * b * h * n, "inputs and outputs"
        return io + pairs + 4 * scores * SCORE_COPIES, f"eager flex_attention score matrices ({scores:,} scores)"
    if backend == Backend.NATTEN:
        gqa = e * b * h * m * (call.head_dim + call.value_dim) if call.groups > 1 else 0
        return 2 * io + gqa, "inputs and outputs (heads-last copies)"
    if backend == Backend.LINEAR:
        return 3 * io, "feature-mapped copies of q and k"
    raise ValueError(f"no memory model for backend {backend}")


def plan_call(
    backend: Backend,
    reason: str,
    spec: AttentionSpec,
    call: AttentionCall,
    budget_override: int | None = None,
    *,
    always_budget: bool = False,
) -> AttentionPlan:
    """Plan a call whose backend is already chosen.

    ``budget_bytes`` stays None (unchecked) for calls predicted under ``SMALL_CALL_BYTES`` when no budget is
    set, so small calls never query the system; ``always_budget`` fills it in anyway.
    """
    tile = choose_tile(spec, call.q_spatial, call.device.type) if backend == Backend.BLOCKED else None
    chunks = 1
    peak, dominant = estimate_peak_bytes(backend, spec, call, tile=tile)
    explicit = budget_override is not None or bool(os.environ.get(BUDGET_ENV, "").strip())
    ask = always_budget or explicit or peak > SMALL_CALL_BYTES
    budget = memory_budget(call.device, budget_override) if ask else None
    if backend == Backend.BLOCKED:
        t_count = tiling_shape(spec, call.q_spatial, tile)[0]
        if not call.requires_grad:  # inference: bounding the working set costs nothing
            working = blocked_working_bytes(spec, call, tile)
            smallest, largest = BLOCKED_CHUNK_BYTES.get(call.device.type, BLOCKED_CHUNK_BYTES["cuda"])
            output = _elem(call.dtype) * call.batch * call.heads * call.q_tokens * call.value_dim
            target = min(max(output * BLOCKED_CHUNK_OUTPUT_FRACTION, smallest), largest)
            chunks = min(t_count, max(1, math.ceil(working / target)))
            peak, dominant = estimate_peak_bytes(backend, spec, call, tile=tile, chunks=chunks)
        while budget is not None and peak > budget and chunks < t_count:
            chunks = min(t_count, chunks * 2)
            peak, dominant = estimate_peak_bytes(backend, spec, call, tile=tile, chunks=chunks)
    return AttentionPlan(
        backend=backend.value,
        tile=tile,
        chunks=chunks,
        estimated_peak_bytes=int(peak),
        budget_bytes=budget,
        reason=reason,
        tokens=call.q_tokens,
        dominant=dominant,
    )


def check_plan(plan: AttentionPlan, spec: AttentionSpec, call: AttentionCall) -> None:
    """Raise AttentionMemoryError, before anything is allocated, when the plan does not fit its budget."""
    if plan.fits:
        return
    local = isinstance(spec, Neighborhood | Window)
    if local:
        advice = "use the 'blocked' backend (or natten/flex on CUDA), fewer tokens or a smaller batch"
    else:
        advice = (
            "use Neighborhood(kernel_size=...) or Window(size=...) attention, which the 'blocked' backend "
            "serves in O(N * kernel) memory, or fewer tokens / a smaller batch"
        )
    raise AttentionMemoryError(
        f"{type(spec).__name__} attention over {plan.tokens:,} tokens (batch {call.batch}, {call.heads} heads, "
        f"head_dim {call.head_dim}, {str(call.dtype).removeprefix('torch.')}) on the '{plan.backend}' backend "
        f"needs about {plan.estimated_peak_bytes / GIB:.3g} GiB ({plan.dominant}) but the memory budget on "
        f"{call.device.type} is {plan.budget_bytes / GIB:.3g} GiB; {advice}, or raise the budget with "
        f"memory_budget_bytes= or ${BUDGET_ENV}",
        estimated_bytes=plan.estimated_peak_bytes,
        budget_bytes=plan.budget_bytes,
    )


def plan_attention(
    spatial: tuple[int, ...],
    spec: AttentionSpec,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    batch: int = 1,
    heads: int = 1,
    head_dim: int = 64,
    memory_budget_bytes: int | None = None,
    backend: str | Backend = "auto",
    kv_heads: int | None = None,
    kv_spatial: tuple[int, ...] | None = None,
    value_dim: int | None = None,
    backward: bool = False,
) -> AttentionPlan:
    """Plan an attention call without tensors: backend, blocked tile/chunks, predicted peak bytes and budget.

    Parameters
    ----------
    spatial : token grid of the queries, e.g. (X, Y, Z)
    spec : Dense | Neighborhood | Window | Axial | Linear
    dtype, device : of q/k/v
    batch, heads, head_dim : of q; ``kv_heads`` (default ``heads``) and ``value_dim`` (default ``head_dim``)
    memory_budget_bytes : budget; default $NEUROATTN_ATTENTION_MEMORY_GB, else the device's free memory
    backend : as in ``attend``; unsupported requests fall back with a warning, as in ``attend``
    backward : include the backward pass (training)

    Returns
    -------
    AttentionPlan; ``plan.fits`` tells whether ``attend`` would run or raise AttentionMemoryError.
    """
    spatial = tuple(int(s) for s in spatial)
    kv_spatial = spatial if kv_spatial is None else tuple(int(s) for s in kv_spatial)
    check_spec(spec, spatial, kv_spatial)
    call = AttentionCall(
        batch=batch,
        heads=heads,
        kv_heads=heads if kv_heads is None else kv_heads,
        q_spatial=spatial,
        kv_spatial=kv_spatial,
        head_dim=head_dim,
        value_dim=head_dim if value_dim is None else value_dim,
        dtype=dtype,
        device=torch.device(device),
        requires_grad=backward,
    )
    if call.heads % call.kv_heads:
        raise ValueError(f"heads ({call.heads}) must be a multiple of kv_heads ({call.kv_heads})")
    chosen, reason = select_backend(backend, spec, call)
    return plan_call(chosen, reason, spec, call, memory_budget_bytes, always_budget=True)
