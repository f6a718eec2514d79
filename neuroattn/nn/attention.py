"""Multi-head attention over token grids through `attend`, and the SAGAN self-attention layer for conv maps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroattn.attention import AttentionMemoryError, Dense, Neighborhood, Window, attend, memory_budget
from neuroattn.attention.masks import token_mask
from neuroattn.attention.specs import AttentionSpec
from neuroattn.nn.position import ROPE_MODES, RelativePositionBias, RotaryEmbedding


def _spec_rank(spec: AttentionSpec, rank: int | None) -> int | None:
    """Grid rank implied by tuple-valued spec fields, checked against an explicit ``rank``."""
    fields = ()
    if isinstance(spec, Neighborhood):
        fields = (spec.kernel_size, spec.dilation, spec.causal)
    elif isinstance(spec, Window):
        fields = (spec.size, spec.shift)
    implied = {len(f) for f in fields if isinstance(f, tuple) and len(f) > 1}
    if len(implied) > 1:
        raise ValueError(f"{spec!r} mixes tuple lengths {sorted(implied)}")
    if implied and rank is not None and implied != {rank}:
        raise ValueError(f"rank={rank} but {spec!r} gives {implied.pop()} axes")
    return rank if rank is not None else (implied.pop() if implied else None)


def _bias_extent(spec: AttentionSpec, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(extent, step) per axis of the relative position table for a Neighborhood or Window spec."""

    def per_axis(value: int | tuple) -> tuple[int, ...]:
        items = (value,) if isinstance(value, int) else tuple(value)
        return items * rank if len(items) == 1 else items

    if isinstance(spec, Neighborhood):
        return per_axis(spec.kernel_size), per_axis(spec.dilation)
    if isinstance(spec, Window):
        return per_axis(spec.size), (1,) * rank
    raise ValueError(
        f"rel_pos_bias is defined for Neighborhood and Window specs, not {type(spec).__name__}; use rope instead"
    )


class MultiHeadAttention(nn.Module):
    """Multi-head attention on a token grid, dispatched through :func:`neuroattn.attention.attend`.

    Parameters
    ----------
    dim : token width (channels) of the queries and of the output.
    heads : number of query heads.
    spec : attention pattern (``Dense``, ``Neighborhood``, ``Window``, ``Axial``, ``Linear``).
    kv_heads : key/value heads (grouped-query attention; query head ``i`` uses kv head ``i // (heads // kv_heads)``).
    head_dim : per-head width; default ``dim // heads``.
    context_dim : width of the ``context`` tokens keys/values come from in cross-attention; default ``dim``.
    qkv_bias : bias in the q/k/v projections.
    qk_norm : LayerNorm over ``head_dim`` on q and k before the rotary embedding.
    rel_pos_bias : learned per-head bias indexed by the query–key offset (Neighborhood and Window only).
        ``attend`` takes no additive bias, so this path builds the ``(heads, N, N)`` bias with the spec's
        pattern as ``-inf`` elsewhere and calls PyTorch SDPA with it: exact but O(N²) in memory, meant for
        the few-thousand-token grids of window/neighborhood stages, not for whole volumes.
    rank : grid rank, needed by ``rel_pos_bias`` when the spec's sizes are plain ints.
    rope : ``None``, ``"1d"`` (raster-order positions) or ``"axial"`` (a block of channel pairs per axis).
    attn_drop : dropout on the attention weights; needs the explicit path, so only Dense specs
        (through SDPA's own dropout) or ``rel_pos_bias=True`` accept it.
    proj_drop : dropout after the output projection.
    backend : backend name passed to ``attend`` (``"auto"`` lets the planner choose).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        spec: AttentionSpec = Dense(),
        *,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        rel_pos_bias: bool = False,
        rank: int | None = None,
        rope: str | None = None,
        rope_base: float = 10000.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a positive multiple of kv_heads ({kv_heads})")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}), or give head_dim")
            head_dim = dim // heads
        if rope is not None and rope not in ROPE_MODES:
            raise ValueError(f"'rope' must be one of {[None, *ROPE_MODES]}. {rope!r} was provided.")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}")
        if attn_drop > 0 and not (isinstance(spec, Dense) or rel_pos_bias):
            raise ValueError(
                f"attn_drop > 0 is supported for Dense specs or with rel_pos_bias=True, not {type(spec).__name__}; "
                "use proj_drop or drop_path for regularisation"
            )
        self.dim, self.heads, self.kv_heads, self.head_dim = dim, heads, kv_heads, head_dim
        self.spec, self.backend, self.attn_drop = spec, backend, attn_drop
        context_dim = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=qkv_bias)
        self.kv_proj = nn.Linear(context_dim, 2 * kv_heads * head_dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.rope = RotaryEmbedding(head_dim, rope, rope_base) if rope is not None else None
        self.rel_pos = None
        if rel_pos_bias:
            rank = _spec_rank(spec, rank)
            if rank is None:
                raise ValueError("rel_pos_bias needs the grid rank: pass rank= or give the spec per-axis tuples")
            extent, step = _bias_extent(spec, rank)
            self.rel_pos = RelativePositionBias(heads, extent, step)
        self.out_proj = nn.Linear(heads * head_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _grid(self, x: Tensor, spatial_shape: Sequence[int] | None) -> Tensor:
        """View ``x`` as ``(B, *S, C)``: tokens ``(B, N, C)`` with ``spatial_shape`` or channels-last grids."""
        if x.dim() == 3 and spatial_shape is not None:
            spatial = tuple(int(s) for s in spatial_shape)
            if math.prod(spatial) != x.shape[1]:
                raise ValueError(f"spatial_shape {spatial} has {math.prod(spatial)} tokens but x has {x.shape[1]}")
            return x.reshape(x.shape[0], *spatial, x.shape[-1])  # (B, *S, C)
        if x.dim() < 3:
            raise ValueError(f"x must be (B, N, C) or (B, *spatial, C), got shape {tuple(x.shape)}")
        if spatial_shape is not None and tuple(spatial_shape) != tuple(x.shape[1:-1]):
            raise ValueError(f"spatial_shape {tuple(spatial_shape)} does not match x of shape {tuple(x.shape)}")
        return x  # (B, *S, C)

    def forward(
        self,
        x: Tensor,
        *,
        spatial_shape: Sequence[int] | None = None,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from the tokens of ``x`` to themselves, or to ``context`` (cross-attention, Dense only).

        Parameters
        ----------
        x : ``(B, N, dim)`` tokens (a 1-D sequence, or the raster-flattened grid ``spatial_shape``) or a
            channels-last grid ``(B, *S, dim)``.
        spatial_shape : grid shape ``S`` of token input, ``prod(S) == N``.
        context : ``(B, M, context_dim)`` tokens giving keys and values.
        key_padding_mask : bool ``(B, N_kv)``, True = attend to that key (Dense only).

        Returns
        -------
        Tensor shaped like ``x``.
        """
        grid = self._grid(x, spatial_shape)  # (B, *S, C)
        batch, spatial = grid.shape[0], tuple(grid.shape[1:-1])
        q = self.q_proj(grid).unflatten(-1, (self.heads, self.head_dim)).movedim(-2, 1)  # (B, h, *S, hd)
        if context is None:
            kv_in = grid  # (B, *S, C)
        else:
            if not isinstance(self.spec, Dense):
                raise ValueError(f"cross-attention (context=...) needs a Dense spec, not {type(self.spec).__name__}")
            if self.rope is not None or self.rel_pos is not None:
                raise ValueError("rope and rel_pos_bias are defined for self-attention only, not with context")
            if context.dim() != 3 or context.shape[0] != batch:
                raise ValueError(f"context must be (B={batch}, M, context_dim), got shape {tuple(context.shape)}")
            kv_in = context  # (B, M, Cc)
        kv = self.kv_proj(kv_in).unflatten(-1, (2, self.kv_heads, self.head_dim))  # (B, *Skv, 2, kvh, hd)
        k, v = kv.movedim(-2, 1).unbind(dim=-2)  # (B, kvh, *Skv, hd) each
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, k)
        if isinstance(self.spec, Dense):
            # Dense is layout-free: flat tokens let cross-attention and padding masks share one path.
            q = q.flatten(2, -2)  # (B, h, N, hd)
            k, v = k.flatten(2, -2), v.flatten(2, -2)  # (B, kvh, M, hd)
        if self.rel_pos is not None or (self.training and self.attn_drop > 0):
            out = self._explicit(q, k, v, spatial, key_padding_mask)  # (B, h, *S | N, hd)
        else:
            out = attend(q, k, v, self.spec, backend=self.backend, key_padding_mask=key_padding_mask)
        out = out.reshape(batch, self.heads, *spatial, self.head_dim)  # (B, h, *S, hd)
        out = out.movedim(1, -2).flatten(-2)  # (B, *S, h*hd)
        out = self.proj_drop(self.out_proj(out))  # (B, *S, C)
        return out.reshape(*x.shape[:-1], self.dim)  # layout of x

    def attention_weights(
        self, x: Tensor, *, context: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Softmax attention probabilities of the Dense path, for interpretation (no dropout, no output).

        Uses the same q/k projections, q/k norm, rotary embedding, grouped-query head sharing, causal and
        padding masks as :meth:`forward`, so ``weights @ v`` equals the forward pass before ``out_proj``.

        Parameters
        ----------
        x : ``(B, N, dim)`` query tokens, or a channels-last grid ``(B, *S, dim)`` (flattened in raster order).
        context : ``(B, M, context_dim)`` key/value tokens for cross-attention; default ``x`` itself.
        key_padding_mask : bool ``(B, M)``, True = attend to that key; masked keys get weight exactly 0.

        Returns
        -------
        Tensor ``(B, heads, N, M)``; each row sums to 1 over the keys.
        """
        if not isinstance(self.spec, Dense):
            raise ValueError(f"attention_weights is defined for Dense specs only, not {type(self.spec).__name__}")
        grid = self._grid(x, None)  # (B, *S, C)
        batch = grid.shape[0]
        q = self.q_proj(grid).unflatten(-1, (self.heads, self.head_dim)).movedim(-2, 1)  # (B, h, *S, hd)
        if context is not None:
            if self.rope is not None:
                raise ValueError("rope is defined for self-attention only, not with context")
            if context.dim() != 3 or context.shape[0] != batch:
                raise ValueError(f"context must be (B={batch}, M, context_dim), got shape {tuple(context.shape)}")
        kv_in = grid if context is None else context  # (B, *Skv, Cc)
        kv = self.kv_proj(kv_in).unflatten(-1, (2, self.kv_heads, self.head_dim))  # (B, *Skv, 2, kvh, hd)
        k = kv.movedim(-2, 1).unbind(dim=-2)[0]  # (B, kvh, *Skv, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, k)
        q = q.flatten(2, -2)  # (B, h, N, hd)
        k = k.flatten(2, -2).repeat_interleave(self.heads // self.kv_heads, dim=1)  # (B, h, M, hd)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, N, M)
        n, m = scores.shape[-2:]
        allowed = torch.ones(n, m, dtype=torch.bool, device=q.device)
        if self.spec.causal:
            allowed = allowed.tril()
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch, m):
                raise ValueError(f"key_padding_mask must be ({batch}, {m}), got {tuple(key_padding_mask.shape)}")
            allowed = allowed & key_padding_mask.bool()[:, None, None, :]  # (B, 1, N, M)
        if not bool(allowed.any(dim=-1).all()):
            raise ValueError("the masks leave some query with no key to attend to; its attention is undefined")
        return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # (B, h, N, M)

    def _explicit(
        self, q: Tensor, k: Tensor, v: Tensor, spatial: tuple[int, ...], key_padding_mask: Tensor | None
    ) -> Tensor:
        """SDPA with an explicit additive mask: relative position bias and/or attention dropout."""
        batch, n, m = q.shape[0], math.prod(spatial), math.prod(k.shape[2:-1])
        if self.rel_pos is not None:  # the (h, N, N) bias and its masked copy are materialised
            needed = 2 * self.heads * n * m * q.element_size() * (batch if key_padding_mask is not None else 1)
            budget = memory_budget(q.device) if needed > 64 << 20 else None  # small calls skip the system query
            if budget is not None and needed > budget:
                raise AttentionMemoryError(
                    f"rel_pos_bias over {n:,} tokens needs about {needed / 2**30:.2f} GiB for its (heads, N, N) bias "
                    f"but the memory budget on {q.device.type} is {budget / 2**30:.2f} GiB; use rope instead, or "
                    "fewer tokens per attention call",
                    estimated_bytes=needed,
                    budget_bytes=budget,
                )
        if key_padding_mask is not None and not bool(key_padding_mask.any(dim=1).all()):
            raise ValueError("key_padding_mask masks every key of some batch element; its attention is undefined")
        groups = self.heads // self.kv_heads
        qf = q.reshape(batch, self.heads, n, self.head_dim)  # (B, h, N, hd)
        kf = k.reshape(batch, self.kv_heads, -1, self.head_dim).repeat_interleave(groups, dim=1)  # (B, h, M, hd)
        vf = v.reshape(batch, self.kv_heads, -1, self.head_dim).repeat_interleave(groups, dim=1)  # (B, h, M, hd)
        allowed = None if isinstance(self.spec, Dense) else token_mask(self.spec, spatial, q.device)  # (N, N)
        if isinstance(self.spec, Dense) and self.spec.causal:
            allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, None, :]  # (B, 1, 1, M)
            allowed = keep if allowed is None else allowed & keep  # (B, 1, N, M)
        bias = None
        if self.rel_pos is not None:
            coords = torch.stack(
                torch.meshgrid(*[torch.arange(s, device=q.device) for s in spatial], indexing="ij"), dim=-1
            ).reshape(n, len(spatial))  # (N, rank)
            bias = self.rel_pos(coords).to(q.dtype)  # (h, N, N)
        if bias is not None and allowed is not None:
            bias = bias.masked_fill(~allowed, float("-inf"))  # (B | 1, h, N, M)
        elif allowed is not None:
            bias = allowed  # bool, True = attend
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=bias, dropout_p=dropout)  # (B, h, N, hd)
        return out

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
            f"spec={self.spec!r}, backend={self.backend!r}"
        )


class SpatialSelfAttention2d(nn.Module):
    """SAGAN self-attention over the H·W positions of a conv feature map, added back through a zero-init gate.

    ``q = Wq x``, ``k = Wk x`` (1×1 convs to ``channels // reduction``), ``v = Wv x`` (1×1 conv to
    ``channels``), ``out = softmax(q^T k · scale) v`` with one head over the positions, and the layer returns
    ``x + gamma * out`` with the scalar ``gamma`` initialised at 0, so a freshly built layer is the identity
    and the generator learns how much non-local context to mix in (Zhang et al. 2019).

    Parameters
    ----------
    channels : input and output channels C.
    reduction : channel reduction of the query/key projections (8 in SAGAN).
    spec : attention pattern over the 2-D grid (SAGAN is Dense; Neighborhood/Window restrict it).
    scale : score scale; ``1.0`` reproduces SAGAN (no temperature), ``None`` uses ``1/sqrt(C // reduction)``.
    backend : backend name passed to ``attend``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        spec: AttentionSpec = Dense(),
        *,
        scale: float | None = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.spec, self.scale, self.backend = spec, scale, backend
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))  # shape (1,) as in SAGAN state dicts

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` → ``x + gamma * attention(x)``, same shape."""
        if x.dim() != 4:
            raise ValueError(f"SpatialSelfAttention2d expects (B, C, H, W), got shape {tuple(x.shape)}")
        q = self.query(x).movedim(1, -1).unsqueeze(1)  # (B, 1, H, W, C/r)
        k = self.key(x).movedim(1, -1).unsqueeze(1)  # (B, 1, H, W, C/r)
        v = self.value(x).movedim(1, -1).unsqueeze(1)  # (B, 1, H, W, C)
        out = attend(q, k, v, self.spec, backend=self.backend, scale=self.scale)  # (B, 1, H, W, C)
        out = out.squeeze(1).movedim(-1, 1)  # (B, C, H, W)
        return x + self.gamma * out

    def extra_repr(self) -> str:
        channels, inner = self.value.in_channels, self.query.out_channels
        return f"channels={channels}, inner={inner}, spec={self.spec!r}, scale={self.scale}"
