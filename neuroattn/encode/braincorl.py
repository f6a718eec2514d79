"""BraInCoRL: a transformer that reads a voxel's (image, response) support set and writes its linear encoder.

Beyond the published design (support tokens + registers read out into encoder weights), an optional
sufficient-statistic path (``moment_path``) feeds the support set's normalised cross-moment
``m = X^T z / k`` (``z`` the standardised responses) and ``log k`` to the transformer as one extra token, and
adds ``(A0 + A(k)) m`` to the read-out weights. ``A0`` starts as ``c I`` (a shrunken correlation estimate, so
training starts from a ridge-like encoder) and ``A(k) = g0(k) I + P diag(g(k)) Q^T`` is a low-rank,
support-size-dependent correction: with whitened embeddings (``X^T X ~ k I``) these linear maps of ``m`` span
ridge and Bayes-with-a-Gaussian-prior estimators, so meta-training can learn the prior's subspace directly.

A second optional path (``prior_components > 0``, :mod:`neuroattn.encode.mixture_prior`) is exact where the moment
path is approximate: a meta-learned Gaussian-mixture prior on the standardised weights, whose posterior mean given
the voxel's own support set (its actual ``X^T X``, any k) is added to the read-out. Meta-training then learns the
transformer's correction of the Bayes estimate, and the prior itself, end to end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from neuroattn.attention import Dense
from neuroattn.encode.mixture_prior import MixturePrior
from neuroattn.errors import ConfigError
from neuroattn.io.checkpoints import load_model
from neuroattn.nn.transformer import Mlp, TransformerBlock

MODEL_CLASS = "BraInCoRL"


@dataclass
class BraInCoRLConfig:
    """Shape of the in-context encoder; saved in every checkpoint so the model is rebuilt from it alone."""

    embedding_dim: int  # D, width of the image embeddings the voxel encoders act on
    dim: int = 64  # token width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads per block
    n_registers: int = 4  # learned read-out tokens
    mlp_ratio: float = 4.0  # SwiGLU hidden width / dim (2/3 of it, as in TransformerBlock)
    head_hidden: int = 256  # hidden width of the register -> encoder-weights MLP
    eps: float = 1e-6  # floor of a support set's response std (response units), for constant responses
    moment_path: bool = True  # add the cross-moment token and the read-out (A0 + A(k)) m (see module docstring)
    moment_rank: int = 16  # rank of the support-size-dependent correction A(k)
    moment_init: float = 0.5  # c of A0 = c I at initialisation (shrinkage of the correlation estimate)
    prior_components: int = 0  # > 0: add the posterior mean under a meta-learned Gaussian-mixture weight prior
    prior_noise: float = 0.5  # initial noise share of a standardised response (the prior path's likelihood)
    prior_adapt_iters: int = 0  # EM steps of that prior over a new subject's voxels when fitting (empirical Bayes)

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "dim", "depth", "heads", "n_registers", "head_hidden", "moment_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        for name in ("prior_components", "prior_adapt_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"'{name}' must be an integer >= 0. {value!r} was provided.")
        if not 0.0 < self.prior_noise < 1.0:
            raise ConfigError(f"'prior_noise' must be in (0, 1). {self.prior_noise!r} was provided.")
        if self.dim % self.heads:
            raise ConfigError(f"'dim' ({self.dim}) must be divisible by 'heads' ({self.heads})")
        if not self.mlp_ratio > 0 or not self.eps > 0:
            raise ConfigError(f"'mlp_ratio' and 'eps' must be > 0. {self.mlp_ratio!r}, {self.eps!r} were provided.")
        if not isinstance(self.moment_path, bool):
            raise ConfigError(f"'moment_path' must be a bool. {self.moment_path!r} was provided.")
        if not math.isfinite(self.moment_init):
            raise ConfigError(f"'moment_init' must be finite. {self.moment_init!r} was provided.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def support_stats(responses: Tensor, mask: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and std (population, floored at ``eps``) of each row of ``responses`` ``(B, k)`` over ``mask``.

    Returns two ``(B,)`` tensors.
    """
    valid = mask.to(responses.dtype)  # (B, k)
    count = valid.sum(dim=1).clamp_min(1.0)  # (B,)
    mean = (responses * valid).sum(dim=1) / count  # (B,)
    var = (((responses - mean[:, None]) * valid) ** 2).sum(dim=1) / count  # (B,)
    return mean, var.sqrt().clamp_min(eps)


class BraInCoRL(nn.Module):
    """In-context voxel encoder (hypernetwork): support set of one voxel -> weights of its linear encoder.

    Each support pair becomes a token ``Linear(embedding ‖ z) + type``, where ``z`` is the response
    standardised over the voxel's own support set (mean/std of the valid entries). ``n_registers`` learned
    tokens join them (and, with ``moment_path``, one token of the cross-moment ``m = X^T z / k`` and ``log k``);
    Dense self-attention blocks (SwiGLU MLPs) mix everything, padded support entries being masked out as
    keys; the registers are read out by an MLP into ``(w, b)`` of a linear model of ``z`` (with ``moment_path``
    ``w += (A0 + A(k)) m``; with ``prior_components`` a token of the Bayes estimate joins them and ``w`` gains
    that posterior mean; with either, ``b -= x̄ · w``, x̄ the support's mean embedding, as ridge's intercept),
    mapped back to the response's own units: ``weights = std * w``, ``bias = std * b + mean``.
    Without positional codes the output is invariant to the order of the support set, and the
    standardisation makes it equivariant to ``responses * c + d`` for ``c > 0``.

    Parameters
    ----------
    config : :class:`BraInCoRLConfig`.
    """

    def __init__(self, config: BraInCoRLConfig) -> None:
        super().__init__()
        self.config = config
        d, dim = config.embedding_dim, config.dim
        self.token_proj = nn.Linear(d + 1, dim)
        self.support_type = nn.Parameter(torch.zeros(dim))
        self.registers = nn.Parameter(0.02 * torch.randn(config.n_registers, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.heads, Dense(), config.mlp_ratio, mlp="swiglu") for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = Mlp(config.n_registers * dim, config.head_hidden, d + 1)
        # tokens before the support tokens: registers, then the moment token, then the Bayes-estimate token
        self.n_prefix = config.n_registers + int(config.moment_path) + int(config.prior_components > 0)
        if config.moment_path:
            r = config.moment_rank
            self.moment_proj = nn.Linear(d + 1, dim)  # (m ‖ log k) -> token
            self.moment_map = nn.Parameter(config.moment_init * torch.eye(d))  # A0 (D, D)
            self.moment_left = nn.Parameter(torch.randn(d, r) / math.sqrt(d))  # P (D, r)
            self.moment_right = nn.Parameter(torch.randn(d, r) / math.sqrt(d))  # Q (D, r)
            self.moment_gain = Mlp(1, 32, r + 1)  # log k -> (g0, g_1..g_r) of A(k)
            nn.init.zeros_(self.moment_gain.fc2.weight)  # A(k) = 0 at initialisation
            nn.init.zeros_(self.moment_gain.fc2.bias)
        self.prior = None
        if config.prior_components:
            self.prior = MixturePrior(d, config.prior_components, config.prior_noise)
            self.prior_proj = nn.Linear(d, dim)  # the Bayes estimate -> token
        if config.moment_path or config.prior_components:
            nn.init.zeros_(self.head.fc2.weight)  # the read-out starts as the moment / Bayes estimate alone
            nn.init.zeros_(self.head.fc2.bias)

    def _check(self, embeddings: Tensor, responses: Tensor, mask: Tensor | None) -> Tensor:
        d = self.config.embedding_dim
        if embeddings.dim() != 3 or embeddings.shape[-1] != d:
            raise ValueError(f"embeddings must be (B, k, {d}), got shape {tuple(embeddings.shape)}")
        if responses.shape != embeddings.shape[:2]:
            raise ValueError(f"responses must be {tuple(embeddings.shape[:2])}, got {tuple(responses.shape)}")
        if mask is None:
            return torch.ones(responses.shape, dtype=torch.bool, device=responses.device)
        if mask.shape != responses.shape:
            raise ValueError(f"mask must be {tuple(responses.shape)}, got {tuple(mask.shape)}")
        mask = mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every voxel needs at least one valid support pair (a mask row is all False)")
        return mask

    def encode_support(self, embeddings: Tensor, responses: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The transformer's input: tokens ``(B, P + k, dim)``, key mask ``(B, P + k)`` and the support stats.

        ``P = n_prefix`` (registers, then the moment token with ``moment_path``, then the Bayes-estimate token
        with ``prior_components``). The dict also holds the support stats ``mean``/``std`` ``(B,)``, the
        standardised responses ``z`` ``(B, k)`` and the mean embedding ``x_mean (B, D)``; with ``moment_path``
        the cross-moment ``moment (B, D)`` and ``log_k (B,)``; with the prior path its posterior mean ``bayes``.
        Padded entries are zeroed first, so whatever they hold (even NaN) cannot reach a valid token.
        """
        mask = self._check(embeddings, responses, mask)
        embeddings = torch.where(mask[..., None], embeddings, torch.zeros((), dtype=embeddings.dtype))
        responses = torch.where(mask, responses, torch.zeros((), dtype=responses.dtype))
        mean, std = support_stats(responses, mask, self.config.eps)  # (B,) each
        z = torch.where(mask, (responses - mean[:, None]) / std[:, None], torch.zeros((), dtype=responses.dtype))
        support = self.token_proj(torch.cat([embeddings, z[..., None]], dim=-1)) + self.support_type  # (B, k, dim)
        batch, n_reg = support.shape[0], self.config.n_registers
        prefix = [self.registers.expand(batch, n_reg, -1).to(support.dtype)]  # (B, R, dim)
        out: dict[str, Tensor] = {"mean": mean, "std": std}
        count = mask.sum(dim=1).to(embeddings.dtype)  # (B,) valid pairs k
        out["x_mean"] = embeddings.sum(dim=1) / count[:, None]  # (B, D)
        if self.config.moment_path:
            out["moment"] = torch.einsum("bkd,bk->bd", embeddings, z.to(embeddings.dtype)) / count[:, None]  # (B, D)
            out["log_k"] = count.log()  # (B,)
            token = self.moment_proj(torch.cat([out["moment"], out["log_k"][:, None]], dim=-1))  # (B, dim)
            prefix.append(token[:, None].to(support.dtype))  # (B, 1, dim)
        if self.prior is not None:
            centred = torch.where(mask[..., None], embeddings - out["x_mean"][:, None], 0.0)  # (B, k, D)
            out["bayes"] = self.prior.posterior_mean(centred, z)  # (B, D)
            prefix.append(self.prior_proj(out["bayes"].to(support.dtype))[:, None])  # (B, 1, dim)
        tokens = torch.cat([*prefix, support], dim=1)  # (B, P + k, dim)
        keys = torch.cat([torch.ones(batch, self.n_prefix, dtype=torch.bool, device=mask.device), mask], dim=1)
        return out | {"tokens": tokens, "key_mask": keys}

    def moment_weights(self, moment: Tensor, log_k: Tensor) -> Tensor:
        """The moment path's weights ``(A0 + A(k)) m`` ``(B, D)`` (standardised units).

        ``moment`` is ``m`` ``(B, D)``, ``log_k`` the log support size ``(B,)``.
        """
        gain = self.moment_gain(log_k[:, None])  # (B, r + 1)
        low = (moment @ self.moment_right) * gain[:, 1:]  # (B, r)
        return moment @ self.moment_map.T + gain[:, :1] * moment + low @ self.moment_left.T  # (B, D)

    def forward(self, embeddings: Tensor, responses: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Build each voxel's linear encoder from its support set.

        Parameters
        ----------
        embeddings : ``(B, k, D)`` support image embeddings (one support set per voxel ``b``).
        responses : ``(B, k)`` the voxel's measured responses to those images.
        mask : bool ``(B, k)``, True = valid pair (padding lets one batch hold support sets of any size).

        Returns
        -------
        weights ``(B, D)`` and bias ``(B,)`` in the responses' units: ``pred = x @ weights[b] + bias[b]``.
        """
        inputs = self.encode_support(embeddings, responses, mask)
        x = inputs["tokens"]
        for block in self.blocks:
            x = block(x, key_padding_mask=inputs["key_mask"])  # (B, P + k, dim)
        registers = self.norm(x[:, : self.config.n_registers]).flatten(1)  # (B, R * dim)
        out = self.head(registers)  # (B, D + 1) in standardised units
        w, b = out[:, :-1], out[:, -1]
        if self.config.moment_path:
            w = w + self.moment_weights(inputs["moment"], inputs["log_k"]).to(w.dtype)
        if self.prior is not None:
            w = w + inputs["bayes"].to(w.dtype)
        if self.config.moment_path or self.prior is not None:
            b = b - (inputs["x_mean"].to(w.dtype) * w).sum(dim=-1)  # ridge-like intercept at the support mean
        std, mean = inputs["std"][:, None], inputs["mean"]
        return w * std, b * std[:, 0] + mean

    @torch.no_grad()
    def support_attention(self, embeddings: Tensor, responses: Tensor, mask: Tensor | None = None) -> Tensor:
        """How much the registers attend to each support pair, averaged over registers, heads and blocks.

        Each block's register-query rows of :meth:`MultiHeadAttention.attention_weights` are restricted to
        the support keys and renormalised over them, then averaged. Returns ``(B, k)``: rows sum to 1 over
        the valid pairs and padded pairs get exactly 0.
        """
        inputs = self.encode_support(embeddings, responses, mask)
        x, keys, n_reg, n_pre = inputs["tokens"], inputs["key_mask"], self.config.n_registers, self.n_prefix
        total = torch.zeros(x.shape[0], x.shape[1] - n_pre, dtype=x.dtype, device=x.device)  # (B, k)
        for block in self.blocks:
            weights = block.attn.attention_weights(block.norm1(x), key_padding_mask=keys)  # (B, h, P+k, P+k)
            to_support = weights[:, :, :n_reg, n_pre:]  # (B, h, R, k)
            to_support = to_support / to_support.sum(dim=-1, keepdim=True).clamp_min(1e-30)
            total += to_support.mean(dim=(1, 2))
            x = block(x, key_padding_mask=keys)  # (B, P + k, dim)
        return total / len(self.blocks)

    @staticmethod
    def predict(weights: Tensor, bias: Tensor, embeddings: Tensor) -> Tensor:
        """Responses ``(B, m)`` of the B voxel encoders to ``embeddings`` ``(B, m, D)`` (or shared ``(m, D)``)."""
        if embeddings.dim() == 2:
            return weights @ embeddings.T + bias[:, None]  # (B, m)
        return torch.einsum("bmd,bd->bm", embeddings, weights) + bias[:, None]  # (B, m)


def build_braincorl(config: dict[str, Any]) -> BraInCoRL:
    """A randomly initialised model from a stored config dict (unknown keys raise TypeError)."""
    return BraInCoRL(BraInCoRLConfig(**config))


def load_braincorl(run_dir: str | Path) -> BraInCoRL:
    """The model of a meta-training run folder (its ``final/``) or of a checkpoint folder: strict, in eval mode."""
    return load_model(run_dir, MODEL_CLASS, build_braincorl)  # type: ignore[return-value]
