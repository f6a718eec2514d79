"""Config dataclasses from plain dicts (JSON, YAML, checkpoints), refusing keys the dataclass does not know."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from neuroattn.errors import ConfigError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls(**data)`` after checking every key is a field of ``cls`` (a typo fails, listing the known keys)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    return cls(**dict(data))
