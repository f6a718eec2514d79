"""BrainMAE: ROI x segment masked autoencoding with region-aware graph attention and a temporal transformer."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from neuroattn.attention import Dense
from neuroattn.configs import dataclass_from_dict
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.fmri.probe import ProbeResult
from neuroattn.fmri.roi_series import fc_features, segment_frames, standardize_rois
from neuroattn.io.checkpoints import load_model
from neuroattn.nn.transformer import Mlp, TransformerBlock
from neuroattn.train import LossItem, TrainConfig, Trainer, TrainResult, adam_per_module

VARIANTS = ("static", "adaptive")
MODEL_CLASS = "BrainMAE"


@dataclass
class BrainMAEConfig:
    """BrainMAE architecture and pretraining objective.

    Published: Schaefer-100 ROIs, 15 s segments, a static graph of 3 blocks (the adaptive variant adds 2
    self-attention blocks), loss 0.75 masked + 0.25 unmasked MSE. Widths, the temporal depth, the window
    length and the mask ratio are not in our notes of the paper; the defaults below are our choices.
    """

    n_rois: int = 100  # R, Schaefer-100 in the paper
    tr: float = 0.72  # seconds per frame (HCP)
    segment_seconds: float = 15.0  # seconds per token; frames = round(segment_seconds / tr)
    n_segments: int = 8  # segments per training window (2 min at 15 s)
    dim: int = 256  # token width d (also the width of the ROI embeddings E)
    heads: int = 8  # heads of the adaptive and temporal self-attention
    graph_blocks: int = 3  # region-aware graph attention blocks
    variant: str = "static"  # "static" (graph blocks only) | "adaptive" (plus self-attention blocks over ROIs)
    adaptive_blocks: int = 2  # self-attention blocks of the adaptive variant
    temporal_blocks: int = 2  # transformer blocks over the ROI-pooled segment states
    mlp_ratio: float = 4.0
    roi_init_std: float = 1.0  # std of E at init; E Eᵀ/√d then has unit-scale logits, so A starts non-uniform
    mask_ratio: float = 0.5  # fraction of ROI x segment tokens masked per window
    masked_weight: float = 0.75  # loss = w * masked MSE + (1 - w) * unmasked MSE
    num_outputs: int = 0  # fine-tuning head outputs (classes, or 1 for regression); 0 = no head

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"'variant' must be one of {list(VARIANTS)}. {self.variant!r} was provided.")
        if self.n_rois < 2 or self.n_segments < 1 or self.graph_blocks < 1:
            raise ConfigError("BrainMAE needs n_rois >= 2, n_segments >= 1 and graph_blocks >= 1")
        if self.dim % self.heads:
            raise ConfigError(f"'dim' ({self.dim}) must be divisible by 'heads' ({self.heads})")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"'mask_ratio' must be in (0, 1). {self.mask_ratio} was provided.")
        if not 0.0 <= self.masked_weight <= 1.0:
            raise ConfigError(f"'masked_weight' must be in [0, 1]. {self.masked_weight} was provided.")
        segment_frames(self.segment_seconds, self.tr)  # validates both

    @property
    def segment_frames(self) -> int:
        """Frames per segment token L."""
        return segment_frames(self.segment_seconds, self.tr)

    @property
    def window_frames(self) -> int:
        """Frames per training window, ``n_segments * segment_frames``."""
        return self.n_segments * self.segment_frames

    @classmethod
    def tiny(cls, **overrides: Any) -> BrainMAEConfig:
        """CPU test size: 24 ROIs, 4-frame segments at TR 1 s, 8 segments, width 32."""
        base = dict(n_rois=24, tr=1.0, segment_seconds=4.0, n_segments=8, dim=32, heads=4, graph_blocks=3,
                    adaptive_blocks=1, temporal_blocks=1, mlp_ratio=2.0)  # fmt: skip
        return cls(**(base | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BrainMAEConfig:
        return dataclass_from_dict(cls, data)


def region_graph(roi_embed: Tensor) -> Tensor:
    """Region-aware attention ``A = softmax(E Eᵀ / √d)`` without self-loops: ``(R, d)`` → ``(R, R)``.

    The diagonal logits are set to ``-inf`` before the softmax, so ``A[r, r] == 0`` exactly and every row
    sums to 1 over the other ROIs: a ROI is described by the regions it is tied to, never by itself.
    """
    r, d = roi_embed.shape
    logits = roi_embed @ roi_embed.T / math.sqrt(d)  # (R, R)
    eye = torch.eye(r, dtype=torch.bool, device=roi_embed.device)
    return torch.softmax(logits.masked_fill(eye, float("-inf")), dim=-1)


class GraphAttentionBlock(nn.Module):
    """Pre-LN block whose token mixing is the fixed graph operator ``A V(h)`` over ROIs, then an MLP.

    This is deliberately not query-key attention: the weights ``A`` come from the ROI embeddings alone
    (shared by every sample and segment), so there is no ``QKᵀ`` to dispatch through ``attend``.
    """

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.value, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, h: Tensor, graph: Tensor) -> Tensor:
        """``h`` ``(B, R, d)``, ``graph`` ``(R, R)`` → ``(B, R, d)``."""
        mixed = torch.einsum("rk,bkd->brd", graph.to(h.dtype), self.value(self.norm1(h)))  # (B, R, d)
        h = h + self.proj(mixed)
        return h + self.mlp(self.norm2(h))


class BrainMAE(nn.Module):
    """BrainMAE encoder, reconstruction decoder and optional fine-tuning head.

    Input windows are ROI series ``(B, T, R)`` with ``T = S * L`` (``S <= n_segments`` segments of ``L``
    frames). Each ROI x segment becomes a token ``W x_{r,s} + E_r``; masked tokens are replaced by a learned
    mask token (plus ``E_r``). Per segment, graph blocks (and, adaptive, self-attention blocks) mix ROIs;
    the ROI-mean of each segment goes through a temporal transformer over segments. The decoder reads each
    token's ROI state plus its segment's temporal state back to ``L`` samples.
    """

    def __init__(self, config: BrainMAEConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.dim
        self.roi_embed = nn.Parameter(torch.randn(c.n_rois, d) * c.roi_init_std)  # E (R, d)
        self.segment_embed = nn.Linear(c.segment_frames, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.graph_blocks = nn.ModuleList(GraphAttentionBlock(d, c.mlp_ratio) for _ in range(c.graph_blocks))
        n_adaptive = c.adaptive_blocks if c.variant == "adaptive" else 0
        self.adaptive_blocks = nn.ModuleList(
            TransformerBlock(d, c.heads, Dense(), mlp_ratio=c.mlp_ratio) for _ in range(n_adaptive)
        )
        self.roi_norm = nn.LayerNorm(d)
        self.temporal_pos = nn.Parameter(torch.randn(c.n_segments, d) * 0.02)
        self.temporal_blocks = nn.ModuleList(
            TransformerBlock(d, c.heads, Dense(), mlp_ratio=c.mlp_ratio) for _ in range(c.temporal_blocks)
        )
        self.temporal_norm = nn.LayerNorm(d)
        self.decoder = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, c.segment_frames))
        self.head = nn.Linear(d, c.num_outputs) if c.num_outputs > 0 else None
        nn.init.normal_(self.mask_token, std=0.02)

    def graph(self) -> Tensor:
        """The region-aware attention ``(R, R)`` of the current ROI embeddings."""
        return region_graph(self.roi_embed)

    def segments(self, x: Tensor) -> Tensor:
        """Cut windows ``(B, T, R)`` into segment tokens' samples ``(B, S, R, L)``."""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.n_rois:
            raise InvalidInputError(f"expected ROI windows (B, T, R={c.n_rois}), got shape {tuple(x.shape)}")
        length = c.segment_frames
        n_seg = x.shape[1] // length
        if x.shape[1] % length or not 1 <= n_seg <= c.n_segments:
            raise InvalidInputError(
                f"a window must hold 1 to {c.n_segments} whole {length}-frame segments, got {x.shape[1]} frames"
            )
        return x.reshape(x.shape[0], n_seg, length, c.n_rois).transpose(2, 3)  # (B, S, R, L)

    def encode(self, seg: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Token states ``(B, S, R, d)`` and temporal states ``(B, S, d)`` of segments ``(B, S, R, L)``.

        ``mask`` ``(B, S, R)`` bool, True = the token's samples are hidden from the encoder.
        """
        b, s, r, _ = seg.shape
        tokens = self.segment_embed(seg)  # (B, S, R, d)
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        h = (tokens + self.roi_embed).reshape(b * s, r, -1)  # (B*S, R, d)
        graph = self.graph()
        for block in self.graph_blocks:
            h = block(h, graph)
        for block in self.adaptive_blocks:
            h = block(h)
        h = self.roi_norm(h).reshape(b, s, r, -1)  # (B, S, R, d)
        t = h.mean(dim=2) + self.temporal_pos[:s]  # (B, S, d)
        for block in self.temporal_blocks:
            t = block(t)
        return h, self.temporal_norm(t)

    def reconstruct(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Predicted samples of every token ``(B, S, R, L)`` from windows ``(B, T, R)``."""
        h, t = self.encode(self.segments(x), mask)
        return self.decoder(h + t[:, :, None])  # (B, S, R, L)

    def forward_features(self, x: Tensor) -> Tensor:
        """Per-window embedding ``(B, d)``: the mean temporal state of an unmasked window ``(B, T, R)``."""
        _, t = self.encode(self.segments(x))
        return t.mean(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """Fine-tuning head on features ``(B, d)`` → ``(B, num_outputs)``."""
        if self.head is None:
            raise ConfigError("this BrainMAE has no head; build it with num_outputs > 0 to fine-tune")
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        """Head outputs ``(B, num_outputs)`` of windows ``(B, T, R)``."""
        return self.forward_head(self.forward_features(x))

    def random_mask(self, batch: int, n_segments: int, generator: torch.Generator | None = None) -> Tensor:
        """Exactly ``round(mask_ratio * S * R)`` masked tokens per window: bool ``(B, S, R)``."""
        n_tokens = n_segments * self.config.n_rois
        n_masked = min(n_tokens - 1, max(1, round(self.config.mask_ratio * n_tokens)))
        noise = torch.rand(batch, n_tokens, generator=generator, device=generator.device if generator else None)
        rank = noise.argsort(dim=1).argsort(dim=1)  # (B, S*R) random rank of each token
        return (rank < n_masked).reshape(batch, n_segments, self.config.n_rois).to(self.roi_embed.device)

    def pretrain_loss(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``w * MSE(masked tokens) + (1 - w) * MSE(unmasked tokens)`` on windows ``(B, T, R)``."""
        seg = self.segments(x)  # (B, S, R, L)
        if mask is None:
            mask = self.random_mask(seg.shape[0], seg.shape[1])
        h, t = self.encode(seg, mask)
        pred = self.decoder(h + t[:, :, None])  # (B, S, R, L)
        err = (pred.float() - seg.float()).pow(2).mean(dim=-1)  # (B, S, R)
        masked = err[mask].mean()
        unmasked = err[~mask].mean() if bool((~mask).any()) else err.new_zeros(())
        w = self.config.masked_weight
        loss = w * masked + (1 - w) * unmasked
        return loss, {"mse/masked": masked.detach(), "mse/unmasked": unmasked.detach()}


# -- data, pretraining and loading ----------------------------------------------------------------------


def _check_runs(runs: Sequence[np.ndarray], n_rois: int, min_frames: int) -> list[np.ndarray]:
    out = []
    for i, run in enumerate(runs):
        x = np.asarray(run, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != n_rois:
            raise InvalidInputError(f"run {i}: expected ROI series (T, R={n_rois}), got shape {x.shape}")
        if x.shape[0] < min_frames:
            raise InvalidInputError(f"run {i}: {x.shape[0]} frames is shorter than {min_frames} frames needed")
        out.append(x)
    if not out:
        raise InvalidInputError("no runs were given")
    return out


class RoiWindowDataset(Dataset):
    """Windows of ``window_frames`` frames of per-ROI standardized runs ``(T, R)``.

    Item ``i`` is a window of run ``i mod n_runs`` starting at a frame drawn from the global torch stream
    (so a resumed trainer run reproduces it); an epoch holds ``max(1, T // window_frames)`` windows per run.
    ``labels`` (one per run) make items ``(window, label)`` pairs for fine-tuning.
    """

    def __init__(
        self, runs: Sequence[np.ndarray], window_frames: int, *, labels: Sequence[float] | None = None,
        standardize: bool = True,
    ) -> None:  # fmt: skip
        runs = _check_runs(runs, np.asarray(runs[0]).shape[-1] if len(runs) else 0, window_frames)
        self.runs = [torch.from_numpy(standardize_rois(r) if standardize else r) for r in runs]
        self.window_frames = window_frames
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels))
        if self.labels is not None and len(self.labels) != len(self.runs):
            raise InvalidInputError(f"{len(self.labels)} labels for {len(self.runs)} runs")
        per_run = [max(1, r.shape[0] // window_frames) for r in self.runs]
        self.index = [i for i, n in enumerate(per_run) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, Tensor]:
        run = self.runs[self.index[i]]
        start = int(torch.randint(run.shape[0] - self.window_frames + 1, ()))
        window = run[start : start + self.window_frames]  # (T_w, R)
        return window if self.labels is None else (window, self.labels[self.index[i]])


class BrainMAEPretrainTask:
    """:class:`~neuroattn.train.TrainTask` of BrainMAE masked autoencoding (one AdamW optimizer, "model")."""

    model_class = MODEL_CLASS

    def __init__(self, model: BrainMAE, dataset: RoiWindowDataset, *, weight_decay: float = 0.05) -> None:
        self.model, self.dataset, self.weight_decay = model, dataset, weight_decay

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, betas=(0.9, 0.95), weight_decay=self.weight_decay, decoupled=True)

    def train_dataset(self) -> Dataset:
        return self.dataset

    def losses(self, batch: Tensor, step: int) -> Iterator[LossItem]:
        loss, metrics = self.model.pretrain_loss(batch)
        yield "model", loss, metrics

    def model_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def data_summary(self) -> dict[str, Any]:
        frames = [int(r.shape[0]) for r in self.dataset.runs]
        return {"n_runs": len(frames), "total_frames": sum(frames), "window_frames": self.dataset.window_frames}


class BrainMAEFinetuneTask(BrainMAEPretrainTask):
    """Supervised fine-tuning of the encoder and head: cross-entropy (classification) or MSE (regression)."""

    def __init__(self, model: BrainMAE, dataset: RoiWindowDataset, *, task: str = "classification",
                 weight_decay: float = 0.05) -> None:  # fmt: skip
        if task not in ("classification", "regression"):
            raise ConfigError(f"'task' must be one of ['classification', 'regression']. {task!r} was provided.")
        if model.head is None or dataset.labels is None:
            raise ConfigError("fine-tuning needs a model with num_outputs > 0 and a dataset with labels")
        super().__init__(model, dataset, weight_decay=weight_decay)
        self.task = task

    def losses(self, batch: tuple[Tensor, Tensor], step: int) -> Iterator[LossItem]:
        x, y = batch
        out = self.model(x)  # (B, num_outputs)
        if self.task == "classification":
            loss = F.cross_entropy(out.float(), y.long())
            yield "model", loss, {"accuracy": (out.argmax(-1) == y).float().mean()}
        else:
            yield "model", F.mse_loss(out.float()[:, 0], y.float()), {}


def pretrain_brainmae(
    runs: Sequence[np.ndarray], config: BrainMAEConfig, train: TrainConfig, *, resume: bool = False
) -> TrainResult:
    """Masked-autoencoder pretraining on ROI series ``(T, R)`` through the shared :class:`Trainer`.

    The final model lands in ``train.out_dir / "final"`` (load it with :func:`load_brainmae`); ``resume``
    continues from the newest checkpoint in ``train.out_dir``.
    """
    runs = _check_runs(runs, config.n_rois, config.window_frames)
    torch.manual_seed(train.seed)  # the model's initial weights follow the run's seed
    model = BrainMAE(config)
    return Trainer(BrainMAEPretrainTask(model, RoiWindowDataset(runs, config.window_frames)), train).fit(resume=resume)


def finetune_brainmae(
    model: BrainMAE, runs: Sequence[np.ndarray], targets: Sequence[float], train: TrainConfig,
    *, task: str = "classification",
) -> TrainResult:  # fmt: skip
    """Fine-tune a (pretrained) model with a head on one target per run, through the shared :class:`Trainer`."""
    runs = _check_runs(runs, model.config.n_rois, model.config.window_frames)
    dataset = RoiWindowDataset(runs, model.config.window_frames, labels=targets)
    return Trainer(BrainMAEFinetuneTask(model, dataset, task=task), train).fit()


def load_brainmae(run_or_checkpoint_dir: str | Path) -> BrainMAE:
    """Rebuild a BrainMAE from a trainer run folder (its ``final/``) or a checkpoint folder, weights strict."""
    return load_model(run_or_checkpoint_dir, MODEL_CLASS,
                      lambda config: BrainMAE(BrainMAEConfig.from_dict(config)))


@torch.no_grad()
def embed_brainmae(
    model: BrainMAE, runs: Sequence[np.ndarray], *, batch_size: int = 32, standardize: bool = True,
    progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """Subject-level features ``(n_runs, d)``: the mean of :meth:`BrainMAE.forward_features` over the
    non-overlapping whole windows of each run (a run shorter than a window gives one window of its whole
    segments). Deterministic: eval mode, no masking."""
    c = model.config
    runs = _check_runs(runs, c.n_rois, c.segment_frames)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for run in tqdm(runs, disable=not progress, desc="BrainMAE embed", unit="run"):
            x = torch.from_numpy(standardize_rois(run) if standardize else run)  # (T, R)
            length = min(c.window_frames, (x.shape[0] // c.segment_frames) * c.segment_frames)
            n_win = x.shape[0] // length
            windows = x[: n_win * length].reshape(n_win, length, c.n_rois)  # (W, T_w, R)
            feats = [model.forward_features(w.to(device)).float() for w in windows.split(batch_size)]
            out.append(torch.cat(feats).mean(dim=0).cpu().numpy())
    finally:
        model.train(was_training)
    return np.stack(out).astype(np.float32)


# -- baselines ------------------------------------------------------------------------------------------


def svm_fc_baseline(
    runs: Sequence[np.ndarray], labels: Sequence[int], *, groups: Sequence[Any] | None = None, n_folds: int = 5,
    C: float = 1.0, seed: int = 0,
) -> ProbeResult:  # fmt: skip
    """Linear SVM on Fisher-z functional connectivity (upper triangle), grouped stratified K-fold CV.

    The baseline reviewers asked BrainMAE for. ``runs`` are ``(T, R)`` series; returns mean fold accuracy.
    """
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x = np.stack([fc_features(r) for r in runs])  # (N, R(R-1)/2)
    y = np.asarray(labels)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    n_splits = min(n_folds, len(np.unique(g)))
    if n_splits < 2:
        raise ConfigError("the SVM-FC baseline needs at least 2 groups for cross-validation")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = []
    for train, test in splitter.split(x, y, g):
        svm = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=20000)).fit(x[train], y[train])
        scores.append(float((svm.predict(x[test]) == y[test]).mean()))
    _, counts = np.unique(y, return_counts=True)
    return ProbeResult("classification", float(np.mean(scores)), scores, None, float(counts.max() / counts.sum()))


def _frame_rows(seg: np.ndarray, mask: np.ndarray, roi: int) -> tuple[np.ndarray, np.ndarray]:
    """Ridge design for ROI ``roi``'s masked tokens: per frame, the zero-filled values of every ROI, the
    segment's mask indicators and 1; targets are the hidden samples. ``seg`` (N, S, R, L), ``mask`` (N, S, R)."""
    n, s, r, length = seg.shape
    visible = np.where(mask[..., None], 0.0, seg)  # (N, S, R, L)
    feats = np.concatenate(
        [visible.transpose(0, 1, 3, 2), np.broadcast_to(mask[:, :, None, :], (n, s, length, r)),
         np.ones((n, s, length, 1))], axis=-1,
    )  # (N, S, L, 2R + 1)  # fmt: skip
    pick = mask[:, :, roi]  # (N, S)
    return feats[pick].reshape(-1, 2 * r + 1), seg[:, :, roi][pick].reshape(-1)


def masked_reconstruction_baselines(
    train_seg: np.ndarray, test_seg: np.ndarray, test_mask: np.ndarray, *, mask_ratio: float, alpha: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """MSE over the masked samples of ``test_seg`` ``(M, S, R, L)`` under ``test_mask`` ``(M, S, R)`` of:

    - ``roi_mean``: each ROI's mean over the training segments ``train_seg`` ``(N, S, R, L)``;
    - ``ridge``: per ROI, a ridge map (penalty ``alpha``) from the same frame's visible ROI values (masked ones
      zero-filled), the segment's mask indicators and an intercept, fitted on the training windows under
      random masks of ``mask_ratio`` -- a linear model seeing what the encoder sees, frame by frame.
    """
    rng = np.random.default_rng(seed)
    n, s, r, _ = train_seg.shape
    k = min(s * r - 1, max(1, round(mask_ratio * s * r)))
    ranks = rng.random((n, s * r)).argsort(axis=1).argsort(axis=1)
    train_mask = (ranks < k).reshape(n, s, r)
    err_mean, err_ridge, count = 0.0, 0.0, 0
    means = train_seg.mean(axis=(0, 1, 3))  # (R,)
    for roi in range(r):
        a, b = _frame_rows(train_seg.astype(np.float64), train_mask, roi)
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ b)
        a_test, b_test = _frame_rows(test_seg.astype(np.float64), test_mask, roi)
        err_ridge += float(((a_test @ w - b_test) ** 2).sum())
        err_mean += float(((means[roi] - b_test) ** 2).sum())
        count += b_test.size
    return {"roi_mean": err_mean / count, "ridge": err_ridge / count}


__all__ = [
    "BrainMAE",
    "BrainMAEConfig",
    "BrainMAEFinetuneTask",
    "BrainMAEPretrainTask",
    "GraphAttentionBlock",
    "RoiWindowDataset",
    "embed_brainmae",
    "finetune_brainmae",
    "load_brainmae",
    "masked_reconstruction_baselines",
    "pretrain_brainmae",
    "region_graph",
    "svm_fc_baseline",
]
