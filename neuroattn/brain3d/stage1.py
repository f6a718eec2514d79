"""Stage 1 (coarse): fit a radiance field to a reference view plus score distillation from random orbit views."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from neuroattn.brain3d.cameras import Camera, random_cameras
from neuroattn.brain3d.field import FieldConfig, RadianceField
from neuroattn.brain3d.guidance import ScoreDistillation
from neuroattn.brain3d.render import Renderable, RenderOutput, render_view
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.progress import progress_bar


@dataclass
class Stage1Config:
    """Coarse optimisation settings; the defaults fit one object in seconds on a CPU."""

    field: FieldConfig = field(default_factory=lambda: FieldConfig(blob=3.0))  # SDS needs a seed shape
    steps: int = 200
    lr: float = 0.05  # Adam step of the feature grid; the MLP gets a fifth of it
    render_size: int = 32  # pixels per side of every rendered view
    n_samples: int = 48  # samples per ray inside the object's box
    views_per_step: int = 1  # random orbit views scored by the guidance each step
    camera_radius: float = 3.0  # world units from the origin
    fov: float = 45.0  # degrees, vertical
    reference_azimuth: float = 0.0  # degrees: the view the reference image was "seen" from
    reference_elevation: float = 0.0  # degrees
    elevation_range: tuple[float, float] = (-10.0, 45.0)  # degrees, random guidance views
    sds_weight: float = 1.0
    recon_weight: float = 10.0  # colour term inside the reference silhouette
    mask_weight: float = 5.0  # silhouette term: rendered opacity vs the reference mask
    recon_loss: Literal["l2", "l1"] = "l2"
    sparsity_weight: float = 1e-3  # mean opacity of the random views: no floaters
    entropy_weight: float = 1e-3  # binary entropy of opacity: solid or empty, not haze
    tv_weight: float = 1.0  # total variation of the feature grid: smooth fields, filled interiors
    background: tuple[float, float, float] | None = None  # RGB in [0, 1]; None: median of the reference's border
    mask_threshold: float = 0.1  # colour distance from the background above which a reference pixel is foreground
    seed: int = 0
    device: str = "cpu"  # torch device of the field, the renders and the losses (the guidance keeps its own)

    def __post_init__(self) -> None:
        if self.recon_loss not in ("l2", "l1"):
            raise ConfigError(f"'recon_loss' must be one of ['l2', 'l1']. {self.recon_loss!r} was provided.")
        if self.steps < 0 or self.render_size < 2 or self.n_samples < 1:
            raise ConfigError("'steps' must be >= 0, 'render_size' >= 2 and 'n_samples' >= 1. "
                              f"{(self.steps, self.render_size, self.n_samples)!r} was provided.")

    def reference_camera(self) -> Camera:
        return Camera(self.reference_azimuth, self.reference_elevation, self.camera_radius, self.fov)


@dataclass
class ReferenceView:
    """A view with a known image: its camera, the image (3, H, W) in [0, 1] and its foreground mask (H, W) in {0, 1}."""

    camera: Camera
    image: Tensor
    mask: Tensor


@dataclass
class Stage1Result:
    """The fitted coarse field, the per-step loss history and what it was fitted to."""

    field: RadianceField
    history: dict[str, list[float]]
    config: Stage1Config
    views: list[ReferenceView]
    background: Tensor  # (3,) RGB used behind every render
    guidance_trained: bool | None  # None when no guidance was used


def estimate_background(image: Tensor) -> Tensor:
    """Median colour (3,) of the one-pixel border of an image (3, H, W)."""
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)  # (3, 2H+2W)
    return border.median(dim=1).values


def foreground_mask(image: Tensor, background: Tensor, threshold: float = 0.1) -> Tensor:
    """Float mask (H, W): 1 where any channel of ``image`` (3, H, W) differs from ``background`` by > threshold."""
    return ((image - background[:, None, None]).abs().amax(0) > threshold).float()


def resize_image(image: Tensor, size: int) -> Tensor:
    """Area-resize an image (C, H, W) to (C, size, size)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image[None], size=(size, size), mode="area")[0]


def reconstruction_terms(out: RenderOutput, view: ReferenceView, kind: str = "l2") -> tuple[Tensor, Tensor]:
    """Masked colour error inside the reference silhouette, and the silhouette MSE of opacity vs the mask."""
    diff = out.rgb - view.image  # (3, H, W)
    per_pixel = (diff**2 if kind == "l2" else diff.abs()).mean(0)  # (H, W)
    colour = (per_pixel * view.mask).sum() / view.mask.sum().clamp_min(1.0)
    return colour, F.mse_loss(out.opacity, view.mask)


def opacity_regulariser(opacity: Tensor, sparsity: float, entropy: float) -> Tensor:
    """``sparsity * mean(opacity) + entropy * mean(H(opacity))`` with H the binary entropy."""
    o = opacity.clamp(1e-4, 1 - 1e-4)
    ent = -(o * o.log() + (1 - o) * (1 - o).log())
    return sparsity * opacity.mean() + entropy * ent.mean()


def prepare_views(reference_image: Tensor | None, reference_mask: Tensor | None, views: Sequence[ReferenceView],
                  camera: Camera, size: int, background: tuple[float, float, float] | None, threshold: float,
                  *, device: torch.device | str = "cpu") -> tuple[list[ReferenceView], Tensor]:
    """Resize and check the reference inputs; estimate the background colour and mask where they are not given.

    The views and the background come back on ``device``.
    """
    out: list[ReferenceView] = []
    if reference_image is not None:
        if reference_image.ndim != 3 or reference_image.shape[0] != 3:
            raise InvalidInputError(f"reference image must have shape (3, H, W); got {tuple(reference_image.shape)}")
        image = resize_image(reference_image.float().clamp(0, 1), size)
        bg = torch.tensor(background, dtype=torch.float32) if background is not None else estimate_background(image)
        if reference_mask is None:
            mask = foreground_mask(image, bg, threshold)
        else:
            mask = (resize_image(reference_mask.float()[None], size)[0] > 0.5).float()
        out.append(ReferenceView(camera, image, mask))
    else:
        bg = torch.tensor(background if background is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
    for v in views:
        out.append(ReferenceView(v.camera, resize_image(v.image.float(), size),
                                 (resize_image(v.mask.float()[None], size)[0] > 0.5).float()))
    return [ReferenceView(v.camera, v.image.to(device), v.mask.to(device)) for v in out], bg.to(device)


def run_stage1(reference_image: Tensor | None, conditioning: Tensor | None, guidance: ScoreDistillation | None,
               config: Stage1Config | None = None, progress: bool = True, *, reference_mask: Tensor | None = None,
               views: Sequence[ReferenceView] = ()) -> Stage1Result:
    """Optimise a coarse radiance field.

    Parameters
    ----------
    reference_image : (3, H, W) in [0, 1], the decoded 2-D image seen from ``config.reference_camera()``, or None.
    conditioning : (1, L, C) tokens for the guidance, or None (required when ``guidance`` is set).
    guidance : score distillation on random orbit views, or None (reconstruction only).
    reference_mask : optional (H, W) foreground of the reference; estimated from the background colour otherwise.
    views : further views with known images (e.g. several true renders of a planted object).
    """
    config = config or Stage1Config()
    if guidance is not None and conditioning is None:
        raise ConfigError("'conditioning' is required when 'guidance' is given. None was provided.")
    ref_views, background = prepare_views(reference_image, reference_mask, views, config.reference_camera(),
                                          config.render_size, config.background, config.mask_threshold,
                                          device=config.device)
    if not ref_views and guidance is None:
        raise ConfigError("stage 1 needs a reference image, views or guidance; none was provided.")
    gen = torch.Generator().manual_seed(config.seed)  # CPU stream: the same cameras and jitter on every device
    model = RadianceField(config.field, seed=config.seed).to(config.device)
    optimizer = torch.optim.Adam([{"params": [model.grid], "lr": config.lr},
                                  {"params": model.mlp.parameters(), "lr": config.lr / 5}])
    history = fit_views(model, optimizer, ref_views, background, conditioning, guidance, config, gen,
                        progress=progress, desc="brain3d stage 1",
                        extra_loss=lambda step: config.tv_weight * model.total_variation())
    return Stage1Result(field=model, history=history, config=config, views=ref_views, background=background,
                        guidance_trained=None if guidance is None else guidance.trained)


def fit_views(model: Renderable, optimizer: torch.optim.Optimizer, views: Sequence[ReferenceView],
              background: Tensor, conditioning: Tensor | None, guidance: ScoreDistillation | None,
              config: Stage1Config, gen: torch.Generator, *, progress: bool, desc: str,
              extra_loss: Callable[[int], Tensor] | None = None) -> dict[str, list[float]]:
    """The shared optimisation loop of both stages; ``extra_loss(step)`` adds a model regulariser (and may anneal)."""
    history: dict[str, list[float]] = {k: [] for k in ("loss", "recon", "silhouette", "sds", "reg")}
    size, kw = config.render_size, {"n_samples": config.n_samples, "background": background}
    zero = torch.zeros((), device=background.device)
    for step in progress_bar(range(config.steps), desc=desc, disable=not progress, unit="step"):
        recon = sil = sds = zero
        reg = extra_loss(step) if extra_loss is not None else zero
        if views:
            view = views[step % len(views)]
            out = render_view(model, view.camera, size, generator=gen, **kw)
            recon, sil = reconstruction_terms(out, view, config.recon_loss)
            reg = reg + opacity_regulariser(out.opacity, 0.0, config.entropy_weight)
        if guidance is not None and conditioning is not None and config.sds_weight > 0:
            cams = random_cameras(config.views_per_step, gen, elevation_range=config.elevation_range,
                                  radius=config.camera_radius, fov=config.fov)
            outs = [render_view(model, cam, size, generator=gen, **kw) for cam in cams]
            rgb = torch.stack([o.rgb for o in outs])  # (B, 3, H, W)
            opacity = torch.stack([o.opacity for o in outs])  # (B, H, W)
            sds = guidance(rgb, conditioning, generator=gen).loss.to(zero.device)
            reg = reg + opacity_regulariser(opacity, config.sparsity_weight, config.entropy_weight)
        loss = config.recon_weight * recon + config.mask_weight * sil + config.sds_weight * sds + reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in zip(history, (loss, recon, sil, sds, reg), strict=True):
            history[key].append(float(value.detach()))
    return history
