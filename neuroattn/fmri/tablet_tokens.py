"""TABLeT tokens: fMRI frames to per-cell tokens through a frozen 2-D image autoencoder, a token cache and windows."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from neuroattn.configs import dataclass_from_dict
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_path

AUTOENCODERS = ("dc", "kl")
SliceEncoder = Callable[[Tensor], Tensor]
"""``(N, 3, H, W)`` images in [-1, 1] → ``(N, c, H / f, W / f)`` latents."""


@dataclass
class TabletTokenizerConfig:
    """How frames become tokens (published: 96³ cube, DC-AE f32c32 → 27 tokens x 3,072 features per frame)."""

    cube_size: int = 96  # voxels per side; each frame is centre-padded with zeros (or centre-cropped) to this cube
    autoencoder: str = "dc"  # "dc" (diffusers AutoencoderDC) | "kl" (diffusers AutoencoderKL)
    autoencoder_path: str | None = None  # local diffusers folder read by from_pretrained; None = random init
    compression: int = 32  # f: pixels per latent cell along each image axis
    latent_channels: int = 32  # c: latent channels of the autoencoder
    width: int = 32  # channels of the first block of a randomly initialised autoencoder
    seed: int = 0  # initialisation seed of a randomly initialised autoencoder
    slice_batch: int = 256  # images per encoder call

    def __post_init__(self) -> None:
        if self.autoencoder not in AUTOENCODERS:
            raise ConfigError(f"'autoencoder' must be one of {list(AUTOENCODERS)}. {self.autoencoder!r} was provided.")
        f = self.compression
        if f < 1 or f & (f - 1):
            raise ConfigError(f"'compression' must be a power of two. {f!r} was provided.")
        if self.cube_size < f or self.cube_size % f:
            raise ConfigError(f"'cube_size' must be a positive multiple of compression ({f}). "
                              f"{self.cube_size!r} was provided.")
        for name in ("latent_channels", "width", "slice_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {getattr(self, name)!r} was provided.")

    @classmethod
    def tiny(cls) -> TabletTokenizerConfig:
        """A 16³ cube through a tiny random AutoencoderDC (f = 8, c = 4): 8 tokens x 96 features per frame."""
        return cls(cube_size=16, autoencoder="dc", compression=8, latent_channels=4, width=4, slice_batch=1024)

    @property
    def grid(self) -> int:
        """Cells per axis, ``cube_size / compression``."""
        return self.cube_size // self.compression

    @property
    def n_cells(self) -> int:
        """Tokens per frame, ``grid ** 3``."""
        return self.grid**3

    @property
    def token_dim(self) -> int:
        """Features per token: 3 axes x ``compression`` slices per group x ``latent_channels``."""
        return 3 * self.compression * self.latent_channels

    @property
    def pretrained(self) -> bool:
        """True when the autoencoder's weights come from a folder; a random one is untrained."""
        return self.autoencoder_path is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabletTokenizerConfig:
        return dataclass_from_dict(cls, data)


# -- the frozen 2-D autoencoder -------------------------------------------------------------------------------


def build_autoencoder(config: TabletTokenizerConfig) -> nn.Module:
    """The diffusers autoencoder: ``from_pretrained(autoencoder_path)`` (local files only) or a seeded random init.

    A random autoencoder has ``log2(compression)`` downsampling stages of widths ``width * (1, 2, 4, 4, ...)``.
    """
    from diffusers import AutoencoderDC, AutoencoderKL  # heavy import, only when a tokenizer is built

    cls = AutoencoderDC if config.autoencoder == "dc" else AutoencoderKL
    if config.autoencoder_path is not None:
        path = Path(config.autoencoder_path)
        if not path.is_dir():
            raise InvalidInputError("autoencoder folder not found", path)
        return cls.from_pretrained(str(path), local_files_only=True)
    stages = int(math.log2(config.compression)) + 1
    channels = tuple(config.width * min(2**i, 4) for i in range(stages))
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's stream alone
        torch.manual_seed(config.seed)
        if config.autoencoder == "kl":
            return AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * stages, up_block_types=("UpDecoderBlock2D",) * stages,
                block_out_channels=channels, layers_per_block=1, latent_channels=config.latent_channels,
                norm_num_groups=math.gcd(config.width, 32), sample_size=config.cube_size,
            )  # fmt: skip
        return AutoencoderDC(
            latent_channels=config.latent_channels, attention_head_dim=config.width,
            encoder_block_out_channels=channels, decoder_block_out_channels=channels,
            encoder_layers_per_block=(1,) * stages, decoder_layers_per_block=(1,) * stages,
            encoder_qkv_multiscales=((),) * stages, decoder_qkv_multiscales=((),) * stages,
        )  # fmt: skip


class DiffusersSliceEncoder(nn.Module):
    """The encoder half of a diffusers autoencoder as a :data:`SliceEncoder` (KL: the posterior mode)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, images: Tensor) -> Tensor:
        out = self.autoencoder.encode(images)
        return out.latent if hasattr(out, "latent") else out.latent_dist.mode()  # (N, c, H/f, W/f)


# -- frames to tokens -----------------------------------------------------------------------------------------


def scale_and_pad(run: np.ndarray | Tensor, cube_size: int) -> Tensor:
    """Scale a run by its maximum absolute value to [-1, 1] and centre-pad (zeros) or -crop it to a cube.

    Parameters
    ----------
    run : ``(T, X, Y, Z)`` one subject's frames; the maximum is taken over the whole run.

    Returns
    -------
    float32 Tensor ``(T, S, S, S)`` with ``S = cube_size``.
    """
    from monai.transforms import ResizeWithPadOrCrop

    data = torch.as_tensor(np.asarray(run, dtype=np.float32))
    if data.ndim != 4 or min(data.shape) < 1:
        raise InvalidInputError(f"an fMRI run must be a non-empty (T, X, Y, Z) array; got shape {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise InvalidInputError("the fMRI run holds NaN or infinite values")
    peak = float(data.abs().max())
    data = data / peak if peak > 0 else data
    cube = ResizeWithPadOrCrop((cube_size,) * 3, mode="constant")(data)  # frames are channels: (T, S, S, S)
    cube = cube.as_tensor() if hasattr(cube, "as_tensor") else cube  # a plain Tensor, not a MONAI MetaTensor
    return cube.to(torch.float32).contiguous()


def regroup_latents(latents: Sequence[Tensor], compression: int) -> Tensor:
    """Align the three axes' slice latents into per-cell tokens.

    Parameters
    ----------
    latents : three Tensors ``(B, S, c, g, g)``; entry ``a`` holds the latents of the ``S`` slices of ``B`` cubes
        taken along axis ``a`` (slice ``s`` is ``cube.select(a, s)``, whose image axes are the other two cube axes
        in their order), ``g = S / compression``.
    compression : f; slices ``[i f, (i + 1) f)`` along axis ``a`` form cell ``i`` along that axis.

    Returns
    -------
    Tensor ``(B, g³, 3 f c)``: cells in raster (x, y, z) order; features are axis-major, then slice within the
    group, then latent channel, so feature ``a f c + s c + ch`` of cell (i, j, k) is channel ``ch`` of slice
    ``cell_a * f + s`` along axis ``a`` at that slice's latent position of the other two cell indices.
    """
    grids = []
    for axis, lat in enumerate(latents):
        b, s, c, g, g2 = lat.shape
        if s != g * compression or g2 != g:
            raise ValueError(f"axis {axis}: latents {tuple(lat.shape)} do not match compression {compression}")
        cells = lat.reshape(b, g, compression, c, g, g)  # (B, g_a, f, c, g_u, g_v)
        cells = cells.permute(0, 1, 4, 5, 2, 3)  # (B, g_a, g_u, g_v, f, c)
        cells = cells.flatten(-2)  # (B, g_a, g_u, g_v, f*c)
        grids.append(cells.movedim(1, 1 + axis))  # (B, g_x, g_y, g_z, f*c): u, v keep their cube order
    return torch.cat(grids, dim=-1).flatten(1, 3)  # (B, g³, 3*f*c)


class TabletTokenizer:
    """Frames ``(T, X, Y, Z)`` → tokens ``(T, g³, 3 f c)`` through a frozen 2-D autoencoder.

    Every frame is scaled by the run's maximum and padded to a cube (:func:`scale_and_pad`); its slices along all
    three axes, grey repeated to 3 channels, are encoded, and :func:`regroup_latents` aligns the latents.

    Parameters
    ----------
    config : tokenizer configuration.
    encoder : a :data:`SliceEncoder` replacing the diffusers autoencoder (its output must have
        ``config.latent_channels`` channels at ``1 / config.compression`` of the image size).
    device : where the encoder runs (default CPU).
    """

    def __init__(
        self,
        config: TabletTokenizerConfig,
        encoder: SliceEncoder | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device or "cpu")
        self.encoder = encoder if encoder is not None else DiffusersSliceEncoder(build_autoencoder(config))
        if isinstance(self.encoder, nn.Module):
            self.encoder.eval().requires_grad_(False).to(self.device)
        self.encoder_calls = 0  # number of encoder invocations so far (the token cache is tested on it)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the tokenizer config and the encoder's weights (or its type for a weightless stand-in)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            if isinstance(self.encoder, nn.Module):
                for name, tensor in sorted(self.encoder.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            else:
                digest.update(f"{type(self.encoder).__module__}.{type(self.encoder).__qualname__}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _encode(self, images: Tensor) -> Tensor:
        """``(N, S, S)`` grey slices → ``(N, c, g, g)`` latents, in chunks of ``slice_batch``."""
        cfg, out = self.config, []
        g = cfg.grid
        for chunk in images.split(cfg.slice_batch):
            rgb = chunk[:, None].expand(-1, 3, -1, -1).to(self.device)  # grey → 3 channels: (n, 3, S, S)
            lat = self.encoder(rgb)
            self.encoder_calls += 1
            if tuple(lat.shape[1:]) != (cfg.latent_channels, g, g):
                raise ConfigError(
                    f"the autoencoder maps {tuple(rgb.shape[1:])} slices to {tuple(lat.shape[1:])} latents; the "
                    f"tokenizer config expects {(cfg.latent_channels, g, g)} (check compression/latent_channels)"
                )
            out.append(lat.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_cubes(self, cubes: Tensor) -> Tensor:
        """Tokens of scaled, padded frames ``(B, S, S, S)`` → ``(B, g³, 3 f c)``."""
        b, s = cubes.shape[0], self.config.cube_size
        latents = []
        for axis in range(3):
            slices = cubes.movedim(1 + axis, 1).reshape(b * s, s, s)  # (B*S, S, S), slice-major per cube
            lat = self._encode(slices)  # (B*S, c, g, g)
            latents.append(lat.reshape(b, s, *lat.shape[1:]))  # (B, S, c, g, g)
        return regroup_latents(latents, self.config.compression)

    def __call__(self, run: np.ndarray | Tensor, *, progress: bool = False) -> np.ndarray:
        """Tokens of one run ``(T, X, Y, Z)`` → float32 ``(T, g³, 3 f c)``."""
        cubes = scale_and_pad(run, self.config.cube_size)  # (T, S, S, S)
        per_call = max(1, self.config.slice_batch // self.config.cube_size)  # frames per encoder call
        chunks = cubes.split(per_call)
        tokens = [self.encode_cubes(c) for c in tqdm(chunks, disable=not progress, desc="tokenize", unit="chunk")]
        return torch.cat(tokens).numpy()


# -- token cache ----------------------------------------------------------------------------------------------


class TokenCache:
    """Tokens of whole runs, keyed by the tokenizer's fingerprint and the SHA-256 of the run's float32 bytes.

    Entries live in memory and, when ``directory`` is given, as ``<key>.safetensors`` files there, so the
    autoencoder runs once per frame across processes too.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._memory: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(tokenizer: TabletTokenizer, run: np.ndarray) -> str:
        data = np.ascontiguousarray(run, dtype=np.float32)
        digest = hashlib.sha256(tokenizer.fingerprint.encode())
        digest.update(str(data.shape).encode())
        digest.update(data.tobytes())
        return digest.hexdigest()

    def tokens(self, tokenizer: TabletTokenizer, run: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """The run's tokens ``(T, g³, D)``, computed only when neither memory nor disk holds them."""
        key = self.key(tokenizer, run)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = None if self.directory is None else self.directory / f"{key}.safetensors"
        if path is not None and path.is_file():
            self.hits += 1
            tokens = load_file(str(path))["tokens"].numpy()
        else:
            self.misses += 1
            tokens = tokenizer(run, progress=progress)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    meta = {"tokenizer": tokenizer.fingerprint}
                    save_file({"tokens": torch.from_numpy(tokens)}, str(tmp), metadata=meta)
        self._memory[key] = tokens
        return tokens


def tokenize_runs(
    tokenizer: TabletTokenizer,
    runs: Sequence[np.ndarray],
    *,
    cache: TokenCache | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """Tokens ``(T_i, g³, D)`` of every run ``(T_i, X, Y, Z)``, through ``cache`` when given."""
    out = []
    for run in tqdm(runs, disable=not progress, desc="tokenize runs", unit="run"):
        out.append(cache.tokens(tokenizer, run) if cache is not None else tokenizer(run))
    return out


# -- windows of frames ----------------------------------------------------------------------------------------


def window_starts(n_frames: int, window: int, stride: int | None = None) -> list[int]:
    """Starts of the windows tiling ``n_frames`` frames: every ``stride`` (default ``window``) frames, plus one
    window ending at the last frame when the tiling leaves frames out; a run shorter than ``window`` gives [0]."""
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise ConfigError(f"window ({window}) and stride ({stride}) must be positive")
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


def cut_window(tokens: np.ndarray, start: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[start, start + window)`` of ``(T, C, D)`` tokens, zero-padded at the end of short runs.

    Returns ``(tokens (window, C, D) float32, frame_mask (window,) bool)`` with True on real frames.
    """
    part = np.asarray(tokens[start : start + window], dtype=np.float32)
    n = part.shape[0]
    mask = np.zeros(window, dtype=bool)
    mask[:n] = True
    if n < window:
        part = np.concatenate([part, np.zeros((window - n, *part.shape[1:]), dtype=np.float32)])
    return part, mask


class TokenWindows(Dataset):
    """Windows of ``window`` frames from tokenized runs.

    Item ``i`` is a dict with ``tokens`` ``(window, C, D)``, ``frame_mask`` ``(window,)`` (True = real frame),
    ``run`` (index) and, with ``targets``, ``target``. With ``random_start`` the item draws its run as
    ``i mod n_runs`` and its start uniformly from the global torch stream (exactly resumable); otherwise the items
    are the fixed tiling of :func:`window_starts`.

    Parameters
    ----------
    token_runs : ``(T_i, C, D)`` tokens per run.
    window : frames per item.
    targets : one label or value per run.
    random_start : sample window starts (training) instead of tiling (evaluation).
    stride : tiling stride (default ``window``).
    """

    def __init__(
        self,
        token_runs: Sequence[np.ndarray],
        window: int,
        *,
        targets: Sequence[float] | np.ndarray | None = None,
        random_start: bool = False,
        stride: int | None = None,
    ) -> None:
        if not token_runs:
            raise InvalidInputError("no tokenized runs were given")
        shapes = {tuple(t.shape[1:]) for t in token_runs}
        if len(shapes) != 1 or any(t.ndim != 3 for t in token_runs):
            raise InvalidInputError(f"token runs must all be (T, C, D) with one (C, D); got {sorted(shapes)}")
        if targets is not None and len(targets) != len(token_runs):
            raise InvalidInputError(f"{len(targets)} targets for {len(token_runs)} runs")
        self.runs, self.window, self.random_start = list(token_runs), int(window), random_start
        self.targets = None if targets is None else np.asarray(targets)
        if random_start:
            per_run = max(1, min(len(t) for t in token_runs) // self.window)
            self.index = [(i % len(self.runs), -1) for i in range(per_run * len(self.runs))]
        else:
            self.index = [(r, s) for r, t in enumerate(self.runs) for s in window_starts(len(t), self.window, stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        run, start = self.index[i]
        n = len(self.runs[run])
        if start < 0:
            start = int(torch.randint(max(1, n - self.window + 1), ()))
        tokens, mask = cut_window(self.runs[run], start, self.window)
        item: dict[str, Any] = {"tokens": torch.from_numpy(tokens), "frame_mask": torch.from_numpy(mask), "run": run}
        if self.targets is not None:
            item["target"] = torch.tensor(self.targets[run], dtype=torch.float32)
        return item


__all__ = [
    "AUTOENCODERS",
    "DiffusersSliceEncoder",
    "SliceEncoder",
    "TabletTokenizer",
    "TabletTokenizerConfig",
    "TokenCache",
    "TokenWindows",
    "build_autoencoder",
    "cut_window",
    "regroup_latents",
    "scale_and_pad",
    "tokenize_runs",
    "window_starts",
]
