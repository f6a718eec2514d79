"""Progress bars that also report to listeners, so the web app can mirror any long job's progress."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm


@dataclass(frozen=True)
class ProgressEvent:
    """One bar's state after an update: ``done`` of ``total`` units (total None when unknown)."""

    description: str
    done: int
    total: int | None
    unit: str

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)


ProgressListener = Callable[[ProgressEvent], None]
_LISTENERS: ContextVar[tuple[ProgressListener, ...]] = ContextVar("neuroattn_progress_listeners", default=())


class ListenedBar(tqdm):
    """A tqdm bar that also tells the active listeners (see :func:`listen`), even when its display is off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listened_done = int(kwargs.get("initial", 0) or 0)
        self._listened_desc = str(kwargs.get("desc") or "")
        self._listened_unit = str(kwargs.get("unit") or "it")

    def __iter__(self) -> Iterator[Any]:
        # tqdm's own loop skips update() (and so the listeners); count each item explicitly instead.
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        self._listened_done += int(n or 0)
        listeners = _LISTENERS.get()
        if listeners:
            event = ProgressEvent(self._listened_desc, self._listened_done, self.total, self._listened_unit)
            for listener in listeners:
                listener(event)
        return shown

    def set_description(self, desc: str | None = None, refresh: bool | None = True) -> None:
        self._listened_desc = str(desc or "")
        super().set_description(desc, refresh)


def progress_bar(iterable: Any = None, **kwargs: Any) -> ListenedBar:
    """``tqdm(iterable, **kwargs)`` whose updates also reach the listeners active in this context."""
    return ListenedBar(iterable, **kwargs)


@contextlib.contextmanager
def listen(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener`` with a :class:`ProgressEvent` on every progress update made inside the block."""
    token = _LISTENERS.set((*_LISTENERS.get(), listener))
    try:
        yield
    finally:
        _LISTENERS.reset(token)
