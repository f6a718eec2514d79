"""Fit, save and reopen encoding models (ridge, BraInCoRL, LaVCa) on a data folder, one run folder each.

A run folder holds ``encode_run.json`` (model, data folder, subject, voxels, feature space, settings) and
``encoder/``: every model ends as one linear encoder per voxel (weights on the image embedding plus a bias),
saved in the shared checkpoint format, so prediction, captioning and evaluation treat all models alike.
BraInCoRL runs also hold ``meta/``, the meta-trained hypernetwork (shared trainer run folder).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.decode.data_bundle import FeatureSource
from neuroattn.encode.data import EncodingData, EncodingSubject, open_encoding_data
from neuroattn.encode.spatial_pooling import SpatialPooling, VoxelLayout
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint

RUN_INFO = "encode_run.json"
MODELS = ("ridge", "braincorl", "lavca", "prior")
ENCODER_CLASS = "LinearVoxelEncoder"


@dataclass
class EncodeSettings:
    """Settings of ``neuroattn encode fit``, read from ``pipelines/encode/<model>-*.yaml``."""

    model: str = "ridge"  # ridge | braincorl | lavca (a ridge encoder described in words) | prior (Gaussian prior)
    subject: str | None = None  # the subject to encode (default: the data folder's last)
    rois: list[str] | None = None  # ROI names to keep (default: every voxel)
    features: str = "clip-grid+lowlevel"  # image embedding: clip-grid+lowlevel | clip-grid | clip-pooled
    n_clip: int = 64  # principal components of the CLIP features
    n_lowlevel: int = 32  # principal components of the low-level features
    alphas: list[float] | None = None  # ridge penalties tried by CV (default logspace(-1, 6, 15))
    k: int | None = 100  # BraInCoRL / prior: in-context images of the subject (None: all its training images)
    meta_subjects: list[str] | None = None  # subjects BraInCoRL / the prior learn from (default: every other one)
    meta_run: str | None = None  # reuse instead of learning: a BraInCoRL meta-training run, or a prior (RUN/prior)
    meta_steps: int = 1500  # BraInCoRL meta-training optimizer steps
    braincorl: dict[str, Any] = field(default_factory=dict)  # BraInCoRLConfig fields (dim, depth, heads, ...)
    meta_training: dict[str, Any] = field(default_factory=dict)  # InContextEncoder settings (k_min, k_max, lr, ...)
    spatial_pooling: dict[str, Any] | None = None  # BraInCoRL: SpatialPooling fields (sigmas_mm, mixes, ...); null off
    lavca: dict[str, Any] = field(default_factory=dict)  # LavcaConfig fields (n_top, n_keywords, ...)
    captioner: str | None = None  # local image-captioning model folder (default: the stimuli's own descriptions)
    composer: str | None = None  # local language-model folder (default: the deterministic keyword composer)
    sentence_encoder: str | None = None  # sentence-transformers folder (default: packaged all-MiniLM-L6-v2)
    ks: list[int] = field(default_factory=lambda: [10, 25, 50, 100, 200, 500])  # evaluation: in-context sizes
    curve_seeds: int = 3  # evaluation: random support draws per k
    clip_weights: str | None = None  # open_clip checkpoint file (None: tiny random CLIP, untrained)
    clip_model: str = "ViT-L-14"
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"'model' must be one of {list(MODELS)}. {self.model!r} was provided.")
        if self.k is not None and self.k < 3:
            raise ConfigError(f"'k' must be >= 3 in-context images or null (all). {self.k!r} was provided.")

    def pooling(self) -> SpatialPooling | None:
        """The spatial pooling BraInCoRL's encoders get (None: off)."""
        if self.spatial_pooling is None:
            return None
        known = {f.name for f in fields(SpatialPooling) if f.init}
        unknown = sorted(set(self.spatial_pooling) - known)
        if unknown:
            raise ConfigError(f"unknown 'spatial_pooling' keys {unknown}; known: {sorted(known)}")
        return SpatialPooling(**({"seed": self.seed} | self.spatial_pooling))

    def layout(self, subject: EncodingSubject, voxels: np.ndarray) -> VoxelLayout | None:
        """Where ``voxels`` of ``subject`` sit, grouped by ROI when pooling stays within ROIs (None: no pooling)."""
        pooling = self.pooling()
        if pooling is None:
            return None
        groups = subject.roi[voxels] if pooling.within_rois else None
        return VoxelLayout.from_affine(subject.voxel_ijk[voxels], subject.affine, groups)

    def feature_source(self, clip_seed: int | None = None) -> FeatureSource:
        """The image CLIP; a tiny random one is the data folder's own (``clip_seed`` None), whatever ``seed``."""
        return FeatureSource(clip_weights=self.clip_weights, clip_model=self.clip_model, seed=clip_seed)

    def open_data(self, root: str | Path, progress: bool = False, clip_seed: int | None = None) -> EncodingData:
        return open_encoding_data(root, self.feature_source(clip_seed), kind=self.features, n_clip=self.n_clip,
                                  n_lowlevel=self.n_lowlevel, progress=progress)


@dataclass
class LinearEncoder:
    """Per-voxel linear encoders ``response = embedding @ weights + bias`` of one subject's voxels.

    ``weights`` (D, V) float32, ``bias`` (V,), ``voxels`` (V,) indices into the subject's voxels; ``trained``
    is False when the encoder or its image features come from untrained weights.
    """

    weights: np.ndarray
    bias: np.ndarray
    voxels: np.ndarray
    model: str
    trained: bool
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted responses (m, V) for embeddings (m, D)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.weights.shape[0]:
            raise InvalidInputError(f"embeddings must be (m, {self.weights.shape[0]}), got {x.shape}")
        return x @ self.weights + self.bias

    def save(self, directory: str | Path) -> Path:
        state = {"weights": torch.from_numpy(np.ascontiguousarray(self.weights, dtype=np.float32)),
                 "bias": torch.from_numpy(np.asarray(self.bias, dtype=np.float32)),
                 "voxels": torch.from_numpy(np.asarray(self.voxels, dtype=np.int64))}
        return save_checkpoint(directory, state, {"model": self.model, "info": self.info}, model_class=ENCODER_CLASS,
                               trained=self.trained)

    @classmethod
    def load(cls, directory: str | Path) -> LinearEncoder:
        ckpt = load_checkpoint(directory, expected_class=ENCODER_CLASS)
        state = {k: v.numpy() for k, v in ckpt.state_dict.items()}
        return cls(state["weights"], state["bias"], state["voxels"], ckpt.config["model"], ckpt.trained,
                   ckpt.config.get("info", {}))


@dataclass
class EncodeRun:
    """An opened run folder: its data, subject, encoder and settings."""

    path: Path
    data: EncodingData
    subject: EncodingSubject
    encoder: LinearEncoder
    settings: EncodeSettings

    @property
    def responses_test(self) -> np.ndarray:
        return self.subject.test_responses[:, self.encoder.voxels]

    @property
    def features_trained(self) -> bool:
        return self.data.clip_trained

    def untrained_parts(self) -> list[str]:
        """What is untrained in this run, for labels: the CLIP features and/or the BraInCoRL hypernetwork."""
        parts = [] if self.features_trained else ["CLIP features (tiny random CLIP)"]
        if self.encoder.model == "braincorl" and not self.encoder.info.get("hypernetwork_trained", False):
            parts.append("BraInCoRL hypernetwork")
        return parts


def _subject_name(data: EncodingData, name: str | None) -> str:
    names = data.subject_names
    if not names:
        raise InvalidInputError("no subjects in the data folder", data.root)
    if name is None:
        return names[-1]
    if name not in names:
        raise InvalidInputError(f"no subject {name!r}; found {names}", data.root)
    return name


def meta_train_braincorl(data: EncodingData, settings: EncodeSettings, subjects: list[str], out: Path,
                         progress: bool = False) -> Any:
    """Meta-train BraInCoRL on ``subjects``' training images (voxels weighted by their noise ceiling)."""
    from neuroattn.encode.braincorl import BraInCoRLConfig
    from neuroattn.encode.braincorl_training import InContextEncoder

    x = data.features.values
    arrays, weights = [], []
    for name in subjects:
        s = data.subject(name)
        arrays.append((x, s.train_responses, s.train_ids))
        weights.append(None if s.noise_ceiling is None else np.clip(s.noise_ceiling / 100.0, 0.0, 1.0))
    config = BraInCoRLConfig(**({"embedding_dim": data.features.dim} | settings.braincorl))
    encoder = InContextEncoder(config, device=settings.device, seed=settings.seed, progress=progress,
                               **settings.meta_training)
    use_weights = None if any(w is None for w in weights) else weights
    return encoder.meta_train(arrays, out, settings.meta_steps, voxel_weights=use_weights)


def _support_rows(n_train: int, k: int | None, seed: int) -> np.ndarray:
    """Rows of the subject's training images used in context (all when k is None or >= n)."""
    if k is None or k >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng([seed, 7]).choice(n_train, size=k, replace=False))


def _other_subjects(data: EncodingData, settings: EncodeSettings, name: str) -> list[str]:
    """The subjects BraInCoRL or the prior learn from: ``meta_subjects``, default every subject but ``name``."""
    others = settings.meta_subjects or [s for s in data.subject_names if s != name]
    if name in others:
        raise ConfigError(f"the encoded subject {name} cannot also be one the {settings.model} model learns from")
    if not others:
        raise ConfigError(f"{settings.model} needs at least one other subject to learn from")
    return list(others)


def _fit_prior_encoder(data: EncodingData, settings: EncodeSettings, subject: EncodingSubject, voxels: np.ndarray,
                       out: Path, info: dict[str, Any]) -> LinearEncoder:
    """Per-ROI Gaussian weight prior from the other subjects (saved in ``out/prior``), then the posterior-mean
    weights of ``subject``'s voxels given its ``k`` support images."""
    from neuroattn.encode.gaussian_prior import PriorEncoder, WeightPrior, prior_from_subjects, roi_groups

    if settings.meta_run is not None:
        prior = WeightPrior.load(settings.meta_run)
        prior_dir = Path(settings.meta_run).resolve()
        learned_from = [str(prior_dir)]
    else:
        learned_from = _other_subjects(data, settings, subject.name)
        prior = prior_from_subjects(data, learned_from, alphas=settings.alphas, seed=settings.seed)
        prior_dir = prior.save(out / "prior", {"learned_from": learned_from})
    x = data.features.values
    rows = _support_rows(len(subject.train_ids), settings.k, settings.seed)
    fitted = PriorEncoder(prior, roi_groups(subject)[voxels]).fit(x[subject.train_ids[rows]],
                                                                  subject.train_responses[rows][:, voxels])
    info = info | {"k": len(rows), "support_ids": subject.train_ids[rows].tolist(), "meta_run": str(prior_dir),
                   "prior_learned_from": learned_from, "noise_fraction": prior.noise_fraction}
    return LinearEncoder(fitted.coef_.astype(np.float32), fitted.intercept_.astype(np.float32), voxels, "prior",
                         data.clip_trained, info)


def fit_encoder(data: EncodingData, settings: EncodeSettings, out: str | Path, *, progress: bool = False) -> Path:
    """Fit the settings' model for one subject and write the run folder ``out``."""
    from neuroattn.encode.ridge_encoder import RidgeEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = _subject_name(data, settings.subject)
    subject = data.subject(name)
    voxels = subject.voxels_in(settings.rois)
    x = data.features.values
    y = subject.train_responses[:, voxels]
    info: dict[str, Any] = {"subject": name, "n_train_images": len(subject.train_ids)}
    if settings.model in ("ridge", "lavca"):
        ridge = RidgeEncoder(alphas=settings.alphas, seed=settings.seed).fit(x[subject.train_ids], y)
        encoder = LinearEncoder(ridge.coef_, ridge.intercept_, voxels, settings.model, data.clip_trained,
                                info | {"alphas_median": float(np.median(ridge.alphas_))})
    elif settings.model == "prior":
        encoder = _fit_prior_encoder(data, settings, subject, voxels, out, info)
    else:
        from neuroattn.encode.braincorl_training import InContextEncoder

        if settings.meta_run is not None:
            hyper = InContextEncoder.load(settings.meta_run, device=settings.device, progress=progress)
            meta_dir = Path(settings.meta_run).resolve()
        else:
            meta_subjects = _other_subjects(data, settings, name)
            meta_dir = out / "meta"
            hyper = meta_train_braincorl(data, settings, meta_subjects, meta_dir, progress=progress)
        rows = _support_rows(len(subject.train_ids), settings.k, settings.seed)
        hyper.pooling = settings.pooling()
        hyper.fit(x[subject.train_ids[rows]], y[rows], layout=settings.layout(subject, voxels))
        info |= {"k": len(rows), "support_ids": subject.train_ids[rows].tolist(), "meta_run": str(meta_dir),
                 "hypernetwork_trained": bool(hyper.trained), "spatial_pooling": hyper.pooling_}
        encoder = LinearEncoder(hyper.weights_, hyper.bias_, voxels, "braincorl",
                                bool(hyper.trained and data.clip_trained), info)
    encoder.save(out / "encoder")
    run_info = {"model": settings.model, "data": str(Path(data.root).resolve()), "subject": name,
                "n_voxels": len(voxels), "features": data.features.info, "settings": asdict(settings),
                "clip_seed": data.decoding.source.seed}
    atomic_write_text(out / RUN_INFO, json.dumps(run_info, indent=2) + "\n")
    if settings.model == "lavca":
        from neuroattn.encode.run_outputs import write_captions

        write_captions(open_run(out, progress=progress), out, progress=progress)
    return out


def read_run_info(run: str | Path) -> dict[str, Any]:
    path = Path(run) / RUN_INFO
    if not path.is_file():
        raise InvalidInputError(f"not an encoding run folder (no {RUN_INFO}; make one with `neuroattn encode fit`)",
                                Path(run))
    return json.loads(path.read_text(encoding="utf-8"))


def open_run(run: str | Path, data_root: str | Path | None = None, *, progress: bool = False) -> EncodeRun:
    """Reopen a run folder with its data folder (or ``data_root``), subject and encoder."""
    info = read_run_info(run)
    settings = EncodeSettings(**info["settings"])
    clip_seed = info.get("clip_seed", settings.seed)  # runs that recorded none used their training seed
    data = settings.open_data(data_root or info["data"], progress=progress, clip_seed=clip_seed)
    encoder = LinearEncoder.load(Path(run) / "encoder")
    subject = data.subject(info["subject"])
    if encoder.weights.shape[0] != data.features.dim or encoder.voxels.max(initial=-1) >= subject.n_voxels:
        raise InvalidInputError(f"the encoder ({encoder.weights.shape[0]} features) does not fit this data folder's "
                                f"{data.features.dim} features / {subject.n_voxels} voxels", Path(run))
    return EncodeRun(Path(run), data, subject, encoder, settings)
