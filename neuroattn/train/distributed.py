"""Data-parallel training under torchrun: process-group setup and the collectives the trainer needs.

Gradients are averaged with explicit all-reduces at each optimizer step instead of wrapping modules in
``DistributedDataParallel``. A multi-optimizer task (a GAN) back-propagates each loss into one optimizer's
parameters only, runs the discriminator's forward inside the generator's loss and accumulates over
micro-batches; DDP's reducer ties gradient sync to forward/backward pairs and would need
``find_unused_parameters``, ``no_sync`` and wrapped-module calls inside every task to follow that.
Averaging each optimizer's gradients right before its step is the same arithmetic as DDP (mean over
ranks), works for any ``losses`` generator, and lets tasks call their own modules.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from neuroattn.errors import ConfigError

_BUCKET_BYTES = 32 * 2**20  # gradients are flattened into all-reduce buckets of at most this size


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job; a single process is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "gloo" | "nccl" | None for a single process
    owns_group: bool = False  # True when setup_distributed created the process group

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → the local CUDA device when available, else CPU; ``"cuda"`` fails clearly without one."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("'device' is 'cuda' but torch sees no CUDA device. Use 'auto' or 'cpu'.")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the torchrun job described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.

    Uses NCCL when training on CUDA and gloo on CPU. Reuses a process group that already exists; without
    torchrun variables (or with ``WORLD_SIZE=1``) returns a single-process context.
    """
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            device=_set_device(resolve_device(device, local_rank)),
            backend=str(dist.get_backend()),
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=_set_device(resolve_device(device)))
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = _set_device(resolve_device(device, local_rank))
    backend = "nccl" if target.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=target,
        backend=backend,
        owns_group=True,
    )


def _set_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def broadcast_modules(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical start, as DDP does)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def broadcast_buffers(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Copy rank 0's buffers (e.g. batch-norm statistics) to every rank, as DDP does before a forward."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)


def all_reduce_gradients(params: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Replace each parameter's gradient by its mean over ranks.

    A parameter that received a gradient on some ranks only gets zeros on the others first, so every
    rank steps the same set of parameters; one that received none anywhere keeps ``grad = None``.
    """
    if not ctx.distributed or not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    for param, flag in zip(params, present.tolist(), strict=True):
        if flag and param.grad is None:
            param.grad = torch.zeros_like(param)
    grads = [p.grad for p in params if p.grad is not None]
    if any(g.is_sparse for g in grads):
        raise ConfigError("sparse gradients are not supported in data-parallel training")
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])  # (sum of numels,)
        dist.all_reduce(flat)
        flat /= ctx.world_size
        for grad, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            grad.copy_(part.view_as(grad))


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    # One bucket list per (dtype, device) since torch.cat needs both equal; each bucket under _BUCKET_BYTES.
    groups: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = {}
    filled: dict[tuple[torch.dtype, torch.device], int] = {}
    for grad in grads:
        key, nbytes = (grad.dtype, grad.device), grad.numel() * grad.element_size()
        chunks = groups.setdefault(key, [[]])
        if chunks[-1] and filled.get(key, 0) + nbytes > _BUCKET_BYTES:
            chunks.append([])
            filled[key] = 0
        chunks[-1].append(grad)
        filled[key] = filled.get(key, 0) + nbytes
    return [chunk for chunks in groups.values() for chunk in chunks]


def all_gather_bytes(payload: bytes, ctx: DistContext) -> list[bytes]:
    """Every rank's ``payload``, in rank order (plain bytes, so no pickling is involved)."""
    if not ctx.distributed:
        return [payload]
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(ctx.device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=ctx.device)
    padded[: data.numel()] = data
    gathered = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return [g[: int(s.item())].cpu().numpy().tobytes() for g, s in zip(gathered, sizes, strict=True)]
