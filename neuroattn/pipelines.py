"""Pipeline configs from YAML (``pipelines/*.yaml``), validated by pydantic against the pipeline's dataclass."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from neuroattn.errors import ConfigError

T = TypeVar("T")


def load_pipeline_config(path: str | Path, config_class: type[T]) -> T:
    """Read a YAML file into ``config_class`` (a dataclass); unknown keys and wrong types are errors."""
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    adapter = TypeAdapter(config_class)
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def model_settings(config: str | Path | None, model: str | None, config_class: type[T], models: str) -> T:
    """Settings from a YAML ``config``, else the defaults for ``model``; when both are given they must agree.

    ``config_class`` is a dataclass with a ``model`` field; ``models`` lists the choices for the error message.
    """
    if config is not None:
        settings = load_pipeline_config(config, config_class)
        chosen = settings.model  # type: ignore[attr-defined]
        if model is not None and model != chosen:
            raise ConfigError(f"{config}: settings for '{chosen}', but --model is '{model}'")
        return settings
    if model is None:
        raise ConfigError(f"give --model ({models}) or --config")
    return config_class(model=model)  # type: ignore[call-arg]
