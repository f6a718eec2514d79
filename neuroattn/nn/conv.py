"""Shared 2-D conv blocks: CBAM, residual blocks, spectrally-normalized PatchGAN and its multi-scale wrapper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class ChannelGate(nn.Module):
    """CBAM channel attention: ``x * sigmoid(MLP(avgpool x) + MLP(maxpool x))`` (Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        return x * torch.sigmoid(avg + peak)


class SpatialGate(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv7x7([mean_c x, max_c x]))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate then spatial gate, same shape in and out.

    Parameters
    ----------
    channels : feature channels C of the ``(B, C, H, W)`` input.
    reduction : hidden width ``C // reduction`` (at least 1) of the channel gate's shared MLP.
    kernel_size : spatial gate convolution size.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


class ResnetBlock(nn.Module):
    """CycleGAN residual block ``x + F(x)``: two reflection-padded 3×3 convs with a norm, ReLU between.

    ``gate`` (for instance :class:`CBAM`) re-weights the residual branch before the addition, as CBAM does in
    ResNets. ``norm_layer`` builds the norm from the channel count (instance norm by default).
    """

    def __init__(
        self,
        channels: int,
        *,
        gate: nn.Module | None = None,
        norm_layer: type[nn.Module] = nn.InstanceNorm2d,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            norm_layer(channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), norm_layer(channels)]
        self.body = nn.Sequential(*layers)
        self.gate = gate if gate is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gate(self.body(x))


def sn_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Module:
    """A ``Conv2d`` whose weight is divided by its largest singular value (one power iteration per forward)."""
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding))


class PatchDiscriminator(nn.Module):
    """The pix2pix/CycleGAN "70×70" PatchGAN with spectral norm on every conv.

    ``n_layers=3``: C64(s2) → C128(s2) → C256(s2) → C512(s1) → 1 channel, 4×4 kernels, LeakyReLU 0.2; each
    output value scores one 70×70 receptive field. No normalization layers: with spectral norm on every conv
    and 0.2-LeakyReLU the network is 1-Lipschitz, which instance norm would break.

    Input ``(B, in_channels, H, W)`` → patch scores ``(B, 1, H', W')`` (about ``H/8 - 2`` for ``n_layers=3``).
    """

    def __init__(self, in_channels: int, base_channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [sn_conv(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        channels = base_channels
        for i in range(1, n_layers + 1):
            out = base_channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [sn_conv(channels, out, 4, stride, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        layers.append(sn_conv(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """``n_scales`` independent PatchGANs, scale ``s`` seeing the input average-pooled ``s`` times by 2 (pix2pixHD).

    Returns a list of patch-score maps, finest scale first.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, n_layers: int = 3, n_scales: int = 2) -> None:
        super().__init__()
        if n_scales < 1:
            raise ValueError(f"'n_scales' must be >= 1. {n_scales!r} was provided.")
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, base_channels, n_layers) for _ in range(n_scales))

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for i, disc in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)  # (B, C, H/2, W/2)
            outputs.append(disc(x))
        return outputs


__all__ = [
    "CBAM",
    "ChannelGate",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "ResnetBlock",
    "SpatialGate",
    "sn_conv",
]
