"""``neuroattn encode fit | predict | caption | evaluate``: voxelwise encoding models on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

encode_app = typer.Typer(help="Encoding models of visual cortex (ridge, BraInCoRL, LaVCa): fit voxel encoders, "
                              "predict responses and text-query maps, caption voxels, evaluate.",
                         no_args_is_help=True)

RunOpt = Annotated[Path, typer.Option("--run", help="A run folder written by `encode fit`.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Data folder (default: the run's).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
FiguresOpt = Annotated[bool, typer.Option("--figures/--no-figures", help="Also draw PNG figures of the maps.")]


def _untrained_note(parts: list[str]) -> str:
    return f" (UNTRAINED: {', '.join(parts)})" if parts else ""


@encode_app.command("fit")
def fit(
    out: OutOpt,
    data: Annotated[Path, typer.Option("--data", help="Data folder from `decode simulate` (or real NSD).")],
    model: Annotated[str | None, typer.Option("--model", help="ridge | braincorl | lavca | prior (or the "
                                                              "config's).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="pipelines/encode/<model>-*.yaml")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Subject to encode (default: the last).")] = None,
    roi: Annotated[list[str] | None, typer.Option("--roi", help="Keep only these ROIs (repeatable).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="BraInCoRL: in-context images of the subject.")] = None,
    meta_run: Annotated[Path | None, typer.Option("--meta-run", help="BraInCoRL: reuse this meta-training run.")]
    = None,
    meta_steps: Annotated[int | None, typer.Option("--meta-steps", help="BraInCoRL: meta-training steps.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Fit a voxelwise encoder for one subject (BraInCoRL: meta-train on the others, then read k images)."""
    from neuroattn.encode.runs import EncodeSettings, fit_encoder, open_run
    from neuroattn.pipelines import model_settings

    settings = model_settings(config, model, EncodeSettings, "ridge | braincorl | lavca | prior")
    for key, value in (("subject", subject), ("k", k), ("meta_steps", meta_steps), ("device", device)):
        if value is not None:
            setattr(settings, key, value)
    if roi:
        settings.rois = list(roi)
    if meta_run is not None:
        settings.meta_run = str(meta_run.resolve())
    encoding = settings.open_data(data, progress=progress)
    run = fit_encoder(encoding, settings, out, progress=progress)
    opened = open_run(run)
    typer.echo(f"fitted {settings.model} for {opened.subject.name}: {len(opened.encoder.voxels)} voxels"
               f"{_untrained_note(opened.untrained_parts())}")
    typer.echo(f"wrote {run}")


@encode_app.command("predict")
def predict(
    run: RunOpt,
    out: OutOpt,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text query; its selectivity map is written "
                                                                 "(repeatable).")] = None,
    data: DataOpt = None,
    figures: FiguresOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """Predicted responses to the held-out images (4-D NIfTI) and a selectivity map per text query."""
    from neuroattn.encode.run_outputs import write_predictions
    from neuroattn.encode.runs import open_run

    opened = open_run(run, data, progress=progress)
    written = write_predictions(opened, out, list(text or []), figures=figures)
    typer.echo(f"predicted {opened.subject.name}'s test responses{_untrained_note(opened.untrained_parts())}: "
               f"{written['predictions']}")
    for query in written["queries"]:
        typer.echo(f"'{query['text']}': {query['map']}")


@encode_app.command("caption")
def caption(run: RunOpt, out: OutOpt, data: DataOpt = None, progress: ProgressOpt = True) -> None:
    """LaVCa: describe every voxel of a run in words (captions.csv and a top-images montage)."""
    from neuroattn.encode.run_outputs import write_captions
    from neuroattn.encode.runs import open_run

    opened = open_run(run, data, progress=progress)
    captions = write_captions(opened, out, progress=progress)
    clip = "trained" if captions.clip_trained else "UNTRAINED, filter off" if captions.clip_weight == 0 else "UNTRAINED"
    typer.echo(f"captioned {len(captions)} voxels (CLIP keyword filter: {clip}); e.g. '{captions.sentences[0]}'")
    typer.echo(f"wrote {out / 'captions.csv'}")


@encode_app.command("evaluate")
def evaluate(
    run: RunOpt,
    out: OutOpt,
    data: DataOpt = None,
    captions: Annotated[bool | None, typer.Option("--captions/--no-captions", help="Score voxel captions "
                                                  "(default: LaVCa runs).")] = None,
    curve: Annotated[bool, typer.Option("--curve/--no-curve", help="BraInCoRL / prior: in-context scaling "
                                                                   "curve vs ridge.")] = True,
    figures: FiguresOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """Voxelwise Pearson r and explained variance on held-out images (maps, metrics.json/csv, plots)."""
    from neuroattn.encode.run_outputs import IN_CONTEXT_MODELS, evaluate_encoding_run
    from neuroattn.encode.runs import open_run

    opened = open_run(run, data, progress=progress)
    metrics = evaluate_encoding_run(opened, out, curve=curve, captions=captions, figures=figures, progress=progress)
    overall = metrics["rois"][0]
    extra = f", {overall['ev_of_ceiling']:.1%} of the noise ceiling" if "ev_of_ceiling" in overall else ""
    typer.echo(f"{metrics['model']} on {metrics['subject']}{_untrained_note(metrics['untrained'])}: mean r "
               f"{overall['pearson_r']:.3f}, explained variance {overall['explained_variance']:.3f}{extra}")
    label = IN_CONTEXT_MODELS.get(metrics["model"], metrics["model"])
    for row in metrics.get("in_context_curve", []):
        typer.echo(f"  k={row['k']:>4}: {label} EV {row[metrics['model'] + '_ev']:.3f} | ridge(k) "
                   f"{row['ridge_ev']:.3f} | ridge(all) {row['ridge_full_ev']:.3f}")
    if "captions" in metrics:
        sp = metrics["captions"]["spearman"]
        typer.echo(f"  caption Spearman: LaVCa {sp['lavca_mean']:.3f} | top-image caption {sp['baseline_mean']:.3f} | "
                   f"shuffled {sp['shuffled_mean']:.3f}")
        if "concept_naming_rate" in metrics["captions"]:
            typer.echo(f"  planted concept named: {metrics['captions']['concept_naming_rate']:.1%} of "
                       f"{metrics['captions']['n_concept_voxels']} concept voxels")
    typer.echo(f"wrote {out / 'metrics.json'}")
