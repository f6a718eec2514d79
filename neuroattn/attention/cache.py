"""A small least-recently-used cache with a byte budget for masks, index tables and block masks."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


def nbytes(value: Any) -> int:
    """Bytes held by a tensor, or by the tensors inside a tuple/list/dict/dataclass-like object."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if hasattr(value, "__dict__"):
        return sum(nbytes(v) for v in vars(value).values())
    return 0


class ByteLRU:
    """Keep recently used values while their total size stays under ``max_bytes``; larger values are not kept."""

    def __init__(self, max_bytes: int, max_items: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_create(self, key: Hashable, create: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
        self.misses += 1
        value = create()
        size = nbytes(value)
        if size <= self.max_bytes:
            with self._lock:
                self._items[key] = (value, size)
                while len(self._items) > self.max_items or self.total_bytes > self.max_bytes:
                    self._items.popitem(last=False)
        return value

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = 0
            self.misses = 0
