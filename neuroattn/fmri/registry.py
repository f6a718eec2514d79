"""The fMRI model families behind one adapter each: config, tiny size, pretrain, load, embed, input conversion."""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.fmri.inputs import FmriRun, roi_inputs, volume_inputs
from neuroattn.train import TrainConfig, TrainResult


class FmriModel:
    """Uniform adapter of one fMRI model family (subclasses wrap each model module's public functions).

    ``input_kind`` says what :meth:`prepare` hands the model: ``"volume"`` runs ``(T, X, Y, Z)`` or
    ``"roi"`` series ``(T, R)``.
    """

    name: ClassVar[str]
    model_class: ClassVar[str]  # the class recorded in the checkpoints its pretraining writes
    input_kind: ClassVar[str]
    summary: ClassVar[str]

    @property
    def config_class(self) -> type:
        raise NotImplementedError

    def tiny(self) -> Any:
        """CPU test size (trains a step in under a second)."""
        return self.config_class.tiny()

    def published(self) -> Any:
        """The published sizes (the config dataclass defaults)."""
        return self.config_class()

    def config_from_dict(self, overrides: Mapping[str, Any] | None = None, *, base: Any = None,
                         where: str = "model_config") -> Any:
        """A validated config: ``overrides`` (nested dicts allowed) merged onto ``base`` (default: published).

        Unknown keys (at any depth), wrong types and out-of-range values raise one-line :class:`ConfigError`.
        """
        base = self.published() if base is None else base
        data = _merge(base.to_dict(), dict(overrides or {}))
        _check_keys(self.config_class, data, where)
        try:
            return TypeAdapter(self.config_class).validate_python(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, (where, *e['loc'])))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(problems) from None

    def build(self, config: Any, *, seed: int = 0) -> nn.Module:
        """A randomly initialised (untrained) model of ``config``, in eval mode; the same seed, the same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._build(config).eval()

    def _build(self, config: Any) -> nn.Module:
        raise NotImplementedError

    def adapt_config(self, config: Any, arrays: Sequence[np.ndarray], tr: float | None) -> tuple[Any, list[str]]:
        """The config fitted to the data it will be trained on, and one note per changed value."""
        return config, []

    def prepare(self, runs: Sequence[FmriRun], config: Any, *, rois: str = "dosenbach_2010", roi_radius: float = 5.0,
                progress: bool = False) -> list[np.ndarray]:
        """The runs as this model's input arrays."""
        return volume_inputs(runs)

    def pretrain(self, runs: Sequence[np.ndarray], config: Any, train: TrainConfig, *, resume: bool = False,
                 token_cache: str | Path | None = None) -> TrainResult:
        raise NotImplementedError

    def load(self, run_or_checkpoint_dir: str | Path) -> nn.Module:
        raise NotImplementedError

    def embed(self, model: nn.Module, runs: Sequence[np.ndarray], *, progress: bool = False,
              token_cache: str | Path | None = None) -> np.ndarray:
        """Subject-level features ``(n_runs, D)``, deterministic, without gradients."""
        raise NotImplementedError

    def untrained_parts(self, config: Any) -> list[str]:
        """Parts that stay untrained even in a trained checkpoint (e.g. a randomly initialised tokenizer)."""
        return []

    def min_frames(self, config: Any) -> int:
        """Frames a run needs for pretraining."""
        return 1


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Unknown keys of a (nested) dataclass config, all listed in one error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind) and isinstance(value, Mapping):
            _check_keys(kind, value, f"{where}.{name}")  # type: ignore[arg-type]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class TabletModel(FmriModel):
    name = "tablet"
    model_class = "Tablet"
    input_kind = "volume"
    summary = "TABLeT: transformer over frozen-autoencoder tokens of every frame, masked-token pretraining"

    @property
    def config_class(self) -> type:
        from neuroattn.fmri.tablet import TabletConfig

        return TabletConfig

    def _build(self, config: Any) -> nn.Module:
        from neuroattn.fmri.tablet import Tablet

        return Tablet(config)

    def tokenizer(self, config: Any, device: torch.device | str | None = None) -> Any:
        """The frozen tokenizer of ``config`` (a seeded random autoencoder unless ``autoencoder_path`` is set)."""
        from neuroattn.fmri.tablet_tokens import TabletTokenizer

        return TabletTokenizer(config.tokenizer, device=device)

    @staticmethod
    def _cache(token_cache: str | Path | None) -> Any:
        from neuroattn.fmri.tablet_tokens import TokenCache

        return None if token_cache is None else TokenCache(token_cache)

    def pretrain(self, runs, config, train, *, resume=False, token_cache=None):  # type: ignore[override]
        from neuroattn.fmri.tablet import pretrain_tablet

        return pretrain_tablet(runs, config, train, cache=self._cache(token_cache), resume=resume)

    def load(self, run_or_checkpoint_dir):  # type: ignore[override]
        from neuroattn.fmri.tablet import load_tablet

        return load_tablet(run_or_checkpoint_dir)

    def embed(self, model, runs, *, progress=False, token_cache=None):  # type: ignore[override]
        from neuroattn.fmri.tablet import embed_tablet

        tokenizer = self.tokenizer(model.config, _device_of(model))
        return embed_tablet(model, runs, tokenizer=tokenizer, cache=self._cache(token_cache), progress=progress)

    def untrained_parts(self, config: Any) -> list[str]:
        if config.tokenizer.pretrained:
            return []
        return [f"autoencoder ({config.tokenizer.autoencoder}, random init: tokens are untrained features)"]


class SlimBrainModel(FmriModel):
    name = "slim-brain"
    model_class = "SlimBrain"
    input_kind = "volume"
    summary = "SLIM-Brain: saliency-picked windows, 4-D Hiera encoder trained JEPA-style"

    @property
    def config_class(self) -> type:
        from neuroattn.fmri.slim_brain import SlimBrainConfig

        return SlimBrainConfig

    def _build(self, config: Any) -> nn.Module:
        from neuroattn.fmri.slim_brain import SlimBrain

        return SlimBrain(config)

    def prepare(self, runs, config, *, rois="dosenbach_2010", roi_radius=5.0, progress=False):  # type: ignore[override]
        return volume_inputs(runs, config.window_shape)  # centre crop / zero pad to the window's voxels

    def pretrain(self, runs, config, train, *, resume=False, token_cache=None):  # type: ignore[override]
        from neuroattn.fmri.slim_brain import pretrain_slim_brain

        return pretrain_slim_brain(runs, config, train, resume=resume)

    def load(self, run_or_checkpoint_dir):  # type: ignore[override]
        from neuroattn.fmri.slim_brain import load_slim_brain

        return load_slim_brain(run_or_checkpoint_dir)

    def embed(self, model, runs, *, progress=False, token_cache=None):  # type: ignore[override]
        from neuroattn.fmri.slim_brain import embed_slim_brain

        return embed_slim_brain(model, runs, progress=progress)

    def min_frames(self, config: Any) -> int:
        return int(config.window_frames)


class BrainMAEModel(FmriModel):
    name = "brainmae"
    model_class = "BrainMAE"
    input_kind = "roi"
    summary = "BrainMAE: ROI x segment masked autoencoder with region-aware graph attention"

    @property
    def config_class(self) -> type:
        from neuroattn.fmri.brainmae import BrainMAEConfig

        return BrainMAEConfig

    def _build(self, config: Any) -> nn.Module:
        from neuroattn.fmri.brainmae import BrainMAE

        return BrainMAE(config)

    def prepare(self, runs, config, *, rois="dosenbach_2010", roi_radius=5.0, progress=False):  # type: ignore[override]
        series, _ = roi_inputs(runs, rois, radius=roi_radius, progress=progress)
        return series

    def adapt_config(self, config, arrays, tr):  # type: ignore[override]
        changes: dict[str, Any] = {}
        n_rois = int(np.asarray(arrays[0]).shape[1]) if arrays else config.n_rois
        if n_rois != config.n_rois:
            changes["n_rois"] = n_rois
        if tr is not None and abs(tr - config.tr) > 1e-6:
            changes["tr"] = float(tr)
        notes = [f"{k}: {getattr(config, k)} -> {v} (from the data)" for k, v in changes.items()]
        return (dataclasses.replace(config, **changes) if changes else config), notes

    def pretrain(self, runs, config, train, *, resume=False, token_cache=None):  # type: ignore[override]
        from neuroattn.fmri.brainmae import pretrain_brainmae

        return pretrain_brainmae(runs, config, train, resume=resume)

    def load(self, run_or_checkpoint_dir):  # type: ignore[override]
        from neuroattn.fmri.brainmae import load_brainmae

        return load_brainmae(run_or_checkpoint_dir)

    def embed(self, model, runs, *, progress=False, token_cache=None):  # type: ignore[override]
        from neuroattn.fmri.brainmae import embed_brainmae

        return embed_brainmae(model, runs, progress=progress)

    def min_frames(self, config: Any) -> int:
        return int(config.window_frames)


_REGISTRY: dict[str, FmriModel] = {}


def register_model(model: FmriModel) -> FmriModel:
    """Add a family under ``model.name``; a second family of the same name is an error."""
    if model.name in _REGISTRY:
        raise ConfigError(f"an fMRI model named '{model.name}' is already registered")
    _REGISTRY[model.name] = model
    return model


for _family in (TabletModel(), SlimBrainModel(), BrainMAEModel()):
    register_model(_family)


def model_names() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_REGISTRY)


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_model(name: str) -> FmriModel:
    """The family called ``name`` (case, ``_``/``-`` and ``slimbrain``-style spellings forgiven)."""
    wanted = _canonical(name)
    for key, model in _REGISTRY.items():
        if wanted in (key, key.replace("-", "")):
            return model
    raise ConfigError(f"unknown fMRI model '{name}'; available: {', '.join(model_names())}")


def model_for_class(model_class: str) -> FmriModel:
    """The family whose pretraining writes checkpoints of ``model_class``."""
    for model in _REGISTRY.values():
        if model.model_class == model_class:
            return model
    known = sorted(m.model_class for m in _REGISTRY.values())
    raise ConfigError(f"checkpoint class '{model_class}' is no fMRI foundation model; known classes: {known}")


def checkpoint_folder(run_or_checkpoint_dir: str | Path) -> Path:
    """The checkpoint folder of a training run (its ``final/``) or the folder itself."""
    path = Path(run_or_checkpoint_dir)
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if not (path / "config.json").is_file():
        raise InvalidInputError("not a checkpoint folder or training run (no config.json, no final/)", path)
    return path


def model_for_checkpoint(run_or_checkpoint_dir: str | Path) -> tuple[FmriModel, dict[str, Any]]:
    """The family of a checkpoint and its stored metadata (``trained``, ``config``, ``data_summary``, ...)."""
    from neuroattn.io.checkpoints import read_checkpoint_config

    meta = read_checkpoint_config(checkpoint_folder(run_or_checkpoint_dir))
    return model_for_class(str(meta["model_class"])), meta


__all__ = [
    "BrainMAEModel",
    "FmriModel",
    "SlimBrainModel",
    "TabletModel",
    "checkpoint_folder",
    "get_model",
    "model_for_checkpoint",
    "model_for_class",
    "model_names",
    "register_model",
]
