"""``neuroattn decode simulate | train | retrieve | reconstruct | evaluate``: images from fMRI on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from neuroattn.errors import ConfigError
from neuroattn.io.atomic import atomic_write_csv, atomic_write_json

decode_app = typer.Typer(help="Decode seen images from fMRI (MindEye, Brain-IT, ridge): simulate data, train, "
                              "retrieve, reconstruct, evaluate.", no_args_is_help=True)

DataOpt = Annotated[Path | None, typer.Option("--data", help="Decoding data folder (default: the run's).")]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="A run folder written by `decode train`.")]
SubjectOpt = Annotated[str | None, typer.Option("--subject", help="Subject id, e.g. subj01 (default: the run's).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
FmriOpt = Annotated[Path | None, typer.Option("--fmri", help="Betas: .npy (V,) or (N, V), or a NIfTI read at the "
                                                            "subject's mask (or --mask).")]
MaskOpt = Annotated[Path | None, typer.Option("--mask", help="Mask NIfTI selecting the voxels of --fmri.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N test images.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
UnclipOpt = Annotated[Path | None, typer.Option("--unclip", help="Local Stable unCLIP pipeline folder (default: the "
                                                                "data folder's trained generator).")]


def _query_betas(bundle: Any, subject: str, fmri: Path | None, mask: Path | None,
                 limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Betas to decode (N, V) and their seen image ids when known (the subject's repeat-averaged test trials)."""
    from neuroattn.decode.fmri_input import read_betas

    if fmri is not None:
        return read_betas(fmri, bundle.root, subject, mask=mask), None
    betas, ids = bundle.subject(subject).averaged(test=True)
    if limit is not None:
        betas, ids = betas[:limit], ids[:limit]
    return betas, ids


@decode_app.command("simulate")
def simulate(
    out: OutOpt,
    config: Annotated[Path | None, typer.Option("--config", help="pipelines/decode/simulate-*.yaml")] = None,
    images: Annotated[int | None, typer.Option("--images", help="Stimulus images.")] = None,
    subjects: Annotated[int | None, typer.Option("--subjects", help="Simulated subjects.")] = None,
    voxels: Annotated[int | None, typer.Option("--voxels", help="Voxels per subject (approximate).")] = None,
    noise_sd: Annotated[float | None, typer.Option("--noise-sd", help="Trial noise sd (signal sd ~1).")] = None,
    generator_steps: Annotated[int | None, typer.Option("--generator-steps", help="Training steps of the offline "
                                                        "autoencoder and image-variation model (0: untrained).")]
    = None,
    clip_weights: Annotated[Path | None, typer.Option("--clip-weights", help="open_clip checkpoint file "
                                                      "(default: tiny random CLIP, untrained).")] = None,
    clip_model: Annotated[str | None, typer.Option("--clip-model", help="open_clip architecture of --clip-weights.")]
    = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Build the stimulus set, simulate NSD-like fMRI of several subjects and train the offline image generator."""
    from neuroattn.decode.pipeline import SimulateSettings, simulate_dataset
    from neuroattn.pipelines import load_pipeline_config

    settings = load_pipeline_config(config, SimulateSettings) if config else SimulateSettings()
    sim = dict(settings.simulation)
    for key, value in (("n_subjects", subjects), ("n_voxels", voxels), ("noise_sd", noise_sd)):
        if value is not None:
            sim[key] = value
    settings.simulation = sim
    if images is not None:
        settings.n_images = images
    if generator_steps is not None:
        settings.autoencoder_steps = settings.variation_steps = generator_steps
    if clip_weights is not None:
        settings.clip_weights = str(clip_weights.resolve())
    if clip_model is not None:
        settings.clip_model = clip_model
    if seed is not None:
        settings.seed = seed
    summary = simulate_dataset(out, settings, progress=progress)
    clip = "trained" if summary["clip"]["trained"] else "UNTRAINED (tiny random CLIP)"
    typer.echo(f"{summary['n_images']} images, subjects {summary['subjects']} voxels; CLIP features: {clip}")
    ceilings = ", ".join(f"{s} {v:.1f}%" for s, v in summary["median_noise_ceiling"].items())
    typer.echo(f"median noise ceiling of {settings.simulation_config().repeats}-trial means: {ceilings}")
    typer.echo(f"image generator: {summary['generator']}")
    typer.echo(f"wrote {out}")


@decode_app.command("train")
def train(
    out: OutOpt,
    data: Annotated[Path, typer.Option("--data", help="Decoding data folder from `decode simulate`.")],
    model: Annotated[str | None, typer.Option("--model", help="mindeye | brain-it | ridge (or the config's).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="pipelines/decode/<model>-*.yaml")] = None,
    subject: Annotated[list[str] | None, typer.Option("--subject", help="Training subject(s); repeat for Brain-IT.")]
    = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps (overrides the config).")] = None,
    adapt_from: Annotated[Path | None, typer.Option("--adapt-from", help="A Brain-IT run: add --subject as a new "
                                                    "subject, training only its voxel embeddings.")] = None,
    train_fraction: Annotated[float | None, typer.Option("--train-fraction", help="Share of the subject's training "
                                                         "images used.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a Brain-IT/MindEye run.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Train a decoder on a data folder (or adapt a trained Brain-IT to a new subject)."""
    from neuroattn.decode.data_bundle import open_decoding_data
    from neuroattn.decode.runs import DecodeSettings, adapt_brain_it, train_decoder
    from neuroattn.pipelines import model_settings

    settings = model_settings(config, model, DecodeSettings, "mindeye | brain-it | ridge")
    if subject:
        settings.subjects = list(subject)
    if steps is not None:
        settings.steps = steps
    if train_fraction is not None:
        settings = DecodeSettings(**{**settings.__dict__, "train_fraction": train_fraction})
    if device is not None:
        settings.device = device
    bundle = open_decoding_data(data, settings.feature_source(), progress=progress)
    if adapt_from is not None:
        if not subject or len(subject) != 1:
            raise ConfigError("--adapt-from needs exactly one --subject (the new subject)")
        run = adapt_brain_it(bundle, adapt_from, subject[0], settings, out, progress=progress)
    else:
        run = train_decoder(bundle, settings, out, resume=resume, progress=progress)
    untrained = "" if bundle.clip_trained else " (targets from UNTRAINED tiny CLIP)"
    typer.echo(f"trained {settings.model}{untrained}: {run}")


@decode_app.command("retrieve")
def retrieve(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    fmri: FmriOpt = None,
    mask: MaskOpt = None,
    data: DataOpt = None,
    subject: SubjectOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Images returned per query.")] = 5,
    pool: Annotated[str, typer.Option("--pool", help="test | all (search among the test images or every stimulus)")]
    = "all",
    index: Annotated[str, typer.Option("--index", help="exact | hnsw | ivf")] = "exact",
    limit: LimitOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Top-k stimulus images for each fMRI pattern (FAISS), as retrieval.csv and a PNG grid."""
    from neuroattn.decode.clip_features import retrieval_targets
    from neuroattn.decode.report import save_retrieval_grid
    from neuroattn.decode.retrieval import EmbeddingIndex
    from neuroattn.decode.runs import open_run

    if pool not in ("test", "all"):
        raise ConfigError(f"--pool must be 'test' or 'all', not {pool!r}")
    bundle, subject, decoder = open_run(checkpoint, data, subject, progress=progress)
    betas, seen_ids = _query_betas(bundle, subject, fmri, mask, limit)
    if pool == "test":
        pool_ids = np.unique(bundle.subject(subject).image_ids[bundle.subject(subject).is_test])
    else:
        pool_ids = np.arange(len(bundle.stimuli))
    index_obj = EmbeddingIndex.build(retrieval_targets(bundle.features.subset(pool_ids)), kind=index)
    scores, rows = index_obj.search(decoder.brain_embeddings(betas), top_k)
    found = pool_ids[rows]  # (N, k) stimulus ids
    table = []
    for q in range(len(betas)):
        entry: dict[str, Any] = {"query": q, "seen_image": "" if seen_ids is None else int(seen_ids[q])}
        for r in range(found.shape[1]):
            entry[f"image_{r + 1}"] = int(found[q, r])
            entry[f"score_{r + 1}"] = round(float(scores[q, r]), 5)
        table.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "retrieval.csv", table)
    grid = save_retrieval_grid(bundle.stimuli.images, found, seen_ids, out / "retrieval.png",
                               untrained=not decoder.trained)
    if seen_ids is not None:
        hit = float(np.mean(found[:, 0] == seen_ids))
        typer.echo(f"top-1 among {len(pool_ids)} images: {hit:.3f} (chance {1 / len(pool_ids):.4f})")
    typer.echo(f"wrote {out / 'retrieval.csv'} and {grid}")


@decode_app.command("reconstruct")
def reconstruct(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    fmri: FmriOpt = None,
    mask: MaskOpt = None,
    data: DataOpt = None,
    subject: SubjectOpt = None,
    unclip: UnclipOpt = None,
    limit: LimitOpt = 8,
    steps: Annotated[int, typer.Option("--steps", help="Diffusion sampler steps.")] = 20,
    strength: Annotated[float, typer.Option("--strength", help="img2img strength from the low-level image.")] = 0.85,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 3.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    progress: ProgressOpt = True,
) -> None:
    """Reconstruct seen images from fMRI as PNGs (diffusion from the predicted CLIP embedding + low-level image)."""
    from neuroattn.decode.pipeline import load_reconstructor, reconstruct_images
    from neuroattn.decode.reconstruct import save_pngs
    from neuroattn.decode.runs import open_run

    bundle, subject, decoder = open_run(checkpoint, data, subject, progress=progress)
    betas, seen_ids = _query_betas(bundle, subject, fmri, mask, limit)
    reconstructor = load_reconstructor(bundle.root, unclip)
    images, low = reconstruct_images(decoder, betas, reconstructor, steps=steps, strength=strength,
                                     guidance=guidance, seed=seed, progress=progress)
    names = [f"{q:04d}" if seen_ids is None else f"{q:04d}_image{int(seen_ids[q])}" for q in range(len(images))]
    paths = save_pngs(images, out, names)
    if low is not None:
        save_pngs(low, out / "lowlevel", names)
    if seen_ids is not None:
        save_pngs(bundle.stimuli.images[seen_ids], out / "seen", names)
    labels = {"decoder_trained": decoder.trained, "generator_trained": reconstructor.trained,
              "generator_source": reconstructor.source, "clip_trained": bundle.clip_trained}
    label = "trained" if decoder.trained and reconstructor.trained else "UNTRAINED"
    atomic_write_json(out / "reconstruction.json", {"images": [p.name for p in paths], **labels, "label": label})
    typer.echo(f"wrote {len(paths)} reconstructions to {out}"
               + ("" if decoder.trained and reconstructor.trained else " (UNTRAINED parts: see reconstruction.json)"))


@decode_app.command("evaluate")
def evaluate(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    data: DataOpt = None,
    subject: SubjectOpt = None,
    unclip: UnclipOpt = None,
    reconstruct: Annotated[bool, typer.Option("--reconstruct/--no-reconstruct", help="Also reconstruct the test "
                                                                                    "images and score them.")] = True,
    recon_limit: Annotated[int, typer.Option("--recon-limit", help="Test images reconstructed (all retrieval metrics "
                                                                  "use every test image).")] = 50,
    steps: Annotated[int, typer.Option("--steps")] = 20,
    progress: ProgressOpt = True,
) -> None:
    """Retrieval (top-1 among 300 both ways, top-k), 2-way identification, PixCorr/SSIM → metrics.json + report.html."""
    from neuroattn.decode.evaluation_run import evaluate_run

    result = evaluate_run(checkpoint, out, data=data, subject=subject, unclip=unclip, reconstruct=reconstruct,
                          recon_limit=recon_limit, steps=steps, progress=progress)
    metrics = result["metrics"]
    typer.echo(f"{result['decoder']} ({result['label']}): top-1/{result['pool_size']} brain→image "
               f"{metrics['top1_brain_to_image']:.3f}, image→brain {metrics['top1_image_to_brain']:.3f}"
               + (f", PixCorr {metrics['pixcorr']:.3f}, SSIM {metrics['ssim']:.3f}" if "pixcorr" in metrics else ""))
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
