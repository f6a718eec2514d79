"""Planted-truth fMRI runs whose class lives only in the frequency of a regional oscillation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from neuroattn.errors import ConfigError


@dataclass
class PlantedOscillationConfig:
    """A cohort of 4-D runs: an ellipsoidal "brain" at a constant baseline plus one spherical region oscillating
    at its class's frequency with a random phase, plus white noise.

    With the phase uniform on [0, 2π) the region's value in any single frame is ``amplitude * sin(U)``, whose
    (arcsine) distribution does not depend on the frequency: one frame carries no information on the label, a
    sequence of frames does.
    """

    n_subjects: int = 40  # one run per subject; labels alternate 0/1 before a seeded shuffle
    n_frames: int = 64  # frames per run
    shape: tuple[int, int, int] = (14, 14, 14)  # voxels (X, Y, Z)
    frequencies: tuple[float, float] = (0.07, 0.2)  # cycles per frame of class 0 and class 1 (< 0.5, Nyquist)
    region_centre: tuple[float, float, float] | None = None  # voxels; None = centre of the grid
    region_radius: float = 3.0  # voxels
    amplitude: float = 1.0  # oscillation amplitude (baseline units)
    baseline: float = 1.0  # intensity inside the brain ellipsoid
    noise_std: float = 0.1  # white noise per voxel and frame (baseline units)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_subjects < 2 or self.n_frames < 1:
            raise ConfigError(f"need at least 2 subjects and 1 frame; got {self.n_subjects} and {self.n_frames}")
        if len(self.frequencies) != 2 or not all(0.0 < f < 0.5 for f in self.frequencies):
            raise ConfigError(f"'frequencies' must be two values in (0, 0.5) cycles/frame. {self.frequencies!r} "
                              "was provided.")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ConfigError(f"'shape' must be three positive sizes. {self.shape!r} was provided.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlantedOscillation:
    """The runs and their planted truth."""

    runs: list[np.ndarray]  # float32 (T, X, Y, Z) per subject
    labels: np.ndarray  # (N,) int class
    phases: np.ndarray  # (N,) radians
    region: np.ndarray  # (X, Y, Z) bool: the oscillating voxels
    brain: np.ndarray  # (X, Y, Z) bool
    config: PlantedOscillationConfig = field(repr=False)

    def region_series(self) -> np.ndarray:
        """Noise-free region signal per subject ``(N, T)``: ``amplitude * sin(2π f_label t + phase)``."""
        cfg, t = self.config, np.arange(self.config.n_frames)
        freqs = np.asarray(cfg.frequencies)[self.labels]  # (N,)
        return cfg.amplitude * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + self.phases[:, None])


def _masks(config: PlantedOscillationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Brain ellipsoid (semi-axes 45 % of each side) and the spherical region, both ``(X, Y, Z)`` bool."""
    shape = np.asarray(config.shape, dtype=np.float64)
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in config.shape], indexing="ij"), axis=-1)  # (X, Y, Z, 3)
    centre = (shape - 1) / 2
    brain = (((coords - centre) / (0.45 * shape)) ** 2).sum(-1) <= 1.0
    region_centre = centre if config.region_centre is None else np.asarray(config.region_centre, dtype=np.float64)
    region = ((coords - region_centre) ** 2).sum(-1) <= config.region_radius**2
    return brain, region & brain


def planted_oscillation_cohort(config: PlantedOscillationConfig | None = None) -> PlantedOscillation:
    """Simulate the cohort described by ``config`` (deterministic in ``config.seed``).

    Returns
    -------
    PlantedOscillation with ``runs`` float32 ``(T, X, Y, Z)`` (the model input contract) and balanced labels.
    """
    cfg = config or PlantedOscillationConfig()
    rng = np.random.default_rng(cfg.seed)
    brain, region = _masks(cfg)
    if not region.any():
        raise ConfigError("the oscillating region holds no brain voxel; move region_centre or enlarge region_radius")
    labels = rng.permutation(np.arange(cfg.n_subjects) % 2)
    phases = rng.uniform(0.0, 2 * np.pi, size=cfg.n_subjects)
    t = np.arange(cfg.n_frames)
    static = (cfg.baseline * brain).astype(np.float32)  # (X, Y, Z)
    runs = []
    for label, phase in zip(labels, phases, strict=True):
        wave = cfg.amplitude * np.sin(2 * np.pi * cfg.frequencies[label] * t + phase)  # (T,)
        run = np.broadcast_to(static, (cfg.n_frames, *cfg.shape)).copy()  # (T, X, Y, Z)
        run[:, region] += wave[:, None].astype(np.float32)
        run += rng.normal(0.0, cfg.noise_std, size=run.shape).astype(np.float32)
        runs.append(run.astype(np.float32))
    return PlantedOscillation(runs, labels.astype(np.int64), phases, region, brain, cfg)


__all__ = ["PlantedOscillation", "PlantedOscillationConfig", "planted_oscillation_cohort"]
