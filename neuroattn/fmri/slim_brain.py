"""SLIM-Brain: a saliency extractor picks a run's top-k windows, a 4-D Hiera encoder is trained on them JEPA-style."""

from __future__ import annotations

import copy
import dataclasses
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
from neuroattn.fmri.hiera4d import Hiera4D, Hiera4DConfig, grid_coords, sincos_embedding
from neuroattn.fmri.probe import ProbeResult, cross_validated_probe
from neuroattn.io.checkpoints import load_model
from neuroattn.nn.transformer import TransformerBlock
from neuroattn.train import LossItem, TrainConfig, Trainer, TrainResult

MODEL_CLASS = "SlimBrain"
EXTRACTOR_CLASS = "SlimBrainExtractor"
SELECTIONS = ("saliency", "random", "all")


@dataclass
class SlimBrainConfig:
    """Every SLIM-Brain knob. Published by the paper: the window size and the encoder (:class:`Hiera4DConfig`).

    The extractor, ``top_k``, the saliency score, the EMA schedule and the predictor are not published
    (the public code cannot run); the JEPA values are I-JEPA / V-JEPA defaults: EMA momentum 0.996 → 1
    linearly over training, a predictor narrower than the encoder, L2 loss on layer-normalised targets.
    """

    encoder: Hiera4DConfig = field(default_factory=Hiera4DConfig)
    window_frames: int = 40  # frames per window (published)
    window_shape: tuple[int, int, int] = (96, 96, 96)  # voxels X, Y, Z per window (published)
    # stage 1: saliency extractor (our choice)
    extractor_grid: int = 6  # coarse regions per axis (6^3 = 216 average-pooled blocks)
    extractor_dim: int = 64  # width of the temporal transformer
    extractor_depth: int = 2  # causal transformer blocks
    extractor_heads: int = 4
    extractor_kernel: int = 4  # frames the causal convolution embedding each time point sees
    extractor_context: int = 128  # frames per training crop
    extractor_steps: int = 500  # optimizer steps of stage 1
    extractor_lr: float = 1e-3
    top_k: int = 4  # windows kept per run for stage 2
    window_stride: int | None = None  # frames between candidate windows; None = window_frames (no overlap)
    # stage 2: JEPA (I-/V-JEPA defaults)
    mask_ratio: float = 0.7  # fraction of mask units dropped before the context encoder
    ema_start: float = 0.996  # EMA momentum of the target encoder at step 0 ...
    ema_end: float = 1.0  # ... rising linearly to this at the last step
    predictor_dim: int = 256  # predictor width (narrower than the encoder's 512)
    predictor_depth: int = 6
    predictor_heads: int = 4
    weight_decay: float = 0.05  # AdamW

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = Hiera4DConfig.from_dict(self.encoder)
        self.window_shape = tuple(int(s) for s in self.window_shape)  # type: ignore[assignment]
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"'mask_ratio' must be in (0, 1). {self.mask_ratio!r} was provided.")
        if not 0.0 <= self.ema_start <= self.ema_end <= 1.0:
            raise ConfigError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")
        if self.top_k < 1 or self.window_frames < 1:
            raise ConfigError("'top_k' and 'window_frames' must be positive")
        if self.predictor_dim % 8:
            raise ConfigError(f"'predictor_dim' must be a multiple of 8 (4-D sin-cos). {self.predictor_dim} was given")
        Hiera4D.check_window(self.encoder, (self.window_frames, *self.window_shape))

    @property
    def stride(self) -> int:
        return self.window_stride or self.window_frames

    @classmethod
    def tiny(cls) -> SlimBrainConfig:
        """CPU test size: (8, 8, 8, 8) windows, 32 mask units, two stages of one block."""
        encoder = Hiera4DConfig(
            patch=(1, 2, 2, 2), embed_dim=16, heads=1, stages=(1, 1), mask_unit=(2, 2, 2, 2),
            unit_attention_stages=1, mlp_ratio=2.0,
        )  # fmt: skip
        return cls(
            encoder=encoder, window_frames=8, window_shape=(8, 8, 8), extractor_grid=4, extractor_dim=32,
            extractor_depth=1, extractor_heads=2, extractor_context=48, extractor_steps=30, extractor_lr=3e-3,
            top_k=2, predictor_dim=16, predictor_depth=1, predictor_heads=2,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder"] = self.encoder.to_dict()
        data["window_shape"] = list(self.window_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlimBrainConfig:
        return dataclass_from_dict(cls, data)


# -- data ---------------------------------------------------------------------------------------------------------


def check_run(run: np.ndarray, index: int = 0) -> np.ndarray:
    """A run as float32 ``(T, X, Y, Z)``, or InvalidInputError naming run ``index``."""
    arr = np.asarray(run, dtype=np.float32)
    if arr.ndim != 4 or not np.isfinite(arr).all():
        raise InvalidInputError(f"run {index} must be a finite (T, X, Y, Z) array, got shape {arr.shape}", None)
    return arr


def run_stats(run: np.ndarray) -> tuple[float, float]:
    """Global mean and standard deviation of a run (windows are z-scored with them)."""
    std = float(run.std())
    return float(run.mean()), std if std > 0 else 1.0


def coarse_series(run: np.ndarray, grid: int) -> Tensor:
    """Average-pool every frame to ``grid^3`` blocks: ``(T, grid^3)`` float32, each block centred over time.

    All blocks share one scale (the series' overall standard deviation): per-block z-scoring would blow up
    the noise of quiet blocks (outside the brain, white matter) until it dominates the saliency.
    """
    x = torch.from_numpy(np.ascontiguousarray(run, dtype=np.float32))[:, None]  # (T, 1, X, Y, Z)
    coarse = F.adaptive_avg_pool3d(x, grid).flatten(1)  # (T, R)
    coarse = coarse - coarse.mean(dim=0, keepdim=True)
    std = coarse.std()
    return coarse / std if std > 0 else coarse


class CoarseCrops(Dataset):
    """Crops of ``length`` frames of coarse series, every ``length // 2`` frames (stage-1 training samples)."""

    def __init__(self, series: Sequence[Tensor], length: int) -> None:
        self.series, self.length = list(series), length
        step = max(1, length // 2)
        self.index = [(i, s) for i, x in enumerate(self.series) for s in range(0, len(x) - length + 1, step)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor:
        run, start = self.index[i]
        return self.series[run][start : start + self.length]  # (L, R)


class WindowBank(Dataset):
    """The selected windows of every run, z-scored with their run's statistics: items ``(T_w, X, Y, Z)``."""

    def __init__(self, runs: Sequence[np.ndarray], starts: Sequence[Sequence[int]], window_frames: int) -> None:
        self.runs, self.window_frames = list(runs), window_frames
        self.stats = [run_stats(r) for r in self.runs]
        self.index = [(i, int(s)) for i, ss in enumerate(starts) for s in ss]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor:
        run, start = self.index[i]
        mean, std = self.stats[run]
        return torch.from_numpy((self.runs[run][start : start + self.window_frames] - mean) / std)


# -- stage 1: saliency extractor -----------------------------------------------------------------------------------


class SaliencyExtractor(nn.Module):
    """Light temporal model over a whole run's coarse series that scores windows by surprise.

    Each frame is average-pooled to ``regions`` blocks; a causal 1-D convolution over the last ``kernel``
    frames embeds each time point, causal transformer blocks (Dense causal attention with 1-D rotary
    positions) read the past, and a zero-initialised head predicts the change to the next frame (so an
    untrained extractor predicts "no change"). It is trained self-supervised with the next-frame MSE.
    **Saliency** of a frame is its squared prediction error averaged over blocks; a window's saliency is
    the mean over its frames: windows whose dynamics the learned model of the run cannot anticipate (task
    events, state changes, but also motion spikes -- regress confounds first) rank highest.
    """

    def __init__(self, regions: int, dim: int = 64, depth: int = 2, heads: int = 4, kernel: int = 4) -> None:
        super().__init__()
        self.regions, self.kernel = regions, kernel
        self.embed = nn.Conv1d(regions, dim, kernel_size=kernel)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, Dense(causal=True), rope="1d") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, regions)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, series: Tensor) -> Tensor:
        """``(B, T, R)`` coarse frames → ``(B, T, R)``: entry ``t`` predicts frame ``t + 1`` from frames ``<= t``."""
        past = F.pad(series.transpose(1, 2), (self.kernel - 1, 0))  # (B, R, T + kernel - 1), causal padding
        h = self.embed(past).transpose(1, 2)  # (B, T, dim)
        for block in self.blocks:
            h = block(h)
        return series + self.head(self.norm(h))  # (B, T, R)

    @torch.no_grad()
    def frame_errors(self, series: Tensor) -> Tensor:
        """``(T, R)`` → ``(T,)`` squared next-frame error per frame (NaN for frame 0, which has no past)."""
        pred = self(series[None, :-1])[0]  # (T-1, R)
        err = (pred - series[1:]).pow(2).mean(dim=-1)  # (T-1,)
        return torch.cat([err.new_full((1,), float("nan")), err])  # (T,)


def candidate_starts(n_frames: int, window_frames: int, stride: int) -> np.ndarray:
    """First frames of every candidate window of a run."""
    if n_frames < window_frames:
        raise InvalidInputError(f"a run of {n_frames} frames is shorter than one {window_frames}-frame window", None)
    return np.arange(0, n_frames - window_frames + 1, stride)


def window_saliency(errors: np.ndarray, starts: np.ndarray, window_frames: int) -> np.ndarray:
    """Mean frame error inside each window (NaN frames ignored)."""
    return np.array([np.nanmean(errors[s : s + window_frames]) for s in starts])


def top_k_windows(scores: np.ndarray, starts: np.ndarray, k: int, window_frames: int) -> np.ndarray:
    """The ``k`` highest-scoring windows that do not overlap (greedy), as sorted start frames."""
    chosen: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(abs(int(starts[i]) - c) >= window_frames for c in chosen):
            chosen.append(int(starts[i]))
        if len(chosen) == k:
            break
    return np.sort(np.array(chosen, dtype=np.int64))


# -- stage 2: JEPA predictor ---------------------------------------------------------------------------------------


class JepaPredictor(nn.Module):
    """Narrow transformer predicting the target encoder's features of dropped units from the kept ones.

    Context features are projected to ``dim`` and given their unit's sin-cos position; each dropped unit
    becomes a learned mask token plus its own position; Dense blocks mix them and the mask-token outputs
    are projected back to the encoder width.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, Dense()) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, in_dim)

    def forward(self, context: Tensor, keep: Tensor, targets: Tensor, unit_grid: tuple[int, ...]) -> Tensor:
        """Predict target features.

        Parameters
        ----------
        context : ``(B, K, in_dim)`` context-encoder features of the kept units.
        keep, targets : ``(B, K)`` and ``(B, M)`` unit indices (raster order of ``unit_grid``).
        unit_grid : units along t, x, y, z.

        Returns
        -------
        ``(B, M, in_dim)`` predictions.
        """
        pos = sincos_embedding(grid_coords(tuple(unit_grid), context.device), self.dim).to(context.dtype)  # (U, dim)
        h = torch.cat([self.embed(context) + pos[keep], self.mask_token + pos[targets]], dim=1)  # (B, K+M, dim)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, keep.shape[1] :]))  # (B, M, in_dim)


def ema_momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """Target-encoder momentum after optimizer step ``step`` (0-based): linear from ``start`` to ``end``."""
    return start + (end - start) * min(1.0, step / max(1, total_steps))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online``, parameter by parameter (buffers copied)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def split_units(batch: int, n_units: int, mask_ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Random kept / dropped unit indices per sample, each sorted: ``(B, K)`` and ``(B, U - K)``.

    ``K`` is ``U * (1 - mask_ratio)`` rounded half up (135 units at 0.7: 41 kept), at least 1 and at most ``U - 1``.
    """
    n_keep = min(n_units - 1, max(1, int(n_units * (1.0 - mask_ratio) + 0.5 + 1e-9)))
    order = torch.rand(batch, n_units, device=device).argsort(dim=1)  # (B, U)
    return order[:, :n_keep].sort(dim=1).values, order[:, n_keep:].sort(dim=1).values


# -- the model -----------------------------------------------------------------------------------------------------


class SlimBrain(nn.Module):
    """Stage-1 saliency extractor and stage-2 4-D Hiera encoder; ``forward_features`` embeds windows."""

    def __init__(self, config: SlimBrainConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SlimBrainConfig()
        self.extractor = SaliencyExtractor(
            cfg.extractor_grid**3, cfg.extractor_dim, cfg.extractor_depth, cfg.extractor_heads, cfg.extractor_kernel
        )
        self.encoder = Hiera4D(cfg.encoder)

    def forward_features(self, windows: Tensor) -> Tensor:
        """``(B, T_w, X, Y, Z)`` z-scored windows → ``(B, D)`` embeddings."""
        return self.encoder.forward_features(windows)

    def window_scores(self, run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate window starts of a ``(T, X, Y, Z)`` run and their saliency."""
        cfg = self.config
        starts = candidate_starts(run.shape[0], cfg.window_frames, cfg.stride)
        device = next(self.extractor.parameters()).device
        errors = self.extractor.frame_errors(coarse_series(run, cfg.extractor_grid).to(device)).cpu().numpy()
        return starts, window_saliency(errors, starts, cfg.window_frames)

    def select_windows(self, run: np.ndarray, k: int | None = None) -> np.ndarray:
        """Sorted start frames of the run's ``k`` (default ``config.top_k``) most salient non-overlapping windows."""
        starts, scores = self.window_scores(run)
        return top_k_windows(scores, starts, k or self.config.top_k, self.config.window_frames)


# -- trainer tasks -------------------------------------------------------------------------------------------------


class ExtractorTask:
    """Stage 1 for the shared Trainer: next-coarse-frame MSE of the saliency extractor (optimizer "extractor")."""

    model_class = EXTRACTOR_CLASS

    def __init__(self, extractor: SaliencyExtractor, crops: CoarseCrops, config: SlimBrainConfig) -> None:
        self.extractor, self.crops, self.config = extractor, crops, config

    def modules(self) -> dict[str, nn.Module]:
        return {"extractor": self.extractor}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"extractor": torch.optim.AdamW(modules["extractor"].parameters(), lr=1e-3, weight_decay=0.01)}

    def train_dataset(self) -> Dataset:
        return self.crops

    def losses(self, batch: Tensor, step: int) -> Iterator[LossItem]:
        pred = self.extractor(batch[:, :-1])  # (B, L-1, R)
        loss = F.mse_loss(pred.float(), batch[:, 1:].float())
        persistence = F.mse_loss(batch[:, :-1], batch[:, 1:])  # the untrained extractor's error
        yield "extractor", loss, {"extractor/persistence_mse": persistence.detach()}

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def data_summary(self) -> dict[str, Any]:
        return {"crops": len(self.crops), "crop_frames": self.crops.length}


class SlimBrainPretrainTask:
    """Stage 2 for the shared Trainer: JEPA on selected windows (optimizer "jepa" over encoder + predictor).

    Per window: ``mask_ratio`` of the mask units are dropped before the context encoder (it sees only the
    kept ones); the EMA target encoder sees the full window under ``no_grad``; the predictor predicts the
    layer-normalised target features of every dropped unit; the loss is their mean squared error. After
    each optimizer update the target moves toward the context encoder with the momentum of
    :func:`ema_momentum`. The exported ``SlimBrain`` carries the target encoder, as I-JEPA evaluates it.
    """

    model_class = MODEL_CLASS

    def __init__(
        self, model: SlimBrain, windows: Dataset, *, total_steps: int, summary: dict[str, Any] | None = None
    ) -> None:
        cfg = model.config
        self.model, self.windows, self.total_steps, self.summary = model, windows, total_steps, summary or {}
        self.target = copy.deepcopy(model.encoder).requires_grad_(False)
        self.predictor = JepaPredictor(cfg.encoder.out_dim, cfg.predictor_dim, cfg.predictor_depth, cfg.predictor_heads)
        self.optimizer: torch.optim.Optimizer | None = None
        self._ema_seen: int | None = None  # optimizer updates already folded into the target

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.model.encoder, "predictor": self.predictor, "target": self.target}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        params = [*modules["encoder"].parameters(), *modules["predictor"].parameters()]
        decay = self.model.config.weight_decay
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=decay)
        return {"jepa": self.optimizer}

    def train_dataset(self) -> Dataset:
        return self.windows

    def _updates(self) -> int:
        """Optimizer updates applied so far (Adam's step count; a skipped fp16 step does not count)."""
        if self.optimizer is None:
            return 0
        first = self.optimizer.param_groups[0]["params"][0]
        return int(float(self.optimizer.state.get(first, {}).get("step", 0)))

    def losses(self, batch: Tensor, step: int) -> Iterator[LossItem]:
        cfg = self.model.config
        encoder = self.model.encoder
        if self._ema_seen is None:
            self._ema_seen = self._updates()
        n_units = int(np.prod(encoder.unit_grid(tuple(batch.shape[1:]))))
        keep, dropped = split_units(batch.shape[0], n_units, cfg.mask_ratio, batch.device)  # (B, K), (B, M)
        with torch.no_grad():
            target = self.target(batch).units.float()  # (B, U, D)
            target = F.layer_norm(target, target.shape[-1:])
            target = torch.gather(target, 1, dropped[..., None].expand(-1, -1, target.shape[-1]))  # (B, M, D)
        context = encoder(batch, keep)
        pred = self.predictor(context.units, keep, dropped, context.unit_grid)  # (B, M, D)
        loss = F.mse_loss(pred.float(), target)
        metrics = {
            "jepa/target_std": target.std(dim=0).mean(),  # falls toward 0 on representation collapse
            "jepa/context_std": context.units.detach().float().mean(dim=1).std(dim=0).mean(),
            "jepa/units_kept": float(keep.shape[1]),
        }
        yield "jepa", loss, metrics
        updates = self._updates()
        if updates > self._ema_seen:  # the trainer stepped the optimizer: fold the update into the target
            ema_update(self.target, encoder, ema_momentum(step, self.total_steps, cfg.ema_start, cfg.ema_end))
            self._ema_seen = updates

    def model_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def export_state_dict(self, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
        state = {f"extractor.{k}": v for k, v in self.model.extractor.state_dict().items()}
        return state | {f"encoder.{k}": v for k, v in self.target.state_dict().items()}

    def data_summary(self) -> dict[str, Any]:
        return dict(self.summary)


# -- public entry points -------------------------------------------------------------------------------------------


def pretrain_slim_brain(
    runs: Sequence[np.ndarray], config: SlimBrainConfig, train: TrainConfig, *, resume: bool = False
) -> TrainResult:
    """Train SLIM-Brain on fMRI runs: stage 1 (extractor) then stage 2 (JEPA on each run's top-k windows).

    Parameters
    ----------
    runs : float32 ``(T, X, Y, Z)`` runs with ``(X, Y, Z) == config.window_shape`` and ``T >= window_frames``.
    config : the model; ``extractor_steps`` / ``extractor_lr`` drive stage 1.
    train : stage 2's trainer settings; stage 1 reuses them in ``out_dir/extractor`` with its own steps and lr.

    Returns
    -------
    Stage 2's :class:`~neuroattn.train.TrainResult`; its ``final_dir`` loads with :func:`load_slim_brain`.
    """
    arrays = [check_run(r, i) for i, r in enumerate(runs)]
    if not arrays:
        raise InvalidInputError("pretrain_slim_brain needs at least one run", None)
    for i, run in enumerate(arrays):
        if tuple(run.shape[1:]) != config.window_shape or run.shape[0] < config.window_frames:
            raise InvalidInputError(
                f"run {i} has shape {run.shape}; SLIM-Brain needs (T >= {config.window_frames}, "
                f"*{config.window_shape})", None,
            )  # fmt: skip
    model = SlimBrain(config)
    series = [coarse_series(r, config.extractor_grid) for r in arrays]
    crops = CoarseCrops(series, min(config.extractor_context, min(len(s) for s in series)))
    stage1 = dataclasses.replace(
        train, out_dir=Path(train.out_dir) / "extractor", max_steps=config.extractor_steps, lr=config.extractor_lr,
        warmup_steps=min(train.warmup_steps, config.extractor_steps // 10),
    )  # fmt: skip
    Trainer(ExtractorTask(model.extractor, crops, config), stage1).fit(resume=resume)
    model.extractor.eval()
    starts = [model.select_windows(r) for r in tqdm(arrays, disable=not train.progress, desc="top-k windows")]
    summary = {"runs": len(arrays), "windows_per_run": config.top_k, "selected_starts": [s.tolist() for s in starts]}
    task = SlimBrainPretrainTask(
        model, WindowBank(arrays, starts, config.window_frames), total_steps=train.max_steps, summary=summary
    )
    return Trainer(task, train).fit(resume=resume)


def load_slim_brain(run_or_checkpoint_dir: str | Path) -> SlimBrain:
    """Rebuild a trained :class:`SlimBrain` (eval mode) from a checkpoint folder or a run folder with ``final/``."""
    return load_model(run_or_checkpoint_dir, MODEL_CLASS,
                      lambda config: SlimBrain(SlimBrainConfig.from_dict(config)))


def choose_windows(
    model: SlimBrain, run: np.ndarray, *, k: int | None, selection: str, rng: np.random.Generator
) -> np.ndarray:
    """Window starts of one run: the ``k`` most salient, ``k`` random non-overlapping candidates, or all candidates."""
    cfg = model.config
    if selection == "saliency":
        return model.select_windows(run, k)
    candidates = candidate_starts(run.shape[0], cfg.window_frames, cfg.window_frames)
    if selection == "all":
        return candidates
    return np.sort(rng.choice(candidates, size=min(k or cfg.top_k, len(candidates)), replace=False))


@torch.no_grad()
def embed_slim_brain(
    model: SlimBrain,
    runs: Sequence[np.ndarray],
    *,
    k: int | None = None,
    selection: str = "saliency",
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Subject-level features: the mean encoder embedding over each run's selected windows.

    Parameters
    ----------
    runs : float32 ``(T, X, Y, Z)`` runs.
    k : windows per run (default ``config.top_k``); ignored for ``selection="all"``.
    selection : "saliency" (stage-1 top-k), "random" (seeded non-overlapping) or "all" candidate windows.

    Returns
    -------
    ``(n_runs, out_dim)`` float32 array; deterministic for a given model, runs and seed.
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"'selection' must be one of {list(SELECTIONS)}. {selection!r} was provided.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    out = np.empty((len(runs), model.config.encoder.out_dim), dtype=np.float32)
    try:
        for i, run in enumerate(tqdm(runs, disable=not progress, desc="embed runs", unit="run")):
            arr = check_run(run, i)
            bank = WindowBank(
                [arr], [choose_windows(model, arr, k=k, selection=selection, rng=rng)], model.config.window_frames
            )
            feats = []
            for b in range(0, len(bank), batch_size):
                windows = torch.stack([bank[j] for j in range(b, min(b + batch_size, len(bank)))]).to(device)
                feats.append(model.forward_features(windows).float())  # (b, D)
            out[i] = torch.cat(feats).mean(dim=0).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def probe_slim_brain(
    model: SlimBrain,
    runs: Sequence[np.ndarray],
    targets: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    task: str = "classification",
    k: int | None = None,
    selection: str = "saliency",
    n_folds: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> ProbeResult:
    """Frozen-encoder linear probe on :func:`embed_slim_brain` features (grouped K-fold ``cross_validated_probe``)."""
    features = embed_slim_brain(model, runs, k=k, selection=selection, seed=seed, progress=progress)
    return cross_validated_probe(features, targets, task=task, groups=groups, n_folds=n_folds, seed=seed)


__all__ = [
    "CoarseCrops",
    "ExtractorTask",
    "JepaPredictor",
    "SaliencyExtractor",
    "SlimBrain",
    "SlimBrainConfig",
    "SlimBrainPretrainTask",
    "WindowBank",
    "candidate_starts",
    "choose_windows",
    "coarse_series",
    "ema_momentum",
    "ema_update",
    "embed_slim_brain",
    "load_slim_brain",
    "pretrain_slim_brain",
    "probe_slim_brain",
    "split_units",
    "top_k_windows",
    "window_saliency",
]
