"""SA-CycleGAN-2.5D as a harmonizer estimator: fit trains through the shared trainer, transform rebuilds volumes."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.harmonize.base import BaseHarmonizer, Covariates, UnknownSiteError, register_harmonizer
from neuroattn.harmonize.inputs import HarmonizationData, MaskLike, VolumeLike, prepare_inputs, volumes_from_manifest
from neuroattn.harmonize.sa_cyclegan import SACycleGAN, SACycleGANConfig
from neuroattn.harmonize.slices import (
    DEFAULT_PERCENTILES,
    FUSIONS,
    IntensityScaling,
    TranslatedVolume,
    fit_scaling,
    pool_scalings,
    resolve_planes,
    translate_volume,
)
from neuroattn.harmonize.training import CycleGANLossWeights, CycleGANTask, SliceBank, UnpairedStacks, common_canvas
from neuroattn.io.checkpoints import load_checkpoint, load_state_strict, save_checkpoint
from neuroattn.io.manifest import Manifest
from neuroattn.io.nifti import Volume
from neuroattn.progress import progress_bar
from neuroattn.train import TrainConfig, Trainer


class UntrainedModelWarning(UserWarning):
    """A harmonizer whose networks were never trained (or not to the end) is being used."""


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pair_dir(source: str, target: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{source}-to-{target}")
    return f"pair_{safe}"


@register_harmonizer("sa-cyclegan")
class SACycleGANHarmonizer(BaseHarmonizer):
    """SA-CycleGAN-2.5D: unpaired translation of each source site's scans into the target site's style.

    One generator pair is trained per source site (``source_site`` picks one; by default every non-target
    site gets its own model, trained one after the other). Each volume is scaled by its own in-mask
    percentiles (``percentiles`` → [-1, 1], saturating beyond), translated slice by slice from 2.5D stacks
    along ``planes`` (several planes are fused voxel-wise with ``fusion``), mapped back onto the TARGET
    site's intensity scale (the median over the target volumes' percentile pairs, learned at fit) so outputs
    are comparable with target-site scans, and set to 0 outside the brain mask. Volumes of the target site
    are returned unchanged.

    With several modalities the model takes them together (M channels per slice): volumes are grouped by
    ``(subject, site)``, so ``subjects`` must be given (a Manifest carries them).

    Parameters
    ----------
    target_site, progress : see :class:`~neuroattn.harmonize.base.BaseHarmonizer`.
    source_site : train only this site → target (None: one model per non-target site).
    attention : ``"dense"`` | ``"neighborhood"`` | ``"none"`` (the no-attention ablation).
    base_channels, n_res_blocks, disc_channels, disc_layers : architecture (see :class:`SACycleGANConfig`).
    max_steps : optimizer steps per model; 0 builds the model without training (labelled untrained).
    batch_size : 2.5D stacks per step and site. ``lr``: peak Adam learning rate (the paper used 5e-5 over
        200 epochs; 2e-4 suits short runs). ``warmup_steps``: linear warm-up, then cosine decay.
    device, amp : ``"auto"`` | ``"cpu"`` | ``"cuda"``; mixed precision for training (``"auto"``, ``"off"``, ...).
    seed : weights, data order and target draws.
    run_dir : folder for the training runs (one sub-folder per source site with checkpoints, metrics and
        ``final/``); None trains in a temporary folder (no resume).
    planes : ``"axial"``, ``"coronal"``, ``"sagittal"``, ``"all"`` or a list: slices drawn in training and
        translated (then fused) at transform.
    fusion : ``"median"`` | ``"mean"`` fusion of several planes.
    percentiles : in-mask intensity percentiles mapped to -1 and +1.
    background_weight : weight of out-of-mask pixels in the L1/SSIM losses (1 inside).
    checkpoint_every : steps between training-state checkpoints.
    inference_batch_size : slices per generator call at transform.
    crop_size : train on random square patches of this many pixels instead of whole slices (cheaper steps;
        whole slices are always used at transform). None = whole slices.

    Attributes
    ----------
    trained_ : bool — every model finished ``max_steps >= 1`` steps.
    models_ : dict[str, SACycleGAN] — one per source site.
    site_scalings_ : dict[str, IntensityScaling] — pooled per-site scaling (the target's maps outputs back).
    training_ : dict[str, dict] — per source site: steps, finished, resumed_from, seconds, run folder.
    data_summary_ : dict — subjects, volumes, shapes and voxel sizes per site; slices per model.
    consistency_ : list[dict] — per volume of the last :meth:`transform`: slice jitter per plane and, for
        several planes, the in-mask spread across planes (see :func:`~neuroattn.harmonize.slices.plane_consistency`).
    """

    def __init__(
        self,
        target_site: str | None = None,
        source_site: str | None = None,
        attention: str = "dense",
        base_channels: int = 64,
        n_res_blocks: int = 9,
        disc_channels: int = 64,
        disc_layers: int = 3,
        max_steps: int = 1000,
        batch_size: int = 8,
        lr: float = 2e-4,
        warmup_steps: int = 100,
        device: str = "auto",
        amp: str = "auto",
        seed: int = 0,
        run_dir: str | Path | None = None,
        progress: bool = True,
        planes: str | Sequence[str] = "axial",
        fusion: str = "median",
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        background_weight: float = 0.1,
        checkpoint_every: int = 500,
        inference_batch_size: int = 16,
        crop_size: int | None = None,
    ) -> None:
        super().__init__(target_site=target_site, progress=progress)
        self.source_site = source_site
        self.attention = attention
        self.base_channels = base_channels
        self.n_res_blocks = n_res_blocks
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.device = device
        self.amp = amp
        self.seed = seed
        self.run_dir = run_dir
        self.planes = planes
        self.fusion = fusion
        self.percentiles = percentiles
        self.background_weight = background_weight
        self.checkpoint_every = checkpoint_every
        self.inference_batch_size = inference_batch_size
        self.crop_size = crop_size

    # -- configuration -------------------------------------------------------------------------------------

    def model_config(self, modalities: int = 1) -> SACycleGANConfig:
        """The architecture these parameters describe, for ``modalities`` channels per slice."""
        return SACycleGANConfig(
            modalities=modalities,
            base_channels=self.base_channels,
            n_res_blocks=self.n_res_blocks,
            attention=self.attention,
            disc_channels=self.disc_channels,
            disc_layers=self.disc_layers,
        )

    def _build_model(self, config: SACycleGANConfig) -> SACycleGAN:
        with torch.random.fork_rng(devices=[]):  # weights depend on the seed alone
            torch.manual_seed(self.seed)
            return SACycleGAN(config)

    def _check_params(self) -> None:
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ConfigError(f"'max_steps' must be a non-negative integer. {self.max_steps!r} was provided.")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"'fusion' must be one of {list(FUSIONS)}. {self.fusion!r} was provided.")
        resolve_planes(self.planes)
        self.model_config()  # validates attention and sizes

    # -- fitting -------------------------------------------------------------------------------------------

    def fit(
        self,
        volumes: Sequence[VolumeLike] | Manifest,
        sites: Sequence[str] | None = None,
        masks: Sequence[MaskLike] | np.ndarray | None = None,
        *,
        subjects: Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        covariates: Covariates = None,
        resume: bool = False,
    ) -> SACycleGANHarmonizer:
        """Train one generator pair per source site (see the class docstring); ``resume`` continues the runs
        found in ``run_dir``. Covariates are accepted and ignored."""
        self._check_params()
        if resume and self.run_dir is None:
            raise ConfigError("resume=True needs 'run_dir' (the folder holding the runs to continue)")
        if isinstance(volumes, Manifest):
            cohort = volumes_from_manifest(volumes, progress=self.progress)
            volumes, sites, masks = cohort.volumes, cohort.sites, cohort.masks
            subjects, modalities = cohort.subjects, cohort.modalities
        self._voxel_sizes = [v.voxel_size if isinstance(v, Volume) else None for v in volumes]
        self._resume = resume
        super().fit(volumes, sites, masks, subjects=subjects, modalities=modalities, covariates=covariates)
        return self

    def _groups(self, data: HarmonizationData) -> list[list[int]]:
        """Volume indices per scan, one per modality in ``modalities_`` order (one volume each for M = 1)."""
        order = self.modalities_
        if len(order) == 1:
            return [[i] for i in range(len(data))]
        if data.subjects is None:
            if len(data) == len(order) and sorted(data.modalities) == sorted(order):
                return [[data.modalities.index(m) for m in order]]
            raise InvalidInputError(f"a model of {len(order)} modalities {order} needs 'subjects' to group each "
                                    "subject's volumes")
        keyed: dict[tuple[str, str], dict[str, int]] = {}
        for i in range(len(data)):
            key = (data.subjects[i], data.sites[i] if data.sites is not None else "")
            slot = keyed.setdefault(key, {})
            if data.modalities[i] in slot:
                raise InvalidInputError(f"subject '{key[0]}' at site '{key[1]}' has two '{data.modalities[i]}' "
                                        "volumes; give one scan per subject, site and modality")
            slot[data.modalities[i]] = i
        groups = []
        for (subject, site), slot in keyed.items():
            missing = [m for m in order if m not in slot]
            if missing:
                raise InvalidInputError(f"subject '{subject}' at site '{site}' lacks modality {missing}; the model "
                                        f"takes {order} together")
            group = [slot[m] for m in order]
            shapes = {data.arrays[i].shape for i in group}
            if len(shapes) > 1:
                raise InvalidInputError(f"subject '{subject}' at site '{site}': modalities have different shapes "
                                        f"{sorted(shapes)}; resample them onto one grid")
            groups.append(group)
        return groups

    @staticmethod
    def _stack(data: HarmonizationData, group: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(M, X, Y, Z)`` volume and the union of its modalities' masks ``(X, Y, Z)``."""
        mask = np.logical_or.reduce([data.masks[i] for i in group])
        return np.stack([data.arrays[i] for i in group]), mask

    def _fit(self, data: HarmonizationData) -> None:
        assert data.sites is not None
        target = self.target_site_
        sources = [s for s in self.sites_ if s != target]
        if self.source_site is not None:
            if self.source_site not in self.sites_ or self.source_site == target:
                raise InvalidInputError(f"source_site '{self.source_site}' must be a fitted site other than the "
                                        f"target '{target}'; sites: {self.sites_}")
            sources = [str(self.source_site)]
        if not sources:
            raise InvalidInputError(f"only the target site '{target}' was given; SA-CycleGAN needs scans of at "
                                    "least one other site")
        groups = self._groups(data)
        by_site: dict[str, list[tuple[np.ndarray, np.ndarray, IntensityScaling]]] = {}
        for group in groups:
            volume, mask = self._stack(data, group)
            scaling = fit_scaling(volume, mask, tuple(self.percentiles))
            by_site.setdefault(data.sites[group[0]], []).append((volume, mask, scaling))
        self.site_scalings_ = {s: pool_scalings([x[2] for x in items]) for s, items in by_site.items()}
        self.model_config_ = self.model_config(len(self.modalities_))
        self.models_, self.training_ = {}, {}
        planes = resolve_planes(self.planes)
        canvas = common_canvas([v.shape for items in by_site.values() for v, _, _ in items], planes)
        self._check_discriminator_fits(canvas)
        slices: dict[str, dict[str, int]] = {}
        temp = None if self.run_dir is not None else tempfile.TemporaryDirectory(prefix="sa-cyclegan-")
        root = Path(self.run_dir if self.run_dir is not None else temp.name)  # type: ignore[union-attr]
        try:
            for source in sources:
                banks = [
                    SliceBank([s.scale(v) for v, _, s in by_site[site]], [m for _, m, _ in by_site[site]],
                              planes=planes, window_slices=2 * self.model_config_.context_slices - 1, canvas=canvas,
                              crop_size=self.crop_size)
                    for site in (source, target)
                ]
                slices[source] = {"source": len(banks[0]), "target": len(banks[1])}
                self.models_[source], self.training_[source] = self._train_pair(source, banks, root)
        finally:
            if temp is not None:
                temp.cleanup()
        self.trained_ = all(t["finished"] and t["steps"] > 0 for t in self.training_.values())
        self.data_summary_ = self._summary(data, groups, canvas, slices)

    def _check_discriminator_fits(self, canvas: tuple[int, int]) -> None:
        """Fail with advice (not a conv error mid-training) when slices are too small for the PatchGAN."""
        side = min(canvas) if self.crop_size is None else min(*canvas, self.crop_size)
        probe = self._build_model(self.model_config_).discriminators["a"]
        try:
            with torch.no_grad():
                probe(torch.zeros(1, self.model_config_.modalities, side, side))
        except RuntimeError:
            raise ConfigError(
                f"slices of {side} pixels are too small for a {self.disc_layers}-layer PatchGAN at "
                f"{self.model_config_.disc_scales} scales; use disc_layers=2 (--disc-layers 2) or finer voxels"
            ) from None

    def _train_pair(self, source: str, banks: list[SliceBank], root: Path) -> tuple[SACycleGAN, dict[str, Any]]:
        model = self._build_model(self.model_config_)
        out_dir = root / _pair_dir(source, self.target_site_)
        info: dict[str, Any] = {"steps": 0, "finished": False, "resumed_from": None, "seconds": 0.0,
                                "run_dir": str(out_dir) if self.run_dir is not None else None}
        if self.max_steps == 0:
            return model.eval(), info
        task = CycleGANTask(
            model,
            UnpairedStacks(*banks),
            CycleGANLossWeights(background_weight=self.background_weight),
            export_config={"model": self.model_config_.to_dict(), "source_site": source,
                           "target_site": self.target_site_, "planes": list(resolve_planes(self.planes)),
                           "site_scalings": {s: self.site_scalings_[s].to_dict() for s in (source, self.target_site_)}},
            summary={"source_site": source, "target_site": self.target_site_, "source_slices": len(banks[0]),
                     "target_slices": len(banks[1])},
        )
        config = TrainConfig(
            out_dir=out_dir, max_steps=self.max_steps, batch_size=self.batch_size, lr=self.lr,
            warmup_steps=self.warmup_steps, amp=self.amp, device=self.device, seed=self.seed,
            progress=self.progress, checkpoint_every=self.checkpoint_every, tensorboard=False,
            log_every=max(1, min(50, self.max_steps // 10)),
        )
        result = Trainer(task, config).fit(resume=self._resume)
        info |= {"steps": result.steps, "finished": result.finished, "resumed_from": result.resumed_from,
                 "seconds": round(result.seconds, 3), "last_metrics": result.last_metrics}
        return model.to("cpu").eval(), info

    def _summary(self, data: HarmonizationData, groups: list[list[int]], canvas: tuple[int, int],
                 slices: dict[str, dict[str, int]]) -> dict[str, Any]:
        assert data.sites is not None
        sizes = getattr(self, "_voxel_sizes", [None] * len(data))
        per_site: dict[str, dict[str, Any]] = {}
        for group in groups:
            site = data.sites[group[0]]
            entry = per_site.setdefault(site, {"scans": 0, "shapes": set(), "voxel_sizes": set()})
            entry["scans"] += 1
            entry["shapes"].add(tuple(int(n) for n in data.arrays[group[0]].shape))
            if sizes[group[0]] is not None:
                entry["voxel_sizes"].add(tuple(round(float(v), 4) for v in sizes[group[0]]))
        return {
            "target_site": self.target_site_,
            "source_sites": list(self.models_),
            "modalities": self.modalities_,
            "subjects": dict(self.n_subjects_),
            "sites": {s: {"scans": e["scans"], "shapes": sorted(map(list, e["shapes"])),
                          "voxel_sizes_mm": sorted(map(list, e["voxel_sizes"]))} for s, e in per_site.items()},
            "canvas": list(canvas),
            "planes": list(resolve_planes(self.planes)),
            "slices": slices,
        }

    # -- transforming --------------------------------------------------------------------------------------

    def _model_for(self, site: str | None) -> SACycleGAN:
        if site is not None and site in self.models_:
            return self.models_[site]
        if len(self.models_) == 1 and (site is None or site not in self.sites_):
            return next(iter(self.models_.values()))  # unlabelled or unseen site: the only model there is
        raise UnknownSiteError(f"no SA-CycleGAN model translates site '{site}'; models exist for "
                               f"{list(self.models_)} -> '{self.target_site_}'")

    def _translate(self, volume: np.ndarray, mask: np.ndarray, site: str | None) -> TranslatedVolume:
        """One scan ``(M, X, Y, Z)`` or ``(X, Y, Z)`` through its site's generator onto the target's scale."""
        device = _resolve_device(self.device)
        generator = self._model_for(site).g_ab.to(device)
        return translate_volume(
            generator, volume, mask, fit_scaling(volume, mask, tuple(self.percentiles)),
            output_scaling=self.site_scalings_[self.target_site_], planes=self.planes,
            batch_size=self.inference_batch_size, fusion=self.fusion, device=device,
        )

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
        """Harmonize volumes onto the target site: float32 arrays of the input shapes, in input order.

        Target-site volumes come back unchanged; others go through their site's model (an unlabelled or
        unseen site uses the only model when there is one). Sets :attr:`consistency_`.
        """
        self._check_fitted()
        if not self.trained_:
            warnings.warn("this SA-CycleGAN harmonizer is untrained; its outputs are not harmonized",
                          UntrainedModelWarning, stacklevel=2)
        data = prepare_inputs(volumes, sites, masks, subjects=subjects, modalities=modalities,
                              covariates=covariates, progress=self.progress)
        self._check_labels(data)
        outputs: list[np.ndarray | None] = [None] * len(data)
        self.consistency_ = [{} for _ in range(len(data))]
        for group in progress_bar(self._groups(data), desc="harmonizing (sa-cyclegan)", unit="scan",
                          disable=not self.progress):
            site = data.sites[group[0]] if data.sites is not None else None
            if site == self.target_site_:
                for i in group:
                    outputs[i] = data.arrays[i].copy()
                continue
            result = self._translate(*self._stack(data, group), site)
            for channel, i in enumerate(group):
                outputs[i] = result.data[channel]
                self.consistency_[i] = dict(result.consistency)
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def _transform_one(self, data: HarmonizationData, i: int) -> np.ndarray:
        if len(self.modalities_) != 1:
            raise InvalidInputError("a multi-modal SA-CycleGAN translates whole scans; call transform()")
        site = data.sites[i] if data.sites is not None else None
        if site == self.target_site_:
            return data.arrays[i].copy()
        return self._translate(data.arrays[i], data.masks[i], site).data

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
        """:meth:`fit`, then :meth:`transform` of the same volumes (subjects passed on to group modalities)."""
        if isinstance(volumes, Manifest):
            cohort = volumes_from_manifest(volumes, progress=self.progress)
            volumes, sites, masks = cohort.volumes, cohort.sites, cohort.masks
            subjects, modalities = cohort.subjects, cohort.modalities
        self.fit(volumes, sites, masks, subjects=subjects, modalities=modalities, covariates=covariates)
        return self.transform(volumes, sites, masks, subjects=subjects, modalities=modalities)

    # -- persistence ---------------------------------------------------------------------------------------

    def _get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        sources = list(self.models_)
        arrays = {
            f"pairs.{k}.{key}": value
            for k, source in enumerate(sources)
            for key, value in self.models_[source].generators.state_dict().items()
        }
        meta = {
            "trained": bool(self.trained_),
            "model_config": self.model_config_.to_dict(),
            "source_sites": sources,
            "site_scalings": {s: sc.to_dict() for s, sc in self.site_scalings_.items()},
            "training": self.training_,
            "data_summary": self.data_summary_,
        }
        return meta, arrays

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        self.model_config_ = SACycleGANConfig.from_dict(meta["model_config"])
        self.site_scalings_ = {s: IntensityScaling.from_dict(d) for s, d in meta["site_scalings"].items()}
        self.training_ = dict(meta.get("training", {}))
        self.data_summary_ = dict(meta.get("data_summary", {}))
        self.trained_ = bool(meta["trained"])
        self.models_ = {}
        for k, source in enumerate(meta["source_sites"]):
            prefix = f"pairs.{k}."
            model = SACycleGAN(self.model_config_)
            state = {key[len(prefix):]: v for key, v in arrays.items() if key.startswith(prefix)}
            load_state_strict(model.generators, state, f"SA-CycleGAN weights of source site '{source}'")
            self.models_[source] = model.eval()

    def _json_params(self) -> dict[str, Any]:
        params = self.get_params()
        params["run_dir"] = None if params["run_dir"] is None else str(params["run_dir"])
        params["percentiles"] = [float(p) for p in params["percentiles"]]
        if not isinstance(params["planes"], str):
            params["planes"] = list(params["planes"])
        return params

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (the generators; discriminators stay in the training runs) and
        ``config.json``. An unfitted harmonizer saves its freshly initialised generators with
        ``trained=False``; a fitted one records :attr:`trained_`."""
        params = self._json_params()
        if not hasattr(self, "sites_"):
            model = self._build_model(self.model_config())
            config = {"method": self.name, "params": params, "model_config": model.config.to_dict()}
            return save_checkpoint(directory, dict(model.generators.state_dict()), config,
                                   model_class=type(self).__name__, trained=False)
        meta, arrays = self._get_state()
        fitted = {"sites": self.sites_, "target_site": self.target_site_, "modalities": self.modalities_,
                  "n_subjects": self.n_subjects_, **meta}
        config = {"method": self.name, "params": params, "fitted": fitted}
        return save_checkpoint(directory, arrays, config, model_class=type(self).__name__,
                               trained=bool(self.trained_), data_summary=self.data_summary_)

    @classmethod
    def load(cls, directory: str | Path) -> SACycleGANHarmonizer:
        """Rebuild a harmonizer written by :meth:`save`; refuses other classes. Loading an untrained one
        warns (:class:`UntrainedModelWarning`); an unfitted one comes back unfitted, ``trained_ = False``."""
        ckpt = load_checkpoint(directory, expected_class=cls.__name__)
        obj = cls(**ckpt.config.get("params", {}))
        if "fitted" not in ckpt.config:
            obj.trained_ = False
            return obj
        if not ckpt.trained:
            warnings.warn(f"{directory}: the SA-CycleGAN harmonizer saved here is untrained",
                          UntrainedModelWarning, stacklevel=2)
        fitted = ckpt.config["fitted"]
        obj.sites_ = list(fitted["sites"])
        obj.target_site_ = str(fitted["target_site"])
        obj.modalities_ = list(fitted["modalities"])
        obj.n_subjects_ = dict(fitted["n_subjects"])
        obj._set_state(fitted, ckpt.state_dict)
        return obj


__all__ = ["SACycleGANHarmonizer", "UntrainedModelWarning"]
