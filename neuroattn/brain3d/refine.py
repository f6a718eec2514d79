"""Stage 2 (fine): a signed-distance + colour grid, rendered as VolSDF densities, refined and cut into a mesh.

What this is, compared with DMTet: DMTet deforms a tetrahedral grid carrying SDF values and rasterises the
extracted mesh. Here the same unknowns (an SDF on a grid finer than stage 1's, and a colour grid) are rendered
by volume rendering with VolSDF's density ``sigma = Psi_beta(-sdf) / beta`` (Laplace CDF), which concentrates
the weights within a few ``beta`` of the zero level set, so surfaces are sharp while gradients stay smooth.
The SDF starts as the signed distance transform of stage 1's (hole-filled) occupancy, the colours from stage
1's colours; both are optimised with the same guidance and reconstruction losses as stage 1 plus an eikonal
term, and the final mesh is marching cubes of the SDF zero level set with colours sampled at its vertices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from neuroattn.brain3d.field import DENSITY_THRESHOLD, query_grid, sample_grid
from neuroattn.brain3d.guidance import ScoreDistillation
from neuroattn.brain3d.mesh import Mesh, extract_mesh
from neuroattn.brain3d.stage1 import ReferenceView, Stage1Result, fit_views, prepare_views
from neuroattn.errors import ConfigError


@dataclass
class RefineConfig:
    """Fine-stage settings; camera placement and the reference background come from stage 1."""

    resolution: int = 48  # SDF/colour grid side (stage 1's is 32)
    steps: int = 60
    lr: float = 0.003  # Adam step of the SDF values (world units)
    colour_lr: float = 0.05  # Adam step of the colour logits
    beta: float = 0.02  # world units: Laplace scale of the SDF-to-density map at the start; smaller is sharper
    beta_end: float = 0.005  # world units: annealed to geometrically; a wide beta inflates silhouettes by ~2 beta
    render_size: int = 48  # pixels per side
    n_samples: int = 64  # samples per ray
    sds_weight: float = 1.0
    recon_weight: float = 10.0
    mask_weight: float = 5.0
    eikonal_weight: float = 0.1  # keeps the grid a distance (|grad sdf| = 1)
    entropy_weight: float = 1e-3
    sparsity_weight: float = 1e-3
    mesh_resolution: int = 64  # marching-cubes grid side for the final mesh
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution < 4 or min(self.beta, self.beta_end) <= 0 or self.steps < 0:
            raise ConfigError("'resolution' must be >= 4, 'beta' and 'beta_end' > 0 and 'steps' >= 0. "
                              f"{(self.resolution, self.beta, self.beta_end, self.steps)!r} was provided.")

    def beta_at(self, step: int) -> float:
        """Laplace scale (world units) at ``step``: geometric from ``beta`` to ``beta_end``."""
        frac = step / max(self.steps - 1, 1)
        return self.beta * (self.beta_end / self.beta) ** frac


def laplace_density(sdf: Tensor, beta: float) -> Tensor:
    """VolSDF density ``(1 / beta) * Psi_beta(-sdf)``, with Psi_beta the CDF of a zero-mean Laplace of scale beta."""
    s = -sdf / beta
    return (torch.where(s <= 0, 0.5 * torch.exp(s.clamp_max(0.0)), 1.0 - 0.5 * torch.exp(-s.clamp_min(0.0)))) / beta


class SdfField(nn.Module):
    """SDF grid (1, R, R, R) and colour-logit grid (3, R, R, R), both indexed (z, y, x), over [-bound, bound]^3."""

    def __init__(self, sdf: Tensor, colour_logits: Tensor, beta: float, bound: float = 1.0) -> None:
        super().__init__()
        self.sdf_grid = nn.Parameter(sdf.float().clone())
        self.colour_grid = nn.Parameter(colour_logits.float().clone())
        self.beta = beta
        self.bound = bound

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (N,) at points (N, 3) (world units, negative inside); the border value outside the box."""
        return sample_grid(self.sdf_grid, points, self.bound, padding="border")[:, 0]

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        colour = torch.sigmoid(sample_grid(self.colour_grid, points, self.bound, padding="border"))  # (N, 3)
        return laplace_density(self.sdf(points), self.beta), colour

    def eikonal(self) -> Tensor:
        """Mean (|grad sdf| - 1)^2 over the grid by forward differences."""
        g = self.sdf_grid[0]  # (Z, Y, X)
        h = 2.0 * self.bound / (g.shape[0] - 1)
        dz, dy, dx = (g[1:, :-1, :-1] - g[:-1, :-1, :-1]), (g[:-1, 1:, :-1] - g[:-1, :-1, :-1]), (
            g[:-1, :-1, 1:] - g[:-1, :-1, :-1])
        norm = torch.sqrt(dx**2 + dy**2 + dz**2 + 1e-12) / h
        return ((norm - 1.0) ** 2).mean()


def sdf_from_occupancy(occupancy: np.ndarray, bound: float = 1.0) -> np.ndarray:
    """Signed distance (R, R, R) in world units of a boolean grid (R, R, R), zero half-way between in and out."""
    from scipy.ndimage import distance_transform_edt

    h = 2.0 * bound / (occupancy.shape[0] - 1)
    outside = distance_transform_edt(~occupancy) - 0.5
    inside = distance_transform_edt(occupancy) - 0.5
    return np.where(occupancy, -inside, outside) * h


def field_from_stage1(stage1: Stage1Result, config: RefineConfig) -> SdfField:
    """Initialise the SDF from stage 1's hole-filled occupancy and the colours from its colour output."""
    from scipy.ndimage import binary_fill_holes

    bound = stage1.config.field.bound
    density, colour = query_grid(stage1.field, config.resolution, bound)  # (R, R, R), (R, R, R, 3) as (x, y, z)
    occupancy = binary_fill_holes(density.numpy() > DENSITY_THRESHOLD)
    sdf = torch.from_numpy(sdf_from_occupancy(occupancy, bound)).float()
    logits = torch.logit(colour.clamp(0.02, 0.98))
    sdf_zyx = sdf.permute(2, 1, 0)[None]  # (1, Z, Y, X)
    logits_zyx = logits.permute(3, 2, 1, 0)  # (3, Z, Y, X)
    field = SdfField(sdf_zyx.contiguous(), logits_zyx.contiguous(), config.beta, bound)
    return field.to(stage1.config.device)


@dataclass
class RefineResult:
    """The final coloured mesh, the fine stage's loss history and the SDF field it was cut from."""

    mesh: Mesh
    history: dict[str, list[float]]
    field: SdfField


def run_refine(stage1_result: Stage1Result, reference_image: Tensor | None, conditioning: Tensor | None,
               guidance: ScoreDistillation | None, config: RefineConfig | None = None, progress: bool = True, *,
               reference_mask: Tensor | None = None, views: Sequence[ReferenceView] = ()) -> RefineResult:
    """Refine stage 1's field as an SDF at a higher resolution, then extract the mesh.

    ``reference_image`` / ``reference_mask`` / ``views`` are as for :func:`run_stage1`; when all are absent the
    views stage 1 was fitted to are reused (resized to this stage's render size).
    """
    config = config or RefineConfig()
    s1 = stage1_result.config
    if guidance is not None and conditioning is None:
        raise ConfigError("'conditioning' is required when 'guidance' is given. None was provided.")
    bg = tuple(float(c) for c in stage1_result.background)
    if reference_image is None and not views:
        views = stage1_result.views
    ref_views, background = prepare_views(reference_image, reference_mask, views, s1.reference_camera(),
                                          config.render_size, bg, s1.mask_threshold,  # type: ignore[arg-type]
                                          device=s1.device)
    model = field_from_stage1(stage1_result, config)
    optimizer = torch.optim.Adam([{"params": [model.sdf_grid], "lr": config.lr},
                                  {"params": [model.colour_grid], "lr": config.colour_lr}])
    loop = replace(s1, steps=config.steps, render_size=config.render_size, n_samples=config.n_samples,
                   sds_weight=config.sds_weight, recon_weight=config.recon_weight, mask_weight=config.mask_weight,
                   entropy_weight=config.entropy_weight, sparsity_weight=config.sparsity_weight, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    def regulariser(step: int) -> Tensor:
        model.beta = config.beta_at(step)
        return config.eikonal_weight * model.eikonal()

    history = fit_views(model, optimizer, ref_views, background, conditioning, guidance, loop, gen,
                        progress=progress, desc="brain3d refine", extra_loss=regulariser)
    mesh = extract_mesh(model, config.mesh_resolution)
    return RefineResult(mesh=mesh, history=history, field=model)
