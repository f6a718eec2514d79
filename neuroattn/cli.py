"""The ``neuroattn`` command line: every pipeline as ``neuroattn <area> <verb>``; user errors as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from neuroattn.commands.bench import bench_app
from neuroattn.commands.brain3d import brain3d_app
from neuroattn.commands.decode import decode_app
from neuroattn.commands.encode import encode_app
from neuroattn.commands.fmri import fmri_app
from neuroattn.commands.harmonize import harmonize_app
from neuroattn.errors import NeuroattnError

app = typer.Typer(
    name="neuroattn",
    help="Attention-based brain models: MRI harmonization, fMRI foundation models, decoding and encoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Synthetic data with planted ground truth, and input validation.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(harmonize_app, name="harmonize")
app.add_typer(bench_app, name="bench")
app.add_typer(fmri_app, name="fmri")
app.add_typer(decode_app, name="decode")
app.add_typer(encode_app, name="encode")
app.add_typer(brain3d_app, name="brain3d")

OutDir = Annotated[Path, typer.Option("--out", help="Output folder (created if missing).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives identical files.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Versions, compute device and available attention kernels."""
    from neuroattn.system import collect_system_info

    sysinfo = collect_system_info()
    if as_json:
        typer.echo(json.dumps(sysinfo.to_dict(), indent=2))
        return
    typer.echo(f"neuroattn {sysinfo.neuroattn} · Python {sysinfo.python} · {sysinfo.platform}")
    gpus = ", ".join(sysinfo.cuda_devices) or "none"
    typer.echo(f"device: {sysinfo.device} (CUDA GPUs: {gpus}; bf16: {sysinfo.bf16_supported})")
    kernels = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sysinfo.attention_kernels.items())
    typer.echo(f"attention kernels: {kernels}")
    for name, version in sysinfo.packages.items():
        typer.echo(f"  {name:<16} {version or 'not installed'}")


@data_app.command("synth-mri")
def synth_mri(
    out: OutDir,
    sites: Annotated[int, typer.Option(min=2, help="Number of sites; the first is the reference.")] = 2,
    subjects: Annotated[int, typer.Option(min=1, help="Number of traveling subjects.")] = 4,
    seed: Seed = 0,
    voxel_size: Annotated[float, typer.Option(min=0.5, max=8.0, help="Isotropic voxel size in mm.")] = 2.0,
    modalities: Annotated[str, typer.Option(help="Comma-separated contrasts among T1w,T2w,FLAIR.")] = "T1w,T2w,FLAIR",
    resolution_change: Annotated[bool, typer.Option(help="Let sites also differ in slice thickness.")] = False,
    progress: Progress = True,
) -> None:
    """Simulate a multi-site cohort (every subject scanned at every site) with known scanner effects."""
    from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort

    config = SynthMRIConfig(
        n_subjects=subjects,
        n_sites=sites,
        seed=seed,
        voxel_size=voxel_size,
        modalities=tuple(_split_list(modalities)),
        resolution_change=resolution_change,
    )
    result = synthesize_mri_cohort(out, config, progress=progress)
    typer.echo(f"wrote {len(result.files)} files under {out}")
    typer.echo(f"manifest: {result.manifest_path}")
    typer.echo(f"site effects: {Path(out) / 'site_effects.json'}")


@data_app.command("synth-fmri")
def synth_fmri(
    out: OutDir,
    subjects: Annotated[int, typer.Option(min=1, help="Number of subjects.")] = 8,
    seed: Seed = 0,
    frames: Annotated[int, typer.Option(min=16, help="Frames per run.")] = 120,
    tr: Annotated[float, typer.Option(min=0.1, max=10.0, help="Repetition time in seconds.")] = 2.0,
    voxel_size: Annotated[float, typer.Option(min=1.0, max=10.0, help="Isotropic voxel size in mm.")] = 4.0,
    bold: Annotated[bool, typer.Option("--bold/--no-bold", help="Also write 4-D BOLD NIfTI.")] = True,
    progress: Progress = True,
) -> None:
    """Simulate fMRI (4-D BOLD and ROI time series) with planted networks, task and per-subject labels."""
    from neuroattn.data.synth_fmri import SynthFMRIConfig, synthesize_fmri_cohort

    config = SynthFMRIConfig(
        n_subjects=subjects, n_frames=frames, tr=tr, voxel_size=voxel_size, seed=seed, write_bold=bold
    )
    result = synthesize_fmri_cohort(out, config, progress=progress)
    typer.echo(f"wrote {len(result.subjects)} subjects (labels {[int(v) for v in result.labels]}) under {out}")
    typer.echo(f"manifest: {result.manifest_path}")
    typer.echo(f"ground truth: {Path(out) / 'ground_truth.json'}")


@data_app.command("validate")
def validate(
    source: Annotated[Path, typer.Argument(help="A NIfTI file, a folder of NIfTI, a manifest CSV or a BIDS folder.")],
) -> None:
    """Check inputs the way every pipeline will, and report all problems found."""
    from neuroattn.io.cohort import read_cohort
    from neuroattn.io.nifti import load_volume

    manifest = read_cohort(source)
    failures = 0
    for row in manifest:
        try:
            vol = load_volume(row.path)
        except NeuroattnError as exc:
            failures += 1
            typer.echo(f"FAIL {exc}")
            continue
        typer.echo(f"ok   {row.path} shape={vol.shape} voxel={tuple(round(v, 2) for v in vol.voxel_size)} mm")
    typer.echo(f"{len(manifest) - failures} ok, {failures} failed")
    if failures:
        raise typer.Exit(code=1)


@data_app.command("manifest")
def make_manifest(
    input: Annotated[list[Path], typer.Option("--input", help="A folder (BraTS-style, BIDS, NIfTI) per site.")],
    site: Annotated[list[str], typer.Option("--site", help="Site label of each --input, in the same order.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write.")],
) -> None:
    """Combine one folder per site (e.g. two BraTS-style datasets) into one validated cohort manifest."""
    from neuroattn.io.cohort import read_cohort
    from neuroattn.io.manifest import Manifest, load_manifest

    if len(input) != len(site):
        raise typer.BadParameter(f"{len(input)} --input but {len(site)} --site; give one site per input")
    rows = []
    for folder, label in zip(input, site, strict=True):
        for row in read_cohort(folder, default_site=label):
            own_site = row.site not in ("", "unknown")
            rows.append({"path": row.path, "site": row.site if own_site else label, "subject": row.subject,
                         "session": row.session, "modality": row.modality, **row.extras})
    Manifest.from_rows(rows).to_csv(out)
    manifest = load_manifest(out)
    typer.echo(f"wrote {out}: {len(manifest)} images, {len(manifest.subjects)} subjects, sites {manifest.sites}, "
               f"modalities {manifest.modalities}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes its data and report.")] = Path(
        "demo_output"
    ),
    steps: Annotated[int, typer.Option(min=0, help="Training steps per SA-CycleGAN variant.")] = 450,
    ablation: Annotated[bool, typer.Option("--ablation/--no-ablation", help="Also train without attention.")] = True,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings: every stage in under a minute.")] = False,
    config: Annotated[Path | None, typer.Option(help="A pipelines/harmonization-*.yaml settings file.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Seed = 0,
    progress: Progress = True,
) -> None:
    """The main job on built-in data: simulate two sites, train SA-CycleGAN-2.5D and baselines, harmonize
    held-out subjects, evaluate against ground truth, and print where the report is."""
    from neuroattn.harmonize.demo_run import HarmonizationDemoConfig, run_harmonization_demo

    if config is not None:
        from neuroattn.pipelines import load_pipeline_config

        settings = load_pipeline_config(config, HarmonizationDemoConfig)
    elif quick:
        settings = HarmonizationDemoConfig.quick(seed=seed)
    else:
        settings = HarmonizationDemoConfig(steps=steps, seed=seed, ablation=ablation, device=device)
    result = run_harmonization_demo(out, settings, progress=progress, echo=typer.echo)
    for line in result.lines():
        typer.echo(line)


@app.command("app")
def run_app(
    port: Annotated[int, typer.Option(min=1024, max=65535, help="Port on localhost.")] = 8501,
    workspace: Annotated[
        Path | None, typer.Option(help="Folder for uploads, runs and outputs (default: ./neuroattn_workspace).")
    ] = None,
    data_root: Annotated[
        list[Path] | None, typer.Option("--data-root", help="Server folder the Cohort page may read (repeatable).")
    ] = None,
    max_upload_mb: Annotated[int | None, typer.Option(min=1, help="Largest upload in MB (default 1024).")] = None,
) -> None:
    """Start the Streamlit web app on localhost."""
    from neuroattn.web.launch import launch
    from neuroattn.web.settings import load_settings

    settings = load_settings(workspace, data_root, max_upload_mb)
    raise typer.Exit(code=launch(settings, port=port))


def _split_list(text: str) -> list[str]:
    return [piece.strip() for piece in text.split(",") if piece.strip()]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; a NeuroattnError becomes one line on stderr and exit code 2.

    Usage errors (bad option values) are reported by the CLI parser with exit code 2 as well.
    """
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except NeuroattnError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


def console_main() -> None:
    """Console-script wrapper that exits with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
