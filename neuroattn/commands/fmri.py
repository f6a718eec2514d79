"""``neuroattn fmri tokenize | pretrain | probe | evaluate``: the fMRI foundation models from the command line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_write_csv, atomic_write_json

fmri_app = typer.Typer(help="fMRI foundation models (TABLeT, SLIM-Brain, BrainMAE): tokenize, pretrain, probe, "
                            "evaluate.", no_args_is_help=True)

RUN_INFO = "fmri_run.json"
SIZES = ("published", "tiny")

ModelOpt = Annotated[str | None, typer.Option("--model", help="tablet | slim-brain | brainmae (or the config's).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="pipelines/fmri/<model>-*.yaml (default: tiny size).")]
InputOpt = Annotated[Path, typer.Option("--input", help="A 4-D NIfTI file, a folder of them, a manifest CSV or BIDS.")]
LabelsOpt = Annotated[Path, typer.Option("--labels", help="CSV/TSV: participant_id (or subject) + labels.")]
LabelColumnOpt = Annotated[str, typer.Option("--label-column", help="Column of --labels to predict.")]
TaskOpt = Annotated[str, typer.Option("--task", help="auto | classification | regression")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda (default: the config's).")]
CacheOpt = Annotated[Path | None, typer.Option("--token-cache", help="TABLeT token folder from `fmri tokenize`.")]
RoisOpt = Annotated[str | None, typer.Option("--rois", help="BrainMAE ROIs: dosenbach_2010 | seitzman_2018 | a label "
                                                             "NIfTI (default: the config's).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


@dataclass
class FmriPipelineConfig:
    """Settings of the fMRI pipelines, read from ``pipelines/fmri/<model>-*.yaml``."""

    model: str  # tablet | slim-brain | brainmae
    size: str = "published"  # the config model_config overrides: "published" (dataclass defaults) | "tiny"
    model_config: dict[str, Any] = field(default_factory=dict)  # model knobs (nested dicts for sub-configs)
    steps: int = 200  # optimizer steps of pretraining (SLIM-Brain stage 2; stage 1 has extractor_steps)
    batch_size: int = 8  # windows per optimizer step
    lr: float = 1e-3  # peak learning rate (warm-up, then cosine decay)
    warmup_steps: int = 20  # steps of linear warm-up
    seed: int = 0  # weights, window sampling and probe folds
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # off | bf16 | fp16 | auto (off on CPU)
    checkpoint_every: int = 100  # steps between resumable training states
    log_every: int = 10  # steps between rows of metrics.csv
    rois: str = "dosenbach_2010"  # BrainMAE ROIs: a bundled coordinate atlas or a 3-D label NIfTI path
    roi_radius: float = 5.0  # mm, sphere radius around atlas coordinates
    n_folds: int = 5  # cross-validation folds of the linear probe (grouped by subject)

    def __post_init__(self) -> None:
        from neuroattn.fmri.registry import get_model

        self.model = get_model(self.model).name
        if self.size not in SIZES:
            raise ConfigError(f"'size' must be one of {list(SIZES)}. {self.size!r} was provided.")
        if self.n_folds < 2:
            raise ConfigError(f"'n_folds' must be at least 2. {self.n_folds!r} was provided.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(model: str | None, config: Path | None) -> tuple[Any, FmriPipelineConfig, Any]:
    """The model family, the pipeline settings and the validated model config of ``--model`` / ``--config``."""
    from neuroattn.fmri.registry import get_model
    from neuroattn.pipelines import load_pipeline_config

    if config is None:
        if model is None:
            from neuroattn.fmri.registry import model_names

            raise ConfigError(f"give --model ({' | '.join(model_names())}) or --config")
        family = get_model(model)
        return family, FmriPipelineConfig(model=family.name, size="tiny"), family.tiny()
    pipeline = load_pipeline_config(config, FmriPipelineConfig)
    family = get_model(pipeline.model)
    if model is not None and get_model(model).name != family.name:
        raise ConfigError(f"{config}: settings for '{family.name}', but --model is '{model}'")
    base = family.tiny() if pipeline.size == "tiny" else family.published()
    return family, pipeline, family.config_from_dict(pipeline.model_config, base=base, where=f"{config}: model_config")


def _absolute_rois(rois: str) -> str:
    """A label-image path made absolute (runs record it for later probes); atlas names unchanged."""
    return str(Path(rois).resolve()) if Path(rois).is_file() else rois


def _check_frames(family: Any, config: Any, runs: list[Any], arrays: list[np.ndarray]) -> None:
    need = family.min_frames(config)
    short = [f"{r.subject} ({len(a)})" for r, a in zip(runs, arrays, strict=True) if len(a) < need]
    if short:
        raise InvalidInputError(f"{family.name} needs runs of at least {need} frames; shorter: {', '.join(short)}")


@fmri_app.command("tokenize")
def tokenize(
    input: InputOpt,
    out: Annotated[Path, typer.Option("--out", help="Token folder: <key>.safetensors per run and index.json.")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Cache TABLeT tokens of every run, so its frozen autoencoder runs once per frame (default model: tablet)."""
    from neuroattn.fmri.inputs import read_fmri_runs
    from neuroattn.fmri.tablet_tokens import TokenCache
    from neuroattn.train.distributed import resolve_device

    family, pipeline, model_cfg = resolve_settings(model or (None if config else "tablet"), config)
    if family.name != "tablet":
        typer.echo(f"{family.name} tokenizes on the fly inside the model (patches of each window or ROI segments); "
                   "there are no tokens to cache. Run `neuroattn fmri pretrain` directly.")
        return
    runs = read_fmri_runs(input, progress=progress)
    tokenizer = family.tokenizer(model_cfg, resolve_device(device or pipeline.device))
    cache = TokenCache(out)
    entries = []
    for run, frames in zip(runs, family.prepare(runs, model_cfg), strict=True):
        tokens = cache.tokens(tokenizer, frames, progress=progress)
        entries.append({"subject": run.subject, "session": run.session, "input": str(run.path),
                        "file": f"{TokenCache.key(tokenizer, frames)}.safetensors", "shape": list(tokens.shape)})
    untrained = family.untrained_parts(model_cfg)
    index = {"model": family.name, "tokenizer": model_cfg.tokenizer.to_dict(), "fingerprint": tokenizer.fingerprint,
             "autoencoder_trained": model_cfg.tokenizer.pretrained, "untrained": untrained, "runs": entries}
    path = atomic_write_json(Path(out) / "index.json", index)
    label = "UNTRAINED autoencoder (random init)" if untrained else "pretrained autoencoder"
    typer.echo(f"tokens of {len(entries)} runs ({label}; {cache.misses} computed, {cache.hits} cached): {path}")


@fmri_app.command("pretrain")
def pretrain(
    input: InputOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder: final/ checkpoint, metrics.csv, fmri_run.json.")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps (or the config's).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Windows per step.")] = None,
    device: DeviceOpt = None,
    token_cache: CacheOpt = None,
    rois: RoisOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Self-supervised pretraining of one model on fMRI runs; the checkpoint lands in OUT/final."""
    from neuroattn.fmri.inputs import read_fmri_runs
    from neuroattn.train import TrainConfig

    family, pipeline, model_cfg = resolve_settings(model, config)
    pipeline.rois = _absolute_rois(rois or pipeline.rois)
    pipeline.steps, pipeline.batch_size = steps or pipeline.steps, batch_size or pipeline.batch_size
    pipeline.device = device or pipeline.device  # the run records the settings it really used
    runs = read_fmri_runs(input, progress=progress)
    arrays = family.prepare(runs, model_cfg, rois=pipeline.rois, roi_radius=pipeline.roi_radius, progress=progress)
    model_cfg, notes = family.adapt_config(model_cfg, arrays, runs[0].tr)
    _check_frames(family, model_cfg, runs, arrays)
    train = TrainConfig(
        out_dir=out, max_steps=pipeline.steps, batch_size=pipeline.batch_size, lr=pipeline.lr,
        warmup_steps=min(pipeline.warmup_steps, pipeline.steps - 1), seed=pipeline.seed, device=pipeline.device,
        amp=pipeline.amp, checkpoint_every=pipeline.checkpoint_every, log_every=min(pipeline.log_every, pipeline.steps),
        progress=progress, tensorboard=False,
    )  # fmt: skip
    for note in notes:
        typer.echo(f"config {note}")
    result = family.pretrain(arrays, model_cfg, train, resume=resume, token_cache=token_cache)
    untrained = family.untrained_parts(model_cfg)
    info = {"model": family.name, "model_class": family.model_class, "trained": bool(result.finished),
            "untrained": untrained, "steps": result.steps, "input": str(input),
            "subjects": [r.subject for r in runs], "notes": notes, "pipeline": pipeline.to_dict(),
            "model_config": model_cfg.to_dict(), "checkpoint": str(result.final_dir)}
    atomic_write_json(Path(out) / RUN_INFO, info)
    state = "trained" if result.finished else "UNFINISHED"
    extra = f"; still untrained: {'; '.join(untrained)}" if untrained else ""
    typer.echo(f"{family.name} ({state}, {result.steps} steps{extra}): {result.final_dir or out}")
    typer.echo(f"training curves: {Path(out) / 'metrics.csv'}")


# -- probes -----------------------------------------------------------------------------------------------------


def _run_info(run_or_checkpoint_dir: Path) -> dict[str, Any]:
    for folder in (run_or_checkpoint_dir, run_or_checkpoint_dir.parent):
        if (folder / RUN_INFO).is_file():
            try:
                return json.loads((folder / RUN_INFO).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidInputError(f"unreadable run record ({exc})", folder / RUN_INFO) from None
    return {}


def probe_features(
    family: Any, model: Any, arrays: list[np.ndarray], runs: list[Any], labels: Any, *,
    pipeline: FmriPipelineConfig, token_cache: Path | None, progress: bool,
) -> tuple[np.ndarray, Any]:
    """Frozen subject-level features ``(n_runs, D)`` and their subject-grouped cross-validated linear probe."""
    from neuroattn.fmri.probe import cross_validated_probe

    features = family.embed(model, arrays, progress=progress, token_cache=token_cache)
    groups = np.array([r.subject for r in runs])
    values = labels.values.astype(int) if labels.task == "classification" else labels.values
    result = cross_validated_probe(features, values, task=labels.task, groups=groups,
                                   n_folds=pipeline.n_folds,
                                   seed=pipeline.seed)
    return features, result


def _load_for_probe(
    checkpoint: Path | None, model: str | None, config: Path | None, runs: list[Any], *, device: str | None,
    rois: str | None, progress: bool,
) -> tuple[Any, Any, list[np.ndarray], FmriPipelineConfig, dict[str, Any]]:
    """``(family, model, input arrays, pipeline, record)``: a checkpoint's model, or a random-init one fitted to
    the data (BrainMAE's ROI count and TR) when there is no checkpoint."""
    from neuroattn.fmri.registry import get_model, model_for_checkpoint
    from neuroattn.train.distributed import resolve_device

    if checkpoint is None:
        family, pipeline, model_cfg = resolve_settings(model, config)
        pipeline.rois = _absolute_rois(rois or pipeline.rois)
        arrays = family.prepare(runs, model_cfg, rois=pipeline.rois, roi_radius=pipeline.roi_radius,
                                progress=progress)
        model_cfg, _ = family.adapt_config(model_cfg, arrays, runs[0].tr)
        net = family.build(model_cfg, seed=pipeline.seed)
        record = {"checkpoint": None, "trained": False,
                  "untrained": ["encoder (random init)", *family.untrained_parts(model_cfg)]}
    else:
        if config is not None:
            raise ConfigError("--config sets up a random-init model; a checkpoint carries its own config")
        family, meta = model_for_checkpoint(checkpoint)
        if model is not None and get_model(model).name != family.name:
            raise ConfigError(f"{checkpoint} holds a {family.name} model, but --model is '{model}'")
        info = _run_info(Path(checkpoint))
        pipeline = (FmriPipelineConfig(**info["pipeline"]) if info.get("pipeline")
                    else FmriPipelineConfig(model=family.name))
        pipeline.rois = _absolute_rois(rois or pipeline.rois)
        net = family.load(checkpoint)
        arrays = family.prepare(runs, net.config, rois=pipeline.rois, roi_radius=pipeline.roi_radius,
                                progress=progress)
        trained = bool(meta.get("trained", False))
        untrained = family.untrained_parts(net.config)
        if not trained:
            untrained = ["encoder (checkpoint marked untrained)", *untrained]
        record = {"checkpoint": str(checkpoint), "trained": trained, "untrained": untrained}
    net.to(resolve_device(device or pipeline.device))
    return family, net, arrays, pipeline, record


def _random_twin(family: Any, net: Any, pipeline: FmriPipelineConfig, record: dict[str, Any]) -> tuple[Any, dict]:
    """A randomly initialised model of the same architecture (the untrained control of a checkpoint)."""
    twin = family.build(net.config, seed=pipeline.seed).to(next(net.parameters()).device)
    untrained = ["encoder (random init)", *family.untrained_parts(net.config)]
    return twin, {"checkpoint": record["checkpoint"], "trained": False, "untrained": untrained}


def _state(record: dict[str, Any]) -> str:
    return "trained" if record["trained"] and not record["untrained"] else (
        "UNTRAINED" if not record["trained"] else "partly untrained")


def plot_probes(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Bar plot: each model's fold scores (bars) and mean, with chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from neuroattn.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(results) + 2), 3.4))
    width = 0.8
    for i, res in enumerate(results):
        folds = res["folds"]
        step = width / max(1, len(folds))
        xs = i - width / 2 + step * (np.arange(len(folds)) + 0.5)
        ax.bar(xs, folds, width=step * 0.9, color=f"C{i}", alpha=0.6)
        ax.hlines(res["score"], i - width / 2, i + width / 2, colors=f"C{i}", linewidth=2.5)
        if res.get("chance") is not None:
            ax.hlines(res["chance"], i - width / 2, i + width / 2, colors="k", linestyles="--", linewidth=1)
    labels = [f"{r['name']}\n{_state(r)}" for r in results]
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    metric = "accuracy" if results and results[0]["task"] == "classification" else "R²"
    ax.set(ylabel=f"{metric} (bars: folds)", title=f"{title} (line: mean, dashed: chance)")
    if results and results[0]["task"] == "classification":
        ax.set_ylim(0, 1.05)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _features_csv(subjects: list[str], features: np.ndarray, path: Path) -> Path:
    rows = [{"subject": s, **{f"f{j}": f"{v:.7g}" for j, v in enumerate(row)}}
            for s, row in zip(subjects, features, strict=True)]
    return atomic_write_csv(path, rows)


@fmri_app.command("probe")
def probe(
    input: InputOpt,
    labels: LabelsOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for probe.json, probe.png and features.csv.")],
    checkpoint: Annotated[Path | None, typer.Option(help="Run folder of `fmri pretrain` (or its final/); "
                                                         "without it a random-init model (UNTRAINED).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    label_column: LabelColumnOpt = "label",
    task: TaskOpt = "auto",
    device: DeviceOpt = None,
    token_cache: CacheOpt = None,
    rois: RoisOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Frozen features of every run and a subject-grouped cross-validated linear probe of the labels."""
    from neuroattn.fmri.inputs import read_fmri_runs, read_labels

    runs = read_fmri_runs(input, progress=progress)
    targets = read_labels(labels, [r.subject for r in runs], column=label_column, task=task)
    family, net, arrays, pipeline, record = _load_for_probe(checkpoint, model, config, runs, device=device, rois=rois,
                                                            progress=progress)
    features, result = probe_features(family, net, arrays, runs, targets, pipeline=pipeline,
                                      token_cache=token_cache, progress=progress)
    name = checkpoint.name if checkpoint is not None else f"{family.name} (random init)"
    payload = {"name": name, "model": family.name, **record, **result.to_dict(), "feature_dim": int(features.shape[1]),
               "n_runs": len(runs), "n_subjects": len({r.subject for r in runs}), "labels": targets.to_dict()}
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / "probe.json", payload)
    _features_csv([r.subject for r in runs], features, Path(out) / "features.csv")
    plot_probes([payload], Path(out) / "probe.png", f"{family.name} linear probe of '{label_column}'")
    chance = f" (chance {result.chance:.3f})" if result.chance is not None else ""
    typer.echo(f"{name} [{_state(record)}]: {result.task} score {result.score:.3f}{chance} over "
               f"{len(result.folds)} folds")
    typer.echo(f"probe: {Path(out) / 'probe.json'} · plot: {Path(out) / 'probe.png'}")


@fmri_app.command("evaluate")
def evaluate(
    input: InputOpt,
    labels: LabelsOpt,
    checkpoint: Annotated[list[str], typer.Option(help="A run folder of `fmri pretrain`; repeat, as NAME=DIR to "
                                                       "name it.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, metrics.csv and metrics.png.")],
    label_column: LabelColumnOpt = "label",
    task: TaskOpt = "auto",
    with_random: Annotated[bool, typer.Option("--with-random/--no-random", help="Also probe a random-init copy of "
                                                                             "each architecture (UNTRAINED).")] = False,
    device: DeviceOpt = None,
    token_cache: CacheOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Linear probes of several checkpoints (any mix of models) on the same runs and labels, compared."""
    from neuroattn.fmri.inputs import read_fmri_runs, read_labels
    from neuroattn.fmri.registry import model_for_checkpoint

    entries = []
    for item in checkpoint:
        name, sep, folder = item.partition("=")
        entries.append((name, Path(folder)) if sep else (Path(item).name, Path(item)))
    if len({n for n, _ in entries}) != len(entries):
        raise ConfigError(f"checkpoint names repeat: {[n for n, _ in entries]}; name them NAME=DIR")
    for _, folder in entries:
        model_for_checkpoint(folder)  # every checkpoint is readable before any model runs
    runs = read_fmri_runs(input, progress=progress)
    targets = read_labels(labels, [r.subject for r in runs], column=label_column, task=task)
    results = []
    for name, folder in entries:
        family, net, arrays, pipeline, record = _load_for_probe(folder, None, None, runs, device=device, rois=None,
                                                                progress=progress)
        variants = [(name, net, record)]
        if with_random:
            variants.append((f"{name} (random init)", *_random_twin(family, net, pipeline, record)))
        for label, model_net, model_record in variants:
            features, result = probe_features(family, model_net, arrays, runs, targets, pipeline=pipeline,
                                              token_cache=token_cache, progress=progress)
            results.append({"name": label, "model": family.name, **model_record, **result.to_dict(),
                            "feature_dim": int(features.shape[1])})
            typer.echo(f"{label} [{_state(model_record)}]: {result.task} score {result.score:.3f}")
    Path(out).mkdir(parents=True, exist_ok=True)
    summary = {"input": str(input), "n_runs": len(runs), "n_subjects": len({r.subject for r in runs}),
               "labels": targets.to_dict(), "models": results}
    atomic_write_json(Path(out) / "metrics.json", summary)
    rows = [{"name": r["name"], "model": r["model"], "trained": r["trained"], "untrained": "; ".join(r["untrained"]),
             "task": r["task"], "score": r["score"], "score_std": float(np.std(r["folds"])), "auc": r["auc"],
             "chance": r["chance"], "folds": len(r["folds"]), "feature_dim": r["feature_dim"]} for r in results]
    atomic_write_csv(Path(out) / "metrics.csv", rows)
    plot_probes(results, Path(out) / "metrics.png", f"linear probes of '{label_column}'")
    typer.echo(f"metrics: {Path(out) / 'metrics.json'}\ntable: {Path(out) / 'metrics.csv'}\n"
               f"plot: {Path(out) / 'metrics.png'}")
