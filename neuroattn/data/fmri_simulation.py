"""Signal model of synthetic fMRI: planted networks, task responses and a label that changes one coupling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from neuroattn.data.fmri_atlas import BrainGrid, CoordinateAtlas, build_brain_grid, load_coordinate_atlas
from neuroattn.data.hrf import bandlimited_noise, drift_basis, task_regressors, trial_peak_response
from neuroattn.errors import ConfigError

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")  # mm, mm, mm, rad, rad, rad
HEAD_RADIUS = 50.0  # mm; turns a rotation step into a displacement comparable to a translation step


@dataclass
class SynthFMRIConfig:
    """Everything that defines a synthetic fMRI cohort; the same config and seed give the same data.

    Signal amplitudes are in percent signal change of the voxel baseline. Networks may be named by the atlas's
    own labels or by a role: ``'default'``, ``'frontoparietal'``, ``'visual'``, ``'motor'``.
    """

    n_subjects: int = 20
    n_frames: int = 120  # frames (T)
    tr: float = 2.0  # s
    voxel_size: float = 4.0  # mm; isotropic grid of the 4-D BOLD volumes (4 mm keeps them small)
    roi_radius: float = 6.0  # mm; sphere around each atlas coordinate (~14 voxels at 4 mm)
    seed: int = 0
    atlas: str = "dosenbach_2010"  # or "seitzman_2018" (Power 2011 ROIs with network labels)
    coupled_networks: tuple[str, str] = ("default", "frontoparietal")  # the pair the label acts on
    base_coupling: float = 0.1  # correlation of the coupled pair's latent signals in label-0 subjects
    label_effect: float = 0.5  # added to that correlation in label-1 subjects
    coupling_jitter: float = 0.05  # sd of per-subject variation of every network-pair correlation
    task_networks: dict[str, str] = field(default_factory=lambda: {"visual": "visual", "motor": "motor"})
    block_conditions: tuple[str, ...] = ("visual",)  # these conditions come in blocks, the others as events
    block_duration: float = 20.0  # s
    block_period: float = 60.0  # s, onset to onset of one condition's blocks
    event_interval: float = 12.0  # s, mean time between events of one event condition
    event_duration: float = 1.0  # s
    task_amplitude: float = 1.0  # % peak response to one isolated block or event
    network_amplitude: float = 1.0  # % sd of each network's shared signal
    roi_amplitude: float = 0.5  # % sd of each ROI's own signal
    band: tuple[float, float] = (0.01, 0.1)  # Hz; band of the latent fluctuations (resting-state band)
    thermal_noise: float = 1.0  # % sd of white noise per voxel and frame
    drift_amplitude: float = 0.5  # % sd of each drift-basis coefficient
    drift_order: int = 2  # Legendre degree of the polynomial drift (plus one slow cosine)
    motion_step: float = 0.03  # mm sd of the random-walk step per frame (rotations: this / 50 mm, in rad)
    motion_gain: float = 1.0  # % change per mm the brain moves along a voxel's outward direction
    spike_rate: float = 0.01  # probability that a frame holds a motion spike
    spike_amplitude: float = 2.0  # % global signal drop at a spike
    baseline: float = 1000.0  # BOLD intensity of brain voxels (arbitrary scanner units)
    write_bold: bool = True  # also write 4-D NIfTI (the ROI time series are always written)

    def __post_init__(self) -> None:
        positive = {
            "n_subjects": self.n_subjects, "n_frames": self.n_frames, "tr": self.tr,
            "voxel_size": self.voxel_size, "roi_radius": self.roi_radius, "block_duration": self.block_duration,
            "block_period": self.block_period, "event_interval": self.event_interval,
            "event_duration": self.event_duration, "baseline": self.baseline,
        }  # fmt: skip
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"'{name}' must be positive. {value!r} was provided.")
        non_negative = {
            "label_effect": abs(self.label_effect), "coupling_jitter": self.coupling_jitter,
            "task_amplitude": self.task_amplitude, "network_amplitude": self.network_amplitude,
            "roi_amplitude": self.roi_amplitude, "thermal_noise": self.thermal_noise,
            "drift_amplitude": self.drift_amplitude, "drift_order": self.drift_order,
            "motion_step": self.motion_step, "motion_gain": self.motion_gain,
            "spike_amplitude": self.spike_amplitude,
        }  # fmt: skip
        for name, value in non_negative.items():
            if not value >= 0:
                raise ConfigError(f"'{name}' must be >= 0. {value!r} was provided.")
        if self.n_frames < 16:
            raise ConfigError(f"'n_frames' must be at least 16 to hold a haemodynamic response. {self.n_frames}")
        if not 0 <= self.spike_rate <= 1:
            raise ConfigError(f"'spike_rate' must lie in [0, 1]. {self.spike_rate!r} was provided.")
        for name, value in (
            ("base_coupling", self.base_coupling),
            ("base_coupling + label_effect", self.base_coupling + self.label_effect),
        ):
            if not -1 < value < 1:
                raise ConfigError(f"'{name}' must lie in (-1, 1) to be a correlation. {value!r} was provided.")
        if len(self.coupled_networks) != 2 or self.coupled_networks[0] == self.coupled_networks[1]:
            raise ConfigError(f"'coupled_networks' must name two different networks. {self.coupled_networks!r}")
        unknown = [c for c in self.block_conditions if c not in self.task_networks]
        if unknown:
            raise ConfigError(f"'block_conditions' {unknown} are not among task_networks {list(self.task_networks)}")

    @property
    def duration(self) -> float:
        """Run length in seconds."""
        return self.n_frames * self.tr


@dataclass
class SubjectRun:
    """One simulated subject: ROI time series plus every planted component, in memory."""

    subject: str  # BIDS id, e.g. 'sub-001'
    label: int  # 0 or 1
    timeseries: np.ndarray  # (T, R) mean BOLD intensity of each ROI's voxels
    events: pd.DataFrame  # BIDS events: onset (s), duration (s), trial_type
    task_regressors: np.ndarray  # (T, C) HRF-convolved design, columns = conditions
    conditions: list[str]  # (C,)
    network_signals: np.ndarray  # (T, K) latent shared signal of each network, unit variance
    coupling: np.ndarray  # (K, K) correlation matrix the latent signals were drawn from
    drift: np.ndarray  # (T, R) % drift added to each ROI
    motion: np.ndarray  # (T, 6) trans_x/y/z (mm), rot_x/y/z (rad)
    spikes: np.ndarray  # frame indices of motion spikes
    volume: np.ndarray | None = None  # (X, Y, Z, T) BOLD intensities, when asked for


def subject_id(index: int) -> str:
    """BIDS subject id of the ``index``-th subject (0-based): ``sub-001``, ``sub-002``, ..."""
    return f"sub-{index + 1:03d}"


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of one subject; independent of how many subjects the cohort has."""
    return np.random.default_rng([seed, 0, index])


def cohort_labels(config: SynthFMRIConfig) -> np.ndarray:
    """Binary group labels, shape ``(n_subjects,)``: ``n_subjects // 2`` ones in a seeded random order."""
    labels = np.zeros(config.n_subjects, dtype=int)
    labels[: config.n_subjects // 2] = 1
    return np.random.default_rng([config.seed, 1]).permutation(labels)


def resolve_networks(config: SynthFMRIConfig, atlas: CoordinateAtlas) -> tuple[tuple[str, str], dict[str, str]]:
    """The coupled pair and the condition -> network map in the atlas's own network names."""
    pair = (atlas.resolve(config.coupled_networks[0]), atlas.resolve(config.coupled_networks[1]))
    if pair[0] == pair[1]:
        raise ConfigError(f"'coupled_networks' {config.coupled_networks} name the same network {pair[0]}")
    tasks = {cond: atlas.resolve(net) for cond, net in config.task_networks.items()}
    return pair, tasks


def make_events(config: SynthFMRIConfig, rng: np.random.Generator) -> pd.DataFrame:
    """BIDS events for one run: blocks for ``block_conditions``, jittered brief events for the others.

    Block conditions take turns within each ``block_period``; the first block starts 6-12 s into the run.
    Every event ends at least 16 s before the run does, so its response is sampled.
    """
    last_end = config.duration - 16.0  # s; room for the response to rise and fall
    rows: list[tuple[float, float, str]] = []
    blocks = [c for c in config.task_networks if c in config.block_conditions]
    first = rng.uniform(6.0, 12.0)
    for j, cond in enumerate(blocks):
        onset = first + j * config.block_period / len(blocks)
        while onset + config.block_duration <= last_end:
            rows.append((onset, config.block_duration, cond))
            onset += config.block_period
    for cond in (c for c in config.task_networks if c not in config.block_conditions):
        n_events = max(1, round((last_end - 4.0) / config.event_interval))
        slot = (last_end - 4.0) / n_events  # s; one event per slot, jittered inside it
        jitter = rng.uniform(0.0, max(slot - config.event_duration, 0.0), size=n_events)
        rows += [(4.0 + k * slot + jitter[k], config.event_duration, cond) for k in range(n_events)]
    events = pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])
    return events.sort_values(["onset", "trial_type"], ignore_index=True)


def nearest_correlation(matrix: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Closest-by-eigenvalue-clipping positive definite correlation matrix, shape ``(K, K)``."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    fixed = (vecs * np.maximum(vals, floor)) @ vecs.T
    d = np.sqrt(np.diag(fixed))
    return fixed / np.outer(d, d)


def subject_coupling(
    config: SynthFMRIConfig, atlas: CoordinateAtlas, label: int, rng: np.random.Generator
) -> np.ndarray:
    """Latent network correlation matrix of one subject, shape ``(K, K)``.

    Independent networks, plus ``base_coupling + label * label_effect`` between the coupled pair, plus
    ``coupling_jitter`` Gaussian subject variation on every pair.
    """
    names = atlas.network_names
    k = len(names)
    jitter = np.triu(rng.normal(0.0, config.coupling_jitter, size=(k, k)), 1)
    corr = np.eye(k) + jitter + jitter.T
    (a_name, b_name), _ = resolve_networks(config, atlas)
    a, b = names.index(a_name), names.index(b_name)
    corr[a, b] += config.base_coupling + label * config.label_effect
    corr[b, a] = corr[a, b]
    return nearest_correlation(corr)


def motion_traces(config: SynthFMRIConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Head motion: six random walks with occasional spikes.

    Returns
    -------
    motion : np.ndarray
        Shape ``(T, 6)``: translations in mm, rotations in rad (columns :data:`MOTION_COLUMNS`).
    spikes : np.ndarray
        Frame indices of the spikes, where the head jerks for one frame.
    """
    scale = np.array([1.0, 1.0, 1.0, 1 / HEAD_RADIUS, 1 / HEAD_RADIUS, 1 / HEAD_RADIUS]) * config.motion_step
    steps = rng.normal(0.0, 1.0, size=(config.n_frames, 6)) * scale
    steps[0] = 0.0
    motion = np.cumsum(steps, axis=0)
    spikes = np.flatnonzero(rng.random(config.n_frames) < config.spike_rate)
    motion[spikes] += rng.normal(0.0, 1.0, size=(len(spikes), 6)) * scale * 15  # a jerk of ~15 steps
    return motion, spikes


def motion_artifact(motion: np.ndarray, positions: np.ndarray, centre: np.ndarray, gain: float) -> np.ndarray:
    """Percent signal change from head motion at each voxel, shape ``(T, N)``.

    A voxel at ``p`` moves by ``d = t + w x p`` (small-angle rotation about the brain centre); its signal
    changes by ``gain`` % per mm of ``d`` along its outward direction ``n``, as brain edges slide across the
    intensity boundary. ``n . d = n . t + w . (p x n)``, so no ``(T, N, 3)`` array is needed.
    """
    rel = positions - centre  # (N, 3) mm from the centre
    outward = rel / np.maximum(np.linalg.norm(rel, axis=1, keepdims=True), 1e-6)  # (N, 3)
    lever = np.cross(rel, outward)  # (N, 3), zero for a perfect sphere; the brain is not one
    return gain * (motion[:, :3] @ outward.T + motion[:, 3:] @ lever.T)


def _roi_signals(
    config: SynthFMRIConfig,
    atlas: CoordinateAtlas,
    coupling: np.ndarray,
    regressors: np.ndarray,
    conditions: list[str],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Neural + task signal of every ROI in % (shape ``(T, R)``) and the latent network signals ``(T, K)``."""
    t, r = config.n_frames, len(atlas.roi_names)
    net_of_roi = atlas.network_index()  # (R,)
    latent = bandlimited_noise(rng, t, coupling.shape[0], config.tr, *config.band)  # (T, K) independent
    latent = latent @ np.linalg.cholesky(coupling).T  # (T, K) with the planted correlations
    loadings = rng.uniform(0.8, 1.2, size=r) * config.network_amplitude
    own = bandlimited_noise(rng, t, r, config.tr, *config.band) * config.roi_amplitude  # (T, R)
    signal = latent[:, net_of_roi] * loadings + own
    _, tasks = resolve_networks(config, atlas)
    names = atlas.network_names
    betas = np.zeros((len(conditions), r))  # (C, R)
    for c, cond in enumerate(conditions):
        in_net = net_of_roi == names.index(tasks[cond])
        duration = config.block_duration if cond in config.block_conditions else config.event_duration
        peak = config.task_amplitude / trial_peak_response(duration, config.tr)
        betas[c, in_net] = peak * rng.uniform(0.8, 1.2, size=int(in_net.sum()))
    return signal + regressors @ betas, latent


def simulate_subject(
    config: SynthFMRIConfig,
    subject_index: int,
    rng: np.random.Generator | None = None,
    *,
    label: int | None = None,
    with_volume: bool = False,
) -> SubjectRun:
    """Simulate one subject; ``with_volume`` also builds the 4-D BOLD array on the brain grid.

    The ROI time series are the means of each ROI's voxels in that volume (computed before its float32
    rounding) and do not depend on ``with_volume``: voxels outside the ROIs draw from their own random stream.
    ``label`` (0 or 1) overrides the subject's cohort label.
    """
    if not 0 <= subject_index < config.n_subjects:
        raise ConfigError(f"'subject_index' must lie in [0, {config.n_subjects}). {subject_index} was provided.")
    rng = subject_rng(config.seed, subject_index) if rng is None else rng
    label = int(cohort_labels(config)[subject_index]) if label is None else label
    if label not in (0, 1):
        raise ConfigError(f"'label' must be one of [0, 1]. {label!r} was provided.")
    atlas = load_coordinate_atlas(config.atlas)
    grid = grid_for(config)
    background_rng = np.random.default_rng(rng.integers(2**63))
    t = config.n_frames

    events = make_events(config, rng)
    conditions = list(config.task_networks)
    regressors, _ = task_regressors(events, t, config.tr, conditions)  # (T, C)
    coupling = subject_coupling(config, atlas, label, rng)
    signal, latent = _roi_signals(config, atlas, coupling, regressors, conditions, rng)  # (T, R), (T, K)
    basis = drift_basis(t, config.tr, config.drift_order)  # (T, P)
    global_drift = basis @ rng.normal(0.0, config.drift_amplitude, size=basis.shape[1])  # (T,)
    roi_drift = basis @ rng.normal(0.0, 0.3 * config.drift_amplitude, size=(basis.shape[1], signal.shape[1]))
    drift = global_drift[:, None] + roi_drift  # (T, R)
    motion, spikes = motion_traces(config, rng)
    spike_drop = np.zeros(t)
    spike_drop[spikes] = -config.spike_amplitude * rng.uniform(0.5, 1.5, size=len(spikes))

    brain = np.flatnonzero(grid.mask.ravel())
    centre = grid.voxel_coords(brain).mean(axis=0)
    roi_index = np.concatenate([np.full(len(v), r) for r, v in enumerate(grid.roi_voxels)])  # (N_roi,)
    roi_flat = np.concatenate(grid.roi_voxels)  # (N_roi,)
    percent = (
        (signal + drift)[:, roi_index]
        + motion_artifact(motion, grid.voxel_coords(roi_flat), centre, config.motion_gain)
        + spike_drop[:, None]
        + rng.normal(0.0, config.thermal_noise, size=(t, len(roi_flat)))
    )  # (T, N_roi)
    roi_bold = config.baseline * (1.0 + percent / 100.0)
    counts = np.bincount(roi_index)
    timeseries = np.stack([np.bincount(roi_index, weights=row) for row in roi_bold]) / counts  # (T, R)

    volume = None
    if with_volume:
        rest = np.setdiff1d(brain, roi_flat, assume_unique=True)
        rest_percent = (
            0.3 * config.network_amplitude * latent.mean(axis=1, keepdims=True)
            + global_drift[:, None]
            + motion_artifact(motion, grid.voxel_coords(rest), centre, config.motion_gain)
            + spike_drop[:, None]
            + background_rng.normal(0.0, config.thermal_noise, size=(t, len(rest)))
        )  # (T, N_rest)
        flat = np.zeros((int(np.prod(grid.shape)), t), dtype=np.float32)  # (X*Y*Z, T)
        flat[roi_flat] = roi_bold.T
        flat[rest] = (config.baseline * (1.0 + rest_percent / 100.0)).T
        volume = flat.reshape(*grid.shape, t)  # (X, Y, Z, T)

    return SubjectRun(
        subject=subject_id(subject_index),
        label=label,
        timeseries=timeseries,
        events=events,
        task_regressors=regressors,
        conditions=conditions,
        network_signals=latent,
        coupling=coupling,
        drift=drift,
        motion=motion,
        spikes=spikes,
        volume=volume,
    )


def simulate_roi_timeseries(
    config: SynthFMRIConfig, subject_index: int, rng: np.random.Generator | None = None, *, label: int | None = None
) -> SubjectRun:
    """ROI time series of one subject in memory (no voxels outside ROIs, no files): the fast path.

    Parameters
    ----------
    config
        Cohort definition.
    subject_index
        0-based subject number; picks the label (unless ``label`` is given) and the default random stream.
    rng
        Random stream; default :func:`subject_rng` ``(config.seed, subject_index)``, which is what
        :func:`synthesize_fmri_cohort` uses.

    Returns
    -------
    SubjectRun
        ``timeseries`` has shape ``(T, R)`` with ROIs in atlas order (see :func:`load_coordinate_atlas`).
    """
    return simulate_subject(config, subject_index, rng, label=label, with_volume=False)


def grid_for(config: SynthFMRIConfig) -> BrainGrid:
    """The brain grid and ROI voxels the config simulates on."""
    return build_brain_grid(config.atlas, float(config.voxel_size), float(config.roi_radius))
