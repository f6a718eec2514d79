"""Train, adapt and load the decoders (MindEye, Brain-IT, ridge) on a decoding data folder, one run folder each.

Every run folder holds the model's checkpoint (safetensors + JSON) and ``decode_run.json``: the model, the
data folder, the subjects and the feature extractors it was trained with, so retrieval, reconstruction and
evaluation can find the same data and targets again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.data.nsd import SubjectData
from neuroattn.decode.base import BrainDecoder
from neuroattn.decode.data_bundle import DecodingData, FeatureSource, generator_autoencoder, image_latents
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_write_text

RUN_INFO = "decode_run.json"
MODELS = ("mindeye", "brain-it", "ridge")
SIZES = ("tiny", "published")


@dataclass
class DecodeSettings:
    """Settings of ``neuroattn decode train``, read from ``pipelines/decode/<model>-*.yaml``."""

    model: str  # mindeye | brain-it | ridge
    size: str = "tiny"  # tiny (CPU minutes) | published (the papers' sizes; a GPU)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the model config's fields
    subjects: list[str] | None = None  # training subjects (None: MindEye/ridge the first, Brain-IT all)
    lowlevel: bool = True  # also train the low-level path (autoencoder latents) for reconstructions
    steps: int = 600  # optimizer steps (ridge: unused)
    batch_size: int = 64  # trials per step
    lr: float = 3e-4  # peak learning rate (warm-up, then cosine decay)
    warmup_steps: int = 30
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # off | bf16 | fp16 | auto (off on CPU)
    checkpoint_every: int = 200
    log_every: int = 20
    train_fraction: float = 1.0  # share of each subject's training images used (new-subject experiments)
    clip_weights: str | None = None  # open_clip checkpoint file (None: tiny random CLIP, untrained)
    clip_model: str = "ViT-L-14"
    vae_path: str | None = None  # diffusers AutoencoderKL folder (None: the data folder's generator)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"'model' must be one of {list(MODELS)}. {self.model!r} was provided.")
        if self.size not in SIZES:
            raise ConfigError(f"'size' must be one of {list(SIZES)}. {self.size!r} was provided.")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"'train_fraction' must be in (0, 1]. {self.train_fraction!r} was provided.")

    def feature_source(self) -> FeatureSource:
        """The CLIP and autoencoder of the targets; a tiny random CLIP is the data folder's own, whatever ``seed``."""
        return FeatureSource(clip_weights=self.clip_weights, clip_model=self.clip_model, vae_path=self.vae_path)

    def train_config(self, out_dir: Path, progress: bool) -> Any:
        from neuroattn.train import TrainConfig

        return TrainConfig(out_dir=out_dir, max_steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=min(self.warmup_steps, max(self.steps - 1, 0)), seed=self.seed,
                           device=self.device, amp=self.amp, checkpoint_every=self.checkpoint_every,
                           log_every=self.log_every, progress=progress)


@dataclass
class TrainingSet:
    """One subject's training trials with their image targets."""

    name: str
    betas: np.ndarray  # (n, V)
    image_ids: np.ndarray  # (n,)
    tokens: np.ndarray  # (n, L, D)
    latents: np.ndarray | None  # (n, C, h, w)


def select_fraction(image_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the trials whose image is in a seeded ``fraction`` of the distinct images (all repeats)."""
    if fraction >= 1:
        return np.ones(len(image_ids), dtype=bool)
    unique = np.unique(image_ids)
    n_keep = max(2, round(fraction * len(unique)))
    keep = np.random.default_rng(seed).choice(unique, size=n_keep, replace=False)
    return np.isin(image_ids, keep)


def training_sets(data: DecodingData, settings: DecodeSettings, subjects: list[str], *,
                  progress: bool = False) -> tuple[list[TrainingSet], dict[str, Any] | None]:
    """The training trials of ``subjects`` with CLIP tokens and (when ``settings.lowlevel``) latents."""
    latents_all, latent_info = None, None
    if settings.lowlevel:
        vae = generator_autoencoder(data.root, data.source, data.stimuli.image_size)
        latents_all, latent_info = image_latents(data.root, data.stimuli, vae, progress=progress)
    sets = []
    for name in subjects:
        betas, ids = data.subject(name).trials(test=False)
        keep = select_fraction(ids, settings.train_fraction, settings.seed)
        betas, ids = betas[keep], ids[keep]
        sets.append(TrainingSet(name, betas, ids, data.features.tokens[ids],
                                None if latents_all is None else latents_all[ids]))
    return sets, latent_info


def _resolve_subjects(data: DecodingData, settings: DecodeSettings) -> list[str]:
    available = data.subject_names
    if not available:
        raise InvalidInputError("no subjects found", data.root)
    if settings.subjects:
        missing = [s for s in settings.subjects if s not in available]
        if missing:
            raise InvalidInputError(f"unknown subject(s) {missing}; found {available}", data.root)
        chosen = list(settings.subjects)
    else:
        chosen = available if settings.model == "brain-it" else available[:1]
    if settings.model != "brain-it" and len(chosen) > 1:
        raise ConfigError(f"{settings.model} is trained per subject; give one subject, not {chosen}")
    return chosen


def _write_info(out_dir: Path, data: DecodingData, settings: DecodeSettings, subjects: list[str],
                latent_info: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> None:
    info = {
        "model": settings.model,
        "data_root": str(Path(data.root).resolve()),
        "subjects": subjects,
        "clip": {k: data.clip_info.get(k) for k in ("trained", "source", "dim", "n_tokens")}
        | {"seed": data.source.seed},  # the tiny random CLIP's seed (ignored with clip_weights)
        "latents": None if latent_info is None else {k: latent_info.get(k) for k in ("trained", "source", "shape")},
        "settings": asdict(settings),
    } | (extra or {})
    atomic_write_text(out_dir / RUN_INFO, json.dumps(info, indent=2) + "\n")


def train_decoder(data: DecodingData, settings: DecodeSettings, out_dir: str | Path, *, resume: bool = False,
                  progress: bool = False) -> Path:
    """Train ``settings.model`` on ``data`` into ``out_dir``; returns the run folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = _resolve_subjects(data, settings)
    sets, latent_info = training_sets(data, settings, subjects, progress=progress)
    clip_trained = data.clip_trained
    if settings.model == "ridge":
        from neuroattn.decode.ridge import RidgeDecoder

        only = sets[0]
        RidgeDecoder(seed=settings.seed).fit(only.betas, only.tokens, only.latents, groups=only.image_ids,
                                             targets_trained=clip_trained).save(out_dir)
    elif settings.model == "mindeye":
        _train_mindeye(sets[0], settings, out_dir, clip_trained, latent_info, progress)
    else:
        _train_brain_it(sets, settings, out_dir, clip_trained, resume, progress)
    _write_info(out_dir, data, settings, subjects, latent_info)
    return out_dir


def _train_mindeye(item: TrainingSet, settings: DecodeSettings, out_dir: Path, clip_trained: bool,
                   latent_info: dict[str, Any] | None, progress: bool) -> None:
    from neuroattn.decode.mindeye import MindEyeConfig
    from neuroattn.decode.mindeye_training import train_mindeye

    n_tokens, dim = item.tokens.shape[1:]
    shape = {"n_voxels": item.betas.shape[1], "n_tokens": n_tokens, "clip_dim": dim}
    if settings.size == "tiny":
        config = MindEyeConfig.tiny(**shape, **settings.model_config)
    else:
        config = MindEyeConfig.from_dict(MindEyeConfig(**shape).to_dict() | settings.model_config)
    train_mindeye(item.betas, item.tokens, item.latents, config, settings.train_config(out_dir, progress),
                  clip_trained=clip_trained, vae_trained=bool(latent_info and latent_info.get("trained")),
                  summary={"subject": item.name})


def _brain_it_config(settings: DecodeSettings, item: TrainingSet) -> Any:
    from neuroattn.decode.brain_it import BrainITConfig

    n_tokens, dim = item.tokens.shape[1:]
    fitted: dict[str, Any] = {"n_tokens": n_tokens, "clip_dim": dim}
    if item.latents is None:
        fitted["latent_channels"] = 0
    else:
        fitted |= {"latent_channels": item.latents.shape[1], "latent_size": item.latents.shape[2]}
    base = BrainITConfig.tiny() if settings.size == "tiny" else BrainITConfig()
    return BrainITConfig.from_dict(base.to_dict() | fitted | settings.model_config)


def _train_brain_it(sets: list[TrainingSet], settings: DecodeSettings, out_dir: Path, clip_trained: bool,
                    resume: bool, progress: bool) -> None:
    from neuroattn.decode.brain_it_training import BrainITSubject, train_brain_it

    config = _brain_it_config(settings, sets[0])
    subjects = [BrainITSubject(s.betas, s.tokens, s.latents, None, s.name) for s in sets]
    train_brain_it(subjects, config, settings.train_config(out_dir, progress), clip_trained=clip_trained,
                   resume=resume)


def _adapt_prior_weight(settings: DecodeSettings) -> float | None:
    """The adapting run's own ``model_config.adapt_prior_weight`` (None: the base run's; its other keys describe
    the base run and are not used)."""
    value = settings.model_config.get("adapt_prior_weight")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"'adapt_prior_weight' must be a number >= 0. {value!r} was provided.")
    return float(value)


def adapt_brain_it(data: DecodingData, base_run: str | Path, subject: str, settings: DecodeSettings,
                   out_dir: str | Path, *, progress: bool = False) -> Path:
    """Add ``subject`` to a trained Brain-IT, training only its voxel embeddings on ``settings.train_fraction``."""
    from neuroattn.decode.brain_it_training import adapt_new_subject

    info = read_run_info(base_run)
    if info.get("model") != "brain-it":
        raise ConfigError(f"{base_run}: new-subject adaptation needs a Brain-IT run, not {info.get('model')!r}")
    trained_on, offered = (src.resolved(data.root).clip_key() for src in (run_feature_source(info), data.source))
    if trained_on != offered:
        raise ConfigError(f"{base_run}: the run learned CLIP targets {trained_on!r}, the data is opened with "
                          f"{offered!r}; adapt with the run's clip_weights / clip_model")
    if subject in info.get("subjects", []):
        raise ConfigError(f"{subject!r} is already one of the run's training subjects")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sets, latent_info = training_sets(data, settings, [subject], progress=progress)
    item = sets[0]
    adapt_new_subject(base_run, item.betas, item.tokens, settings.train_config(out_dir, progress),
                      latents=item.latents, subject=subject, prior_weight=_adapt_prior_weight(settings))
    _write_info(out_dir, data, settings, [subject], latent_info,
                {"adapted_from": str(Path(base_run).resolve()), "base_subjects": info.get("subjects", [])})
    return out_dir


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``decode_run.json`` of a run folder."""
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        raise InvalidInputError(f"not a decoding run (no {RUN_INFO}; train one with `neuroattn decode train`)",
                                run_dir)
    return json.loads(path.read_text(encoding="utf-8"))


def load_decoder(run_dir: str | Path, subject: str | None = None, *, device: str = "cpu") -> BrainDecoder:
    """The trained decoder of a run folder, for ``subject`` (default: the run's first subject)."""
    info = read_run_info(run_dir)
    subjects = list(info.get("subjects", []))
    subject = subject or subjects[0]
    model = info["model"]
    if model == "brain-it":
        from neuroattn.decode.brain_it_training import BrainITDecoder

        return BrainITDecoder.load(run_dir, subject, device=device)
    if subject not in subjects:
        raise InvalidInputError(f"this {model} run decodes {subjects}, not {subject!r}", run_dir)
    if model == "mindeye":
        from neuroattn.decode.mindeye_training import MindEyeDecoder

        return MindEyeDecoder.load(run_dir, device=device)
    from neuroattn.decode.ridge import RidgeDecoder

    return RidgeDecoder.load(run_dir)


def trained_images(run_dir: str | Path, subject: SubjectData) -> tuple[np.ndarray, np.ndarray]:
    """Repeat-averaged responses ``(n, V)`` to the images the run trained ``subject`` on, and their ids ``(n,)``.

    A subject the run itself trained used ``train_fraction`` of its images; a base subject of an adapted run
    used all of them.
    """
    info = read_run_info(run_dir)
    if subject.subject not in info.get("subjects", []):
        return subject.averaged(test=False)
    settings = info["settings"]
    _, ids = subject.trials(test=False)
    keep = select_fraction(ids, float(settings.get("train_fraction", 1.0)), int(settings.get("seed", 0)))
    return subject.averaged(test=False, keep=keep)


def run_feature_source(info: dict[str, Any]) -> FeatureSource:
    """The feature extractors a run learned its targets from (``decode_run.json`` contents): its settings' CLIP and
    autoencoder, with the tiny random CLIP's seed it recorded (runs that recorded none used their training seed)."""
    settings = DecodeSettings(**info["settings"])
    clip = info.get("clip") or {}
    return replace(settings.feature_source(), seed=clip.get("seed", settings.seed))


def open_run(run_dir: str | Path, data: str | Path | None = None, subject: str | None = None, *,
             progress: bool = False) -> tuple[DecodingData, str, BrainDecoder]:
    """A run's data folder (``data`` or the run's own, with the run's feature extractors), subject and decoder."""
    from neuroattn.decode.data_bundle import open_decoding_data

    info = read_run_info(run_dir)
    bundle = open_decoding_data(data or info["data_root"], run_feature_source(info), progress=progress)
    subject = subject or info["subjects"][0]
    return bundle, subject, load_decoder(run_dir, subject)
