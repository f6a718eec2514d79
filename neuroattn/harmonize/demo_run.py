"""The main job on built-in data: simulate two sites, train SA-CycleGAN-2.5D (with and without attention) and
the baselines on training subjects, harmonize held-out subjects, evaluate everything against ground truth."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort
from neuroattn.harmonize.apply import apply_harmonizer
from neuroattn.harmonize.assessment import evaluate_outputs
from neuroattn.harmonize.pipeline import train_harmonizer
from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.manifest import Manifest, load_manifest
from neuroattn.io.nifti import load_volume
from neuroattn.viz import save_montage


@dataclass
class HarmonizationDemoConfig:
    """Sizes of the demo; the defaults train in about ten minutes on two CPU cores."""

    n_train: int = 4  # traveling subjects used for fitting (unpaired: the model never sees them matched)
    n_holdout: int = 6  # subjects only harmonized and evaluated (6 lets the paired MMD test reach p < 0.05)
    seed: int = 0
    voxel_size: float = 2.0  # mm
    modalities: tuple[str, ...] = ("T1w", "T2w", "FLAIR")
    steps: int = 450  # optimizer steps per SA-CycleGAN variant
    base_channels: int = 16  # 64 as published; 16 keeps CPU training to minutes
    n_res_blocks: int = 9
    disc_layers: int = 3  # 3 = 70x70 PatchGAN; 2 for slices under ~64 pixels
    batch_size: int = 4
    crop_size: int | None = 64  # random square training patches (pixels); None trains on whole slices
    lr: float = 1e-3  # short runs need a larger peak rate than the paper's 5e-5 over 200 epochs
    warmup_steps: int = 30
    ablation: bool = True  # also train the no-attention variant
    baselines: tuple[str, ...] = ("zscore", "nyul", "whitestripe", "combat")
    n_permutations: int = 1000
    device: str = "auto"

    @classmethod
    def quick(cls, seed: int = 0) -> HarmonizationDemoConfig:
        """Tiny settings that exercise every stage in well under a minute (results are not meaningful)."""
        return cls(n_train=2, n_holdout=2, seed=seed, voxel_size=6.0, modalities=("T1w", "FLAIR"), steps=4,
                   base_channels=8, n_res_blocks=3, disc_layers=2, batch_size=2, crop_size=None, warmup_steps=1,
                   baselines=("nyul",), n_permutations=64)


@dataclass
class HarmonizationDemoResult:
    """Where the demo wrote everything and its headline numbers."""

    out_dir: Path
    report: Path
    metrics: Path
    summary: Path
    preview: Path
    headline: dict[str, dict[str, Any]]
    targets: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        cols = ("psnr", "ssim", "mmd_intensity", "domain_accuracy", "ks", "dice_vs_ground_truth")
        out = [f"{'method':<22}" + "".join(f"{c:>22}" for c in cols)]
        for name, h in self.headline.items():
            values = "".join(f"{h[c]:>22.4f}" if isinstance(h.get(c), float) else f"{'–':>22}" for c in cols)
            out.append(f"{name:<22}{values}")
        out.append("targets: " + ", ".join(f"{k}={'met' if v['met'] else 'missed'} ({v['value']})"
                                           for k, v in self.targets.items()))
        out += [f"report: {self.report}", f"metrics: {self.metrics}", f"summary: {self.summary}",
                f"site effects before harmonization: {self.preview}"]
        return out


def _targets(headline: dict[str, dict[str, Any]], relative: dict[str, dict[str, Any]], model: str) -> dict:
    """The issue's targets for the model on held-out subjects: met or missed, with the measured value."""
    h, rel = headline[model], relative.get(model, {})
    others = [n for n in headline if n not in ("raw", model) and not n.startswith("sa-cyclegan")]
    best_baseline = max((headline[n].get("psnr") or float("-inf")) for n in others) if others else float("-inf")
    mmd_red = rel.get("mmd_intensity_reduction_percent")
    return {
        "mmd_reduction_ge_90pct": {"value": mmd_red, "met": mmd_red is not None and mmd_red >= 90.0},
        "domain_accuracy_le_0.60": {"value": h.get("domain_accuracy"),
                                    "met": (h.get("domain_accuracy") or 1.0) <= 0.60},
        "psnr_above_raw_and_baselines": {
            "value": h.get("psnr"),
            "met": (h.get("psnr") or float("-inf")) > max(headline["raw"].get("psnr") or float("-inf"), best_baseline),
        },
        "tissue_dice_ge_0.9": {"value": h.get("dice_vs_ground_truth"),
                               "met": (h.get("dice_vs_ground_truth") or 0.0) >= 0.9},
    }


def _preview(manifest: Manifest, path: Path) -> Path:
    """One subject at every site, every contrast: what the scanner effects look like before harmonization."""
    subject = manifest.subjects[-1]
    rows: dict[str, list[tuple[str, Any]]] = {}
    for row in manifest.rows_for(subject=subject):
        rows.setdefault(row.site, []).append((row.modality, load_volume(row.path).data))
    return save_montage(rows, path, title=f"{subject} scanned at every site (reference: {manifest.sites[0]})")


def demo_synth_config(config: HarmonizationDemoConfig) -> SynthMRIConfig:
    """The traveling-subject simulation behind the demo: its subjects, sites, grid and contrasts."""
    return SynthMRIConfig(n_subjects=config.n_train + config.n_holdout, n_sites=2, seed=config.seed,
                          voxel_size=config.voxel_size, modalities=config.modalities)


def synthesize_demo_cohort(
    config: HarmonizationDemoConfig, cohort_dir: Path, progress: bool = True
) -> tuple[Manifest, Path, Path]:
    """Simulate the demo's traveling subjects; returns the manifest and the train / held-out manifest paths."""
    synth = synthesize_mri_cohort(cohort_dir, demo_synth_config(config), progress=progress)
    manifest = load_manifest(synth.manifest_path)
    subjects = list(manifest.subjects)
    train_manifest = manifest.rows_for(subject=subjects[: config.n_train]).to_csv(cohort_dir / "train.csv")
    holdout_manifest = manifest.rows_for(subject=subjects[config.n_train :]).to_csv(cohort_dir / "holdout.csv")
    return manifest, train_manifest, holdout_manifest


def sa_cyclegan_params(config: HarmonizationDemoConfig) -> dict[str, Any]:
    """SACycleGANHarmonizer parameters of the demo's model (attention as the model's default)."""
    return dict(base_channels=config.base_channels, n_res_blocks=config.n_res_blocks, disc_layers=config.disc_layers,
                max_steps=config.steps, batch_size=config.batch_size, lr=config.lr, warmup_steps=config.warmup_steps,
                crop_size=config.crop_size, device=config.device, seed=config.seed,
                checkpoint_every=max(50, config.steps // 4))


def run_harmonization_demo(
    out_dir: str | Path,
    config: HarmonizationDemoConfig | None = None,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> HarmonizationDemoResult:
    """Run the whole harmonization job on a synthetic traveling-subject cohort and write a report."""
    config = config or HarmonizationDemoConfig()
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    echo(f"[1/4] simulating {config.n_train + config.n_holdout} traveling subjects at 2 sites")
    manifest, train_manifest, holdout_manifest = synthesize_demo_cohort(config, out_dir / "cohort", progress)
    target = manifest.sites[0]
    preview = _preview(manifest, out_dir / "cohort_preview.png")
    seconds["simulate"] = time.perf_counter() - clock

    model_params = sa_cyclegan_params(config)
    variants: dict[str, tuple[str, dict[str, Any]]] = {"sa-cyclegan": ("sa-cyclegan", {**model_params,
                                                                                       "attention": "dense"})}
    if config.ablation:
        variants["sa-cyclegan-noattn"] = ("sa-cyclegan", {**model_params, "attention": "none"})
    variants.update({name: (name, {}) for name in config.baselines})

    echo(f"[2/4] fitting {len(variants)} harmonizers on {config.n_train} training subjects")
    trained: dict[str, bool] = {}
    checkpoints: dict[str, Path] = {}
    for name, (method, params) in variants.items():
        start = time.perf_counter()
        result = train_harmonizer(load_manifest(train_manifest), out_dir / "runs" / name, method=method,
                                  target_site=target, params=params, progress=progress)
        checkpoints[name], trained[name] = result.checkpoint, result.trained
        seconds[f"fit_{name}"] = time.perf_counter() - start
        echo(f"      {name}: {seconds[f'fit_{name}']:.0f} s")

    echo(f"[3/4] harmonizing {config.n_holdout} held-out subjects")
    harmonized: dict[str, Path] = {}
    for name, checkpoint in checkpoints.items():
        start = time.perf_counter()
        report = apply_harmonizer(checkpoint, holdout_manifest, out_dir / "harmonized" / name, progress=progress)
        if report.failed:
            raise RuntimeError(f"{name}: {report.failed[0].key}: {report.failed[0].reason}")
        harmonized[name] = out_dir / "harmonized" / name
        seconds[f"apply_{name}"] = time.perf_counter() - start

    echo("[4/4] evaluating raw, the model and the baselines against ground truth")
    start = time.perf_counter()
    files = evaluate_outputs(holdout_manifest, harmonized, out_dir / "evaluation" / "metrics.json",
                             reference_site=target, n_permutations=config.n_permutations, seed=config.seed,
                             trained=trained, progress=progress,
                             notes=["Synthetic traveling subjects: every held-out subject was also scanned at the "
                                    "reference site, so PSNR/SSIM/Dice are measured against that ground truth.",
                                    f"SA-CycleGAN-2.5D: base {config.base_channels} channels, {config.steps} steps "
                                    "on CPU-sized settings; see settings below."],
                             ablation={"with attention (dense)": "sa-cyclegan",
                                       "no attention": "sa-cyclegan-noattn"} if config.ablation else None)
    seconds["evaluate"] = time.perf_counter() - start
    metrics = files.metrics
    headline = metrics["headline"]
    targets = _targets(headline, metrics.get("relative_to_raw", {}), "sa-cyclegan")
    seconds["total"] = time.perf_counter() - clock
    summary = out_dir / "demo_summary.json"
    payload = {
        "config": asdict(config),
        "reference_site": target,
        "trained": trained,
        "headline": headline,
        "relative_to_raw": metrics.get("relative_to_raw", {}),
        "targets": targets,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "report": str(files.report_html),
        "metrics": str(files.metrics_json),
        "preview": str(preview),
    }
    atomic_write_text(summary, json.dumps(payload, indent=2, default=str) + "\n")
    return HarmonizationDemoResult(out_dir, files.report_html, files.metrics_json, summary, preview, headline,
                                   targets, seconds)
