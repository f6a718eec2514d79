"""``neuroattn harmonize train | apply | evaluate``: the harmonization pipeline from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuroattn.errors import ConfigError

harmonize_app = typer.Typer(help="Train, apply and evaluate MRI harmonization.", no_args_is_help=True)

METHOD_HELP = "sa-cyclegan (the model) or a baseline: zscore, whitestripe, nyul, combat."


@harmonize_app.command("train")
def train(
    manifest: Annotated[Path, typer.Option(help="Cohort manifest CSV (or BIDS folder) with both sites.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: harmonizer/ and training/ go here.")],
    target: Annotated[str, typer.Option(help="Target (reference) site every output is mapped onto.")],
    source: Annotated[str | None, typer.Option(help="Source site (default: every other site).")] = None,
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "sa-cyclegan",
    attention: Annotated[str, typer.Option(help="dense | neighborhood | none (SA-CycleGAN).")] = "dense",
    no_attention: Annotated[bool, typer.Option("--no-attention", help="Same as --attention none.")] = False,
    steps: Annotated[int, typer.Option(min=0, help="Optimizer steps per generator pair.")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="2.5D stacks per step and site.")] = 8,
    base_channels: Annotated[int, typer.Option(min=4, help="Generator width (64 as published).")] = 64,
    res_blocks: Annotated[int, typer.Option(min=3, help="Residual blocks (9 as published).")] = 9,
    disc_layers: Annotated[int, typer.Option(min=1, help="PatchGAN depth (3 = 70x70; 2 for small slices).")] = 3,
    crop: Annotated[int | None, typer.Option(help="Train on random square patches of this many pixels.")] = None,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = 2e-4,
    planes: Annotated[str, typer.Option(help="axial | coronal | sagittal | all (3-plane fusion).")] = "axial",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training run.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Fit a harmonizer on a cohort and save it under OUT/harmonizer."""
    from neuroattn.harmonize.pipeline import train_harmonizer

    params = {}
    if method == "sa-cyclegan":
        params = dict(
            attention="none" if no_attention else attention, max_steps=steps, batch_size=batch_size,
            base_channels=base_channels, n_res_blocks=res_blocks, disc_layers=disc_layers, crop_size=crop,
            lr=lr, planes=_planes(planes), device=device,
            seed=seed, source_site=source,
        )
    elif no_attention or attention != "dense":
        raise ConfigError(f"--attention applies to sa-cyclegan only, not '{method}'")
    result = train_harmonizer(manifest, out, method=method, target_site=target, source_site=source,
                              params=params, resume=resume, progress=progress)
    typer.echo(f"harmonizer ({method}, {'trained' if result.trained else 'UNTRAINED'}): {result.checkpoint}")


@harmonize_app.command("apply")
def apply(
    checkpoint: Annotated[Path, typer.Option(help="Run folder from `harmonize train` (or its harmonizer/).")],
    input: Annotated[Path, typer.Option("--input", help="A NIfTI file, a folder, a manifest CSV or BIDS.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (input layout and file names kept).")],
    site: Annotated[str | None, typer.Option(help="Site of inputs that carry no site label.")] = None,
    modality: Annotated[str | None, typer.Option(help="Modality of inputs that carry none.")] = None,
    planes: Annotated[str | None, typer.Option(help="axial | coronal | sagittal | all / 3 (fused).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip subjects finished by an earlier run.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="'local' (Dask LocalCluster) or a scheduler address.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Workers of the local Dask cluster.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Harmonize whole volumes; bad subjects are skipped and listed in OUT/failures.csv (exit 1 if any)."""
    from neuroattn.harmonize.apply import apply_harmonizer

    report = apply_harmonizer(
        checkpoint, input, out, site=site, modality=modality, planes=_planes(planes) if planes else None,
        resume=resume, scheduler=scheduler, n_workers=workers, progress=progress,
    )
    typer.echo(f"{report.summary()} · outputs under {out}")
    for failed in report.failed:
        typer.echo(f"FAILED {failed.key}: {failed.reason}", err=True)
    if report.failed:
        typer.echo(f"failures listed in {report.failures}", err=True)
        raise typer.Exit(code=1)


@harmonize_app.command("evaluate")
def evaluate(
    manifest: Annotated[Path, typer.Option(help="The cohort manifest the outputs were made from.")],
    harmonized: Annotated[
        list[str], typer.Option(help="Output folder of `harmonize apply`; repeat as NAME=DIR for several methods.")
    ],
    out: Annotated[Path, typer.Option("--out", help="metrics.json path (metrics.csv and report.html beside).")],
    reference_site: Annotated[str | None, typer.Option(help="Target site (default: the manifest's first).")] = None,
    permutations: Annotated[int, typer.Option(min=16, help="MMD permutations.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for permutations and bootstraps.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """MMD, domain classifier, KS/Wasserstein, PSNR/SSIM and Dice vs ground truth, radiomics ICC; HTML report."""
    from neuroattn.harmonize.assessment import evaluate_outputs

    folders = {}
    for item in harmonized:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = "harmonized", item
        folders[name] = Path(folder)
    files = evaluate_outputs(manifest, folders, out, reference_site=reference_site, n_permutations=permutations,
                             seed=seed, progress=progress)
    typer.echo(f"metrics: {files.metrics_json}\ntable: {files.metrics_csv}\nreport: {files.report_html}")


def _planes(value: str) -> str:
    """'3' is accepted for the three-plane fusion ('all')."""
    return "all" if value in ("3", "all") else value
