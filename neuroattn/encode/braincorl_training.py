"""Meta-training BraInCoRL through the shared trainer, and the in-context encoder estimator built on it."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from neuroattn.encode.braincorl import MODEL_CLASS, BraInCoRL, BraInCoRLConfig, load_braincorl, support_stats
from neuroattn.encode.spatial_pooling import SpatialPooling, VoxelLayout, pool_weights
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.io.checkpoints import read_checkpoint_config
from neuroattn.progress import progress_bar
from neuroattn.train import LossItem, TrainConfig, Trainer, adam_per_module

SubjectArrays = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(embeddings (N_img, D), responses (n, V), image_ids (n,))``: one subject's training images and responses."""


def _subject_tensors(subjects: Sequence[SubjectArrays]) -> list[tuple[Tensor, Tensor]]:
    """Each subject as ``(embeddings of its images (n, D), responses (n, V))`` float32 tensors, validated."""
    if not subjects:
        raise InvalidInputError("meta-training needs at least one subject", None)
    out, dims = [], set()
    for s, subject in enumerate(subjects):
        if len(subject) != 3:
            raise InvalidInputError(f"subject {s}: expected (embeddings, responses, image_ids)", None)
        emb, resp, ids = (np.asarray(a) for a in subject)
        if emb.ndim != 2 or resp.ndim != 2 or ids.shape != (len(resp),):
            raise InvalidInputError(
                f"subject {s}: embeddings {emb.shape}, responses {resp.shape} and image_ids {ids.shape} "
                "must be (N_img, D), (n, V) and (n,)", None)  # fmt: skip
        if ids.size and (ids.min() < 0 or ids.max() >= len(emb)):
            raise InvalidInputError(f"subject {s}: image_ids outside [0, {len(emb)})", None)
        x, y = emb[ids].astype(np.float32), resp.astype(np.float32)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise InvalidInputError(f"subject {s}: embeddings or responses contain NaN/inf", None)
        dims.add(emb.shape[1])
        out.append((torch.from_numpy(x), torch.from_numpy(y)))
    if len(dims) != 1:
        raise InvalidInputError(f"subjects have different embedding widths {sorted(dims)}", None)
    return out


class EpisodeDataset(Dataset):
    """Random meta-training episodes, drawn from the global torch stream (exactly resumable with no workers).

    Item ``i`` comes from subject ``i mod n_subjects``: ``voxels_per_episode`` voxels (those with a positive
    weight, without replacement when there are enough), a support size ``k`` log-uniform in
    ``[k_min, k_max]`` (capped at the subject's images minus ``n_query``), ``k`` support images and
    ``n_query`` query images disjoint from them. Items hold ``support_embeddings (k, D)``,
    ``support_responses (V, k)``, ``query_embeddings (m, D)``, ``query_responses (V, m)`` and
    ``voxel_weight (V,)``; :func:`collate_episodes` pads the support sets of a batch to one size.
    """

    def __init__(
        self,
        subjects: Sequence[tuple[Tensor, Tensor]],
        *,
        k_min: int,
        k_max: int,
        n_query: int,
        voxels_per_episode: int,
        voxel_weights: Sequence[np.ndarray] | None = None,
        episodes: int = 1024,
    ) -> None:
        if not 1 <= k_min <= k_max or n_query < 2 or voxels_per_episode < 1 or episodes < 1:
            raise ConfigError(
                f"need 1 <= k_min <= k_max, n_query >= 2, voxels_per_episode >= 1 and episodes >= 1; got "
                f"k_min={k_min}, k_max={k_max}, n_query={n_query}, voxels_per_episode={voxels_per_episode}, "
                f"episodes={episodes}")  # fmt: skip
        self.subjects = list(subjects)
        self.k_min, self.k_max, self.n_query = k_min, k_max, n_query
        self.voxels_per_episode, self.episodes = voxels_per_episode, episodes
        if voxel_weights is not None and len(voxel_weights) != len(self.subjects):
            raise InvalidInputError(f"{len(voxel_weights)} voxel weight arrays for {len(self.subjects)} subjects", None)
        self.weights, self.voxels = [], []
        for s, (x, y) in enumerate(self.subjects):
            if len(x) < k_min + n_query:
                raise InvalidInputError(
                    f"subject {s} has {len(x)} training images; k_min + n_query = {k_min + n_query} are needed", None
                )
            w = np.ones(y.shape[1]) if voxel_weights is None else np.asarray(voxel_weights[s], dtype=np.float64)
            if w.shape != (y.shape[1],) or not np.isfinite(w).all() or (w < 0).any():
                raise InvalidInputError(f"subject {s}: voxel weights must be ({y.shape[1]},) finite and >= 0", None)
            if not (w > 0).any():
                raise InvalidInputError(f"subject {s}: every voxel weight is 0", None)
            self.voxels.append(torch.from_numpy(np.flatnonzero(w > 0)))
            self.weights.append(torch.from_numpy(w.astype(np.float32)))

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        s = i % len(self.subjects)
        x, y = self.subjects[s]
        k_hi = min(self.k_max, len(x) - self.n_query)
        u = float(torch.rand(()))
        k = min(k_hi, int(math.exp(math.log(self.k_min) + u * (math.log(k_hi + 1) - math.log(self.k_min)))))
        order = torch.randperm(len(x))
        support, query = order[:k], order[k : k + self.n_query]
        pool, n = self.voxels[s], self.voxels_per_episode
        pick = torch.randperm(len(pool))[:n] if len(pool) >= n else torch.randint(len(pool), (n,))
        voxels = pool[pick]
        return {
            "support_embeddings": x[support],  # (k, D)
            "support_responses": y[support[:, None], voxels].T.contiguous(),  # (V, k), one gather
            "query_embeddings": x[query],  # (m, D)
            "query_responses": y[query[:, None], voxels].T.contiguous(),  # (V, m)
            "voxel_weight": self.weights[s][voxels],  # (V,)
        }


def collate_episodes(items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack episodes, padding support sets to the batch's largest ``k`` (``support_mask`` marks valid pairs)."""
    k_max = max(item["support_embeddings"].shape[0] for item in items)
    batch, d = len(items), items[0]["support_embeddings"].shape[1]
    n_vox = items[0]["support_responses"].shape[0]
    emb = torch.zeros(batch, k_max, d)
    resp = torch.zeros(batch, n_vox, k_max)
    mask = torch.zeros(batch, k_max, dtype=torch.bool)
    for b, item in enumerate(items):
        k = item["support_embeddings"].shape[0]
        emb[b, :k], resp[b, :, :k], mask[b, :k] = item["support_embeddings"], item["support_responses"], True
    out = {"support_embeddings": emb, "support_responses": resp, "support_mask": mask}
    for key in ("query_embeddings", "query_responses", "voxel_weight"):
        out[key] = torch.stack([item[key] for item in items])
    return out


def episode_forward(model: BraInCoRL, batch: dict[str, Tensor], buckets: int = 4) -> tuple[Tensor, Tensor]:
    """Query predictions ``(B, V, m)`` and the support std ``(B, V)`` of a collated batch of episodes.

    Episodes are sorted by support size and run in up to ``buckets`` groups, each padded only to its own
    largest ``k``: the same result as one padded pass (padding changes nothing) with far less padding.
    """
    emb, resp, mask = batch["support_embeddings"], batch["support_responses"], batch["support_mask"]
    b, v, _ = resp.shape
    d = emb.shape[-1]
    sizes = mask.sum(dim=1)  # (B,)
    order = torch.argsort(sizes.cpu(), stable=True).to(sizes.device)
    weights = emb.new_zeros(b, v, d)
    bias = emb.new_zeros(b, v)
    std = emb.new_zeros(b, v)
    for group in torch.tensor_split(order, min(buckets, b)):
        if not len(group):
            continue
        k = int(sizes[group].max())
        g = len(group)
        g_mask = mask[group, None, :k].expand(g, v, k).reshape(g * v, k)  # (G*V, k)
        g_resp = resp[group, :, :k].reshape(g * v, k)  # (G*V, k)
        g_emb = emb[group, None, :k].expand(g, v, k, d).reshape(g * v, k, d)  # (G*V, k, D)
        w, bb = model(g_emb, g_resp, g_mask)
        weights[group], bias[group] = w.view(g, v, d).to(weights.dtype), bb.view(g, v).to(bias.dtype)
        std[group] = support_stats(g_resp, g_mask, model.config.eps)[1].view(g, v).to(std.dtype)
    pred = torch.einsum("bmd,bvd->bvm", batch["query_embeddings"], weights) + bias[..., None]  # (B, V, m)
    return pred, std


def empirical_prior(subjects: Sequence[tuple[Tensor, Tensor]], components: int, *, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Start of BraInCoRL's Bayes path: a Gaussian mixture on the training subjects' ridge weights.

    Weights are fit on all of each subject's images (CV penalty per voxel) and divided by the voxel's response
    std, the units the model's standardised responses use. The noise share is ``1 - mean CV R^2`` (clipped to
    [0.05, 0.95]). Returns means ``(C, D)``, covariances ``(C, D, D)``, mixing weights ``(C,)`` and the share.
    """
    from neuroattn.encode.mixture_prior import fit_mixture
    from neuroattn.encode.ridge_encoder import RidgeEncoder

    weights, scores = [], []
    for x, y in subjects:
        x_np, y_np = x.double().numpy(), y.double().numpy()
        fit = RidgeEncoder(seed=seed).fit(x_np, y_np)
        weights.append((fit.weights_ / np.maximum(y_np.std(axis=0), 1e-12)).T)  # (V, D)
        scores.append(float(np.clip(fit.cv_scores_, 0.0, 1.0).mean()))
    noise = float(np.clip(1.0 - np.mean(scores), 0.05, 0.95))
    return (*fit_mixture(np.concatenate(weights), components, seed=seed), noise)


def _mean_pearson(pred: Tensor, true: Tensor) -> Tensor:
    """Mean over voxels of the Pearson r over the last axis of ``(B, V, m)`` tensors."""
    pc, tc = pred - pred.mean(-1, keepdim=True), true - true.mean(-1, keepdim=True)
    return ((pc * tc).sum(-1) / ((pc**2).sum(-1) * (tc**2).sum(-1)).sqrt().clamp_min(1e-12)).mean()


class BraInCoRLTask:
    """BraInCoRL's objective: MSE of the hypernetwork's voxel encoders on query images disjoint from the support.

    Errors are measured in units of each voxel's support-set std, so voxels of any response scale weigh
    alike, and weighted by the per-voxel weights (e.g. reliability).
    """

    model_class = MODEL_CLASS

    def __init__(
        self, model: BraInCoRL, dataset: EpisodeDataset, *, weight_decay: float = 0.01, summary: dict | None = None
    ) -> None:
        self.model, self.dataset, self.weight_decay = model, dataset, weight_decay
        self.summary = summary or {}
        self.collate_fn = collate_episodes

    def modules(self) -> dict[str, nn.Module]:
        return {"braincorl": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, betas=(0.9, 0.98), weight_decay=self.weight_decay, decoupled=True)

    def train_dataset(self) -> Dataset:
        return self.dataset

    def losses(self, batch: dict[str, Tensor], step: int) -> Iterator[LossItem]:
        pred, std = episode_forward(self.model, batch)
        true = batch["query_responses"]  # (B, V, m)
        err = (((pred.float() - true) / std[..., None]) ** 2).mean(dim=-1)  # (B, V)
        w = batch["voxel_weight"]
        loss = (err * w).sum() / w.sum().clamp_min(1e-12)
        yield "braincorl", loss, {"query_r": _mean_pearson(pred.detach().float(), true)}

    def model_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def data_summary(self) -> dict[str, Any]:
        return dict(self.summary)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class InContextEncoder:
    """Voxelwise encoders built in context by BraInCoRL: ``fit`` reads k (image, response) pairs, no gradients.

    Parameters
    ----------
    config : model shape; default ``BraInCoRLConfig(embedding_dim=D)`` with D taken from the data.
    k_min, k_max : range of the log-uniform support size during meta-training (images).
    n_query : query images per meta-training episode.
    voxels_per_episode : voxels sharing one support/query draw; ``episodes_per_step`` episodes per step.
    lr, warmup_steps, weight_decay, clip_grad_norm, amp : optimisation settings of meta-training.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``, for meta-training and in-context fitting.
    voxel_batch : voxels per forward pass in :meth:`fit`.
    pooling : spatial pooling of the fitted encoders (see :mod:`neuroattn.encode.spatial_pooling`), applied
        when :meth:`fit` is given the voxels' layout; None never pools.
    seed : seed of the initial weights and of meta-training.
    progress : tqdm bars during meta-training and fitting.
    """

    def __init__(
        self,
        config: BraInCoRLConfig | None = None,
        *,
        k_min: int = 10,
        k_max: int = 200,
        n_query: int = 100,
        voxels_per_episode: int = 32,
        episodes_per_step: int = 8,
        lr: float = 3e-4,
        warmup_steps: int = 100,
        weight_decay: float = 0.01,
        clip_grad_norm: float | None = 1.0,
        amp: str = "auto",
        device: str = "auto",
        voxel_batch: int = 512,
        pooling: SpatialPooling | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.k_min, self.k_max, self.n_query = k_min, k_max, n_query
        self.voxels_per_episode, self.episodes_per_step = voxels_per_episode, episodes_per_step
        self.lr, self.warmup_steps, self.weight_decay = lr, warmup_steps, weight_decay
        self.clip_grad_norm, self.amp, self.device = clip_grad_norm, amp, device
        self.voxel_batch, self.pooling, self.seed, self.progress = voxel_batch, pooling, seed, progress
        self.trained = False  # True once meta-trained or loaded from a trained checkpoint

    @property
    def status(self) -> str:
        return "trained" if self.trained else "UNTRAINED"

    def __repr__(self) -> str:
        return f"InContextEncoder({self.config!r}, {self.status})"

    # -- model ------------------------------------------------------------------------------------------
    def _model(self, embedding_dim: int) -> BraInCoRL:
        """The model, built (seeded, without touching the global torch stream) on first use."""
        if getattr(self, "model_", None) is None:
            config = self.config or BraInCoRLConfig(embedding_dim=embedding_dim)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.model_ = BraInCoRL(config).to(_device(self.device))
            self.config = config
        if self.model_.config.embedding_dim != embedding_dim:
            raise InvalidInputError(
                f"embeddings have {embedding_dim} features but the model expects {self.model_.config.embedding_dim}",
                None)  # fmt: skip
        return self.model_

    def meta_train(
        self,
        subjects: Sequence[SubjectArrays],
        out_dir: str | Path,
        steps: int,
        *,
        voxel_weights: Sequence[np.ndarray] | None = None,
        episodes: int = 1024,
        resume: bool = False,
    ) -> InContextEncoder:
        """Meta-train on training subjects (their TRAIN images only) through :class:`neuroattn.train.Trainer`.

        Parameters
        ----------
        subjects : ``(embeddings (N_img, D), responses (n_i, V_i), image_ids (n_i,))`` per subject.
        out_dir : run folder; ``out_dir/final`` is the checkpoint :meth:`load` reads.
        steps : optimizer steps.
        voxel_weights : per subject ``(V_i,)`` weights >= 0 (e.g. noise ceilings); 0 skips a voxel.
        episodes : episodes per data epoch (each draws its own support size, images and voxels).
        resume : continue the run in ``out_dir``.
        """
        data = _subject_tensors(subjects)
        model = self._model(int(data[0][0].shape[1]))
        if model.prior is not None and not resume:  # the Bayes path starts from the subjects' empirical prior
            model.prior.initialise(*empirical_prior(data, model.config.prior_components, seed=self.seed))
        dataset = EpisodeDataset(
            data, k_min=self.k_min, k_max=self.k_max, n_query=self.n_query,
            voxels_per_episode=self.voxels_per_episode, voxel_weights=voxel_weights, episodes=episodes,
        )  # fmt: skip
        summary = {
            "n_subjects": len(data),
            "n_images": [len(x) for x, _ in data],
            "n_voxels": [int(y.shape[1]) for _, y in data],
            "k_range": [self.k_min, self.k_max],
            "n_query": self.n_query,
        }
        task = BraInCoRLTask(model, dataset, weight_decay=self.weight_decay, summary=summary)
        train = TrainConfig(
            out_dir, max_steps=steps, batch_size=self.episodes_per_step, lr=self.lr,
            warmup_steps=min(self.warmup_steps, steps - 1), clip_grad_norm=self.clip_grad_norm, amp=self.amp,
            checkpoint_every=0, seed=self.seed, device=self.device, progress=self.progress, tensorboard=False,
        )  # fmt: skip
        result = Trainer(task, train).fit(resume=resume)
        if not result.finished:
            raise CheckpointError(f"{out_dir}: meta-training stopped before writing the final model")
        model.eval()
        self.trained, self.run_dir_, self.train_metrics_ = True, Path(out_dir), result.last_metrics
        return self

    @classmethod
    def load(cls, run_dir: str | Path, **settings: Any) -> InContextEncoder:
        """An encoder around the model of a meta-training run folder (or checkpoint folder)."""
        model = load_braincorl(run_dir)
        path = Path(run_dir)
        path = path / "final" if (path / "final" / "config.json").is_file() else path
        out = cls(model.config, **settings)
        out.model_ = model.to(_device(out.device))
        out.trained = bool(read_checkpoint_config(path)["trained"])
        out.run_dir_ = Path(run_dir)
        return out

    # -- in-context fitting -------------------------------------------------------------------------------
    def fit(self, embeddings: np.ndarray, responses: np.ndarray, layout: VoxelLayout | None = None
            ) -> InContextEncoder:
        """Build every voxel's linear encoder from k support pairs (no gradient step).

        With the Bayes path and ``prior_adapt_iters``, a copy of the model's prior first takes EM steps over these
        voxels (empirical Bayes from the same k images); ``prior_evidence_`` records the evidence it climbed.
        Given the voxels' ``layout`` and a ``pooling`` setting, the encoders are then pooled over neighbouring
        voxels with the kernel width and mix that cross-validation over the k images picks (``pooling_``).

        Parameters
        ----------
        embeddings : ``(k, D)`` support image embeddings.
        responses : ``(k, V)`` responses; NaN marks a pair missing for that voxel.
        layout : where the V voxels sit (and their ROI groups), for spatial pooling.
        """
        x = np.asarray(embeddings, dtype=np.float32)
        y = np.asarray(responses, dtype=np.float32)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 1:
            raise InvalidInputError(f"embeddings {x.shape} and responses {y.shape} must be (k, D) and (k, V)", None)
        if not np.isfinite(x).all():
            raise InvalidInputError("embeddings contain NaN/inf", None)
        if layout is not None and layout.n_voxels != y.shape[1]:
            raise InvalidInputError(f"layout has {layout.n_voxels} voxels, responses {y.shape[1]}", None)
        if not self.trained:
            warnings.warn(
                "BraInCoRL is UNTRAINED (random weights): its encoders are meaningless until meta_train() or load()",
                UserWarning, stacklevel=2)  # fmt: skip
        weights, bias, self.fitted_model_, self.prior_evidence_ = self._encoders(x, y)
        self.support_embeddings_, self.support_responses_ = x, y
        self.pooling_: dict[str, Any] | None = None
        if layout is not None and self.pooling is not None:
            (sigma, mix), table = self.pooling.select(lambda xs, ys: self._encoders(xs, ys)[:2], x, y, layout)
            weights, bias = pool_weights(weights, bias, x, y, layout, sigma, mix)
            self.pooling_ = {"sigma_mm": sigma, "mix": mix, "folds": self.pooling.folds, "candidates": table}
        self.weights_ = np.asarray(weights, dtype=np.float32)  # (D, V)
        self.bias_ = np.asarray(bias, dtype=np.float32)  # (V,)
        return self

    def _encoders(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, BraInCoRL, list[float]]:
        """Unpooled encoders from support pairs ``x`` (k, D), ``y`` (k, V), touching no fitted state.

        Returns ``(weights (D, V), bias (V,), the model with its prior adapted to these voxels, the evidence
        its EM climbed)``.
        """
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        model, evidence = self._adapted_model(self._model(x.shape[1]).eval(), x, y)
        weights, bias = [], []
        chunks = range(0, y.shape[1], self.voxel_batch)
        for start in progress_bar(chunks, disable=not self.progress, desc="in-context fit", unit="chunk"):
            w, b = self._run(model, x, y[:, start : start + self.voxel_batch], "forward")
            weights.append(w)
            bias.append(b)
        return np.concatenate(weights, axis=0).T.copy(), np.concatenate(bias), model, evidence

    def _adapted_model(self, model: BraInCoRL, x: np.ndarray, y: np.ndarray) -> tuple[BraInCoRL, list[float]]:
        """The model whose Bayes-path prior took ``prior_adapt_iters`` EM steps over this subject's voxels, and
        the evidence those steps climbed.

        Voxels with a finite, non-constant response to every support image share the support set, so together
        they re-estimate the mixture (see :meth:`MixturePrior.adapt`); the stored model is left unchanged.
        Returns ``(model, [])`` itself when the path is off or fewer than 2 images or voxels qualify.
        """
        iters = model.config.prior_adapt_iters
        if model.prior is None or not iters or len(x) < 2:
            return model, []
        std = y.std(axis=0)
        usable = np.isfinite(y).all(axis=0) & (std > model.config.eps)
        if usable.sum() < 2:
            return model, []
        z = (y[:, usable] - y[:, usable].mean(axis=0)) / std[usable]  # (k, V') standardised as the model does
        centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)  # (k, D)
        device = next(model.parameters()).device
        adapted = copy.deepcopy(model)
        evidence = adapted.prior.adapt(torch.from_numpy(centred).to(device),
                                       torch.from_numpy(z.astype(np.float64)).to(device), iters)
        return adapted, evidence

    @torch.no_grad()
    def _run(self, model: BraInCoRL, embeddings: np.ndarray, y: np.ndarray, method: str) -> Any:
        """Run ``model.<method>`` on support images ``embeddings`` (k, D) and responses ``y`` (k, n) of n voxels."""
        device = next(model.parameters()).device
        x = torch.from_numpy(np.asarray(embeddings, np.float32)).to(device)  # (k, D)
        resp = torch.from_numpy(np.ascontiguousarray(y.T)).to(device)  # (n, k)
        mask = torch.isfinite(resp)
        if not bool(mask.any(dim=1).all()):
            raise InvalidInputError("some voxel has no finite response in the support set", None)
        out = getattr(model, method)(x.expand(len(resp), *x.shape), resp.nan_to_num(0.0), mask)
        if isinstance(out, tuple):
            return tuple(t.float().cpu().numpy() for t in out)
        return out.float().cpu().numpy()

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("InContextEncoder is not fitted; call fit(embeddings, responses) first")

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Predicted responses ``(m, V)`` float32 for image embeddings ``(m, D)``."""
        self._check_fitted()
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.weights_.shape[0]:
            raise InvalidInputError(f"embeddings must be (m, {self.weights_.shape[0]}), got {x.shape}", None)
        return x @ self.weights_ + self.bias_

    def selectivity(self, text_features: np.ndarray) -> np.ndarray:
        """Predicted response ``(M, V)`` of every voxel to M text queries mapped into the embedding space."""
        return self.predict(text_features)

    def support_attention(self, voxels: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(len(voxels), k)``: the share of register attention each support image gets, per voxel.

        Averaged over registers, heads and blocks (see :meth:`BraInCoRL.support_attention`); each row sums
        to 1, and support images missing (NaN) for a voxel get exactly 0.
        """
        self._check_fitted()
        idx = np.asarray(voxels, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.bias_.size or idx.max() >= self.bias_.size):
            raise InvalidInputError(f"voxel indices outside [0, {self.bias_.size})", None)
        return self._run(self.fitted_model_, self.support_embeddings_, self.support_responses_[:, idx],
                         "support_attention")


def in_context_curve(
    encoder: InContextEncoder,
    embeddings: np.ndarray,
    train_ids: np.ndarray,
    train_responses: np.ndarray,
    test_ids: np.ndarray,
    test_responses: np.ndarray,
    ks: Sequence[int] = (10, 25, 50, 100, 200, 500),
    seeds: int = 3,
    *,
    ridge: Callable[[], Any] | None = None,
    name: str = "braincorl",
    layout: VoxelLayout | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Test accuracy of in-context encoders against ridge as the number of support images k grows.

    For each k (capped at the number of train images, duplicates dropped) and each seed, k train images
    are drawn; BraInCoRL (``encoder.fit``, which replaces its fitted state) and a ridge encoder are fit on
    those SAME images and scored on the test images; a ridge encoder fit on all train images is the ceiling.

    Parameters
    ----------
    embeddings : ``(N_img, D)``; ``train_ids`` ``(n,)`` / ``test_ids`` ``(t,)`` index it.
    train_responses, test_responses : ``(n, V)`` and ``(t, V)``.
    ridge : factory of the ridge encoder (default ``RidgeEncoder()``); ridge needs k >= 3, else NaN.
    name : prefix of the in-context encoder's columns (``braincorl``; ``prior`` for the Gaussian prior).
    layout : the voxels' layout, passed to ``encoder.fit`` (spatial pooling) when given.

    Returns
    -------
    One dict per k: ``k``, ``seeds``, ``{name}_r``, ``{name}_r_sd`` (over seeds), ``{name}_ev``,
    ``ridge_r``, ``ridge_ev``, ``ridge_full_r``, ``ridge_full_ev`` (means over voxels, then seeds),
    ``n_train``, ``{name}_status`` ("trained" or "UNTRAINED") and, when the encoder pooled spatially,
    ``{name}_pooling``: the kernel width x mix it chose per seed.
    """
    from neuroattn.encode.metrics import explained_variance, voxelwise_pearson
    from neuroattn.encode.ridge_encoder import RidgeEncoder

    make_ridge = ridge or RidgeEncoder
    emb = np.asarray(embeddings, dtype=np.float32)
    x_train, x_test = emb[np.asarray(train_ids)], emb[np.asarray(test_ids)]
    y_train, y_test = np.asarray(train_responses), np.asarray(test_responses)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test) or y_train.shape[1] != y_test.shape[1]:
        raise InvalidInputError("ids and responses disagree in length or voxel count", None)
    if seeds < 1:
        raise ConfigError(f"'seeds' must be >= 1. {seeds!r} was provided.")

    def score(pred: np.ndarray) -> tuple[float, float]:
        return float(voxelwise_pearson(pred, y_test).mean()), float(explained_variance(pred, y_test).mean())

    full_r, full_ev = score(make_ridge().fit(x_train, y_train).predict(x_test))
    n = len(x_train)
    rows = []
    for k in progress_bar(sorted({min(int(k), n) for k in ks}), disable=not progress, desc="k", unit="k"):
        ours, theirs, pooling = [], [], []
        for seed in range(seeds):
            pick = np.random.default_rng(seed).choice(n, size=k, replace=False)
            fitted = encoder.fit(x_train[pick], y_train[pick], **({} if layout is None else {"layout": layout}))
            ours.append(score(fitted.predict(x_test)))
            chosen = getattr(fitted, "pooling_", None)
            if chosen:
                pooling.append(f"{chosen['sigma_mm']:g}mm x {chosen['mix']:g}")
            theirs.append(score(make_ridge().fit(x_train[pick], y_train[pick]).predict(x_test)) if k >= 3 else
                          (math.nan, math.nan))  # fmt: skip
        ours_a, theirs_a = np.array(ours), np.array(theirs)
        rows.append({
            "k": k, "seeds": seeds,
            f"{name}_r": float(ours_a[:, 0].mean()), f"{name}_r_sd": float(ours_a[:, 0].std()),
            f"{name}_ev": float(ours_a[:, 1].mean()),
            "ridge_r": float(theirs_a[:, 0].mean()), "ridge_ev": float(theirs_a[:, 1].mean()),
            "ridge_full_r": full_r, "ridge_full_ev": full_ev, "n_train": n, f"{name}_status": encoder.status,
        } | ({f"{name}_pooling": "; ".join(pooling)} if pooling else {}))  # fmt: skip
    return rows
