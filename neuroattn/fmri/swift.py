"""SwiFT-like voxel baseline: 4-D patch embedding and shifted 4-D window attention over (x, y, z, t) tokens."""

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

from neuroattn.attention import Window
from neuroattn.configs import dataclass_from_dict
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_model
from neuroattn.nn.transformer import TransformerBlock
from neuroattn.train import LossItem, TrainConfig, Trainer, TrainResult, adam_per_module

MODEL_CLASS = "SwiFT"


@dataclass
class SwiFTConfig:
    """SwiFT architecture (published: 96³ voxels x 20 frames, patch 6³ x 1, embed 36, depths [2, 2, 6, 2],
    4x4x4x4 shifted windows, absolute positions) and its contrastive pretraining objective."""

    img_size: tuple[int, int, int] = (96, 96, 96)  # voxels (x, y, z) of each input frame
    frames: int = 20  # frames per window T; memory limits SwiFT to about 20
    patch_size: int = 6  # voxels per patch side; one frame per patch
    embed_dim: int = 36  # channels of stage 1, doubled at each patch merging
    depths: tuple[int, ...] = (2, 2, 6, 2)  # transformer blocks per stage
    heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage
    window: tuple[int, int, int, int] = (4, 4, 4, 4)  # tokens per window along (x, y, z, t)
    shift: bool = True  # every second block shifts its windows by half a window (Swin)
    mlp_ratio: float = 4.0
    drop_path: float = 0.1  # stochastic depth at the last block, linear from 0
    num_outputs: int = 0  # classification / regression head outputs; 0 = no head
    projection_dim: int = 64  # contrastive projector output width
    temperature: float = 0.1  # NT-Xent temperature

    def __post_init__(self) -> None:
        self.img_size = tuple(int(s) for s in self.img_size)  # JSON round trips give lists
        self.depths, self.heads = tuple(self.depths), tuple(self.heads)
        self.window = tuple(int(w) for w in self.window)
        if len(self.img_size) != 3 or len(self.window) != 4:
            raise ConfigError("'img_size' needs 3 entries (x, y, z) and 'window' 4 (x, y, z, t)")
        if len(self.depths) != len(self.heads) or not self.depths:
            raise ConfigError(f"'depths' {self.depths} and 'heads' {self.heads} need the same, non-zero length")
        factor = self.patch_size * 2 ** (len(self.depths) - 1)
        if any(s % factor for s in self.img_size):
            raise ConfigError(f"'img_size' {self.img_size} must be divisible by patch_size x 2^(stages - 1) = {factor}")
        for i, grid in enumerate(self.stage_grids()):
            for axis, (g, w) in enumerate(zip(grid, self.window, strict=True)):
                if g % min(g, w):
                    raise ConfigError(f"stage {i}: window {w} does not tile token axis {axis} of length {g}")
            if (self.embed_dim * 2**i) % self.heads[i]:
                raise ConfigError(f"stage {i}: width {self.embed_dim * 2**i} is not divisible by {self.heads[i]} heads")

    def stage_grids(self) -> list[tuple[int, int, int, int]]:
        """Token grid ``(X', Y', Z', T)`` of every stage (patch merging halves space, keeps time)."""
        base = [s // self.patch_size for s in self.img_size]
        return [(*(b // 2**i for b in base), self.frames) for i in range(len(self.depths))]

    @property
    def feature_dim(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def tiny(cls, **overrides: Any) -> SwiFTConfig:
        """CPU test size: 12³ voxels x 4 frames, patch 3 → a 4x4x4x4 token grid, two stages, width 8."""
        base = dict(img_size=(12, 12, 12), frames=4, patch_size=3, embed_dim=8, depths=(2, 1), heads=(1, 2),
                    window=(2, 2, 2, 2), drop_path=0.0, projection_dim=8)  # fmt: skip
        return cls(**(base | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SwiFTConfig:
        return dataclass_from_dict(cls, data)


def stage_windows(grid: Sequence[int], window: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-axis window size (clipped to the grid) and Swin shift (half a window; 0 when one window spans the axis)."""
    size = tuple(min(g, w) for g, w in zip(grid, window, strict=True))
    shift = tuple(s // 2 if g > s else 0 for g, s in zip(grid, size, strict=True))
    return size, shift


class PatchMerging4d(nn.Module):
    """Concatenate 2x2x2 spatial neighbours (time kept) and project ``8C → 2C``: ``(B, X, Y, Z, T, C)`` →
    ``(B, X/2, Y/2, Z/2, T, 2C)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, nx, ny, nz, t, c = x.shape
        x = x.reshape(b, nx // 2, 2, ny // 2, 2, nz // 2, 2, t, c)  # (B, X/2, 2, Y/2, 2, Z/2, 2, T, C)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8).reshape(b, nx // 2, ny // 2, nz // 2, t, 8 * c)  # (B, .., T, 8C)
        return self.reduction(self.norm(x))


class SwiFT(nn.Module):
    """Swin 4-D fMRI transformer: ``(B, T, X, Y, Z)`` windows → features ``(B, feature_dim)``.

    Each frame is cut into ``patch_size³`` patches (Conv3d, one frame per patch), giving a channels-last
    4-D token grid ``(B, X', Y', Z', T, C)`` plus a learned absolute position table per stage. Stages of
    :class:`TransformerBlock` with :class:`~neuroattn.attention.Window` specs over the rank-4 grid alternate
    unshifted and shifted windows; patch merging halves space between stages.
    """

    def __init__(self, config: SwiFTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv3d(1, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.embed_norm = nn.LayerNorm(c.embed_dim)
        grids = c.stage_grids()
        total = sum(c.depths)
        rates = [c.drop_path * i / max(1, total - 1) for i in range(total)]
        self.pos, self.stages, self.merges = nn.ParameterList(), nn.ModuleList(), nn.ModuleList()
        for i, (grid, depth) in enumerate(zip(grids, c.depths, strict=True)):
            dim = c.embed_dim * 2**i
            size, shift = stage_windows(grid, c.window)
            blocks = nn.ModuleList(
                TransformerBlock(
                    dim, c.heads[i], Window(size, shift if (c.shift and j % 2) else 0), mlp_ratio=c.mlp_ratio,
                    drop_path=rates[sum(c.depths[:i]) + j],
                )
                for j in range(depth)
            )  # fmt: skip
            self.pos.append(nn.Parameter(torch.randn(1, *grid, dim) * 0.02))  # (1, X', Y', Z', T, C)
            self.stages.append(blocks)
            if i < len(grids) - 1:
                self.merges.append(PatchMerging4d(dim))
        self.norm = nn.LayerNorm(c.feature_dim)
        self.head = nn.Linear(c.feature_dim, c.num_outputs) if c.num_outputs > 0 else None
        self.projector = nn.Sequential(
            nn.Linear(c.feature_dim, c.feature_dim), nn.GELU(), nn.Linear(c.feature_dim, c.projection_dim)
        )

    def tokens(self, x: Tensor) -> Tensor:
        """Patch-embed ``(B, T, X, Y, Z)`` into the token grid ``(B, X', Y', Z', T, C)``."""
        c = self.config
        if x.dim() != 5 or x.shape[1] != c.frames or tuple(x.shape[2:]) != c.img_size:
            raise InvalidInputError(
                f"expected windows (B, T={c.frames}, {', '.join(map(str, c.img_size))}), got shape {tuple(x.shape)}; "
                "resample or crop the BOLD to the model's grid first"
            )
        b, t = x.shape[:2]
        patches = self.patch_embed(x.reshape(b * t, 1, *x.shape[2:]))  # (B*T, C, X', Y', Z')
        patches = patches.reshape(b, t, *patches.shape[1:]).permute(0, 3, 4, 5, 1, 2)  # (B, X', Y', Z', T, C)
        return self.embed_norm(patches)

    def forward_features(self, x: Tensor) -> Tensor:
        """Mean-pooled final token states ``(B, feature_dim)`` of windows ``(B, T, X, Y, Z)``."""
        h = self.tokens(x)  # (B, X', Y', Z', T, C)
        for i, blocks in enumerate(self.stages):
            h = h + self.pos[i]
            for block in blocks:
                h = block(h)
            if i < len(self.merges):
                h = self.merges[i](h)
        return self.norm(h.flatten(1, -2).mean(dim=1))  # (B, C_last)

    def forward_head(self, features: Tensor) -> Tensor:
        if self.head is None:
            raise ConfigError("this SwiFT has no head; build it with num_outputs > 0")
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        """Head outputs ``(B, num_outputs)``."""
        return self.forward_head(self.forward_features(x))


def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR) loss of ``(2B, D)`` embeddings where rows ``i`` and ``i + B`` are positives."""
    n = z.shape[0] // 2
    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def saved_activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``model.forward_features(x)``:
    a device-independent measure of training memory."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_features(x)
    return sum(seen.values())


# -- data, pretraining, loading and embedding -----------------------------------------------------------


def _check_runs(runs: Sequence[np.ndarray], config: SwiFTConfig) -> list[np.ndarray]:
    out = []
    for i, run in enumerate(runs):
        x = np.asarray(run, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != config.img_size or x.shape[0] < config.frames:
            raise InvalidInputError(
                f"run {i}: expected (T >= {config.frames}, {', '.join(map(str, config.img_size))}), got {x.shape}"
            )
        out.append(x)
    if not out:
        raise InvalidInputError("no runs were given")
    return out


def standardize_run(run: np.ndarray) -> np.ndarray:
    """Z-score a ``(T, X, Y, Z)`` run with one mean and std over all its voxels and frames."""
    std = float(run.std())
    return ((run - run.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


class WindowPairDataset(Dataset):
    """Item ``i``: two windows ``(2, T, X, Y, Z)`` of run ``i mod n_runs`` at independent random starts
    (global torch stream), the positive pair of the contrastive objective."""

    def __init__(self, runs: Sequence[np.ndarray], frames: int) -> None:
        self.runs = [torch.from_numpy(standardize_run(r)) for r in runs]
        self.frames = frames
        self.index = [i for i, r in enumerate(self.runs) for _ in range(max(1, r.shape[0] // frames))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor:
        run = self.runs[self.index[i]]
        starts = torch.randint(run.shape[0] - self.frames + 1, (2,)).tolist()
        return torch.stack([run[s : s + self.frames] for s in starts])  # (2, T, X, Y, Z)


class SwiFTPretrainTask:
    """:class:`~neuroattn.train.TrainTask`: NT-Xent between two windows of the same run (one AdamW, "model")."""

    model_class = MODEL_CLASS

    def __init__(self, model: SwiFT, dataset: WindowPairDataset) -> None:
        self.model, self.dataset = model, dataset

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, weight_decay=0.05, decoupled=True)

    def train_dataset(self) -> Dataset:
        return self.dataset

    def losses(self, batch: Tensor, step: int) -> Iterator[LossItem]:
        pairs = batch.transpose(0, 1).flatten(0, 1)  # (B, 2, T, X, Y, Z) -> (2B, T, X, Y, Z), views i and i + B
        z = self.model.projector(self.model.forward_features(pairs))  # (2B, P)
        yield "model", nt_xent(z, self.model.config.temperature), {}

    def model_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def data_summary(self) -> dict[str, Any]:
        return {"n_runs": len(self.dataset.runs), "total_frames": sum(int(r.shape[0]) for r in self.dataset.runs)}


def pretrain_swift(runs: Sequence[np.ndarray], config: SwiFTConfig, train: TrainConfig) -> TrainResult:
    """Contrastive pretraining on ``(T, X, Y, Z)`` runs through the shared :class:`Trainer`."""
    runs = _check_runs(runs, config)
    torch.manual_seed(train.seed)
    model = SwiFT(config)
    return Trainer(SwiFTPretrainTask(model, WindowPairDataset(runs, config.frames)), train).fit()


def load_swift(run_or_checkpoint_dir: str | Path) -> SwiFT:
    """Rebuild a SwiFT from a trainer run folder (its ``final/``) or a checkpoint folder, weights strict."""
    return load_model(run_or_checkpoint_dir, MODEL_CLASS,
                      lambda config: SwiFT(SwiFTConfig.from_dict(config)))


@torch.no_grad()
def embed_swift(model: SwiFT, runs: Sequence[np.ndarray], *, batch_size: int = 4, progress: bool = False) -> np.ndarray:
    """Subject-level features ``(n_runs, feature_dim)``: mean of :meth:`SwiFT.forward_features` over each run's
    non-overlapping whole windows of ``frames`` frames (runs z-scored first). Deterministic (eval mode)."""
    c = model.config
    runs = _check_runs(runs, c)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for run in tqdm(runs, disable=not progress, desc="SwiFT embed", unit="run"):
            x = torch.from_numpy(standardize_run(run))
            n_win = x.shape[0] // c.frames
            windows = x[: n_win * c.frames].reshape(n_win, c.frames, *c.img_size)  # (W, T, X, Y, Z)
            feats = [model.forward_features(w.to(device)).float() for w in windows.split(batch_size)]
            out.append(torch.cat(feats).mean(dim=0).cpu().numpy())
    finally:
        model.train(was_training)
    return np.stack(out).astype(np.float32)


def stage1_tokens(config: SwiFTConfig) -> int:
    """Tokens of stage 1, ``prod(stage_grids()[0])`` (16³ x 20 = 81,920 for the published model)."""
    return math.prod(config.stage_grids()[0])


__all__ = [
    "PatchMerging4d",
    "SwiFT",
    "SwiFTConfig",
    "SwiFTPretrainTask",
    "WindowPairDataset",
    "embed_swift",
    "load_swift",
    "nt_xent",
    "pretrain_swift",
    "saved_activation_bytes",
    "stage1_tokens",
    "stage_windows",
    "standardize_run",
]
