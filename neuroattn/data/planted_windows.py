"""Long synthetic 4-D fMRI runs where only a few known windows carry the class signal (planted truth)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from neuroattn.errors import ConfigError


@dataclass
class PlantedWindowsConfig:
    """How the planted-window cohort is drawn.

    Each run is a low-rank background (``networks`` smooth spatial maps with damped-oscillation AR(2) time
    courses: predictable from the past by a learned model, poorly by "no change") plus white noise. In
    ``signal_windows`` windows of ``window_frames`` frames, aligned to multiples of ``window_frames``, a
    class-specific Gaussian blob is added with an amplitude drawn afresh each frame (mean
    ``signal_amplitude``, sd ``signal_jitter``), so those windows carry the label and are not predictable
    frame to frame. Every other window carries no label information.
    """

    n_runs: int = 40  # runs (one per subject); labels alternate 0, 1
    n_frames: int = 96  # frames per run
    shape: tuple[int, int, int] = (8, 8, 8)  # voxels X, Y, Z
    window_frames: int = 8  # frames per window
    signal_windows: int = 2  # windows per run holding the class blob
    networks: int = 4  # spatial maps of the background
    background_period: float = 12.0  # frames per cycle of the AR(2) background oscillation
    background_damping: float = 0.95  # AR(2) pole radius (closer to 1 = longer-lived oscillations)
    noise_sd: float = 0.1  # white noise per voxel and frame (background time courses have sd 1)
    signal_amplitude: float = 2.0  # mean blob amplitude at its centre
    signal_jitter: float = 2.0  # frame-to-frame sd of the blob amplitude (a burst of activity)
    blob_sigma: float = 1.5  # voxels
    seed: int = 0

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        n_windows = self.n_frames // self.window_frames
        if self.n_runs < 2 or self.window_frames < 1 or n_windows < 1:
            raise ConfigError("need n_runs >= 2 and at least one window of window_frames >= 1 frames per run")
        if not 1 <= self.signal_windows < n_windows:
            raise ConfigError(
                f"'signal_windows' must be in [1, {n_windows - 1}] for {n_windows} windows per run. "
                f"{self.signal_windows!r} was provided."
            )
        if not 0.0 <= self.background_damping < 1.0 or self.background_period <= 2.0:
            raise ConfigError(
                f"need 0 <= background_damping < 1 and background_period > 2 frames, got "
                f"{self.background_damping!r} and {self.background_period!r}"
            )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


@dataclass
class PlantedWindows:
    """A drawn cohort and its truth."""

    runs: list[np.ndarray]  # each float32 (T, X, Y, Z)
    labels: np.ndarray  # (n_runs,) int 0/1
    subjects: np.ndarray  # (n_runs,) subject id of each run (one run per subject)
    signal_starts: list[np.ndarray]  # per run, sorted first frames of the windows holding the blob
    patterns: np.ndarray  # (2, X, Y, Z) class blobs (peak 1)
    config: PlantedWindowsConfig


def _blob(shape: tuple[int, int, int], centre: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blob with peak 1 at ``centre`` on a ``shape`` voxel grid."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)  # (X, Y, Z, 3)
    return np.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma**2))


def _smooth_map(shape: tuple[int, int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A random smooth spatial map with unit RMS (sum of a few random blobs of both signs)."""
    out = np.zeros(shape)
    for _ in range(3):
        centre = rng.uniform(0, np.array(shape) - 1)
        out += rng.choice([-1.0, 1.0]) * _blob(shape, centre, 1.5 * sigma)
    return out / np.sqrt(np.mean(out**2))


def class_patterns(shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """The two class blobs ``(2, X, Y, Z)``: centred at a quarter and three quarters of the grid's diagonal."""
    size = np.array(shape, dtype=float) - 1
    return np.stack([_blob(shape, 0.25 * size, sigma), _blob(shape, 0.75 * size, sigma)])


def make_planted_windows(config: PlantedWindowsConfig | None = None, *, progress: bool = True) -> PlantedWindows:
    """Draw the cohort; the same config (seed included) gives the same arrays.

    Returns
    -------
    :class:`PlantedWindows` whose ``runs[i]`` has shape ``(n_frames, X, Y, Z)`` and whose
    ``signal_starts[i]`` lists the ``signal_windows`` window starts that hold class ``labels[i]``'s blob.
    """
    cfg = config or PlantedWindowsConfig()
    rng = np.random.default_rng(cfg.seed)
    patterns = class_patterns(cfg.shape, cfg.blob_sigma)  # (2, X, Y, Z)
    labels = np.arange(cfg.n_runs) % 2
    n_windows = cfg.n_frames // cfg.window_frames
    r, omega = cfg.background_damping, 2 * np.pi / cfg.background_period
    ar1, ar2 = 2 * r * np.cos(omega), -(r**2)  # AR(2) with poles r * exp(+-i omega)
    burn_in = int(10 / max(1e-3, 1 - r))  # frames for the courses to forget their start
    runs, starts = [], []
    for i in tqdm(range(cfg.n_runs), disable=not progress, desc="planted runs", unit="run"):
        maps = np.stack([_smooth_map(cfg.shape, rng, cfg.blob_sigma) for _ in range(cfg.networks)])  # (N, X, Y, Z)
        courses = np.zeros((burn_in + cfg.n_frames, cfg.networks))
        shocks = rng.standard_normal(courses.shape)
        for t in range(2, len(courses)):
            courses[t] = ar1 * courses[t - 1] + ar2 * courses[t - 2] + shocks[t]
        courses = courses[burn_in:] / courses[burn_in:].std(axis=0)  # (T, networks), unit variance
        run = np.einsum("tn,nxyz->txyz", courses, maps) / np.sqrt(cfg.networks)  # (T, X, Y, Z)
        run += cfg.noise_sd * rng.standard_normal(run.shape)
        chosen = np.sort(rng.choice(n_windows, size=cfg.signal_windows, replace=False)) * cfg.window_frames
        for start in chosen:
            amp = cfg.signal_amplitude + cfg.signal_jitter * rng.standard_normal(cfg.window_frames)  # (W,)
            run[start : start + cfg.window_frames] += amp[:, None, None, None] * patterns[labels[i]]
        runs.append(run.astype(np.float32))
        starts.append(chosen.astype(np.int64))
    return PlantedWindows(
        runs=runs,
        labels=labels.astype(np.int64),
        subjects=np.arange(cfg.n_runs),
        signal_starts=starts,
        patterns=patterns.astype(np.float32),
        config=cfg,
    )


def recall_at_k(selected: list[np.ndarray], planted: list[np.ndarray]) -> float:
    """Fraction of planted windows (by start frame) that the selection contains, pooled over runs."""
    hits = sum(len(np.intersect1d(s, p)) for s, p in zip(selected, planted, strict=True))
    return hits / max(1, sum(len(p) for p in planted))


__all__ = [
    "PlantedWindows",
    "PlantedWindowsConfig",
    "class_patterns",
    "make_planted_windows",
    "recall_at_k",
]
