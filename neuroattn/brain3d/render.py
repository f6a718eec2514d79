"""Differentiable volume rendering in torch: ray sampling in the object's box, alpha compositing, depth, opacity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from neuroattn.brain3d.cameras import Camera, get_rays

Renderable = Callable[[Tensor], tuple[Tensor, Tensor]]
"""Anything mapping world points (N, 3) to density (N,) (1/world unit) and colour (N, 3) in [0, 1]."""


@dataclass
class RenderOutput:
    """A rendered view: colour over the background, accumulated opacity and expected termination depth."""

    rgb: Tensor  # (3, H, W) in [0, 1]
    opacity: Tensor  # (H, W) in [0, 1]; 1 - transmittance through the whole box
    depth: Tensor  # (H, W) expected depth along the ray (world units), divided by opacity; 0 where nothing is hit


def field_device(field: object) -> torch.device:
    """Where a renderable computes: the device of its first parameter or buffer (CPU for analytic shapes)."""
    if isinstance(field, torch.nn.Module):
        for tensor in (*field.parameters(), *field.buffers()):
            return tensor.device
    return torch.device("cpu")


def ray_box(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against the cube [-bound, bound]^3 for rays (N, 3).

    Returns entry and exit distances (N,) clamped to be >= 0, and a hit mask (N,).
    """
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (-bound - origins) / safe  # (N, 3)
    t1 = (bound - origins) / safe
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    hit = t_far > t_near
    return t_near, torch.where(hit, t_far, t_near), hit


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite samples along rays (emission-absorption quadrature).

    Parameters
    ----------
    sigma : (N, S) densities; rgb : (N, S, 3) colours; t : (N, S) sample distances; delta : (N, S) bin lengths.

    Returns
    -------
    colour (N, 3) without background, opacity (N,), weighted depth sum (N,) (not yet divided by opacity).
    """
    alpha = 1.0 - torch.exp(-sigma * delta)  # (N, S)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=1), dim=1)[:, :-1]
    weights = alpha * trans  # (N, S)
    colour = (weights[..., None] * rgb).sum(dim=1)  # (N, 3)
    return colour, weights.sum(dim=1), (weights * t).sum(dim=1)


def render_rays(field: Renderable, origins: Tensor, directions: Tensor, *, n_samples: int = 48, bound: float = 1.0,
                background: Tensor | float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Render rays (N, 3) through ``field``; samples at bin midpoints, jittered within bins when ``generator`` is set.

    Returns colour (N, 3) composited over ``background`` (scalar or (3,)), opacity (N,), depth (N,).
    """
    n = origins.shape[0]
    t_near, t_far, hit = ray_box(origins, directions, bound)
    step = (t_far - t_near) / n_samples  # (N,) bin length; 0 for rays that miss the box
    if generator is None:
        offset = torch.full((n, n_samples), 0.5, dtype=origins.dtype, device=origins.device)
    else:
        offset = torch.rand(n, n_samples, generator=generator, dtype=origins.dtype).to(origins.device)
    bins = torch.arange(n_samples, dtype=origins.dtype, device=origins.device)
    t = t_near[:, None] + (bins[None, :] + offset) * step[:, None]  # (N, S)
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]  # (N, S, 3)
    sigma, rgb = field(points.reshape(-1, 3))
    sigma = sigma.reshape(n, n_samples) * hit[:, None]  # (N, S)
    rgb = rgb.reshape(n, n_samples, 3)  # (N, S, 3)
    colour, opacity, depth_sum = composite(sigma, rgb, t, step[:, None].expand(n, n_samples))
    bg = torch.as_tensor(background, dtype=colour.dtype, device=colour.device)
    colour = colour + (1.0 - opacity[:, None]) * bg
    depth = torch.where(opacity > 1e-6, depth_sum / opacity.clamp_min(1e-6), torch.zeros_like(depth_sum))
    return colour, opacity, depth


def render_view(field: Renderable, camera: Camera, size: int | tuple[int, int], *, n_samples: int = 48,
                bound: float = 1.0, background: Tensor | float = 1.0, generator: torch.Generator | None = None,
                chunk: int | None = None) -> RenderOutput:
    """Render one camera's image of ``field`` (``size`` = side or (H, W)); ``chunk`` rays at a time if set."""
    height, width = (size, size) if isinstance(size, int) else size
    origins, dirs = get_rays(camera, height, width)
    device = field_device(field)
    origins, dirs = origins.reshape(-1, 3).to(device), dirs.reshape(-1, 3).to(device)  # (H*W, 3)
    step = chunk or origins.shape[0]
    parts = [render_rays(field, origins[i : i + step], dirs[i : i + step], n_samples=n_samples, bound=bound,
                         background=background, generator=generator) for i in range(0, origins.shape[0], step)]
    colour, opacity, depth = (torch.cat(p) for p in zip(*parts, strict=True))
    return RenderOutput(rgb=colour.T.reshape(3, height, width), opacity=opacity.reshape(height, width),
                        depth=depth.reshape(height, width))


def render_views(field: Renderable, cameras: Sequence[Camera], size: int | tuple[int, int], **kwargs: object
                 ) -> RenderOutput:
    """Render several cameras; the result's tensors gain a leading view axis: rgb (B, 3, H, W), opacity (B, H, W)."""
    outs = [render_view(field, cam, size, **kwargs) for cam in cameras]  # type: ignore[arg-type]
    return RenderOutput(rgb=torch.stack([o.rgb for o in outs]), opacity=torch.stack([o.opacity for o in outs]),
                        depth=torch.stack([o.depth for o in outs]))
