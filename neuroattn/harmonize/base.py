"""The estimator shape every harmonizer shares (fit, transform onto a target site, save, load) and its registry."""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch

from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError, NeuroattnError
from neuroattn.harmonize.inputs import HarmonizationData, MaskLike, VolumeLike, prepare_inputs
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint
from neuroattn.io.manifest import Manifest
from neuroattn.progress import progress_bar

Covariates = pd.DataFrame | Mapping[str, Sequence[object]] | None


class NotFittedError(NeuroattnError, ValueError):
    """A harmonizer was used (transform, save) before :meth:`BaseHarmonizer.fit`."""


class UnknownSiteError(InvalidInputError):
    """A site met at transform time was not part of the data the harmonizer was fitted on."""


class SingleSubjectSiteWarning(UserWarning):
    """A site contributed one subject only; its estimates rest on one scan."""


class BaseHarmonizer:
    """Maps every site's scans onto the intensity characteristics of one target site.

    Estimator shape of scikit-learn/nilearn: ``__init__`` only stores parameters; :meth:`fit` validates its
    inputs and sets learned attributes ending in ``_``; :meth:`transform` refuses to run before ``fit``.
    Modalities are harmonized independently of each other.

    Parameters
    ----------
    target_site
        Site whose scale every output is expressed on; None = the first site seen at fit (a manifest's first
        row), which for a traveling-subject cohort is the reference site.
    progress
        Show a progress bar over volumes.

    Attributes
    ----------
    sites_ : list[str]
        Sites seen at fit, in order of appearance.
    target_site_ : str
    modalities_ : list[str]
        Modalities seen at fit (``[""]`` when none were named).
    n_subjects_ : dict[str, int]
        Subjects per site (volumes per site and modality when no subjects were given).

    Subclasses implement ``_fit(data)``, ``_transform_one(data, i)`` and the two state hooks ``_get_state`` /
    ``_set_state`` (learned arrays go to safetensors, everything else to the checkpoint's JSON config).
    """

    name: ClassVar[str] = ""  # registry name, set by :func:`register_harmonizer`
    requires_known_sites: ClassVar[bool] = False  # True when transform needs per-site parameters

    def __init__(self, target_site: str | None = None, progress: bool = True) -> None:
        self.target_site = target_site
        self.progress = progress

    # -- parameters -------------------------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind is not p.VAR_KEYWORD]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters as stored on the instance."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> BaseHarmonizer:
        """Change constructor parameters (takes effect at the next ``fit``)."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"'{key}' is not a parameter of {type(self).__name__}; valid: {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting ----------------------------------------------------------------------------------------

    def fit(
        self,
        volumes: Sequence[VolumeLike] | Manifest,
        sites: Sequence[str] | None = None,
        masks: Sequence[MaskLike] | np.ndarray | None = None,
        *,
        subjects: Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        covariates: Covariates = None,
    ) -> BaseHarmonizer:
        """Learn the mapping of every site onto the target site.

        Parameters
        ----------
        volumes
            3-D arrays or :class:`~neuroattn.io.nifti.Volume` objects ``(X, Y, Z)``, or a
            :class:`~neuroattn.io.manifest.Manifest` (labels, masks and covariates then come from it).
        sites
            One site label per volume (required unless ``volumes`` is a Manifest).
        masks
            Brain masks: None (nonzero voxels), one mask for all, or one per volume (bool or 0/1 floats).
        subjects, modalities
            One label per volume; modalities align volumes of one contrast (each is harmonized on its own).
        covariates
            One row per volume (frame or mapping of columns); used by methods that preserve covariates.
        """
        data = prepare_inputs(volumes, sites, masks, subjects=subjects, modalities=modalities,
                              covariates=covariates, progress=self.progress)
        if data.sites is None:
            raise InvalidInputError("'sites' is required for fit: give one site label per volume (or a Manifest)")
        self._fit_labels(data)
        self._fit(data)
        return self

    def _fit_labels(self, data: HarmonizationData) -> None:
        sites = list(dict.fromkeys(data.sites))
        target = sites[0] if self.target_site is None else str(self.target_site)
        if target not in sites:
            raise InvalidInputError(f"target_site '{target}' is not among the sites given to fit: {sites}")
        modalities = list(dict.fromkeys(data.modalities))
        for m in modalities:
            if not data.indices(site=target, modality=m):
                shown = f"modality '{m}'" if m else "the volumes"
                raise InvalidInputError(f"the target site '{target}' has no volume of {shown}; "
                                        "every modality needs target-site volumes to define its scale")
        counts: dict[str, int] = {}
        for s in sites:
            idx = data.indices(site=s)
            if data.subjects is not None:
                counts[s] = len({data.subjects[i] for i in idx})
            else:
                counts[s] = max(len(data.indices(site=s, modality=m)) for m in modalities)
            if counts[s] == 1:
                warnings.warn(f"site '{s}' has a single subject; its estimates rest on one scan",
                              SingleSubjectSiteWarning, stacklevel=3)
        self.sites_ = sites
        self.target_site_ = target
        self.modalities_ = modalities
        self.n_subjects_ = counts

    def _fit(self, data: HarmonizationData) -> None:
        raise NotImplementedError

    # -- transforming -----------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "sites_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first")

    def transform(
        self,
        volumes: Sequence[VolumeLike] | Manifest,
        sites: Sequence[str] | None = None,
        masks: Sequence[MaskLike] | np.ndarray | None = None,
        *,
        subjects: Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        covariates: Covariates = None,
    ) -> list[np.ndarray]:
        """Harmonize volumes onto the target site; returns float32 arrays of the input shapes, in input order.

        Volumes may come from subjects never seen at fit. Methods with per-site parameters (ComBat) need each
        volume's site, which must have been seen at fit; per-volume intensity methods accept any site.
        """
        self._check_fitted()
        data = prepare_inputs(volumes, sites, masks, subjects=subjects, modalities=modalities,
                              covariates=covariates, progress=self.progress)
        self._check_labels(data)
        return [
            np.asarray(self._transform_one(data, i), dtype=np.float32)
            for i in progress_bar(range(len(data)), desc=f"harmonizing ({self.name or type(self).__name__})",
                          unit="vol", disable=not self.progress)
        ]

    def _check_labels(self, data: HarmonizationData) -> None:
        if self.modalities_ == [""]:
            data.modalities = [""] * len(data)  # fitted without modality labels: one contrast for all
        for m in dict.fromkeys(data.modalities):
            if m not in self.modalities_:
                raise InvalidInputError(f"modality '{m}' was not seen during fit; known: {self.modalities_}")
        if not self.requires_known_sites:
            return
        if data.sites is None:
            raise InvalidInputError(f"'sites' is required: {type(self).__name__} applies per-site parameters")
        for s in dict.fromkeys(data.sites):
            if s not in self.sites_:
                raise UnknownSiteError(f"site '{s}' was not seen during fit; known: {self.sites_}")

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        raise NotImplementedError

    def fit_transform(
        self,
        volumes: Sequence[VolumeLike] | Manifest,
        sites: Sequence[str] | None = None,
        masks: Sequence[MaskLike] | np.ndarray | None = None,
        *,
        subjects: Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        covariates: Covariates = None,
    ) -> list[np.ndarray]:
        """:meth:`fit`, then :meth:`transform` of the same volumes (loaded once)."""
        data = prepare_inputs(volumes, sites, masks, subjects=subjects, modalities=modalities,
                              covariates=covariates, progress=self.progress)
        self.fit(data.arrays, data.sites, data.masks, subjects=data.subjects, modalities=data.modalities,
                 covariates=data.covariates)
        return self.transform(data.arrays, data.sites, data.masks, modalities=data.modalities,
                              covariates=data.covariates)

    # -- persistence ------------------------------------------------------------------------------------

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray | torch.Tensor]]:
        """Learned state: JSON-ready metadata and named arrays (subclasses extend)."""
        return {}, {}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`_get_state` returned."""

    def save(self, directory: str | Path) -> Path:
        """Write the fitted harmonizer to ``directory`` (``model.safetensors`` + ``config.json``; no pickle)."""
        self._check_fitted()
        meta, arrays = self._get_state()
        fitted = {"sites": self.sites_, "target_site": self.target_site_, "modalities": self.modalities_,
                  "n_subjects": self.n_subjects_, **meta}
        tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
                   for k, v in arrays.items()}
        config = {"method": self.name, "params": self.get_params(), "fitted": fitted}
        summary = {"sites": self.sites_, "target_site": self.target_site_, "modalities": self.modalities_}
        return save_checkpoint(directory, tensors, config, model_class=type(self).__name__, trained=True,
                               data_summary=summary)

    @classmethod
    def load(cls, directory: str | Path) -> BaseHarmonizer:
        """Rebuild a harmonizer saved by :meth:`save`; ``BaseHarmonizer.load`` picks the class it holds."""
        expected = None if cls is BaseHarmonizer else cls.__name__
        ckpt = load_checkpoint(directory, expected_class=expected)
        klass: type[BaseHarmonizer] = cls
        if expected is None:
            by_class = {c.__name__: c for c in HARMONIZERS.values()}
            if ckpt.model_class not in by_class:
                raise CheckpointError(f"{directory}: holds a {ckpt.model_class}, which is not a known harmonizer "
                                      f"(known: {sorted(by_class)})")
            klass = by_class[ckpt.model_class]
        if not ckpt.trained or "fitted" not in ckpt.config:
            raise CheckpointError(f"{directory}: holds an unfitted {ckpt.model_class}")
        obj = klass(**ckpt.config.get("params", {}))
        fitted = ckpt.config["fitted"]
        obj.sites_ = list(fitted["sites"])
        obj.target_site_ = str(fitted["target_site"])
        obj.modalities_ = list(fitted["modalities"])
        obj.n_subjects_ = dict(fitted["n_subjects"])
        obj._set_state(fitted, ckpt.state_dict)
        return obj


# -- registry ---------------------------------------------------------------------------------------------

HARMONIZERS: dict[str, type[BaseHarmonizer]] = {}
H = TypeVar("H", bound=type[BaseHarmonizer])


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_harmonizer(name: str) -> Callable[[H], H]:
    """Class decorator: make a harmonizer available to :func:`create_harmonizer` (and ``--method``) as ``name``."""

    def decorate(cls: H) -> H:
        key = _key(name)
        if key in HARMONIZERS and HARMONIZERS[key] is not cls:
            raise ValueError(f"harmonizer name '{key}' is already taken by {HARMONIZERS[key].__name__}")
        HARMONIZERS[key] = cls
        cls.name = key
        return cls

    return decorate


def create_harmonizer(name: str, **params: Any) -> BaseHarmonizer:
    """A new, unfitted harmonizer by registry name (``"zscore"``, ``"nyul"``, ``"combat"`` ...)."""
    key = _key(name)
    if key not in HARMONIZERS:
        names = sorted(HARMONIZERS)
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise ConfigError(f"'method' must be one of {names}. {name!r} was provided{hint}")
    try:
        return HARMONIZERS[key](**params)
    except TypeError as exc:
        raise ConfigError(f"method '{key}': {exc}") from None


__all__ = [
    "HARMONIZERS",
    "BaseHarmonizer",
    "NotFittedError",
    "SingleSubjectSiteWarning",
    "UnknownSiteError",
    "create_harmonizer",
    "register_harmonizer",
]
