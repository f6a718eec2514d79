"""Multi-site synthetic MRI cohorts of traveling subjects with known scanner effects and ground truth.

Every subject is scanned at every site. The first site is the reference: its scans carry only mild Rician
noise and ARE the ground truth (``ground_truth/`` holds byte-identical copies). Other sites add known
contrast changes, thick slices, blur, a bias field, a non-linear intensity curve and stronger noise, all
recorded in ``site_effects.json``. All scans of a subject share one voxel grid, so voxelwise comparisons
against the ground truth need no registration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroattn.data.anatomy import (
    TISSUES,
    AnatomyVariation,
    SubjectAnatomy,
    TissueMaps,
    load_template_tissues,
    sample_variation,
    simulate_subject,
)
from neuroattn.data.site_effects import (
    REFERENCE_NOISE_SIGMA,
    SiteEffects,
    apply_scanner_effects,
    apply_tissue_contrast,
    reference_site_effects,
    sample_site_effects,
)
from neuroattn.errors import ConfigError
from neuroattn.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from neuroattn.io.nifti import save_volume, volume_from_array
from neuroattn.progress import progress_bar

MANIFEST_COLUMNS = ("path", "site", "subject", "session", "modality", "ground_truth", "mask", "dseg_path")
SESSION = "1"  # one visit per site; the site tells the visits apart
# Seed-sequence domains, so anatomy, site parameters and noise never share random streams.
_ANATOMY, _SITE, _NOISE = 1, 2, 3


@dataclass(frozen=True)
class TissueIntensities:
    """Noise-free reference intensity of each pure tissue in one modality (background is 0)."""

    csf: float
    gm: float
    wm: float

    def as_array(self) -> np.ndarray:
        """Intensities in :data:`TISSUES` order, float64 ``(3,)``."""
        return np.array([getattr(self, t) for t in TISSUES], dtype=np.float64)


MODALITY_INTENSITIES: dict[str, TissueIntensities] = {
    "T1w": TissueIntensities(csf=0.25, gm=0.60, wm=0.90),  # WM > GM > CSF
    "T2w": TissueIntensities(csf=1.00, gm=0.55, wm=0.40),  # CSF > GM > WM
    "FLAIR": TissueIntensities(csf=0.08, gm=0.70, wm=0.50),  # GM > WM, CSF suppressed
}


@dataclass
class SynthMRIConfig:
    """What cohort to simulate.

    At the default 2 mm voxels and 10 mm margin every volume is ``(83, 101, 88)`` voxels.
    """

    n_subjects: int = 4
    n_sites: int = 2  # site 0 is the reference (ground-truth) site
    seed: int = 0
    voxel_size: float = 2.0  # mm, isotropic
    modalities: tuple[str, ...] = ("T1w", "T2w", "FLAIR")
    resolution_change: bool = True  # non-reference sites get thick slices (4-6 mm) along z
    margin_mm: float = 10.0  # background kept around the brain's bounding box
    scale_range: tuple[float, float] = (0.94, 1.06)  # subject brain size factor, uniform
    deformation_mm: float = 5.0  # peak length of each subject's smooth warp
    max_ventricle_enlargement: float = 0.6  # subjects draw uniform in [0, this]
    max_gm_thinning: float = 0.3  # subjects draw uniform in [0, this]
    texture_amplitude: float = 0.03  # within-tissue intensity texture, relative
    reference_noise_sigma: float = REFERENCE_NOISE_SIGMA  # the reference site's Rician sigma

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        for name in ("n_subjects", "n_sites"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        if not 0.5 <= float(self.voxel_size) <= 8.0:
            raise ConfigError(f"'voxel_size' must be between 0.5 and 8 mm. {self.voxel_size!r} was provided.")
        known = sorted(MODALITY_INTENSITIES)
        if not self.modalities:
            raise ConfigError(f"'modalities' must hold at least one of {known}. () was provided.")
        for m in self.modalities:
            if m not in MODALITY_INTENSITIES:
                raise ConfigError(f"'modalities' must be among {known}. {m!r} was provided.")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"'modalities' must not repeat. {self.modalities!r} was provided.")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(
                f"'scale_range' must be (low, high) with 0 < low <= high. {self.scale_range!r} was provided."
            )
        for name in ("margin_mm", "deformation_mm", "texture_amplitude", "reference_noise_sigma"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"'{name}' must be >= 0. {getattr(self, name)!r} was provided.")
        for name in ("max_ventricle_enlargement", "max_gm_thinning"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"'{name}' must be in [0, 1]. {getattr(self, name)!r} was provided.")


@dataclass
class SynthMRIResult:
    """What :func:`synthesize_mri_cohort` wrote."""

    out_dir: Path
    manifest_path: Path
    site_effects_path: Path
    files: list[Path]  # every file written, manifest and JSON included
    site_effects: list[SiteEffects]
    subjects: list[str]
    shape: tuple[int, int, int]  # voxels of every volume
    affine: np.ndarray = field(repr=False)  # (4, 4) RAS voxel -> MNI mm


def site_name(index: int) -> str:
    """``0 -> 'siteA'``, ``1 -> 'siteB'``, ..., ``26 -> 'siteAA'``; file names use the letters (``site-A``)."""
    letters = ""
    i = index + 1
    while i > 0:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("A") + r) + letters
    return f"site{letters}"


def subject_name(index: int) -> str:
    return f"sub-{index:03d}"


def cohort_sites(config: SynthMRIConfig) -> list[SiteEffects]:
    """Every site's parameters: the reference first, then sites drawn from ``seed`` (independent of subjects)."""
    sites = [reference_site_effects(site_name(0), config.modalities, config.reference_noise_sigma)]
    for i in range(1, config.n_sites):
        rng = np.random.default_rng([config.seed, _SITE, i])
        sites.append(
            sample_site_effects(
                site_name(i),
                i,
                config.modalities,
                rng,
                voxel_size=config.voxel_size,
                resolution_change=config.resolution_change,
            )
        )
    return sites


def subject_variation(config: SynthMRIConfig, subject: int) -> AnatomyVariation:
    """The anatomical variation of subject number ``subject`` (its own random stream)."""
    rng = np.random.default_rng([config.seed, _ANATOMY, subject])
    return sample_variation(
        rng,
        scale_range=config.scale_range,
        deformation_mm=config.deformation_mm,
        max_ventricle_enlargement=config.max_ventricle_enlargement,
        max_gm_thinning=config.max_gm_thinning,
        texture_amplitude=config.texture_amplitude,
    )


def render_modality(subject: SubjectAnatomy, modality: str, multipliers: np.ndarray | None = None) -> np.ndarray:
    """Noise-free image of ``modality`` from the subject's tissue fractions and texture, float32 ``(X, Y, Z)``."""
    base = MODALITY_INTENSITIES[modality].as_array()
    return apply_tissue_contrast(subject.tissues.probs, base, multipliers) * subject.texture


def scan_at_site(
    subject: SubjectAnatomy, modality: str, effects: SiteEffects, rng: np.random.Generator | None
) -> np.ndarray:
    """Scan ``subject`` in ``modality`` at a site: tissue contrast, then the site's scanner effects.

    ``rng`` draws the Rician noise (None = noise-free). Returns float32 ``(X, Y, Z)`` on the subject's grid.
    """
    mod = effects.modalities.get(modality)
    multipliers = None if mod is None else mod.multipliers(TISSUES)
    img = render_modality(subject, modality, multipliers)
    return apply_scanner_effects(img, effects, modality, subject.tissues.voxel_size, rng)


def noise_rng(config: SynthMRIConfig, subject: int, site: int, modality: str) -> np.random.Generator:
    """The noise stream of one scan; depends only on seed, subject, site and modality."""
    return np.random.default_rng([config.seed, _NOISE, subject, site, config.modalities.index(modality)])


def _scan_relpath(subject: str, site: str, modality: str) -> str:
    entity = f"site-{site.removeprefix('site')}"
    return f"{subject}/{entity}/{subject}_{entity}_{modality}.nii.gz"


def _json_ready(obj):
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def synthesize_mri_cohort(
    out_dir: str | Path, config: SynthMRIConfig | None = None, progress: bool = True
) -> SynthMRIResult:
    """Write a traveling-subject cohort under ``out_dir`` and return what was written.

    Layout (paths in ``manifest.csv`` are relative to ``out_dir``)::

        sub-000/sub-000_mask.nii.gz            brain mask, 0/1 (float32 like every volume)
        sub-000/sub-000_dseg.nii.gz            0 background, 1 CSF, 2 GM, 3 WM
        sub-000/site-A/sub-000_site-A_T1w.nii.gz   one per site and modality
        ground_truth/sub-000_T1w.nii.gz        copy of the reference-site (site-A) scan
        manifest.csv                           path,site,subject,session,modality,ground_truth,mask,dseg_path
        site_effects.json                      every site's parameters, seed, voxel size, shape, affine
    """
    config = SynthMRIConfig() if config is None else config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = load_template_tissues(config.voxel_size, config.margin_mm)
    sites = cohort_sites(config)
    files: list[Path] = []
    rows: list[dict[str, str]] = []
    variations: dict[str, dict] = {}

    def save(data: np.ndarray, rel: str) -> str:
        path = out / rel
        save_volume(volume_from_array(data, template.affine), path)
        files.append(path)
        return rel

    steps = progress_bar(total=config.n_subjects * len(sites), desc="synthetic MRI visits", unit="visit",
                         disable=not progress)
    for s in range(config.n_subjects):
        sub = subject_name(s)
        anatomy = simulate_subject(subject_variation(config, s), template)
        variations[sub] = anatomy.variation.to_dict()
        mask_rel = save(anatomy.tissues.mask().astype(np.float32), f"{sub}/{sub}_mask.nii.gz")
        dseg_rel = save(anatomy.tissues.labels().astype(np.float32), f"{sub}/{sub}_dseg.nii.gz")
        gt_rel = {m: f"ground_truth/{sub}_{m}.nii.gz" for m in config.modalities}
        for site in sites:
            for m in config.modalities:
                img = scan_at_site(anatomy, m, site, noise_rng(config, s, site.index, m))
                rel = save(img, _scan_relpath(sub, site.name, m))
                if site.is_reference:
                    files.append(atomic_write_bytes(out / gt_rel[m], (out / rel).read_bytes()))
                rows.append(
                    {
                        "path": rel,
                        "site": site.name,
                        "subject": sub,
                        "session": SESSION,
                        "modality": m,
                        "ground_truth": gt_rel[m],
                        "mask": mask_rel,
                        "dseg_path": dseg_rel,
                    }
                )
            steps.update(1)
    steps.close()

    manifest_path = out / "manifest.csv"
    with atomic_path(manifest_path) as tmp:
        pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(tmp, index=False)
    files.append(manifest_path)
    meta = {
        "seed": config.seed,
        "voxel_size_mm": config.voxel_size,
        "shape": list(template.shape),
        "affine": template.affine.tolist(),
        "reference_site": sites[0].name,
        "config": asdict(config),
        "tissue_intensities": {m: asdict(MODALITY_INTENSITIES[m]) for m in config.modalities},
        "sites": [s.to_dict() for s in sites],
        "subjects": variations,
    }
    effects_path = out / "site_effects.json"
    atomic_write_text(effects_path, json.dumps(_json_ready(meta), indent=2) + "\n")
    files.append(effects_path)
    return SynthMRIResult(
        out_dir=out,
        manifest_path=manifest_path,
        site_effects_path=effects_path,
        files=files,
        site_effects=sites,
        subjects=[subject_name(s) for s in range(config.n_subjects)],
        shape=template.shape,
        affine=template.affine,
    )


def load_site_effects(path: str | Path) -> list[SiteEffects]:
    """Read the per-site parameters back from a cohort's ``site_effects.json``."""
    meta = json.loads(Path(path).read_text(encoding="utf-8"))
    return [SiteEffects.from_dict(d) for d in meta["sites"]]


__all__ = [
    "MODALITY_INTENSITIES",
    "SubjectAnatomy",
    "SynthMRIConfig",
    "SynthMRIResult",
    "TissueIntensities",
    "TissueMaps",
    "cohort_sites",
    "load_site_effects",
    "noise_rng",
    "render_modality",
    "scan_at_site",
    "simulate_subject",
    "site_name",
    "subject_name",
    "subject_variation",
    "synthesize_mri_cohort",
]
