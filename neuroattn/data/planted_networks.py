"""ROI time series from a latent network model: ROIs of one community share a slow latent source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from neuroattn.data.hrf import bandlimited_noise
from neuroattn.errors import ConfigError


@dataclass
class PlantedNetworkConfig:
    """Size and signal of a planted-community ROI cohort.

    ROI ``r`` in community ``c(r)`` of run ``n`` is ``x_r(t) = a_r s_{n,c(r)}(t) + noise_std * e_{n,r}(t)``:
    the sources ``s`` are independent per run and community, band-limited and of unit variance, the private
    noise ``e`` is white and of unit variance, and the loading ``a_r`` is fixed per ROI (the ground truth).
    """

    n_rois: int = 24
    n_communities: int = 4
    n_frames: int = 200  # frames per run
    tr: float = 1.0  # seconds
    source_band: tuple[float, float] = (0.01, 0.1)  # Hz, the resting-state band
    loading_range: tuple[float, float] = (0.8, 1.2)  # a_r drawn uniformly in this range
    noise_std: float = 0.7  # private noise relative to a unit source; within-community r = 1 / (1 + noise_std²)
    shuffle_rois: bool = True  # communities not in contiguous blocks of the ROI order

    def __post_init__(self) -> None:
        if self.n_communities < 1 or self.n_rois < 2 * self.n_communities:
            raise ConfigError(
                f"'n_rois' must be at least twice 'n_communities' ({self.n_communities}). {self.n_rois} was provided."
            )
        if self.n_frames < 2 or not self.tr > 0:
            raise ConfigError(f"need n_frames >= 2 and tr > 0 s; got {self.n_frames} frames, tr={self.tr}")
        if self.noise_std < 0:
            raise ConfigError(f"'noise_std' must be >= 0. {self.noise_std} was provided.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlantedNetworks:
    """A planted cohort: runs and the truth that generated them."""

    runs: list[np.ndarray]  # n_runs arrays (T, R) float32
    communities: np.ndarray  # (R,) community index of each ROI
    loadings: np.ndarray  # (R,) a_r
    sources: list[np.ndarray] = field(repr=False)  # n_runs arrays (T, K), unit variance per column
    config: PlantedNetworkConfig = field(default_factory=PlantedNetworkConfig)


def community_labels(config: PlantedNetworkConfig, rng: np.random.Generator) -> np.ndarray:
    """Balanced community index of each ROI, shape ``(R,)``; shuffled when ``config.shuffle_rois``."""
    labels = np.arange(config.n_rois) % config.n_communities
    return rng.permutation(labels) if config.shuffle_rois else np.sort(labels)


def simulate_planted_networks(config: PlantedNetworkConfig, n_runs: int, *, seed: int = 0) -> PlantedNetworks:
    """Draw ``n_runs`` runs of the latent network model described in :class:`PlantedNetworkConfig`.

    Returns
    -------
    PlantedNetworks
        ``runs`` of shape ``(n_frames, n_rois)`` each; ``communities`` and ``loadings`` shared by all runs.
    """
    if n_runs < 1:
        raise ConfigError(f"'n_runs' must be >= 1. {n_runs} was provided.")
    rng = np.random.default_rng(seed)
    communities = community_labels(config, rng)
    loadings = rng.uniform(*config.loading_range, size=config.n_rois)
    low, high = config.source_band
    runs, sources = [], []
    for _ in range(n_runs):
        src = bandlimited_noise(rng, config.n_frames, config.n_communities, config.tr, low, high)  # (T, K)
        noise = rng.standard_normal((config.n_frames, config.n_rois))  # (T, R)
        x = src[:, communities] * loadings[None, :] + config.noise_std * noise  # (T, R)
        runs.append(x.astype(np.float32))
        sources.append(src)
    return PlantedNetworks(runs=runs, communities=communities, loadings=loadings, sources=sources, config=config)


__all__ = ["PlantedNetworkConfig", "PlantedNetworks", "community_labels", "simulate_planted_networks"]
