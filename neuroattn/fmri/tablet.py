"""TABLeT: a pre-LN transformer over autoencoder tokens of fMRI frames, masked-token pretraining and task heads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
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
from neuroattn.fmri.tablet_tokens import (
    TabletTokenizer,
    TabletTokenizerConfig,
    TokenCache,
    TokenWindows,
    cut_window,
    tokenize_runs,
    window_starts,
)
from neuroattn.io.checkpoints import load_model
from neuroattn.nn.transformer import TransformerBlock
from neuroattn.train import LossItem, TrainConfig, Trainer, TrainResult, adam_per_module

POS_ENCODINGS = ("none", "rope1d", "factorized")
POOLINGS = ("cls", "mean")
HEAD_TASKS = ("classification", "regression")


@dataclass
class TabletConfig:
    """Architecture and pretraining knobs; the defaults are the released model (d 896, 12 layers, 14/2 heads)."""

    tokenizer: TabletTokenizerConfig = field(default_factory=TabletTokenizerConfig)
    d_model: int = 896  # token width inside the encoder
    depth: int = 12  # transformer blocks
    heads: int = 14  # query heads
    kv_heads: int = 2  # key/value heads (grouped-query attention)
    mlp_dim: int = 4864  # hidden width of each block's GELU MLP
    window: int = 256  # frames per sample (T); 256 x 27 = 6,912 tokens at the published sizes
    pos_encoding: str = "none"  # "none" | "rope1d" | "factorized"; the released code runs without any (see PAPERS)
    pooling: str = "cls"  # "cls" | "mean" (over real tokens) for forward_features
    mask_ratio: float = 0.5  # share of real tokens masked in pretraining (not published)
    drop_path: float = 0.0  # stochastic depth of the last block (linear from 0)
    qk_norm: bool = False  # LayerNorm on queries and keys per head

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, dict):
            self.tokenizer = TabletTokenizerConfig.from_dict(self.tokenizer)
        if self.pos_encoding not in POS_ENCODINGS:
            raise ConfigError(
                f"'pos_encoding' must be one of {list(POS_ENCODINGS)}. {self.pos_encoding!r} was provided."
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"'pooling' must be one of {list(POOLINGS)}. {self.pooling!r} was provided.")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"'mask_ratio' must be in (0, 1). {self.mask_ratio!r} was provided.")
        if self.d_model % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"d_model ({self.d_model}) must divide by heads ({self.heads}), and heads by kv_heads "
                              f"({self.kv_heads})")
        if self.pos_encoding == "rope1d" and (self.d_model // self.heads) % 2:
            raise ConfigError(f"'rope1d' needs an even head width; d_model / heads = {self.d_model // self.heads}")
        for name in ("depth", "window", "mlp_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {getattr(self, name)!r} was provided.")

    @classmethod
    def tiny(cls, **overrides: Any) -> TabletConfig:
        """CPU test size: 16³ cube, 8 tokens x 96 features per frame, d 32, 2 layers, 16-frame windows."""
        base = {"tokenizer": TabletTokenizerConfig.tiny(), "d_model": 32, "depth": 2, "heads": 4, "kv_heads": 2,
                "mlp_dim": 64, "window": 16, "pos_encoding": "factorized"}
        return cls(**(base | overrides))

    @property
    def n_cells(self) -> int:
        return self.tokenizer.n_cells

    @property
    def token_dim(self) -> int:
        return self.tokenizer.token_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabletConfig:
        return dataclass_from_dict(cls, data)


class Tablet(nn.Module):
    """The TABLeT encoder: ``LayerNorm(D) → Linear → d_model`` per token, CLS, pre-LN blocks, final LayerNorm.

    The sequence is the ``T x C`` tokens of a window, frame-major (all cells of frame 0, then frame 1, ...), after
    the CLS token. Padding frames (``frame_mask`` False) are never attended to and never pooled, so they leave
    every real output unchanged. ``mask_token`` and ``mtm_decoder`` serve masked-token pretraining; with
    ``pos_encoding="none"`` all masked tokens of a window are indistinguishable, so their reconstructions coincide.
    """

    def __init__(self, config: TabletConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        self.input_norm = nn.LayerNorm(cfg.token_dim)
        self.input_proj = nn.Linear(cfg.token_dim, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(d))
        if cfg.pos_encoding == "factorized":
            self.time_embed = nn.Parameter(torch.zeros(cfg.window, d))
            self.cell_embed = nn.Parameter(torch.zeros(cfg.n_cells, d))
        rope = "1d" if cfg.pos_encoding == "rope1d" else None  # raster positions over [CLS, tokens...]
        rates = np.linspace(0.0, cfg.drop_path, cfg.depth) if cfg.depth > 1 else [cfg.drop_path]
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.heads, Dense(), mlp_ratio=cfg.mlp_dim / d, kv_heads=cfg.kv_heads, rope=rope,
                             qk_norm=cfg.qk_norm, drop_path=float(rate))
            for rate in rates
        )
        self.norm = nn.LayerNorm(d)
        self.mtm_decoder = nn.Linear(d, cfg.token_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.mask_token):
            nn.init.trunc_normal_(p, std=0.02)
        if self.config.pos_encoding == "factorized":
            nn.init.trunc_normal_(self.time_embed, std=0.02)
            nn.init.trunc_normal_(self.cell_embed, std=0.02)

    def _check(self, tokens: Tensor, frame_mask: Tensor | None) -> Tensor:
        cfg = self.config
        if tokens.ndim != 4 or tuple(tokens.shape[2:]) != (cfg.n_cells, cfg.token_dim):
            raise InvalidInputError(f"tokens must be (B, T, {cfg.n_cells}, {cfg.token_dim}); got {tuple(tokens.shape)}")
        if cfg.pos_encoding == "factorized" and tokens.shape[1] > cfg.window:
            raise InvalidInputError(f"{tokens.shape[1]} frames exceed the learned time embedding ({cfg.window})")
        if frame_mask is None:
            return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if frame_mask.shape != tokens.shape[:2] or not bool(frame_mask.any(dim=1).all()):
            raise InvalidInputError(f"frame_mask must be (B, T) = {tuple(tokens.shape[:2])} with a real frame per row")
        return frame_mask.bool()

    def encode(self, tokens: Tensor, frame_mask: Tensor | None = None, token_mask: Tensor | None = None) -> Tensor:
        """Run the encoder.

        Parameters
        ----------
        tokens : ``(B, T, C, D)`` frame tokens.
        frame_mask : bool ``(B, T)``, True = real frame; padding frames must come after the real ones for
            ``rope1d`` and ``factorized`` positions to match the unpadded run.
        token_mask : bool ``(B, T, C)``, True = replace that token by the mask token.

        Returns
        -------
        Tensor ``(B, 1 + T C, d_model)``: CLS first, then the tokens frame-major.
        """
        frame_mask = self._check(tokens, frame_mask)
        b, t, c, _ = tokens.shape
        tokens = torch.where(frame_mask[:, :, None, None], tokens, torch.zeros_like(tokens))  # no garbage in pads
        x = self.input_proj(self.input_norm(tokens))  # (B, T, C, d)
        if token_mask is not None:
            x = torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
        if self.config.pos_encoding == "factorized":
            x = x + self.time_embed[:t, None, :] + self.cell_embed[None, :, :]  # (B, T, C, d)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, t * c, -1)], dim=1)  # (B, 1+T*C, d)
        keep = torch.cat([frame_mask.new_ones(b, 1), frame_mask.repeat_interleave(c, dim=1)], dim=1)  # (B, 1+T*C)
        for block in self.blocks:
            x = block(x, key_padding_mask=keep)
        return self.norm(x)

    def pool(self, encoded: Tensor, frame_mask: Tensor | None) -> Tensor:
        """``(B, 1 + T C, d)`` → ``(B, d)``: the CLS output or the mean over real tokens."""
        if self.config.pooling == "cls":
            return encoded[:, 0]
        tokens = encoded[:, 1:]  # (B, T*C, d)
        if frame_mask is None:
            return tokens.mean(dim=1)
        weight = frame_mask.to(tokens.dtype).repeat_interleave(self.config.n_cells, dim=1)[..., None]  # (B, T*C, 1)
        return (tokens * weight).sum(dim=1) / weight.sum(dim=1)

    def forward_features(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """Per-window embedding ``(B, d_model)`` of tokens ``(B, T, C, D)``."""
        return self.pool(self.encode(tokens, frame_mask), frame_mask)

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        return self.forward_features(tokens, frame_mask)

    def forward_mtm(self, tokens: Tensor, token_mask: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """Reconstructions ``(B, T, C, D)`` of every token with ``token_mask`` ``(B, T, C)`` tokens masked."""
        b, t, c, _ = tokens.shape
        encoded = self.encode(tokens, frame_mask, token_mask)[:, 1:]  # (B, T*C, d)
        return self.mtm_decoder(encoded).reshape(b, t, c, -1)  # (B, T, C, D)


# -- masked token modeling --------------------------------------------------------------------------------


def random_token_mask(
    frame_mask: Tensor, n_cells: int, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """Mask ``round(ratio * real tokens)`` (at least 1) random real tokens per sample → bool ``(B, T, C)``."""
    b, t = frame_mask.shape
    real = frame_mask[:, :, None].expand(b, t, n_cells).reshape(b, t * n_cells)  # (B, T*C)
    device = frame_mask.device if generator is None else generator.device
    scores = torch.rand(b, t * n_cells, generator=generator, device=device)
    scores = scores.to(frame_mask.device).masked_fill(~real, 2.0)  # padding sorts last
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, T*C) rank of each token's score
    count = (real.sum(dim=1).float() * ratio).round().clamp_min(1)  # (B,)
    return (ranks < count[:, None]).reshape(b, t, n_cells)


def mtm_loss(model: Tablet, tokens: Tensor, token_mask: Tensor, frame_mask: Tensor | None = None) -> Tensor:
    """Mean squared error of the reconstructions over masked tokens and features only."""
    pred = model.forward_mtm(tokens, token_mask, frame_mask)  # (B, T, C, D)
    err = (pred.float() - tokens.float()).pow(2).mean(dim=-1)  # (B, T, C)
    return err[token_mask].mean()


class TabletPretrainTask:
    """Masked-token modeling for the shared :class:`~neuroattn.train.Trainer` (AdamW, one optimizer "tablet")."""

    model_class = "Tablet"

    def __init__(self, model: Tablet, dataset: TokenWindows, *, weight_decay: float = 0.05,
                 summary: dict[str, Any] | None = None) -> None:
        self.model, self.dataset, self.weight_decay = model, dataset, weight_decay
        self.summary = summary or {}

    def modules(self) -> dict[str, nn.Module]:
        return {"tablet": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, betas=(0.9, 0.95), weight_decay=self.weight_decay, decoupled=True)

    def train_dataset(self) -> Dataset:
        return self.dataset

    def losses(self, batch: dict[str, Tensor], step: int) -> Iterator[LossItem]:
        tokens, frame_mask = batch["tokens"], batch["frame_mask"]
        token_mask = random_token_mask(frame_mask, self.model.config.n_cells, self.model.config.mask_ratio)
        loss = mtm_loss(self.model, tokens, token_mask, frame_mask)
        yield "tablet", loss, {"mtm/masked_share": token_mask.float().mean()}

    def model_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def data_summary(self) -> dict[str, Any]:
        return autoencoder_summary(self.model.config.tokenizer) | self.summary


def autoencoder_summary(config: TabletTokenizerConfig) -> dict[str, Any]:
    """Provenance of the frozen autoencoder, recorded in every output (a random one is marked untrained)."""
    return {
        "autoencoder": config.autoencoder,
        "autoencoder_source": config.autoencoder_path if config.pretrained else "random init",
        "autoencoder_trained": config.pretrained,
    }


def _tokens(runs: Sequence[np.ndarray], config: TabletConfig, tokenizer: TabletTokenizer | None,
            cache: TokenCache | None, progress: bool) -> list[np.ndarray]:
    """Tokens of ``runs`` ``(T, X, Y, Z)``; runs already given as tokens ``(T, C, D)`` pass through."""
    if runs and all(np.ndim(r) == 3 for r in runs):
        return [np.asarray(r, dtype=np.float32) for r in runs]
    tokenizer = tokenizer or TabletTokenizer(config.tokenizer)
    if tokenizer.config != config.tokenizer:
        raise ConfigError("the tokenizer's config differs from the model's tokenizer config")
    return tokenize_runs(tokenizer, runs, cache=cache, progress=progress)


def pretrain_tablet(
    runs: Sequence[np.ndarray],
    config: TabletConfig,
    train: TrainConfig,
    *,
    tokenizer: TabletTokenizer | None = None,
    cache: TokenCache | None = None,
    resume: bool = False,
) -> TrainResult:
    """Masked-token pretraining of a new TABLeT on fMRI runs.

    Parameters
    ----------
    runs : float32 ``(T, X, Y, Z)`` per subject (or their tokens ``(T, C, D)``); windows of ``config.window``
        frames are drawn at random starts.
    config : model and tokenizer configuration.
    train : trainer configuration; the final model lands in ``train.out_dir / "final"``.
    tokenizer, cache : reuse a tokenizer (default: built from ``config.tokenizer``) and a token cache.
    """
    token_runs = _tokens(runs, config, tokenizer, cache, train.progress)
    dataset = TokenWindows(token_runs, config.window, random_start=True)
    summary = {"n_runs": len(token_runs), "frames": int(sum(len(t) for t in token_runs))}
    task = TabletPretrainTask(Tablet(config), dataset, summary=summary)
    return Trainer(task, train).fit(resume=resume)


def load_tablet(run_or_checkpoint_dir: str | Path) -> Tablet:
    """The TABLeT in a checkpoint folder, or in ``<run>/final`` of a training run (strict weights), in eval mode."""
    return load_model(run_or_checkpoint_dir, TabletPretrainTask.model_class,
                      lambda config: Tablet(TabletConfig.from_dict(config)))


def iter_windows(
    token_runs: Sequence[np.ndarray], window: int, *, stride: int | None = None, batch_size: int = 8
) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
    """Batches of every run's tiled windows: ``(run index (b,), tokens (b, window, C, D), frame_mask (b, window))``."""
    items = [(r, s) for r, t in enumerate(token_runs) for s in window_starts(len(t), window, stride)]
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        parts = [cut_window(token_runs[r], s, window) for r, s in chunk]
        yield (np.array([r for r, _ in chunk]), torch.from_numpy(np.stack([p[0] for p in parts])),
               torch.from_numpy(np.stack([p[1] for p in parts])))


def _per_run_mean(model: nn.Module, token_runs: Sequence[np.ndarray], window: int, stride: int | None,
                  batch_size: int, progress: bool, fn: Any) -> np.ndarray:
    """Mean over each run's windows of ``fn(model, tokens, frame_mask)`` ``(b, K)`` → ``(n_runs, K)`` float64."""
    device = next(model.parameters()).device
    sums: np.ndarray | None = None
    counts = np.zeros(len(token_runs))
    batches = iter_windows(token_runs, window, stride=stride, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for runs, tokens, mask in tqdm(batches, disable=not progress, desc="windows", unit="batch"):
                out = fn(model, tokens.to(device), mask.to(device)).double().cpu().numpy()  # (b, K)
                sums = np.zeros((len(token_runs), out.shape[1])) if sums is None else sums
                np.add.at(sums, runs, out)
                np.add.at(counts, runs, 1)
    finally:
        model.train(was_training)
    assert sums is not None
    return sums / counts[:, None]


def embed_tablet(
    model: Tablet,
    runs: Sequence[np.ndarray],
    *,
    tokenizer: TabletTokenizer | None = None,
    cache: TokenCache | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """Subject-level features ``(n_runs, d_model)``: ``forward_features`` averaged over each run's tiled windows.

    ``runs`` are ``(T, X, Y, Z)`` arrays (or tokens ``(T, C, D)``); windows have ``model.config.window`` frames,
    every ``stride`` frames (default: no overlap, plus one window ending at the last frame); a run shorter than
    the window is padded and masked.
    """
    cfg = model.config
    token_runs = _tokens(runs, cfg, tokenizer, cache, progress)
    feats = _per_run_mean(model, token_runs, cfg.window, stride, batch_size, progress,
                          lambda m, x, k: m.forward_features(x, k))
    return feats.astype(np.float32)


# -- transfer to tasks ------------------------------------------------------------------------------------


class TabletForTask(nn.Module):
    """A TABLeT encoder with a linear head on its pooled features: ``(B, T, C, D)`` → ``(B, n_outputs)``."""

    def __init__(self, encoder: Tablet, n_outputs: int, *, freeze_encoder: bool = False) -> None:
        super().__init__()
        self.encoder, self.freeze_encoder = encoder, freeze_encoder
        self.head = nn.Linear(encoder.config.d_model, n_outputs)
        self.encoder.requires_grad_(not freeze_encoder)

    def train(self, mode: bool = True) -> TabletForTask:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its inference behaviour (no drop path)
        return self

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder.forward_features(tokens, frame_mask)
        else:
            feats = self.encoder.forward_features(tokens, frame_mask)
        return self.head(feats)


class TabletFinetuneTask:
    """Supervised windows for the :class:`~neuroattn.train.Trainer`: BCE (2 classes, one logit), cross-entropy
    (more classes) or L1 (regression), as published; one AdamW optimizer "model" over the trainable weights."""

    model_class = "TabletForTask"

    def __init__(self, model: TabletForTask, dataset: TokenWindows, task: str, *, weight_decay: float = 0.05) -> None:
        if task not in HEAD_TASKS:
            raise ConfigError(f"'task' must be one of {list(HEAD_TASKS)}. {task!r} was provided.")
        self.model, self.dataset, self.task, self.weight_decay = model, dataset, task, weight_decay

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return {"model": torch.optim.AdamW(params, lr=1e-3, weight_decay=self.weight_decay)}

    def train_dataset(self) -> Dataset:
        return self.dataset

    def losses(self, batch: dict[str, Tensor], step: int) -> Iterator[LossItem]:
        out = self.model(batch["tokens"], batch["frame_mask"]).float()  # (B, K)
        target = batch["target"]
        if self.task == "regression":
            loss = F.l1_loss(out[:, 0], target)
        elif out.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(out[:, 0], target)
        else:
            loss = F.cross_entropy(out, target.long())
        yield "model", loss, {}

    def model_config(self) -> dict[str, Any]:
        return {"tablet": self.model.encoder.config.to_dict(), "task": self.task,
                "n_outputs": self.model.head.out_features, "freeze_encoder": self.model.freeze_encoder}

    def data_summary(self) -> dict[str, Any]:
        return autoencoder_summary(self.model.encoder.config.tokenizer) | {"n_windows": len(self.dataset)}


def finetune_tablet(
    encoder: Tablet,
    runs: Sequence[np.ndarray],
    targets: Sequence[float] | np.ndarray,
    train: TrainConfig,
    *,
    task: str = "classification",
    freeze_encoder: bool = False,
    tokenizer: TabletTokenizer | None = None,
    cache: TokenCache | None = None,
) -> tuple[TabletForTask, TrainResult]:
    """Train a head (and, unless frozen, the encoder) on windows labelled with their run's target.

    Classification targets are class indices ``0..K-1`` (one logit for K = 2); regression targets are values.
    """
    targets = np.asarray(targets)
    n_out = 1 if task == "regression" else max(1, int(targets.max()) + 1)
    n_out = 1 if n_out == 2 else n_out
    token_runs = _tokens(runs, encoder.config, tokenizer, cache, train.progress)
    dataset = TokenWindows(token_runs, encoder.config.window, targets=targets, random_start=True)
    model = TabletForTask(encoder, n_out, freeze_encoder=freeze_encoder)
    result = Trainer(TabletFinetuneTask(model, dataset, task), train).fit()
    return model.eval(), result


def predict_tablet(
    model: TabletForTask,
    runs: Sequence[np.ndarray],
    *,
    task: str = "classification",
    tokenizer: TabletTokenizer | None = None,
    cache: TokenCache | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """Subject-level predictions aggregated over each run's windows.

    Returns class probabilities ``(n_runs, K)`` (K >= 2; window probabilities averaged) for classification and
    values ``(n_runs,)`` (window predictions averaged) for regression.
    """
    cfg = model.encoder.config
    token_runs = _tokens(runs, cfg, tokenizer, cache, progress)

    def window_output(m: nn.Module, x: Tensor, k: Tensor) -> Tensor:
        out = m(x, k).float()  # (b, K)
        if task == "regression":
            return out
        if out.shape[1] == 1:
            p = torch.sigmoid(out)
            return torch.cat([1 - p, p], dim=1)
        return out.softmax(dim=1)

    out = _per_run_mean(model, token_runs, cfg.window, stride, batch_size, progress, window_output)
    return out[:, 0] if task == "regression" else out


__all__ = [
    "POOLINGS",
    "POS_ENCODINGS",
    "Tablet",
    "TabletConfig",
    "TabletFinetuneTask",
    "TabletForTask",
    "TabletPretrainTask",
    "autoencoder_summary",
    "embed_tablet",
    "finetune_tablet",
    "iter_windows",
    "load_tablet",
    "mtm_loss",
    "predict_tablet",
    "pretrain_tablet",
    "random_token_mask",
]
