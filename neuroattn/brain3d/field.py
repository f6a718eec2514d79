"""A coarse radiance field: a dense voxel grid of features decoded by a small MLP into density and colour."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.brain3d.render import field_device
from neuroattn.errors import ConfigError

DENSITY_THRESHOLD = 5.0  # 1/world unit: the level taken as the surface (half the density of a freshly fitted solid)


@dataclass
class FieldConfig:
    """Shape of the radiance field."""

    resolution: int = 32  # voxels per side of the feature grid
    features: int = 8  # feature channels per voxel
    hidden: int = 32  # width of the decoding MLP
    bound: float = 1.0  # world units: the field lives in [-bound, bound]^3 and is empty outside
    density_bias: float = -2.0  # pre-activation offset: a fresh field is nearly transparent
    density_scale: float = 10.0  # 1/world unit per softplus unit: solids need densities of tens, reachable fast
    blob: float = 0.0  # pre-activation bump at the centre (DreamFusion's density blob) that SDS starts from; 0: none
    blob_radius: float = 0.5  # world units: Gaussian width of the blob

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ConfigError(f"'resolution' must be >= 2. {self.resolution!r} was provided.")
        if self.bound <= 0:
            raise ConfigError(f"'bound' must be > 0. {self.bound!r} was provided.")


def sample_grid(grid: Tensor, points: Tensor, bound: float, padding: str = "zeros") -> Tensor:
    """Trilinear samples (N, C) of a grid (C, R, R, R) indexed (z, y, x) at world points (N, 3) = (x, y, z).

    The grid's corner voxels sit exactly at +-bound (``align_corners=True``); outside the box samples are 0
    (``padding="zeros"``) or the nearest border value (``"border"``).
    """
    coords = (points / bound).reshape(1, -1, 1, 1, 3)  # (1, N, 1, 1, 3): grid_sample reads (x, y, z) -> (W, H, D)
    out = F.grid_sample(grid[None], coords, mode="bilinear", padding_mode=padding, align_corners=True)
    return out.reshape(grid.shape[0], -1).T  # (N, C)


class RadianceField(nn.Module):
    """Voxel-grid features + MLP -> density (softplus, 1/world unit) and colour (sigmoid, RGB in [0, 1]).

    Calling the field on points (N, 3) returns ``(density (N,), colour (N, 3))``, the renderer's contract.
    """

    def __init__(self, config: FieldConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config or FieldConfig()
        c, r = self.config.features, self.config.resolution
        gen = torch.Generator().manual_seed(seed)
        self.grid = nn.Parameter(0.1 * torch.randn(c, r, r, r, generator=gen))  # (C, Z, Y, X)
        self.mlp = nn.Sequential(nn.Linear(c, self.config.hidden), nn.SiLU(), nn.Linear(self.config.hidden, 4))
        with torch.no_grad():  # deterministic init independent of the global RNG
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / layer.in_features**0.5
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.zero_()

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        feats = sample_grid(self.grid, points, self.config.bound)  # (N, C)
        out = self.mlp(feats)  # (N, 4)
        raw = out[:, 0] + self.config.density_bias  # (N,)
        if self.config.blob > 0:  # in pre-activation units, so the field can still carve the blob away
            raw = raw + self.config.blob * torch.exp(-(points * points).sum(-1) / (2 * self.config.blob_radius**2))
        density = self.config.density_scale * F.softplus(raw)
        inside = (points.abs() <= self.config.bound).all(-1)
        return density * inside, torch.sigmoid(out[:, 1:])

    def total_variation(self) -> Tensor:
        """Mean squared difference of neighbouring feature voxels: a smoothness prior that keeps interiors solid."""
        g = self.grid  # (C, Z, Y, X)
        return ((g[:, 1:] - g[:, :-1]) ** 2).mean() + ((g[:, :, 1:] - g[:, :, :-1]) ** 2).mean() + (
            (g[..., 1:] - g[..., :-1]) ** 2).mean()

    def config_dict(self) -> dict[str, float | int]:
        """The field's constructor arguments, for saving alongside its weights."""
        return asdict(self.config)


@torch.no_grad()
def query_grid(field: nn.Module | object, resolution: int, bound: float = 1.0, chunk: int = 65536
               ) -> tuple[Tensor, Tensor]:
    """Density (R, R, R) and colour (R, R, R, 3) of any renderable at the corner-to-corner grid, indexed (x, y, z).

    The field is queried on its own device; the grids come back on the CPU.
    """
    axis = torch.linspace(-bound, bound, resolution, device=field_device(field))
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)  # (R^3, 3)
    parts = [field(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)]  # type: ignore[operator]
    density = torch.cat([p[0] for p in parts]).reshape(resolution, resolution, resolution).cpu()
    colour = torch.cat([p[1] for p in parts]).reshape(resolution, resolution, resolution, 3).cpu()
    return density, colour
