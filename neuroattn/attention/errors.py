"""Errors and warnings raised by the attention layer."""

from __future__ import annotations

from neuroattn.errors import NeuroattnError


class AttentionMemoryError(NeuroattnError, MemoryError):
    """An attention call is predicted to need more memory than the budget allows; raised before allocating."""

    def __init__(self, message: str, *, estimated_bytes: int, budget_bytes: int) -> None:
        self.estimated_bytes = estimated_bytes
        self.budget_bytes = budget_bytes
        super().__init__(message)


class NeuroattnAttentionWarning(UserWarning):
    """A requested attention backend cannot serve a call and another one serves it instead."""
