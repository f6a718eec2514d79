"""What the app's Decode page does, outside Streamlit: find runs and data, read betas, retrieve, reconstruct."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.decode.base import BrainDecoder
from neuroattn.decode.data_bundle import DecodingData
from neuroattn.decode.pipeline import SimulateSettings
from neuroattn.decode.runs import RUN_INFO, DecodeSettings
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.nifti import NIFTI_SUFFIXES
from neuroattn.web.settings import AppSettings
from neuroattn.web.uploads import files_named, find_records, is_inside, resolve_inside, sanitize_filename, save_upload

BETAS_SUFFIXES = (".npy", *NIFTI_SUFFIXES)
QUICK_MODELS = ("ridge", "mindeye")
DEMO_DATA_NAME = "decode-demo"  # folder under the workspace's data/ that "Simulate demo data" writes

DEMO_SIMULATION = SimulateSettings(
    n_images=400,  # enough images for a 100-image test split
    image_size=32,  # px; the tiny CLIP and generator run at this size on a CPU
    simulation={"n_subjects": 2, "n_voxels": 300, "test_images": 100},
    autoencoder_steps=60,  # a minute or two of CPU; reconstructions stay blurry
    variation_steps=60,
    batch_size=16,
    device="cpu",
)
"""The page's demo data folder: about two minutes on two CPU cores, for trying the app, not for results."""

QUICK_TRAINING: dict[str, DecodeSettings] = {
    "ridge": DecodeSettings(model="ridge", device="cpu"),
    "mindeye": DecodeSettings(model="mindeye", steps=200, batch_size=32, warmup_steps=20, checkpoint_every=0,
                              device="cpu"),
}
"""Settings of the page's quick training per model (seconds for ridge, a few minutes for tiny MindEye)."""


@dataclass(frozen=True)
class DecodeRunEntry:
    """A decoding run folder as the page lists it."""

    path: Path  # the run folder holding decode_run.json
    model: str
    subjects: tuple[str, ...]
    data_root: Path
    clip_trained: bool
    modified: float  # seconds since the epoch, of decode_run.json

    def label(self, roots: tuple[Path, ...]) -> str:
        rel = next((self.path.relative_to(r) for r in roots if self.path.is_relative_to(r)), self.path)
        clip = "" if self.clip_trained else " · UNTRAINED CLIP"
        return f"{rel} · {self.model} · {'/'.join(self.subjects)}{clip}"


def read_run_entry(info_path: Path) -> DecodeRunEntry | None:
    """The listing of ``run/decode_run.json``, or None when it is not a readable decoding run."""
    try:
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        subjects = tuple(str(s) for s in info["subjects"])
        return DecodeRunEntry(info_path.parent, str(info["model"]), subjects, Path(info["data_root"]),
                              bool((info.get("clip") or {}).get("trained", False)), info_path.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_decode_runs(settings: AppSettings, max_depth: int = 4) -> list[DecodeRunEntry]:
    """Decoding runs under the workspace's runs/ and the data roots (``max_depth`` folders down), newest first."""
    return find_records((settings.runs, *settings.data_roots), RUN_INFO, read_run_entry, settings.readable_roots,
                        max_depth)


def find_data_folders(settings: AppSettings, max_depth: int = 3) -> list[Path]:
    """Decoding data folders (holding ``stimuli.hdf5``) in the workspace and the data roots, sorted."""
    found: set[Path] = set()
    for root in settings.readable_roots:
        if root.is_dir():
            found |= {p.parent.resolve() for p in files_named(root, "stimuli.hdf5", max_depth + 1)
                      if is_inside(p.parent, settings.readable_roots)}
    return sorted(found)


def simulate_demo_data(settings: AppSettings, simulation: SimulateSettings | None = None, *,
                       progress: bool = False) -> Path:
    """Simulate the demo decoding data folder into ``workspace/data/decode-demo``; returns the folder."""
    from neuroattn.decode.pipeline import simulate_dataset

    out = settings.workspace / "data" / DEMO_DATA_NAME
    simulate_dataset(out, simulation or DEMO_SIMULATION, progress=progress)
    return out


def train_quick_decoder(settings: AppSettings, data_root: Path, model: str, subject: str | None = None, *,
                        progress: bool = False) -> Path:
    """Train the quick ``model`` (ridge or tiny MindEye) on a data folder into ``runs/decode-<model>-<data>``."""
    from neuroattn.decode.data_bundle import open_decoding_data
    from neuroattn.decode.runs import train_decoder

    if model not in QUICK_TRAINING:
        raise ConfigError(f"'model' must be one of {list(QUICK_MODELS)}. {model!r} was provided.")
    root = resolve_inside(data_root, settings.readable_roots)
    train = replace(QUICK_TRAINING[model], subjects=[subject] if subject else None)
    data = open_decoding_data(root, train.feature_source(), progress=progress)
    suffix = f"-{subject}" if subject else ""
    return train_decoder(data, train, settings.runs / f"decode-{model}-{sanitize_filename(root.name)}{suffix}",
                         progress=progress)


@dataclass
class OpenRun:
    """A decoding run ready to decode: its info, data folder (with the run's CLIP features) and decoder."""

    path: Path
    info: dict[str, Any]
    data: DecodingData
    decoder: BrainDecoder
    subject: str
    _index: Any = field(default=None, repr=False)

    @property
    def n_voxels(self) -> int:
        return self.data.subject(self.subject).n_voxels

    def index(self) -> Any:
        """Exact FAISS index over the retrieval targets of every stimulus (built once)."""
        if self._index is None:
            from neuroattn.decode.clip_features import retrieval_targets
            from neuroattn.decode.retrieval import EmbeddingIndex

            self._index = EmbeddingIndex.build(retrieval_targets(self.data.features), kind="exact")
        return self._index

    def untrained_parts(self) -> list[str]:
        """Which of the decoder and its CLIP targets use random weights."""
        parts = []
        if not self.decoder.trained:
            parts.append(f"the {self.decoder.name} decoder")
        if not self.data.clip_trained:
            parts.append("the CLIP image features (tiny random CLIP)")
        return parts


def open_run(settings: AppSettings, run_dir: Path, subject: str | None = None) -> OpenRun:
    """Open a run folder inside the readable roots with its data folder, which must lie inside them too."""
    from neuroattn.decode.runs import open_run as open_decoding_run
    from neuroattn.decode.runs import read_run_info

    run_dir = resolve_inside(run_dir, settings.readable_roots)
    info = read_run_info(run_dir)
    data_root = resolve_inside(info["data_root"], settings.readable_roots)
    data, subject, decoder = open_decoding_run(run_dir, data_root, subject)
    return OpenRun(run_dir, info, data, decoder, subject)


def save_betas_upload(content: bytes, name: str, folder: Path, *, max_mb: int) -> Path:
    """Write uploaded betas (``.npy`` or NIfTI) into ``folder`` through the app's upload rules."""
    return save_upload(content, name, folder, max_mb=max_mb, suffixes=BETAS_SUFFIXES,
                       wrong_type="expected betas as .npy or a NIfTI (.nii/.nii.gz) file")


def uploaded_betas(run: OpenRun, betas_path: Path, mask_path: Path | None = None) -> np.ndarray:
    """Responses (N, V) of an uploaded file, z-scored like the run subject's training trials.

    Errors name the uploaded file by its own name, not the server path it was saved under.
    """
    from neuroattn.decode.fmri_input import read_betas

    try:
        return read_betas(betas_path, run.data.root, run.subject, mask=mask_path)
    except InvalidInputError as exc:
        if exc.path is not None and exc.path.parent == betas_path.parent:
            raise InvalidInputError(exc.problem, exc.path.name) from None
        raise


@dataclass(frozen=True)
class SimulatedTrial:
    """One simulated test trial of a subject."""

    trial: int  # row in the subject's trials
    image_id: int  # the stimulus shown
    repeats: int  # trials of the same image in the test split

    def label(self) -> str:
        return f"trial {self.trial} · image {self.image_id} ({self.repeats} repeats)"


def simulated_trials(run: OpenRun) -> list[SimulatedTrial]:
    """The subject's test trials, in trial order."""
    subject = run.data.subject(run.subject)
    rows = np.flatnonzero(subject.is_test)
    counts = dict(zip(*np.unique(subject.image_ids[rows], return_counts=True), strict=True))
    return [SimulatedTrial(int(r), int(subject.image_ids[r]), int(counts[subject.image_ids[r]])) for r in rows]


def trial_betas(run: OpenRun, trial: SimulatedTrial, average: bool = False) -> np.ndarray:
    """Responses (1, V) of one test trial, or the mean of every test repeat of its image with ``average``."""
    subject = run.data.subject(run.subject)
    if not average:
        return subject.betas[trial.trial][None].astype(np.float32)  # (1, V)
    same = subject.is_test & (subject.image_ids == trial.image_id)
    return subject.betas[same].astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32)  # (1, V)


@dataclass
class Retrieval:
    """Top-k stimuli per query: ``ids`` int64 (N, k) stimulus ids, ``scores`` float32 (N, k) cosine, best first."""

    ids: np.ndarray
    scores: np.ndarray
    seen: np.ndarray | None  # int64 (N,) the stimulus each query saw, when known


def retrieve(run: OpenRun, betas: np.ndarray, k: int, seen: np.ndarray | None = None) -> Retrieval:
    """Exact search of the decoder's brain embeddings of ``betas`` (N, V) among every stimulus."""
    if not 1 <= k <= len(run.data.stimuli):
        raise ConfigError(f"'k' must be between 1 and {len(run.data.stimuli)}, got {k}")
    scores, ids = run.index().search(run.decoder.brain_embeddings(betas), k)
    return Retrieval(ids=ids, scores=scores, seen=None if seen is None else np.asarray(seen, dtype=np.int64))


def retrieval_rows(result: Retrieval, stimuli_sources: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (query, rank): query, rank, image id, score, seen image and whether it is the match."""
    rows = []
    for q, (ids, scores) in enumerate(zip(result.ids, result.scores, strict=True)):
        seen = None if result.seen is None else int(result.seen[q])
        for rank, (image_id, score) in enumerate(zip(ids, scores, strict=True), start=1):
            row: dict[str, Any] = {"query": q, "rank": rank, "image_id": int(image_id),
                                   "score": round(float(score), 5), "seen_image": "" if seen is None else seen,
                                   "match": "" if seen is None else int(image_id) == seen}
            if stimuli_sources is not None:
                row["source"] = stimuli_sources[int(image_id)]
            rows.append(row)
    return rows


def write_retrieval_csv(rows: list[dict[str, Any]], path: Path, untrained: list[str]) -> Path:
    """The retrieval table as CSV (atomically); a leading comment line says which parts are UNTRAINED."""
    buffer = io.StringIO()
    if untrained:
        buffer.write(f"# UNTRAINED: {', '.join(untrained)} use random weights; not a decoding result\n")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


@dataclass
class Reconstruction:
    """Reconstructed images (N, H, W, 3) uint8, the low-level images when the decoder has that path."""

    images: np.ndarray
    lowlevel: np.ndarray | None
    generator_trained: bool
    generator_source: str


def load_generator(data_root: Path) -> Any:
    """The data folder's trained image generator (a clear error when the folder has none)."""
    from neuroattn.decode.pipeline import load_reconstructor

    return load_reconstructor(data_root)


def reconstruct(run: OpenRun, betas: np.ndarray, generator: Any, *, steps: int = 20, seed: int = 0,
                strength: float = 0.85, guidance: float = 3.0) -> Reconstruction:
    """Reconstructions of ``betas`` (N, V) with the decoder's predicted CLIP embedding and low-level image."""
    from neuroattn.decode.pipeline import reconstruct_images

    images, low = reconstruct_images(run.decoder, betas, generator, steps=steps, strength=strength,
                                     guidance=guidance, seed=seed)
    return Reconstruction(images, low, bool(generator.trained), str(generator.source))


def enlarge(image: np.ndarray, size: int = 128) -> np.ndarray:
    """A small uint8 image (H, W, 3) repeated to about ``size`` px per side (nearest neighbour) for display."""
    factor = max(1, size // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)  # (H*f, W*f, 3)


def save_reconstructions(result: Reconstruction, out_dir: Path, seen: np.ndarray | None,
                         untrained: list[str]) -> list[Path]:
    """Write the reconstructions (and low-level images) as PNGs under ``out_dir``, atomically; returns them.

    ``reconstruction.json`` beside them says which parts (``untrained`` plus the generator) have random weights.
    """
    from neuroattn.decode.reconstruct import save_pngs

    n = len(result.images)
    names = [f"{q:04d}" if seen is None else f"{q:04d}_image{int(seen[q])}" for q in range(n)]
    paths = save_pngs(result.images, out_dir, [f"{name}_reconstruction" for name in names])
    if result.lowlevel is not None:
        paths += save_pngs(result.lowlevel, out_dir, [f"{name}_lowlevel" for name in names])
    parts = [*untrained, *([] if result.generator_trained else [f"the image generator ({result.generator_source})"])]
    labels = {"images": [p.name for p in paths], "label": "UNTRAINED" if parts else "trained", "untrained": parts,
              "generator_source": result.generator_source}
    atomic_write_text(out_dir / "reconstruction.json", json.dumps(labels, indent=2) + "\n")
    return paths
