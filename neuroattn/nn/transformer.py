"""Pre-LN transformer block on MultiHeadAttention: self-attention, optional cross-attention, MLP or SwiGLU."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from neuroattn.attention import Dense
from neuroattn.attention.specs import AttentionSpec
from neuroattn.nn.attention import MultiHeadAttention

MLP_KINDS = ("gelu", "swiglu")


class Mlp(nn.Module):
    """Two-layer perceptron ``fc2(drop(act(fc1(x))))`` over the last axis (ViT MLP)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        *,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., dim)`` → ``(..., out_dim)``."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """Gated MLP ``w3(silu(w1 x) * w2 x)`` (Shazeer 2020; the LLaMA feed-forward)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        *,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.w3 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., dim)`` → ``(..., out_dim)``."""
        gate, up = self.w12(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.drop(self.w3(self.drop(nn.functional.silu(gate) * up)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero whole samples of a residual branch with probability ``p`` and rescale the rest by ``1 / (1 - p)``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, ..., 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016), applied to a residual branch."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch, initialised small (CaiT)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x += attn(norm(x))``, optionally ``x += cross_attn(norm(x), context)``, ``x += mlp(norm(x))``.

    Parameters
    ----------
    dim, heads : token width and query heads.
    spec : self-attention pattern; the cross-attention is always Dense.
    mlp_ratio : MLP hidden width / dim. For ``"swiglu"`` the hidden width is ``2/3`` of it (rounded to a
        multiple of 8) so the parameter count matches the GELU MLP.
    mlp : ``"gelu"`` (ViT MLP, ``act_layer`` activation) or ``"swiglu"``.
    norm_layer : normalisation constructor called with ``dim``.
    act_layer : activation constructor of the GELU MLP.
    drop : dropout after projections and inside the MLP.
    attn_drop : attention-weight dropout (Dense self-attention or ``rel_pos_bias``; see MultiHeadAttention).
    drop_path : stochastic-depth probability of each residual branch.
    layer_scale : initial LayerScale value, or None for no LayerScale.
    cross_attention : add a Dense cross-attention sub-block over ``context`` tokens.
    context_dim : width of the context tokens (default ``dim``).
    kv_heads : key/value heads of the self-attention (grouped-query attention).
    rope : rotary embedding of the self-attention, ``None``, ``"1d"`` or ``"axial"``.
    qkv_bias, qk_norm, rel_pos_bias, rank, backend : passed to the self-attention.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        spec: AttentionSpec = Dense(),
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        *,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        cross_attention: bool = False,
        context_dim: int | None = None,
        kv_heads: int | None = None,
        rope: str | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        rel_pos_bias: bool = False,
        rank: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if mlp not in MLP_KINDS:
            raise ValueError(f"'mlp' must be one of {list(MLP_KINDS)}. {mlp!r} was provided.")
        self.norm1 = norm_layer(dim)
        self.attn = MultiHeadAttention(
            dim, heads, spec, kv_heads=kv_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, rel_pos_bias=rel_pos_bias,
            rank=rank, rope=rope, attn_drop=attn_drop, proj_drop=drop, backend=backend,
        )  # fmt: skip
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.cross_attn = None
        if cross_attention:
            self.norm_cross = norm_layer(dim)
            self.cross_attn = MultiHeadAttention(
                dim, heads, Dense(), kv_heads=kv_heads, context_dim=context_dim, qkv_bias=qkv_bias, qk_norm=qk_norm,
                attn_drop=attn_drop, proj_drop=drop, backend=backend,
            )  # fmt: skip
            self.ls_cross = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = norm_layer(dim)
        hidden = int(dim * mlp_ratio)
        if mlp == "swiglu":
            self.mlp = SwiGLU(dim, 8 * max(1, round(2 * hidden / 3 / 8)), drop=drop)
        else:
            self.mlp = Mlp(dim, hidden, act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: Tensor,
        *,
        spatial_shape: Sequence[int] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Apply the block.

        Parameters
        ----------
        x : ``(B, N, dim)`` tokens (with ``spatial_shape`` for a grid) or channels-last ``(B, *S, dim)``.
        spatial_shape : grid shape of token input.
        context : ``(B, M, context_dim)`` tokens for the cross-attention (required when it exists).
        context_mask : bool ``(B, M)``, True = real context token.
        key_padding_mask : bool ``(B, N)`` for the self-attention (Dense spec only), True = real token.

        Returns
        -------
        Tensor shaped like ``x``.
        """
        attn = self.attn(self.norm1(x), spatial_shape=spatial_shape, key_padding_mask=key_padding_mask)
        x = x + self.drop_path(self.ls1(attn))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention; pass context=(B, M, context_dim)")
            cross = self.cross_attn(
                self.norm_cross(x), spatial_shape=spatial_shape, context=context, key_padding_mask=context_mask
            )
            x = x + self.drop_path(self.ls_cross(cross))
        elif context is not None:
            raise ValueError("context was given but the block was built with cross_attention=False")
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
