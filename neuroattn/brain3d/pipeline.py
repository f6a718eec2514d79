"""Brain3D generate: fMRI (or an image) -> conditioning -> coarse field (SDS) -> refined mesh -> files on disk."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.brain3d.conditioning import (
    LOWLEVEL_GROUPS,
    SEMANTIC_GROUPS,
    Conditioning,
    decode_conditioning,
    reference_foreground,
    region_groups,
)
from neuroattn.brain3d.field import FieldConfig
from neuroattn.brain3d.guidance_sources import GUIDANCE_KINDS, GuidanceChoice, choose_guidance
from neuroattn.brain3d.mesh import Mesh
from neuroattn.brain3d.refine import RefineConfig, SdfField, run_refine
from neuroattn.brain3d.stage1 import Stage1Config, run_stage1
from neuroattn.brain3d.turntable import render_turntable, save_gif
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_path, atomic_write_json
from neuroattn.progress import progress_bar

MESH_FILES = ("mesh.glb", "mesh.ply", "mesh.obj")


@dataclass
class Brain3DSettings:
    """Settings of ``neuroattn brain3d generate`` (``pipelines/brain3d/*.yaml``)."""

    guidance: str = "variation"  # variation (data folder's trained model) | diffusers | tiny (UNTRAINED) | none
    guidance_path: str | None = None  # local diffusers UNet/pipeline folder for guidance "diffusers"
    guidance_path_trained: bool = True  # false when guidance_path holds random weights (outputs say UNTRAINED)
    guidance_scale: float = 3.0  # classifier-free guidance weight
    t_range: tuple[float, float] = (0.02, 0.98)  # fractions of the diffusion steps SDS draws t from
    sds_weight: float = 0.1  # SDS against the reference reconstruction (weights 10 colour, 5 silhouette)
    stage1_steps: int = 150
    refine_steps: int = 40
    render_size: int = 32  # px per side of every training render
    n_samples: int = 32  # samples per ray
    field_resolution: int = 32  # voxels per side of the coarse radiance field
    refine_resolution: int = 40  # voxels per side of the refined SDF grid
    mesh_resolution: int = 48  # marching-cubes grid side
    turntable_frames: int = 24
    turntable_size: int = 96  # px per side of the turntable GIF
    occupancy_resolution: int = 32  # grid side of the saved occupancy (shape comparisons)
    lowlevel_groups: tuple[str, ...] = LOWLEVEL_GROUPS  # ROI groups read by the low-level (image) head
    semantic_groups: tuple[str, ...] = SEMANTIC_GROUPS  # ROI groups read by the CLIP head
    seed: int = 0
    device: str = "cpu"  # where the field, renderer and guidance run: cpu | cuda | auto (turntable on the CPU)
    stage1: dict[str, Any] = field(default_factory=dict)  # further Stage1Config fields (``field``: FieldConfig's)
    refine: dict[str, Any] = field(default_factory=dict)  # further RefineConfig fields

    def __post_init__(self) -> None:
        self.t_range = tuple(self.t_range)  # type: ignore[assignment]
        self.lowlevel_groups, self.semantic_groups = tuple(self.lowlevel_groups), tuple(self.semantic_groups)
        if self.guidance not in GUIDANCE_KINDS:
            raise ConfigError(f"'guidance' must be one of {list(GUIDANCE_KINDS)}. {self.guidance!r} was provided.")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"'device' must be one of ['cpu', 'cuda', 'auto']. {self.device!r} was provided.")
        for name in ("stage1_steps", "refine_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"'{name}' must be >= 0. {getattr(self, name)!r} was provided.")
        for name in ("render_size", "turntable_size", "field_resolution", "refine_resolution", "mesh_resolution",
                     "occupancy_resolution"):
            if getattr(self, name) < 4:
                raise ConfigError(f"'{name}' must be >= 4. {getattr(self, name)!r} was provided.")
        self.stage1_config()
        self.refine_config()

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
        return self.device

    def stage1_config(self) -> Stage1Config:
        extra = dict(self.stage1)
        field_cfg = {"resolution": self.field_resolution, "blob": 3.0} | dict(extra.pop("field", {}) or {})
        _check_keys("stage1", extra, Stage1Config)
        base = {"steps": self.stage1_steps, "render_size": self.render_size, "n_samples": self.n_samples,
                "sds_weight": self.sds_weight, "seed": self.seed, "device": self.resolved_device()}
        _check_keys("stage1.field", field_cfg, FieldConfig)
        return Stage1Config(field=FieldConfig(**field_cfg), **(base | extra))

    def refine_config(self) -> RefineConfig:
        _check_keys("refine", self.refine, RefineConfig)
        base = {"steps": self.refine_steps, "resolution": self.refine_resolution, "render_size": self.render_size,
                "n_samples": self.n_samples, "sds_weight": self.sds_weight, "mesh_resolution": self.mesh_resolution,
                "seed": self.seed}
        return RefineConfig(**(base | dict(self.refine)))


def _check_keys(where: str, values: dict[str, Any], cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")


@dataclass
class Brain3DInputs:
    """What one generation starts from: a decoding run and one trial's betas, and/or a given image."""

    bundle: Any = None  # DecodingData or None
    subject: str | None = None
    decoder: Any = None
    betas: np.ndarray | None = None  # (V,) z-scored
    image: np.ndarray | None = None  # (3, H, W) in [0, 1] when given instead of decoding
    sources: dict[str, Any] = field(default_factory=dict)  # file names, for the record


@dataclass
class Brain3DResult:
    """Paths of a generation's files, and what it made in memory (for comparisons)."""

    out: Path
    mesh_paths: dict[str, Path]  # suffix (glb, ply, obj) -> file
    turntable: Path
    reference: Path
    conditioning_path: Path
    json: Path
    record: dict[str, Any]
    mesh: Mesh
    frames: np.ndarray  # (F, H, W, 3) uint8 turntable frames
    occupancy: np.ndarray  # bool (R, R, R) inside the refined surface, indexed (x, y, z)
    conditioning: Conditioning
    field: SdfField | None = None


def read_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """An image file as float32 (3, H, W) in [0, 1], area-resized to ``size`` x ``size`` when given."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None:
                rgb = rgb.resize((size, size), Image.Resampling.BOX)
            array = np.asarray(rgb, dtype=np.float32) / 255.0  # (H, W, 3)
    except (UnidentifiedImageError, OSError) as err:
        raise InvalidInputError(f"not a readable image ({err})", path) from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def prepare_inputs(*, fmri: str | Path | None = None, image: str | Path | None = None,
                   checkpoint: str | Path | None = None, data: str | Path | None = None,
                   subject: str | None = None) -> Brain3DInputs:
    """Open the decoding run and read the fMRI file (one trial, z-scored like the training data) or the image."""
    if (fmri is None) == (image is None):
        raise InvalidInputError("give exactly one of --fmri and --image", None)
    if fmri is not None and checkpoint is None:
        raise InvalidInputError("--fmri needs --checkpoint (a decoding run folder)", fmri)
    bundle = decoder = None
    if checkpoint is not None:
        from neuroattn.decode.runs import open_run

        bundle, subject, decoder = open_run(checkpoint, data, subject)
    elif data is not None:
        from neuroattn.decode.data_bundle import open_decoding_data

        bundle = open_decoding_data(data)
    sources = {"fmri": None if fmri is None else str(fmri), "image": None if image is None else str(image),
               "checkpoint": None if checkpoint is None else str(checkpoint),
               "data": None if bundle is None else str(bundle.root), "subject": subject}
    if image is not None:
        size = None if bundle is None else bundle.stimuli.image_size
        return Brain3DInputs(bundle, subject, decoder, None, read_image(image, size), sources)
    from neuroattn.decode.fmri_input import read_betas

    betas = read_betas(fmri, bundle.root, subject)  # type: ignore[arg-type,union-attr]
    if betas.shape[0] != 1:
        raise InvalidInputError(f"{betas.shape[0]} trials in the file; Brain3D makes one object from one trial",
                                fmri)
    return Brain3DInputs(bundle, subject, decoder, betas[0], None, sources)


def image_conditioning(inputs: Brain3DInputs) -> Conditioning:
    """Conditioning from a given image: the image itself, and its CLIP embedding when a data folder is known."""
    image = inputs.image
    assert image is not None
    mask, mask_source = reference_foreground(image)
    info: dict[str, Any] = {"source": "image", "reference_mask": mask_source}
    if inputs.bundle is None:
        empty = np.zeros((0, 0), np.float32)
        return Conditioning(empty, np.zeros(0, np.float32), image, mask, info | {"clip": None})
    from neuroattn.decode.clip_features import load_clip

    src = inputs.bundle.source
    clip = load_clip(src.clip_weights, model_name=src.clip_model, image_size=inputs.bundle.stimuli.image_size,
                     seed=src.seed)
    uint8 = np.clip(np.round(image.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)[None]  # (1, H, W, 3)
    feats = clip.encode_images(uint8)
    info |= {"clip_trained": clip.trained, "clip_source": clip.source}
    return Conditioning(feats.tokens[0], feats.pooled[0], image, mask, info)


def make_conditioning(inputs: Brain3DInputs, settings: Brain3DSettings, *, ablate: str | None = None,
                      mode: str = "zero", seed: int = 0) -> Conditioning:
    """The conditioning of one generation (decoded from the betas, or from the given image)."""
    if inputs.image is not None:
        if ablate is not None:
            raise ConfigError("ROI ablation needs fMRI input, not an image")
        return image_conditioning(inputs)
    subject_data = inputs.bundle.subject(inputs.subject)
    groups = region_groups(subject_data, settings.lowlevel_groups, settings.semantic_groups)
    return decode_conditioning(inputs.bundle, inputs.subject, inputs.decoder, inputs.betas, groups=groups,  # type: ignore[arg-type]
                               ablate=ablate, mode=mode, seed=seed)


def _guidance(settings: Brain3DSettings, cond: Conditioning, inputs: Brain3DInputs) -> GuidanceChoice:
    kind = settings.guidance
    if cond.clip_tokens.size == 0 and kind != "none":
        choice = choose_guidance("none", data_root=None, tokens=cond.clip_tokens, pooled=cond.pooled,
                                 render_size=settings.render_size)
        choice.info["note"] = f"guidance {kind!r} skipped: no CLIP embedding without a data folder (give --data)"
        return choice
    return choose_guidance(kind, data_root=None if inputs.bundle is None else inputs.bundle.root,
                           tokens=cond.clip_tokens, pooled=cond.pooled, render_size=settings.render_size,
                           path=settings.guidance_path, guidance_scale=settings.guidance_scale,
                           t_range=settings.t_range, path_trained=settings.guidance_path_trained,
                           seed=settings.seed, device=settings.resolved_device())


def untrained_parts(cond: Conditioning, guidance: dict[str, Any], inputs: Brain3DInputs) -> list[str]:
    """Names of the components of this run that hold random (untrained) weights."""
    parts = []
    if guidance.get("trained") is False:
        parts.append("guidance")
    info = cond.info
    if info.get("clip_trained") is False:
        parts.append("clip")
    if info.get("autoencoder_trained") is False:
        parts.append("autoencoder")
    if guidance.get("autoencoder_trained") is False and "autoencoder" not in parts:
        parts.append("autoencoder")
    if inputs.decoder is not None and info.get("decoder_trained") is False:
        parts.append("decoder")
    return parts


def occupancy_grid(sdf_field: SdfField, resolution: int) -> np.ndarray:
    """Bool (R, R, R) indexed (x, y, z): grid points inside the refined surface (SDF < 0)."""
    bound = float(sdf_field.bound)
    axis = torch.linspace(-bound, bound, resolution, device=sdf_field.sdf_grid.device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)  # (R^3, 3)
    with torch.no_grad():
        sdf = sdf_field.sdf(pts).reshape(resolution, resolution, resolution)
    return (sdf < 0).cpu().numpy()


def _save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    uint8 = np.clip(np.round(image.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)  # (H, W, 3)
    with atomic_path(path) as tmp:
        Image.fromarray(uint8).save(tmp, format="PNG")
    return path


def run_brain3d(settings: Brain3DSettings, out: str | Path, cond: Conditioning, inputs: Brain3DInputs, *,
                progress: bool = True, extra: dict[str, Any] | None = None,
                pre_timings: dict[str, float] | None = None) -> Brain3DResult:
    """Stage 1, refinement and export for a given conditioning; writes every file of ``generate`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = dict(pre_timings or {})  # seconds per stage
    bar = progress_bar(total=4, desc="brain3d", disable=not progress, unit="stage")
    start = time.perf_counter()
    choice = _guidance(settings, cond, inputs)
    timings["guidance_load"] = time.perf_counter() - start
    reference = torch.from_numpy(cond.lowlevel_image)
    mask = None if cond.reference_mask is None else torch.from_numpy(cond.reference_mask)
    start = time.perf_counter()
    s1 = run_stage1(reference, choice.conditioning, choice.guidance, settings.stage1_config(), progress=progress,
                    reference_mask=mask)
    timings["stage1"] = time.perf_counter() - start
    bar.update(1)
    start = time.perf_counter()
    refined = run_refine(s1, reference, choice.conditioning, choice.guidance, settings.refine_config(),
                         progress=progress, reference_mask=mask)
    timings["refine"] = time.perf_counter() - start
    bar.update(1)
    mesh = refined.mesh
    if len(mesh.faces) == 0:
        raise ConfigError("the refined field holds no surface (an empty mesh); try more stage-1 steps or a "
                          "higher recon_weight")
    start = time.perf_counter()
    mesh_paths = {name.split(".")[1]: mesh.save(out / name) for name in MESH_FILES}
    reference_path = _save_png(cond.lowlevel_image, out / "reference.png")
    cond_path = out / "conditioning.npz"
    with atomic_path(cond_path) as tmp:
        np.savez_compressed(tmp, **cond.arrays())
    occupancy = occupancy_grid(refined.field, settings.occupancy_resolution)
    timings["export"] = time.perf_counter() - start
    bar.update(1)
    start = time.perf_counter()
    bg = tuple(float(c) for c in s1.background)
    frames = render_turntable(mesh, settings.turntable_frames, settings.turntable_size, background=bg)
    gif = save_gif(frames, out / "turntable.gif")
    timings["turntable"] = time.perf_counter() - start
    bar.update(1)
    bar.close()
    timings["total"] = sum(timings.values())
    untrained = untrained_parts(cond, choice.info, inputs)
    trimesh_mesh = mesh.to_trimesh()
    record = {
        "inputs": inputs.sources,
        "settings": asdict(settings),
        "conditioning": cond.info,
        "guidance": choice.info,
        "untrained": untrained,
        "note": ("made with UNTRAINED components: " + ", ".join(untrained)) if untrained else
        "all components trained",
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "mesh": {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "volume": mesh.volume,
                 "area": mesh.area, "watertight": bool(trimesh_mesh.is_watertight),  # type: ignore[attr-defined]
                 "occupied_fraction": float(occupancy.mean())},
        "history": {"stage1_final_loss": s1.history["loss"][-1] if s1.history["loss"] else None,
                    "refine_final_loss": refined.history["loss"][-1] if refined.history["loss"] else None},
        "files": {"meshes": list(MESH_FILES), "turntable": gif.name, "reference": reference_path.name,
                  "conditioning": cond_path.name},
    } | (extra or {})
    json_path = atomic_write_json(out / "brain3d.json", record)
    return Brain3DResult(out, mesh_paths, gif, reference_path, cond_path, json_path, record, mesh, frames, occupancy,
                         cond, refined.field)


def generate(settings: Brain3DSettings, out: str | Path, *, fmri: str | Path | None = None,
             image: str | Path | None = None, checkpoint: str | Path | None = None, data: str | Path | None = None,
             subject: str | None = None, progress: bool = True) -> Brain3DResult:
    """A 3-D object from one trial's fMRI (``fmri`` + ``checkpoint``) or from an image, written into ``out``.

    Files: ``mesh.glb``, ``mesh.ply``, ``mesh.obj``, ``turntable.gif``, ``reference.png`` (the decoded or given
    image), ``conditioning.npz`` and ``brain3d.json`` (settings, what was untrained, seconds per stage, mesh stats).
    """
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    inputs = prepare_inputs(fmri=fmri, image=image, checkpoint=checkpoint, data=data, subject=subject)
    loaded = time.perf_counter()
    cond = make_conditioning(inputs, settings, seed=settings.seed)
    pre = {"load": loaded - start, "conditioning": time.perf_counter() - loaded}
    return run_brain3d(replace(settings), out, cond, inputs, progress=progress, pre_timings=pre)
