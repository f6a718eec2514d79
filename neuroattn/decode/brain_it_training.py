"""Training Brain-IT on several subjects jointly, adapting it to a new subject, and decoding with it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from neuroattn.decode.base import as_betas, normalize_rows
from neuroattn.decode.brain_it import BrainIT, BrainITConfig, BrainITOutput, SubjectVoxels
from neuroattn.decode.contrastive import MixupBatch, bimixco_loss, bimixco_steps, mixup_voxels, soft_clip_loss
from neuroattn.decode.voxel_clusters import VoxelClusters, encoding_profiles, fit_voxel_clusters
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.io.checkpoints import Checkpoint, load_checkpoint, load_state_strict
from neuroattn.progress import progress_bar
from neuroattn.train import LossItem, Trainer, TrainResult
from neuroattn.train.config import TrainConfig

MODEL_CLASS = "BrainIT"
PRIOR_VARIANCE_FLOOR = 1e-2  # embeddings are whitened (unit variance per axis); keeps the prior finite


class BrainITSubject(NamedTuple):
    """One subject's training data; a plain ``(betas, tokens, latents, profiles)`` tuple works too."""

    betas: np.ndarray  # (N, V) voxel responses, z-scored per voxel over the training trials
    tokens: np.ndarray  # (N, L, D) CLIP tokens of each trial's image, CLS/pooled token first
    latents: np.ndarray | None = None  # (N, C, h, w) VAE latents of the images, or None
    profiles: np.ndarray | None = None  # (V, F) voxel profiles; None: ridge weights on tokens[:, 0]
    name: str | None = None  # subject id; None: "subjNN" from its position


def _check_subject(index: int, item: Sequence[Any], config: BrainITConfig) -> BrainITSubject:
    """Validate one subject's arrays against the config; returns them as float32 with profiles filled in."""
    subject = BrainITSubject(*item)
    name = subject.name or f"subj{index + 1:02d}"
    betas = as_betas(subject.betas)
    tokens = np.asarray(subject.tokens, dtype=np.float32)
    n = betas.shape[0]
    if tokens.shape != (n, config.n_tokens, config.clip_dim):
        raise InvalidInputError(
            f"tokens of {name!r} must be (n_trials={n}, n_tokens={config.n_tokens}, clip_dim={config.clip_dim}), got "
            f"{tokens.shape}; set BrainITConfig.n_tokens / clip_dim to the CLIP model's token grid"
        )
    latents = subject.latents
    if latents is not None:
        latents = np.asarray(latents, dtype=np.float32)
        expected = (n, config.latent_channels, config.latent_size, config.latent_size)
        if not config.latent_channels or latents.shape != expected:
            raise InvalidInputError(
                f"latents of {name!r} must be {expected} (latent_channels > 0), got {latents.shape}"
            )
    profiles = subject.profiles
    if profiles is None:
        profiles = encoding_profiles(betas, tokens[:, 0], alpha=config.profile_alpha)
    profiles = np.asarray(profiles, dtype=np.float32)
    if profiles.ndim != 2 or profiles.shape[0] != betas.shape[1]:
        raise InvalidInputError(f"profiles of {name!r} must be (V={betas.shape[1]}, F), got {profiles.shape}")
    return BrainITSubject(betas, tokens, latents, profiles, name)


class MultiSubjectTrials(Dataset):
    """Trials of several subjects in one map-style dataset.

    Item: ``subject`` (int64 index), ``betas`` ``(V_max,)`` zero-padded past the subject's V, ``tokens``
    ``(L, D)``, ``latents`` ``(C, h, w)`` (zeros when absent) and ``has_latents`` (bool).
    """

    def __init__(self, subjects: Sequence[BrainITSubject], config: BrainITConfig) -> None:
        self.n_voxels = [s.betas.shape[1] for s in subjects]
        width = max(self.n_voxels)
        self.betas = [F.pad(torch.from_numpy(s.betas), (0, width - s.betas.shape[1])) for s in subjects]
        self.tokens = [torch.from_numpy(s.tokens) for s in subjects]
        side, channels = config.latent_size, config.latent_channels
        self.latents = [None if s.latents is None else torch.from_numpy(s.latents) for s in subjects]
        self.blank = torch.zeros(channels, side, side)
        self.index = [(si, i) for si, s in enumerate(subjects) for i in range(s.betas.shape[0])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        si, ti = self.index[i]
        latents = self.latents[si]
        return {
            "subject": torch.tensor(si),
            "betas": self.betas[si][ti],
            "tokens": self.tokens[si][ti],
            "latents": self.blank if latents is None else latents[ti],
            "has_latents": torch.tensor(latents is not None),
        }


def brain_it_loss(
    tokens: Tensor, target: Tensor, config: BrainITConfig, latents: Tensor | None = None,
    target_latents: Tensor | None = None, retrieval: Tensor | None = None, mix: MixupBatch | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of token MSE, ``1 - cosine``, SoftCLIP on the flattened retrieval tokens and latent L1.

    Parameters
    ----------
    tokens, target : ``(B, L, D)`` predicted and CLIP tokens.
    latents, target_latents : ``(B', C, h, w)`` predicted and VAE latents of the trials that have them.
    retrieval : ``(B, L, D)`` the projector's tokens SoftCLIP matches to ``target`` (default ``tokens``).
    mix : when the inputs were mixed (rows in the outputs' order), BiMixCo replaces SoftCLIP; the token and
        latent terms keep the unmixed targets, as MindEye's prior does.

    Returns
    -------
    (loss, metrics) : the scalar loss and its detached terms.
    """
    tokens, target = tokens.float(), target.float()
    mse = F.mse_loss(tokens, target)
    cosine = 1 - F.cosine_similarity(tokens, target, dim=-1).mean()
    retrieval = tokens if retrieval is None else retrieval.float()
    if mix is None:
        contrastive = soft_clip_loss(retrieval, target, temperature=config.temperature)  # flattened + normalised
    else:
        contrastive = bimixco_loss(retrieval, target, mix.perm, mix.betas, temperature=config.temperature)
    loss = config.mse_weight * mse + config.cosine_weight * cosine + config.contrastive_weight * contrastive
    metrics = {"mse": mse.detach(), "1-cos": cosine.detach(), "softclip": contrastive.detach()}
    if latents is not None and target_latents is not None and latents.shape[0]:
        l1 = F.l1_loss(latents.float(), target_latents.float())
        loss = loss + config.latent_weight * l1
        metrics["latent_l1"] = l1.detach()
    return loss, metrics


def _in_output_order(mixed: MixupBatch, order: Tensor) -> MixupBatch:
    """The mixup of the input rows re-indexed to the output rows ``order`` lists (partners included)."""
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order), device=order.device)  # output row of each input row
    return MixupBatch(mixed.voxels[order], position[mixed.perm[order]], mixed.betas[order], mixed.select[order])


class EmbeddingPrior(NamedTuple):
    """A Gaussian prior on one subject's voxel embeddings: ``N(mean, variance)`` per voxel and axis.

    Adaptation adds ``weight * mean((e - mean)^2 / variance)`` to the loss: the MAP estimate of embeddings whose
    start (the profile placement) carries a known uncertainty, so a few images move them only as far as they
    have evidence for.
    """

    subject: str
    mean: Tensor  # (V, embed_dim)
    variance: Tensor  # (V, embed_dim) > 0
    weight: float

    def penalty(self, embedding: Tensor) -> Tensor:
        """The weighted prior term of ``embedding (V, embed_dim)``."""
        return self.weight * ((embedding - self.mean) ** 2 / self.variance).mean()


class BrainITTask:
    """The :class:`~neuroattn.train.TrainTask` of Brain-IT: one AdamW optimizer "brain_it" over the parameters
    that require gradients (all of them when training jointly, one subject's voxel embeddings when adapting).

    The final checkpoint holds the model (keys ``model.*``) and the voxel clusters (``clusters.*``).
    """

    model_class = MODEL_CLASS

    def __init__(
        self, model: BrainIT, clusters: VoxelClusters, dataset: MultiSubjectTrials, subject_names: Sequence[str],
        *, weight_decay: float = 0.01, summary: dict[str, Any] | None = None, max_steps: int = 0,
        prior: EmbeddingPrior | None = None,
    ) -> None:
        self.model, self.clusters, self.dataset = model, clusters, dataset
        self.prior = prior
        self.mixup_steps = bimixco_steps(max_steps, model.config.mixup_fraction)  # leading steps with BiMixCo
        self.subject_names = list(subject_names)
        self.weight_decay = weight_decay
        self.summary = summary or {}

    def modules(self) -> dict[str, nn.Module]:
        return {"brain_it": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("no Brain-IT parameter requires gradients")
        return {"brain_it": torch.optim.AdamW(params, lr=1e-3, weight_decay=self.weight_decay)}

    def train_dataset(self) -> Dataset:
        return self.dataset

    def predict(self, batch: dict[str, Tensor]) -> tuple[Tensor, BrainITOutput]:
        """Pool each subject's rows of a mixed batch into cluster tokens, then run the shared transformer once.

        Returns the row order of the outputs (rows grouped by subject) and the outputs.
        """
        subject = batch["subject"]
        rows, clusters = [], []
        for si in torch.unique(subject).tolist():
            idx = torch.nonzero(subject == si).flatten()  # (b,)
            width = self.dataset.n_voxels[si]
            clusters.append(self.model.cluster_tokens(self.subject_names[si], batch["betas"][idx, :width]))
            rows.append(idx)
        feats = self.model.interact(torch.cat(clusters))  # (B, Q, d)
        return torch.cat(rows), self.model.decode_outputs(feats)

    def losses(self, batch: dict[str, Tensor], step: int) -> Iterator[LossItem]:
        cfg = self.model.config
        mixed = None
        if step < self.mixup_steps:  # BiMixCo phase: each trial mixed with another of the same subject
            mixed = mixup_voxels(batch["betas"], beta=cfg.mixup_beta, mix_prob=cfg.mixup_prob, groups=batch["subject"])
            batch = batch | {"betas": mixed.voxels}
        order, out = self.predict(batch)
        mix = None if mixed is None else _in_output_order(mixed, order)
        target = batch["tokens"][order]  # (B, L, D)
        has = batch["has_latents"][order]  # (B,)
        latents = None if out.latents is None else out.latents[has]
        loss, metrics = brain_it_loss(out.tokens, target, cfg, latents, batch["latents"][order][has], out.retrieval,
                                      mix)  # fmt: skip
        if self.prior is not None:
            penalty = self.prior.penalty(self.model.subjects[self.prior.subject].embedding)
            loss = loss + penalty
            metrics["prior"] = penalty.detach()
        yield "brain_it", loss, metrics | {"bimixco": float(mix is not None)}

    def model_config(self) -> dict[str, Any]:
        return {
            "model": self.model.config.to_dict(),
            "subjects": {name: module.n_voxels for name, module in self.model.subjects.items()},
        }

    def export_state_dict(self, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        return state | {f"clusters.{k}": v for k, v in self.clusters.state_tensors().items()}

    def data_summary(self) -> dict[str, Any]:
        return dict(self.summary)


def _subject_summary(subjects: Sequence[BrainITSubject]) -> dict[str, Any]:
    return {s.name: {"n_trials": int(s.betas.shape[0]), "n_voxels": int(s.betas.shape[1]),
                     "latents": s.latents is not None} for s in subjects}


def train_brain_it(
    subjects: Sequence[Sequence[Any]],
    config: BrainITConfig,
    train: TrainConfig,
    *,
    clip_trained: bool = False,
    weight_decay: float = 0.01,
    resume: bool = False,
) -> TrainResult:
    """Fit shared voxel clusters on every subject, then train one Brain-IT on all subjects jointly.

    The transformer, cluster embeddings and queries are shared; each subject has its own voxel embeddings,
    initialised from its voxels' whitened PCA profiles, and its voxels keep the cluster the mixture gave them.

    Parameters
    ----------
    subjects : :class:`BrainITSubject` (or ``(betas, tokens, latents | None, profiles | None)`` tuples), one per
        subject; betas ``(N_s, V_s)``, tokens ``(N_s, n_tokens, clip_dim)``, latents ``(N_s, C, h, w)``.
    config : architecture and losses (``n_clusters`` mixture components, ``embed_dim`` PCA dimensions).
    train : trainer settings; the model and clusters land in ``train.out_dir / "final"``.
    clip_trained : whether the target tokens come from trained CLIP weights; False marks the decoder UNTRAINED.
    weight_decay : AdamW decoupled weight decay.
    resume : continue the run in ``train.out_dir``.
    """
    if not subjects:
        raise InvalidInputError("train_brain_it needs at least one subject")
    items = [_check_subject(i, s, config) for i, s in enumerate(subjects)]
    names = [s.name for s in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"subject names must be unique, got {names}")
    clusters, labels = fit_voxel_clusters(
        [s.profiles for s in items], config.n_clusters, seed=train.seed, n_components=config.embed_dim
    )
    if clusters.n_components != config.embed_dim:
        raise ConfigError(f"profiles allow only {clusters.n_components} PCA dimensions; set embed_dim to at most that")
    init = {s.name: (torch.from_numpy(clusters.embed(s.profiles)), torch.from_numpy(lab))
            for s, lab in zip(items, labels, strict=True)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        model = BrainIT(config, init)
    summary = {"subjects": _subject_summary(items), "clip_trained": bool(clip_trained),
               "latents_trained": any(s.latents is not None for s in items) and config.latent_channels > 0}
    task = BrainITTask(model, clusters, MultiSubjectTrials(items, config), names, max_steps=train.max_steps,
                       weight_decay=weight_decay,
                       summary=summary)
    return Trainer(task, train).fit(resume=resume)


def _final_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path / "final" if (path / "final" / "config.json").is_file() else path


def load_brain_it(run_dir: str | Path) -> tuple[BrainIT, VoxelClusters, Checkpoint]:
    """The Brain-IT model (eval mode), its voxel clusters and the checkpoint of a run (or checkpoint folder)."""
    path = _final_dir(run_dir)
    ckpt = load_checkpoint(path, expected_class=MODEL_CLASS)
    try:
        config = BrainITConfig.from_dict(dict(ckpt.config["model"]))
        sizes = {str(k): int(v) for k, v in dict(ckpt.config["subjects"]).items()}
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: bad {MODEL_CLASS} config ({exc})") from None
    init = {name: (torch.zeros(v, config.embed_dim), torch.zeros(v, dtype=torch.long)) for name, v in sizes.items()}
    model = BrainIT(config, init)
    model_state = {k[len("model."):]: v for k, v in ckpt.state_dict.items() if k.startswith("model.")}
    cluster_state = {k[len("clusters."):]: v for k, v in ckpt.state_dict.items() if k.startswith("clusters.")}
    load_state_strict(model, model_state, path)
    try:
        clusters = VoxelClusters.from_state(cluster_state)
    except InvalidInputError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model.eval(), clusters, ckpt


def place_subject(
    model: BrainIT, clusters: VoxelClusters, profiles: np.ndarray, subject: str
) -> tuple[SubjectVoxels, np.ndarray]:
    """Add ``subject`` to ``model`` with its voxels placed from their profiles ``(V, F)`` alone, no training.

    Each voxel joins its most likely mixture cluster and starts from its posterior-mean embedding, the profile
    noise added to every cluster's variance (:meth:`VoxelClusters.posterior`). Returns the subject's module and
    the posterior variance ``(V, embed_dim)`` of the placement.
    """
    if profiles.ndim != 2 or profiles.shape[1] != clusters.n_features:
        raise InvalidInputError(f"profiles of {subject!r} must be (V, {clusters.n_features}) as the run's clusters "
                                f"were fitted on, got {profiles.shape}")
    labels, start, variance = clusters.posterior(clusters.embed(profiles))
    return model.add_subject(subject, torch.from_numpy(start), torch.from_numpy(labels)), variance


def adapt_new_subject(
    run_dir: str | Path,
    betas: np.ndarray,
    tokens: np.ndarray,
    train: TrainConfig,
    *,
    latents: np.ndarray | None = None,
    profiles: np.ndarray | None = None,
    subject: str = "new",
    prior_weight: float | None = None,
) -> TrainResult:
    """Add a new subject to a trained Brain-IT, training only that subject's voxel embeddings.

    The new voxels' embeddings start from their profiles (ridge weights on ``tokens[:, 0]`` unless
    ``profiles`` is given) embedded by the run's PCA. Profiles from few images are noisy, so each voxel joins
    the mixture cluster of highest likelihood once that noise is added to every cluster's variance, and starts
    from its denoised embedding (:meth:`VoxelClusters.place_noisy`); everything shared, and every other
    subject, stays frozen. The adapted model (all subjects)
    lands in ``train.out_dir / "final"``; load it with ``BrainITDecoder.load(train.out_dir, subject)``.

    Parameters
    ----------
    run_dir : a finished :func:`train_brain_it` run (or its ``final`` folder).
    betas, tokens, latents, profiles : the new subject's data, as in :class:`BrainITSubject`.
    train : trainer settings for the adaptation run; ``out_dir`` must differ from ``run_dir``.
    subject : the new subject's name.
    prior_weight : weight of the Gaussian prior that keeps each embedding near its placement, scaled by the
        placement's uncertainty (:class:`EmbeddingPrior`); None takes the run's ``adapt_prior_weight``, 0 trains
        the embeddings freely.
    """
    if Path(train.out_dir).resolve() in {Path(run_dir).resolve(), _final_dir(run_dir).resolve()}:
        raise ConfigError("the adaptation run needs its own out_dir, not the trained run's folder")
    if prior_weight is not None and not prior_weight >= 0:
        raise ConfigError(f"'prior_weight' must be >= 0. {prior_weight!r} was provided.")
    model, clusters, ckpt = load_brain_it(run_dir)
    cfg = model.config
    item = _check_subject(0, (betas, tokens, latents, profiles, subject), cfg)
    model.requires_grad_(False)
    voxels, variance = place_subject(model, clusters, item.profiles, subject)
    voxels.embedding.requires_grad_(True)
    weight = cfg.adapt_prior_weight if prior_weight is None else float(prior_weight)
    prior = None
    if weight > 0:
        floored = torch.from_numpy(np.maximum(variance, PRIOR_VARIANCE_FLOOR)).to(voxels.embedding)
        prior = EmbeddingPrior(subject, voxels.embedding.detach().clone(), floored, weight)
    dataset = MultiSubjectTrials([item], cfg)
    summary = dict(ckpt.data_summary)
    summary["subjects"] = dict(summary.get("subjects", {})) | _subject_summary([item])
    summary["adapted_subject"] = subject
    summary["adapted_from"] = str(_final_dir(run_dir))
    summary["adapt_prior_weight"] = weight
    task = BrainITTask(model, clusters, dataset, [subject], weight_decay=0.0, summary=summary,
                       max_steps=train.max_steps, prior=prior)
    return Trainer(task, train).fit()


class BrainITDecoder:
    """A trained Brain-IT for one subject, implementing :class:`~neuroattn.decode.base.BrainDecoder`.

    ``brain_embeddings`` are the predicted semantic tokens flattened and L2-normalised (the retrieval space).
    """

    name = "brain-it"

    def __init__(
        self, model: BrainIT, subject: str, *, trained: bool, latents_trained: bool = True, batch_size: int = 64,
        device: str | torch.device = "cpu", progress: bool = False,
    ) -> None:
        if subject not in model.subjects:
            raise InvalidInputError(f"unknown subject {subject!r}; this model knows {sorted(model.subjects)}")
        self.model, self.subject, self.trained = model.to(device).eval(), subject, trained
        self.latents_trained = latents_trained and model.latent_head is not None
        self.batch_size, self.device, self.progress = batch_size, torch.device(device), progress

    @classmethod
    def load(
        cls, run_dir: str | Path, subject: str, *, device: str | torch.device = "cpu", batch_size: int = 64,
        progress: bool = False,
    ) -> BrainITDecoder:
        """The decoder of ``subject`` in a :func:`train_brain_it` or :func:`adapt_new_subject` run."""
        model, _, ckpt = load_brain_it(run_dir)
        summary = ckpt.data_summary
        trained = bool(ckpt.trained and summary.get("clip_trained", False))
        return cls(model, subject, trained=trained, latents_trained=bool(summary.get("latents_trained", False)),
                   batch_size=batch_size, device=device, progress=progress)

    @property
    def n_voxels(self) -> int:
        return self.model.subjects[self.subject].n_voxels

    def _run(self, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(tokens (B, L, D), latents (B, C, h, w) or None, retrieval tokens (B, L, D))`` float32."""
        arr = as_betas(betas, self.n_voxels)
        tokens, latents, retrieval = [], [], []
        starts = range(0, arr.shape[0], self.batch_size)
        with torch.no_grad():
            for start in progress_bar(starts, disable=not self.progress, desc="brain-it", unit="batch"):
                x = torch.from_numpy(arr[start : start + self.batch_size]).to(self.device)
                out = self.model(self.subject, x)
                tokens.append(out.tokens.float().cpu().numpy())
                retrieval.append(out.retrieval.float().cpu().numpy())
                if out.latents is not None:
                    latents.append(out.latents.float().cpu().numpy())
        return np.concatenate(tokens), (np.concatenate(latents) if latents else None), np.concatenate(retrieval)

    def predict_clip(self, betas: np.ndarray) -> np.ndarray:
        """Voxel responses ``(B, V)`` -> predicted CLIP tokens ``(B, L, D)`` float32."""
        return self._run(betas)[0]

    def brain_embeddings(self, betas: np.ndarray) -> np.ndarray:
        """Voxel responses ``(B, V)`` -> ``(B, L*D)`` retrieval embeddings (the projector's tokens, or the predicted
        tokens without one), flattened, each row L2-normalised."""
        tokens = self._run(betas)[2]
        return normalize_rows(tokens.reshape(tokens.shape[0], -1))  # (B, L*D)

    def predict_latents(self, betas: np.ndarray) -> np.ndarray | None:
        """Voxel responses ``(B, V)`` -> VAE latents ``(B, C, h, w)``, or None when the low-level branch was
        absent or never trained."""
        if not self.latents_trained:
            return None
        return self._run(betas)[1]


__all__ = [
    "MODEL_CLASS",
    "BrainITDecoder",
    "BrainITSubject",
    "BrainITTask",
    "EmbeddingPrior",
    "MultiSubjectTrials",
    "adapt_new_subject",
    "brain_it_loss",
    "load_brain_it",
    "place_subject",
    "train_brain_it",
]
