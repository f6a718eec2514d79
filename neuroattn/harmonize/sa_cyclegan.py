"""SA-CycleGAN-2.5D: a U-ResNet generator with CBAM and self-attention, multi-scale PatchGANs, the model pair."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.attention import Dense, Neighborhood
from neuroattn.attention.specs import AttentionSpec
from neuroattn.configs import dataclass_from_dict
from neuroattn.errors import ConfigError
from neuroattn.nn import SpatialSelfAttention2d
from neuroattn.nn.conv import CBAM, MultiScaleDiscriminator, ResnetBlock

ATTENTION_MODES = ("dense", "neighborhood", "none")
SIZE_MULTIPLE = 4  # two stride-2 downsamplings: H and W are padded to a multiple of 4, then cropped back


@dataclass
class SACycleGANConfig:
    """Architecture of both generators and both discriminators (published values as defaults)."""

    modalities: int = 1  # M: image channels per slice (T1, T1ce, T2, FLAIR -> 4)
    context_slices: int = 3  # slices per 2.5D stack (odd); the generator sees context_slices * M channels
    base_channels: int = 64  # stem width; the bottleneck has 4x this
    n_res_blocks: int = 9  # split in thirds: CBAM blocks, self-attention blocks, CBAM blocks
    attention: str = "dense"  # "dense" | "neighborhood" (all self-attention layers) | "none" (the ablation)
    neighborhood_kernel: int = 7  # bottleneck positions per axis a neighborhood query sees (odd; <= H/4, W/4)
    attention_reduction: int = 8  # query/key width C // 8, as in SAGAN
    cbam_reduction: int = 16  # CBAM channel-gate MLP width C // 16
    disc_channels: int = 64  # first PatchGAN layer width
    disc_layers: int = 3  # 3 = the 70x70 PatchGAN; 2 for images under ~64 pixels
    disc_scales: int = 2  # discriminators at full and half resolution

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"'attention' must be one of {list(ATTENTION_MODES)}. {self.attention!r} was provided.")
        for name in ("modalities", "base_channels", "n_res_blocks", "disc_channels", "disc_layers", "disc_scales"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        if self.context_slices < 1 or self.context_slices % 2 == 0:
            raise ConfigError(f"'context_slices' must be a positive odd integer. {self.context_slices!r} was provided.")
        if self.neighborhood_kernel < 1 or self.neighborhood_kernel % 2 == 0:
            raise ConfigError(
                f"'neighborhood_kernel' must be a positive odd integer. {self.neighborhood_kernel!r} was provided."
            )

    @property
    def in_channels(self) -> int:
        """Generator input channels: ``context_slices * modalities``, slice-major (see :class:`Generator`)."""
        return self.context_slices * self.modalities

    def attention_spec(self) -> AttentionSpec | None:
        """The pattern of every self-attention layer, or None for the no-attention ablation."""
        if self.attention == "none":
            return None
        return Dense() if self.attention == "dense" else Neighborhood(kernel_size=self.neighborhood_kernel)

    def block_plan(self) -> list[str]:
        """Kind of each residual block in order: ``"cbam"`` or ``"attention"`` (9 -> 3 + 3 + 3).

        The outer thirds have ``n // 3`` CBAM blocks each, the middle the rest; with ``attention="none"`` the
        middle blocks are plain residual blocks (``"plain"``).
        """
        outer = self.n_res_blocks // 3
        middle = "plain" if self.attention == "none" else "attention"
        return ["cbam"] * outer + [middle] * (self.n_res_blocks - 2 * outer) + ["cbam"] * outer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SACycleGANConfig:
        return dataclass_from_dict(cls, data)


def _conv_norm_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, reflect: int = 0) -> nn.Sequential:
    pad = [nn.ReflectionPad2d(reflect)] if reflect else []
    padding = 0 if reflect else kernel // 2
    return nn.Sequential(
        *pad,
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
        nn.InstanceNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class Up(nn.Module):
    """Stride-2 transposed conv, then concatenation with the encoder map of that scale and a 3×3 fusion conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.InstanceNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
        self.fuse = _conv_norm_relu(out_ch + skip_ch, out_ch, 3, reflect=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)  # (B, out, 2H, 2W)
        return self.fuse(torch.cat([x, skip], dim=1))  # (B, out + skip, 2H, 2W) -> (B, out, 2H, 2W)


class AttentionResBlock(nn.Module):
    """A residual block followed by SAGAN self-attention (``x + gamma * attn(x)``, gamma starts at 0)."""

    def __init__(self, channels: int, spec: AttentionSpec, reduction: int) -> None:
        super().__init__()
        self.res = ResnetBlock(channels)
        self.attn = SpatialSelfAttention2d(channels, reduction, spec)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.res(x))


class Generator(nn.Module):
    """The SA-CycleGAN-2.5D generator: 2.5D stack in, centre slice out.

    Stem 7×7 (reflection pad) → C; two stride-2 convs → 2C, 4C; residual blocks at 4C (CBAM, self-attention,
    CBAM thirds); a global self-attention layer over every bottleneck position; two transposed-conv
    upsamplings, each concatenating the encoder map of the same scale (U-Net skip) and fusing with a 3×3
    conv; a 7×7 output conv to M channels; tanh. Every self-attention layer is the shared SAGAN layer
    (:class:`~neuroattn.nn.SpatialSelfAttention2d`, q/k width C/8, gamma = 0 at init, so attention starts as
    the identity); ``attention="neighborhood"`` gives all of them, the global one included, a k×k window
    over the bottleneck; ``"none"`` removes them (plain residual blocks in the middle third, no global layer).

    Input channels are slice-major: channel ``s * M + m`` is modality ``m`` of slice ``s`` (``s = 0`` is the
    lowest index along the slicing axis); the output holds the centre slice's M modalities. Any H, W are
    accepted: the input is reflection-padded at the bottom/right to a multiple of 4 and the output cropped back.
    """

    def __init__(self, config: SACycleGANConfig) -> None:
        super().__init__()
        self.config = config
        c, m = config.base_channels, config.modalities
        spec = config.attention_spec()
        self.stem = _conv_norm_relu(config.in_channels, c, 7, reflect=3)
        self.down1 = _conv_norm_relu(c, 2 * c, 3, stride=2)
        self.down2 = _conv_norm_relu(2 * c, 4 * c, 3, stride=2)
        blocks: list[nn.Module] = []
        for kind in config.block_plan():
            if kind == "cbam":
                blocks.append(ResnetBlock(4 * c, gate=CBAM(4 * c, config.cbam_reduction)))
            elif kind == "attention":
                assert spec is not None
                blocks.append(AttentionResBlock(4 * c, spec, config.attention_reduction))
            else:
                blocks.append(ResnetBlock(4 * c))
        self.blocks = nn.Sequential(*blocks)
        self.global_attention = (
            SpatialSelfAttention2d(4 * c, config.attention_reduction, spec) if spec is not None else nn.Identity()
        )
        self.up1 = Up(4 * c, 2 * c, 2 * c)
        self.up2 = Up(2 * c, c, c)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c, m, 7), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, context_slices * M, H, W)`` in [-1, 1] → centre slice ``(B, M, H, W)`` in (-1, 1)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Generator expects (B, {self.config.in_channels}, H, W) "
                f"({self.config.context_slices} slices x {self.config.modalities} modalities), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % SIZE_MULTIPLE, -w % SIZE_MULTIPLE
        if pad_h or pad_w:
            mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)  # (B, Cin, H', W'), multiples of 4
        s0 = self.stem(x)  # (B, C, H', W')
        s1 = self.down1(s0)  # (B, 2C, H'/2, W'/2)
        z = self.down2(s1)  # (B, 4C, H'/4, W'/4)
        z = self.global_attention(self.blocks(z))  # (B, 4C, H'/4, W'/4)
        y = self.up2(self.up1(z, s1), s0)  # (B, C, H', W')
        return self.head(y)[..., :h, :w]  # (B, M, H, W)


class SACycleGAN(nn.Module):
    """The model pair: generators A→B and B→A, a multi-scale discriminator per domain.

    ``generators["ab"]`` translates source-site (A) stacks to the target site (B) style, ``generators["ba"]``
    the way back; ``discriminators["a"]`` judges A centre slices, ``discriminators["b"]`` B centre slices.
    """

    def __init__(self, config: SACycleGANConfig) -> None:
        super().__init__()
        self.config = config
        self.generators = nn.ModuleDict({"ab": Generator(config), "ba": Generator(config)})
        self.discriminators = nn.ModuleDict(
            {
                name: MultiScaleDiscriminator(
                    config.modalities, config.disc_channels, config.disc_layers, config.disc_scales
                )
                for name in ("a", "b")
            }
        )

    @property
    def g_ab(self) -> Generator:
        return self.generators["ab"]  # type: ignore[return-value]

    @property
    def g_ba(self) -> Generator:
        return self.generators["ba"]  # type: ignore[return-value]

    def forward(self, stack_a: Tensor) -> Tensor:
        """Translate source stacks ``(B, context_slices * M, H, W)`` to target centre slices ``(B, M, H, W)``."""
        return self.g_ab(stack_a)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "ATTENTION_MODES",
    "AttentionResBlock",
    "Generator",
    "SACycleGAN",
    "SACycleGANConfig",
    "count_parameters",
]
