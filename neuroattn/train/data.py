"""Deterministic, resumable data order: a seeded permutation per epoch, sharded over ranks, then batched."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from neuroattn.errors import ConfigError


@dataclass(frozen=True)
class DataPosition:
    """The next micro-batch to read on each rank: batch ``batch`` (0-based) of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of one epoch of a seeded permutation, restricted to this rank's shard.

    The epoch's order is ``torch.randperm(num_samples)`` drawn from a generator seeded with
    ``seed + epoch``; rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...`` as
    ``DistributedSampler`` does, so ranks read disjoint samples and the union of the ranks' ``k``-th
    batches is the ``k``-th batch of a single process with ``world_size`` times the batch size.
    With ``drop_last`` the permutation is cut to a multiple of ``world_size`` and incomplete batches are
    dropped; without it the shards are padded with the epoch's first samples and the last batch may be short.
    Iteration starts at batch ``start_batch`` so a resumed run skips exactly what was consumed.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    def shard(self) -> list[int]:
        """This rank's sample indices for ``self.epoch``, in reading order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        if self.drop_last:
            order = order[: self.num_samples - self.num_samples % self.world_size]
        else:
            padding = -self.num_samples % self.world_size
            order = order + order[:padding]
        return order[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int:
        per_rank = self.num_samples // self.world_size if self.drop_last else -(-self.num_samples // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.shard()
        for index in range(self.start_batch, self.batches_per_epoch()):
            yield shard[index * self.batch_size : (index + 1) * self.batch_size]

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)


def loader_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the DataLoader's own generator (worker seeds), kept apart from the global random streams."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_stream(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start: DataPosition,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[DataPosition, Any]]:
    """Endless ``(position after this batch, batch)`` pairs from ``start`` on, epoch after epoch.

    Dataset randomness resumes exactly with ``num_workers=0`` (it uses the restored global streams); with
    workers it is exact only when each sample's randomness depends on its index alone.
    """
    num_samples = len(dataset)  # type: ignore[arg-type]
    probe = ShardedBatchSampler(
        num_samples, batch_size, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
    )
    if probe.batches_per_epoch() == 0:
        raise ConfigError(
            f"the training set has {num_samples} samples, too few for one batch of {batch_size} "
            f"on each of {world_size} rank(s). Lower 'batch_size' or add data."
        )
    epoch, first = start.epoch, start.batch
    while True:
        sampler = ShardedBatchSampler(
            num_samples,
            batch_size,
            seed=seed,
            epoch=epoch,
            start_batch=first,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(loader_seed(seed, epoch, rank)),
        )
        for index, batch in enumerate(loader, start=first):
            yield DataPosition(epoch, index + 1), batch
        epoch, first = epoch + 1, 0


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (dicts, lists, tuples, named tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
