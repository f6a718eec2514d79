"""ROI ablation ("disordered regions"): zero or perturb one region group and measure how the 3-D output changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroattn.brain3d.cameras import orbit_cameras
from neuroattn.brain3d.conditioning import ABLATION_MODES, region_groups
from neuroattn.brain3d.pipeline import Brain3DResult, Brain3DSettings, make_conditioning, prepare_inputs, run_brain3d
from neuroattn.brain3d.render import render_view
from neuroattn.errors import ConfigError
from neuroattn.io.atomic import atomic_path, atomic_write_csv, atomic_write_json
from neuroattn.progress import progress_bar


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-300))


def pixcorr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' pixels, flattened, in float64 (1 for identical images)."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(x, y):
        return 1.0  # exactly, not up to rounding: unchanged images are reported as unchanged
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-300))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def silhouettes(result: Brain3DResult, settings: Brain3DSettings) -> np.ndarray:
    """Bool (F, H, W): where the refined field is opaque (> 0.5) from the turntable cameras."""
    assert result.field is not None
    cams = orbit_cameras(settings.turntable_frames, elevation=20.0)
    with torch.no_grad():
        masks = [render_view(result.field, cam, settings.turntable_size, n_samples=settings.n_samples).opacity > 0.5
                 for cam in cams]
    return torch.stack(masks).cpu().numpy()


def compare(base: Brain3DResult, other: Brain3DResult, base_sil: np.ndarray, other_sil: np.ndarray
            ) -> dict[str, float]:
    """How far one generation moved from the baseline: conditioning, reference image, renders and shape."""
    b, o = base.conditioning, other.conditioning
    render_diff = np.abs(base.frames.astype(np.float64) - other.frames.astype(np.float64)).mean() / 255.0
    return {
        "clip_cosine": cosine(b.clip_tokens, o.clip_tokens),
        "pooled_cosine": cosine(b.pooled, o.pooled),
        "reference_pixcorr": pixcorr(b.lowlevel_image, o.lowlevel_image),
        "reference_mae": float(np.abs(b.lowlevel_image.astype(np.float64) - o.lowlevel_image).mean()),
        "render_mae": float(render_diff),
        "silhouette_iou": float(np.mean([iou(x, y) for x, y in zip(base_sil, other_sil, strict=True)])),
        "voxel_iou": iou(base.occupancy, other.occupancy),
    }


def save_grid(rows: list[tuple[str, np.ndarray]], path: Path, n_views: int = 4) -> Path:
    """A PNG grid: one row per run (label, frames (F, H, W, 3) uint8), ``n_views`` evenly spaced views each."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1].shape[1:3]
    label_w = 110
    canvas = Image.new("RGB", (label_w + n_views * w, len(rows) * h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, frames) in enumerate(rows):
        picks = np.linspace(0, len(frames), n_views, endpoint=False).astype(int)
        for c, k in enumerate(picks):
            canvas.paste(Image.fromarray(frames[k]), (label_w + c * w, r * h))
        draw.text((4, r * h + h // 2 - 5), label, fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def roi_ablation(settings: Brain3DSettings, out: str | Path, *, fmri: str | Path, checkpoint: str | Path,
                 data: str | Path | None = None, subject: str | None = None, groups: list[str] | None = None,
                 modes: tuple[str, ...] = ABLATION_MODES, seed: int = 0, progress: bool = True
                 ) -> list[dict[str, Any]]:
    """Baseline generation plus one per region group and mode, all with the same seeds; rows of the table.

    Writes ``baseline/`` and ``<group>-<mode>/`` generation folders, ``ablation.csv``, ``ablation.json`` and
    ``ablation_renders.png`` into ``out``. Each row compares one ablated generation with the baseline.
    """
    bad = [m for m in modes if m not in ABLATION_MODES]
    if bad or not modes:
        raise ConfigError(f"'modes' must be a non-empty subset of {list(ABLATION_MODES)}. "
                          f"{list(modes)!r} was provided.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(fmri=fmri, checkpoint=checkpoint, data=data, subject=subject)
    known = region_groups(inputs.bundle.subject(inputs.subject), settings.lowlevel_groups,
                          settings.semantic_groups)
    names = groups or known.names
    unknown = [g for g in names if g not in known.masks]
    if unknown:
        raise ConfigError(f"unknown region group(s) {unknown}; known: {known.names}")
    base_cond = make_conditioning(inputs, settings, seed=seed)
    base = run_brain3d(settings, out / "baseline", base_cond, inputs, progress=False)
    base_sil = silhouettes(base, settings)
    rows: list[dict[str, Any]] = []
    grid = [("baseline", base.frames)]
    jobs = [(g, m) for g in names for m in modes]
    for group, mode in progress_bar(jobs, desc="brain3d ablation", disable=not progress, unit="run"):
        cond = make_conditioning(inputs, settings, ablate=group, mode=mode, seed=seed)
        result = run_brain3d(settings, out / f"{group}-{mode}", cond, inputs, progress=False,
                             extra={"ablation": {"group": group, "mode": mode, "seed": seed}})
        head = "lowlevel" if group in known.lowlevel else "semantic"
        rows.append({"group": group, "mode": mode, "head": head, "voxels": int(known.masks[group].sum())}
                    | compare(base, result, base_sil, silhouettes(result, settings)))
        grid.append((f"{group} {mode}", result.frames))
    atomic_write_csv(out / "ablation.csv", rows)
    atomic_write_json(out / "ablation.json", {"rows": rows, "baseline": str(base.out), "seed": seed,
                                              "untrained": base.record["untrained"],
                                              "guidance": base.record["guidance"]})
    save_grid(grid, out / "ablation_renders.png")
    return rows
