"""Shared network blocks built on `neuroattn.attention.attend`: multi-head attention, transformer block, positions."""

from neuroattn.nn.attention import MultiHeadAttention, SpatialSelfAttention2d
from neuroattn.nn.conv import CBAM, MultiScaleDiscriminator, PatchDiscriminator, ResnetBlock
from neuroattn.nn.position import RelativePositionBias, RotaryEmbedding, apply_rope, rope_angles
from neuroattn.nn.transformer import DropPath, LayerScale, Mlp, SwiGLU, TransformerBlock, drop_path

__all__ = [
    "CBAM",
    "DropPath",
    "LayerScale",
    "Mlp",
    "MultiHeadAttention",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "RelativePositionBias",
    "ResnetBlock",
    "RotaryEmbedding",
    "SpatialSelfAttention2d",
    "SwiGLU",
    "TransformerBlock",
    "apply_rope",
    "drop_path",
    "rope_angles",
]
