"""Simulated NSD-like fMRI: visual-cortex voxels whose responses mix CLIP, low-level and concept features.

Ground truth is planted and kept: every voxel's encoding weights, signal and noise sd, its noise ceiling and,
for concept-selective voxels, the concept tag they prefer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neuroattn.data.nsd import ROI_NAMES, SubjectData, zscore_by_training
from neuroattn.data.pca import WhitenedPCA
from neuroattn.data.stimuli import StimulusSet, save_stimuli
from neuroattn.decode.clip_features import ImageFeatures, lowlevel_features
from neuroattn.decode.noise_ceiling import noise_ceiling_from_ncsnr
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_path, atomic_write_text
from neuroattn.io.nifti import save_volume, volume_from_array
from neuroattn.progress import progress_bar

LOWLEVEL_FRACTION = {1: 0.85, 2: 0.75, 3: 0.6, 4: 0.45, 5: 0.2}  # share of low-level drive per ROI code
ROI_QUANTILES = (0.2, 0.4, 0.55, 0.7)  # shares of voxels (most posterior first) that end V1, V2, V3, V4
CONCEPT_PATCH = 8  # voxels per patch of one concept's selective voxels
CONCEPT_MIN_SHARE, CONCEPT_MAX_SHARE = 0.02, 0.5  # tags on fewer/more images make no selective voxels


@dataclass
class NSDSimulationConfig:
    """Settings of :func:`simulate_nsd`."""

    n_subjects: int = 3
    n_voxels: int = 6000  # per subject, approximate: each subject gets +-5 % of it
    test_images: int = 300  # images held out, shared by all subjects (like NSD's shared1000)
    repeats: int = 3  # presentations of every image
    semantic_weight: float = 1.0  # relative drive by CLIP features
    lowlevel_weight: float = 1.0  # relative drive by low-level image features
    concept_fraction: float = 0.1  # share of voxels with a planted selectivity for one concept tag
    concept_strength: float = 0.7  # correlation of a concept voxel's signal with its concept indicator
    noise_sd: float = 1.7  # trial noise sd; signal sd has median 1, so median ceiling of 3-trial means ~50 %
    amplitude_spread: float = 0.4  # sd of log signal sd across voxels
    voxel_size: float = 3.0  # mm
    smoothness: float = 6.0  # mm, sd of the Gaussian that makes weights of neighbouring voxels similar
    n_semantic: int = 64  # principal components of the CLIP token grid used as semantic regressors
    n_lowlevel: int = 32  # principal components of the low-level features used as regressors
    tuning_axes: int = 0  # >0: voxel weights mix this many tuning axes per ROI, shared by all subjects; 0: isotropic
    tuning_specific: float = 0.15  # with tuning_axes: share of each voxel's weight variance that is its own
    seed: int = 0

    def validate(self) -> None:
        checks = {
            "n_subjects": self.n_subjects >= 1,
            "n_voxels": self.n_voxels >= 20,
            "test_images": self.test_images >= 1,
            "repeats": self.repeats >= 2,
            "semantic_weight": self.semantic_weight >= 0,
            "lowlevel_weight": self.lowlevel_weight >= 0,
            "concept_fraction": 0 <= self.concept_fraction <= 1,
            "concept_strength": 0 <= self.concept_strength < 1,
            "noise_sd": self.noise_sd > 0,
            "voxel_size": self.voxel_size > 0,
            "smoothness": self.smoothness > 0,
            "n_semantic": self.n_semantic >= 1,
            "n_lowlevel": self.n_lowlevel >= 1,
            "tuning_axes": self.tuning_axes >= 0,
            "tuning_specific": 0 <= self.tuning_specific <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"NSDSimulationConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.semantic_weight + self.lowlevel_weight <= 0:
            raise ConfigError("NSDSimulationConfig: semantic_weight and lowlevel_weight cannot both be 0")


@dataclass
class SimulationDesign:
    """Per-image regressors shared by all subjects.

    ``semantic`` (N, n_semantic) and ``lowlevel`` (N, n_lowlevel) are whitened principal components (zero
    mean, unit variance over the N images); ``concept_matrix`` (N, K) flags the tags in ``concepts``.
    """

    semantic: np.ndarray
    lowlevel: np.ndarray
    concepts: list[str]
    concept_matrix: np.ndarray
    test_image_ids: np.ndarray  # (n_test,) sorted

    def regressors(self) -> np.ndarray:
        """Every true regressor (N, n_semantic + n_lowlevel + K), float64: the response is linear in these."""
        return np.concatenate([self.semantic, self.lowlevel, self.concept_matrix.astype(np.float64)], axis=1)


@dataclass
class SubjectTruth:
    """Planted ground truth of one subject (V voxels, N images).

    ``signal`` (N, V) noise-free responses in raw units; ``signal_sd`` (V,) their sd over the N images;
    ``noise_sd`` (V,) trial noise sd; ``noise_ceiling`` (V,) percent for ``repeats``-trial means;
    ``concept`` (V,) index into the design's concepts or -1; ``zscore_mean``/``zscore_sd`` (V,) map raw betas
    to the z-scored ones in :class:`SubjectData`.
    """

    semantic_weights: np.ndarray  # (V, n_semantic), unit rows
    lowlevel_weights: np.ndarray  # (V, n_lowlevel), unit rows
    lowlevel_fraction: np.ndarray  # (V,)
    signal: np.ndarray
    signal_sd: np.ndarray
    noise_sd: np.ndarray
    noise_ceiling: np.ndarray
    concept: np.ndarray
    zscore_mean: np.ndarray
    zscore_sd: np.ndarray

    def concept_names(self, concepts: list[str]) -> list[str | None]:
        """The planted concept of each voxel, None where there is none."""
        return [concepts[c] if c >= 0 else None for c in self.concept]


@dataclass
class SimulatedNSD:
    """Simulated subjects, their planted truth and the shared design."""

    subjects: list[SubjectData]
    truth: list[SubjectTruth]
    design: SimulationDesign
    config: NSDSimulationConfig = field(default_factory=NSDSimulationConfig)


def semantic_inputs(features: ImageFeatures) -> np.ndarray:
    """The whole CLIP token grid flattened, (N, L*D): the space decoders retrieve in."""
    return features.tokens.reshape(len(features.tokens), -1)


def build_design(stimuli: StimulusSet, features: ImageFeatures, config: NSDSimulationConfig) -> SimulationDesign:
    """Whitened semantic and low-level regressors, concept indicators and the shared test images."""
    if len(features) != len(stimuli):
        raise InvalidInputError(f"{len(features)} CLIP feature rows for {len(stimuli)} images")
    if config.test_images >= len(stimuli):
        raise ConfigError(f"'test_images' must be below the {len(stimuli)} images. {config.test_images} was provided.")
    rng = np.random.default_rng([config.seed, 0])
    vocab = stimuli.concept_vocabulary()
    matrix = stimuli.concept_matrix(vocab)
    share = matrix.mean(axis=0)
    keep = (share >= CONCEPT_MIN_SHARE) & (share <= CONCEPT_MAX_SHARE)
    return SimulationDesign(
        semantic=WhitenedPCA(config.n_semantic).fit_transform(semantic_inputs(features)),
        lowlevel=WhitenedPCA(config.n_lowlevel).fit_transform(lowlevel_features(stimuli.images)),
        concepts=[t for t, k in zip(vocab, keep, strict=True) if k],
        concept_matrix=matrix[:, keep],
        test_image_ids=np.sort(rng.choice(len(stimuli), size=config.test_images, replace=False)).astype(np.int64),
    )


def _smooth_field(mm: np.ndarray, sigma: float) -> np.ndarray:
    """(V, V) row-normalised Gaussian kernel over voxel positions (mm)."""
    d2 = ((mm[:, None, :] - mm[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * sigma**2))
    return kernel / kernel.sum(axis=1, keepdims=True)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Columns of (N, V) to zero mean and unit variance over N."""
    x = x - x.mean(axis=0)
    return x / x.std(axis=0)


@functools.lru_cache(maxsize=2)
def _brain_mask(voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    from neuroattn.data.fmri_atlas import mni_brain_mask

    return mni_brain_mask(voxel_size)


def visual_voxels(config: NSDSimulationConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One subject's visual-cortex-like voxels: MNI mm (V, 3) and ROI codes (V,).

    Occipital and ventral brain voxels are ranked by how posterior they are (penalising dorsal and very
    inferior ones) plus a smooth subject-specific jitter; the first ~``n_voxels`` are kept. ROIs V1..V4 and
    "higher" follow quantiles of y (posterior -> anterior), ties within a slice broken medial-first.
    """
    mask, affine = _brain_mask(config.voxel_size)
    ijk = np.argwhere(mask)  # (B, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    _x, y, z = xyz.T
    score = y + 0.5 * np.maximum(z - 5, 0) + 0.5 * np.maximum(-10 - z, 0)  # mm; low = posterior, mid-height
    freq = rng.normal(0, 1 / 40, size=(3, 3))  # cycles per mm of the jitter
    jitter = 4.0 * np.cos(xyz @ freq.T + rng.uniform(0, 2 * np.pi, 3)).sum(axis=1) / np.sqrt(3)
    score = np.where((z > -20) & (z < 30), score + jitter, np.inf)
    n = round(config.n_voxels * (1 + 0.05 * rng.uniform(-1, 1)))
    n = min(n, int(np.isfinite(score).sum()))
    chosen = np.sort(np.argsort(score, kind="stable")[:n])
    mm = xyz[chosen]
    # y first; within a coronal slice, voxels nearest the calcarine axis (medial, mid-height) come first
    radial = np.hypot(mm[:, 0], mm[:, 2] - np.median(mm[:, 2]))
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((radial, mm[:, 1]))] = np.arange(n)  # 0 = most posterior
    roi = (1 + np.searchsorted(np.array(ROI_QUANTILES) * n, rank, side="right")).astype(np.int16)
    return mm, roi


def _concept_voxels(mm: np.ndarray, roi: np.ndarray, n_concepts: int, fraction: float, rng) -> np.ndarray:
    """(V,) planted concept index (-1 none): patches of neighbouring V4/higher voxels sharing one concept."""
    concept = np.full(len(mm), -1, dtype=np.int64)
    n_target = round(fraction * len(mm))
    if n_target == 0 or n_concepts == 0:
        return concept
    pool = np.flatnonzero(roi >= 4)
    if len(pool) < n_target:
        pool = np.arange(len(mm))
    while (concept >= 0).sum() < n_target:
        free = pool[concept[pool] < 0]
        centre = mm[rng.choice(free)]
        take = min(CONCEPT_PATCH, n_target - int((concept >= 0).sum()))
        nearest = free[np.argsort(np.linalg.norm(mm[free] - centre, axis=1), kind="stable")[:take]]
        concept[nearest] = int(rng.integers(n_concepts))
    return concept


def _voxel_weights(
    kernel: np.ndarray, roi: np.ndarray, n_features: int, config: NSDSimulationConfig, rng: np.random.Generator,
    stream: int,
) -> np.ndarray:
    """(V, n_features) unit weight rows, spatially smooth.

    Isotropic (``tuning_axes == 0``): each voxel's direction is a smoothed Gaussian draw. Otherwise, as in
    cortex, tuning is low-dimensional: every ROI has ``tuning_axes`` axes shared by all subjects (drawn from
    the config seed alone), a voxel mixes its ROI's axes with smooth subject-specific coefficients, and
    ``tuning_specific`` of its weight variance is its own.
    """
    n_vox = len(roi)
    if config.tuning_axes == 0:
        return _unit_rows(kernel @ rng.standard_normal((n_vox, n_features)))
    shared_rng = np.random.default_rng([config.seed, 1000 + stream])
    axes = shared_rng.standard_normal((max(ROI_NAMES) + 1, config.tuning_axes, n_features))  # (R, A, F)
    coef = kernel @ rng.standard_normal((n_vox, config.tuning_axes))  # (V, A)
    shared = _unit_rows(np.einsum("va,vaf->vf", coef, axes[roi.astype(np.int64)]))
    own = _unit_rows(kernel @ rng.standard_normal((n_vox, n_features)))
    return _unit_rows(np.sqrt(1 - config.tuning_specific) * shared + np.sqrt(config.tuning_specific) * own)


def _simulate_subject(
    name: str, design: SimulationDesign, config: NSDSimulationConfig, rng: np.random.Generator
) -> tuple[SubjectData, SubjectTruth]:
    mm, roi = visual_voxels(config, rng)
    n_vox, n_img = len(mm), len(design.semantic)
    kernel = _smooth_field(mm, config.smoothness)
    w_sem = _voxel_weights(kernel, roi, design.semantic.shape[1], config, rng, stream=0)  # (V, ks)
    w_low = _voxel_weights(kernel, roi, design.lowlevel.shape[1], config, rng, stream=1)  # (V, kl)
    frac = np.array([LOWLEVEL_FRACTION[int(r)] for r in roi])
    low_share = config.lowlevel_weight * frac
    sem_share = config.semantic_weight * (1 - frac)
    base = np.sqrt(sem_share) * (design.semantic @ w_sem.T) + np.sqrt(low_share) * (design.lowlevel @ w_low.T)
    base = _standardise(base)  # (N, V)
    concept = _concept_voxels(mm, roi, len(design.concepts), config.concept_fraction, rng)
    has = concept >= 0
    if has.any():
        indicator = _standardise(design.concept_matrix[:, concept[has]].astype(np.float64))  # (N, V_c)
        rho = config.concept_strength
        base[:, has] = np.sqrt(1 - rho**2) * base[:, has] + rho * indicator
        base[:, has] = _standardise(base[:, has])
    amplitude = np.exp(config.amplitude_spread * rng.standard_normal(n_vox))  # signal sd, median 1
    signal = base * amplitude  # (N, V), sd over images exactly `amplitude`
    noise_sd = np.full(n_vox, config.noise_sd)
    image_ids = np.repeat(np.arange(n_img), config.repeats)
    image_ids = image_ids[rng.permutation(len(image_ids))].astype(np.int64)  # random trial order
    is_test = np.isin(image_ids, design.test_image_ids)
    raw = signal[image_ids] + noise_sd * rng.standard_normal((len(image_ids), n_vox))  # (n_trials, V)
    betas = zscore_by_training(raw, is_test)
    train = raw[~is_test]
    ceiling = noise_ceiling_from_ncsnr(amplitude / noise_sd, config.repeats)
    grid, ijk = _crop_grid(mm, config.voxel_size)
    order = np.lexsort((ijk[:, 2], ijk[:, 1], ijk[:, 0]))  # C order of voxel indices, as a mask read back gives
    subject = SubjectData(
        subject=name,
        betas=np.ascontiguousarray(betas[:, order]),
        image_ids=image_ids,
        is_test=is_test,
        voxel_ijk=ijk[order],
        affine=grid[0],
        mask_shape=grid[1],
        roi=roi[order],
        roi_names=dict(ROI_NAMES),
    )
    truth = SubjectTruth(
        semantic_weights=w_sem[order].astype(np.float32),
        lowlevel_weights=w_low[order].astype(np.float32),
        lowlevel_fraction=frac[order],
        signal=signal[:, order].astype(np.float32),
        signal_sd=amplitude[order],
        noise_sd=noise_sd[order],
        noise_ceiling=ceiling[order],
        concept=concept[order],
        zscore_mean=train.mean(axis=0)[order],
        zscore_sd=train.std(axis=0)[order],
    )
    return subject, truth


def _crop_grid(mm: np.ndarray, voxel_size: float) -> tuple[tuple[np.ndarray, tuple[int, int, int]], np.ndarray]:
    """A RAS grid just around the voxels (1-voxel margin): ((affine, shape), voxel indices (V, 3))."""
    lo = mm.min(axis=0) - voxel_size
    ijk = np.rint((mm - lo) / voxel_size).astype(np.int64)
    shape = tuple(int(s) for s in ijk.max(axis=0) + 2)
    affine = np.diag([voxel_size] * 3 + [1.0])
    affine[:3, 3] = lo
    return (affine, shape), ijk


def simulate_nsd(
    stimuli: StimulusSet, features: ImageFeatures, config: NSDSimulationConfig | None = None, progress: bool = False
) -> SimulatedNSD:
    """Simulate NSD-like single-trial betas of ``config.n_subjects`` subjects viewing ``stimuli``.

    Each voxel's noise-free response to an image is a spatially smooth mix of whitened CLIP and low-level
    principal components (early ROIs weighted to low-level, later ones to CLIP), plus for a
    ``concept_fraction`` of V4/higher voxels a planted selectivity for one concept tag; its sd over images is
    the voxel's signal sd. Each image is shown ``repeats`` times in random order with Gaussian noise of
    ``noise_sd``; the ``test_images`` held-out images are shared by all subjects. Betas are z-scored per
    voxel over training trials.

    Parameters
    ----------
    stimuli : StimulusSet
        N images with concept tags.
    features : ImageFeatures
        CLIP features of the N images.
    config : NSDSimulationConfig
        Settings (default :class:`NSDSimulationConfig`).

    Returns
    -------
    SimulatedNSD
        ``subjects`` (SubjectData, betas (N * repeats, V_s)), ``truth`` per subject and the shared ``design``.
    """
    config = config or NSDSimulationConfig()
    config.validate()
    design = build_design(stimuli, features, config)
    subjects, truths = [], []
    for s in progress_bar(range(config.n_subjects), desc="simulate NSD", unit="subject", disable=not progress):
        rng = np.random.default_rng([config.seed, s + 1])
        subject, truth = _simulate_subject(f"subj{s + 1:02d}", design, config, rng)
        subjects.append(subject)
        truths.append(truth)
    return SimulatedNSD(subjects=subjects, truth=truths, design=design, config=config)


def save_simulated_nsd(sim: SimulatedNSD, stimuli: StimulusSet, root: str | Path, progress: bool = False) -> Path:
    """Write the NSD-like layout: stimuli, ``simulation.json`` and per subject betas, masks, trials and truth."""
    root = Path(root)
    save_stimuli(stimuli, root)
    summary = {
        "config": asdict(sim.config),
        "n_images": len(stimuli),
        "subjects": [s.subject for s in sim.subjects],
        "n_voxels": {s.subject: s.n_voxels for s in sim.subjects},
        "concepts": sim.design.concepts,
        "test_image_ids": sim.design.test_image_ids.tolist(),
        "roi_names": {str(k): v for k, v in ROI_NAMES.items()},
    }
    atomic_write_text(root / "simulation.json", json.dumps(summary, indent=2))
    for subject, truth in progress_bar(
        list(zip(sim.subjects, sim.truth, strict=True)), desc="save NSD", unit="subject", disable=not progress
    ):
        _save_subject(root / subject.subject, subject, truth, sim.design)
    return root


def _save_subject(folder: Path, subject: SubjectData, truth: SubjectTruth, design: SimulationDesign) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = tuple(subject.voxel_ijk.T)
    mask = subject.mask().astype(np.float32)
    roi = np.zeros(subject.mask_shape, dtype=np.float32)
    roi[index] = subject.roi
    betas = np.zeros((*subject.mask_shape, subject.n_trials), dtype=np.float32)  # (X, Y, Z, n_trials)
    betas[index] = subject.betas.T
    save_volume(volume_from_array(mask, subject.affine), folder / "nsdgeneral.nii.gz")
    save_volume(volume_from_array(roi, subject.affine), folder / "roi.nii.gz")
    save_volume(volume_from_array(betas, subject.affine), folder / "betas.nii.gz")
    repeat = np.zeros(subject.n_trials, dtype=np.int64)
    seen: dict[int, int] = {}
    for t, image in enumerate(subject.image_ids.tolist()):
        repeat[t] = seen.get(image, 0)
        seen[image] = repeat[t] + 1
    lines = ["trial,image_id,repeat,split"] + [
        f"{t},{i},{r},{'test' if te else 'train'}"
        for t, (i, r, te) in enumerate(
            zip(subject.image_ids.tolist(), repeat.tolist(), subject.is_test.tolist(), strict=True)
        )
    ]
    atomic_write_text(folder / "trials.csv", "\n".join(lines) + "\n")
    with atomic_path(folder / "truth.npz") as tmp:
        np.savez_compressed(
            tmp,
            concepts=np.array(design.concepts, dtype=str),
            semantic_design=design.semantic.astype(np.float32),
            lowlevel_design=design.lowlevel.astype(np.float32),
            concept_matrix=design.concept_matrix,
            test_image_ids=design.test_image_ids,
            **{k: getattr(truth, k) for k in SubjectTruth.__dataclass_fields__},
        )


def load_simulation_truth(root: str | Path, subject: str) -> tuple[SubjectTruth, SimulationDesign]:
    """Read one subject's planted truth and the shared design from ``root/<subject>/truth.npz``."""
    path = Path(root) / subject / "truth.npz"
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    with np.load(path, allow_pickle=False) as npz:
        truth = SubjectTruth(**{k: npz[k] for k in SubjectTruth.__dataclass_fields__})
        design = SimulationDesign(
            semantic=npz["semantic_design"].astype(np.float64),
            lowlevel=npz["lowlevel_design"].astype(np.float64),
            concepts=[str(c) for c in npz["concepts"]],
            concept_matrix=npz["concept_matrix"],
            test_image_ids=npz["test_image_ids"],
        )
    return truth, design
