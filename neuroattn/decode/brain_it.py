"""Brain-IT: voxel tokens pooled into shared functional clusters, a Brain Interaction Transformer, CLIP tokens out."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from neuroattn.decode.mindeye import Projector
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.nn.attention import MultiHeadAttention
from neuroattn.nn.transformer import TransformerBlock

_SUBJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class BrainITConfig:
    """Brain-IT architecture and loss weights. Defaults follow the paper where it states them (marked)."""

    n_clusters: int = 128  # functional voxel clusters shared across subjects (published)
    embed_dim: int = 32  # width of each voxel's functional embedding = PCA dimensions the mixture is fitted in
    dim: int = 512  # token width of the cluster and output tokens
    heads: int = 8
    depth: int = 6  # interaction layers: cluster self-attention + output-query self/cross-attention
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    voxel_dropout: float = 0.0  # share of voxel activations zeroed (rest rescaled) in training, as MindEye's input
    # >0: hidden width of an MLP from all cluster tokens together that seeds the output queries, so each cluster
    # gets weights of its own (attention alone pools clusters with shared weights); 0: off, as published
    global_readout: int = 0
    n_tokens: int = 256  # localized semantic output tokens (published: 256 OpenCLIP tokens)
    clip_dim: int = 1280  # width of each target CLIP token (OpenCLIP ViT-bigG/14 joint space)
    latent_channels: int = 4  # VAE latent channels of the low-level branch; 0 disables it
    latent_size: int = 64  # VAE latent side, voxels of the latent grid (512 px images / 8)
    latent_grid: int = 16  # low-level query tokens per side; each decodes a (latent_size / latent_grid)^2 patch
    profile_alpha: float = 1.0  # ridge penalty per image of the voxel encoding profiles
    # losses
    mse_weight: float = 1.0  # token-wise mean squared error to the CLIP tokens
    cosine_weight: float = 1.0  # 1 - mean token cosine similarity
    contrastive_weight: float = 1.0  # SoftCLIP on the flattened tokens (the retrieval space)
    projector_dim: int = 0  # >0: SoftCLIP on a MindEye-style projector of the tokens (this hidden width), 0: on them
    temperature: float = 0.05  # SoftCLIP temperature (BiMixCo's too)
    mixup_fraction: float = 0.0  # leading share of steps trained with BiMixCo on voxels mixed within a subject
    mixup_beta: float = 0.15  # Beta(b, b) of the mixing weights (MindEye)
    mixup_prob: float = 0.5  # share of samples mixed in a BiMixCo step (MindEye)
    latent_weight: float = 1.0  # L1 to the VAE latents
    adapt_prior_weight: float = 0.0  # new-subject adaptation: Gaussian prior keeping embeddings near their placement

    def __post_init__(self) -> None:
        for name in ("n_clusters", "embed_dim", "dim", "heads", "depth", "n_tokens", "clip_dim", "latent_grid"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}' must be a positive integer. {value!r} was provided.")
        if self.dim % self.heads:
            raise ConfigError(f"'dim' ({self.dim}) must be divisible by 'heads' ({self.heads})")
        for name in ("projector_dim", "global_readout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"'{name}' must be an integer >= 0. {value!r} was provided.")
        if self.latent_channels < 0:
            raise ConfigError(f"'latent_channels' must be >= 0. {self.latent_channels!r} was provided.")
        if self.latent_channels and self.latent_size % self.latent_grid:
            raise ConfigError(f"'latent_size' ({self.latent_size}) must be a multiple of 'latent_grid' "
                              f"({self.latent_grid})")
        if not 0.0 <= self.voxel_dropout < 1.0:
            raise ConfigError(f"'voxel_dropout' must be in [0, 1). {self.voxel_dropout!r} was provided.")
        if not (0.0 <= self.mixup_fraction <= 1.0 and self.mixup_beta > 0 and 0.0 <= self.mixup_prob <= 1.0):
            raise ConfigError(f"mixup settings out of range: mixup_fraction {self.mixup_fraction!r} (0..1), "
                              f"mixup_beta {self.mixup_beta!r} (> 0), mixup_prob {self.mixup_prob!r} (0..1)")
        if not self.adapt_prior_weight >= 0:
            raise ConfigError(f"'adapt_prior_weight' must be >= 0. {self.adapt_prior_weight!r} was provided.")
        if not self.temperature > 0:
            raise ConfigError(f"'temperature' must be > 0. {self.temperature!r} was provided.")

    @property
    def latent_patch(self) -> int:
        """Side of the latent patch one low-level query decodes."""
        return self.latent_size // self.latent_grid

    @classmethod
    def tiny(cls, **overrides: Any) -> BrainITConfig:
        """A CPU-sized config for the tiny CLIP (65 tokens x 64) and the tiny VAE (4 x 16 x 16)."""
        base = dict(n_clusters=8, embed_dim=8, dim=64, heads=4, depth=2, mlp_ratio=2.0,
                    n_tokens=65, clip_dim=64, latent_channels=4, latent_size=16, latent_grid=4)
        return cls(**(base | overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainITConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown BrainITConfig keys {unknown}")
        return cls(**data)


@dataclass
class BrainITOutput:
    """What one forward pass predicts."""

    tokens: Tensor  # (B, n_tokens, clip_dim) semantic tokens in CLIP token space
    latents: Tensor | None  # (B, C, h, w) VAE latents, None without the low-level branch
    retrieval: Tensor  # (B, n_tokens, clip_dim) what SoftCLIP matches to the CLIP tokens: projected tokens or tokens


class SubjectVoxels(nn.Module):
    """One subject's learned voxel embeddings ``(V, embed_dim)`` and the voxels' fixed cluster labels ``(V,)``."""

    def __init__(self, embeddings: Tensor, clusters: Tensor, n_clusters: int) -> None:
        super().__init__()
        if embeddings.dim() != 2 or clusters.shape != embeddings.shape[:1]:
            raise InvalidInputError(f"need embeddings (V, E) and cluster labels (V,); got {tuple(embeddings.shape)} "
                                    f"and {tuple(clusters.shape)}")
        if clusters.numel() and (int(clusters.min()) < 0 or int(clusters.max()) >= n_clusters):
            raise InvalidInputError(f"cluster labels must lie in [0, {n_clusters})")
        self.n_clusters = n_clusters
        self.embedding = nn.Parameter(embeddings.detach().clone().float())
        self.register_buffer("cluster", clusters.detach().clone().long())

    @property
    def n_voxels(self) -> int:
        return int(self.embedding.shape[0])


def _segment_weighted_sum(weights: Tensor, values: Tensor, label: Tensor, n_segments: int) -> Tensor:
    """``out[b, k, h] = sum over v with label[v] == k of weights[b, v, h] * values[v, h]``.

    ``weights (B, V, H)``, ``values (V, H, D)`` -> ``(B, K, H, D)``, in a fixed number of kernels whatever K is
    (GPU steps are not bound by launching one product per segment). Each segment's voxels are cut into chunks of
    ``ceil(V / K)``; one batched matmul sums every chunk, and the chunk sums are added into their segment. The
    chunked layout has about ``2 V + K`` slots, so memory stays O(B x V x H), never (B, V, H, D) and never padded
    to the largest segment.
    """
    n_vox, heads, width = values.shape
    chunk = max(1, -(-n_vox // n_segments))
    n_chunks = n_vox // chunk + n_segments + 1  # >= sum over segments of ceil(count / chunk)
    order = torch.argsort(label, stable=True)  # voxels grouped by segment
    counts = torch.bincount(label, minlength=n_segments)  # (K,)
    first = torch.cumsum(counts, 0) - counts  # sorted position of each segment's first voxel
    rank = torch.empty_like(label)
    rank[order] = torch.arange(n_vox, device=label.device) - first[label[order]]  # position within its segment
    per_segment = -(-counts // chunk)  # (K,) chunks of each segment
    chunk_end = torch.cumsum(per_segment, 0)  # (K,) one past each segment's last chunk
    chunk_id = (chunk_end - per_segment)[label] + rank // chunk  # (V,)
    slot = chunk_id * chunk + rank % chunk  # (V,) place in the chunked layout
    chunks = torch.arange(n_chunks, device=label.device)
    owner = torch.searchsorted(chunk_end, chunks, right=True).clamp_max(n_segments - 1)  # (n,) segment of a chunk
    w = weights.new_zeros(weights.shape[0], n_chunks * chunk, heads).index_copy(1, slot, weights)
    v = values.new_zeros(n_chunks * chunk, heads, width).index_copy(0, slot, values)
    w = w.unflatten(1, (n_chunks, chunk)).permute(1, 3, 0, 2)  # (n, H, B, chunk)
    v = v.unflatten(0, (n_chunks, chunk)).permute(0, 2, 1, 3)  # (n, H, chunk, D)
    sums = torch.matmul(w, v)  # (n, H, B, D); unused chunks are zeros
    out = sums.new_zeros(n_segments, heads, weights.shape[0], width).index_add(0, owner, sums)  # (K, H, B, D)
    return out.permute(2, 0, 1, 3)  # (B, K, H, D)


class BrainIT(nn.Module):
    """Brain Interaction Transformer over functional voxel clusters shared across subjects.

    Each voxel ``v`` of subject ``s`` becomes the token ``proj(e_v) * a_v + c_k(v)``: its learned embedding
    (initialised from its functional profile) scaled by its activation, plus the embedding of its cluster.
    A learned query per cluster attends to that cluster's voxels only (graph attention along the
    voxel -> cluster edges; a learned null key keeps empty clusters defined), giving K cluster tokens. Then
    ``depth`` interaction layers alternate self-attention among cluster tokens with output queries that attend
    to each other and cross-attend to the cluster tokens. ``n_tokens`` queries become CLIP tokens; with a
    low-level branch ``latent_grid**2`` more queries each decode a patch of the VAE latents. With
    ``global_readout`` the queries start from an MLP of all cluster tokens flattened: attention reads the clusters
    through weights shared by every cluster, so it cannot form a cluster-specific linear read-out by itself.

    Parameters
    ----------
    config : architecture.
    subjects : ``{name: (embeddings (V_s, embed_dim), cluster labels (V_s,))}`` initial voxel state per subject.
    """

    def __init__(self, config: BrainITConfig, subjects: dict[str, tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.config = config
        d, k = config.dim, config.n_clusters
        self.subjects = nn.ModuleDict()
        for name, (embeddings, clusters) in subjects.items():
            self.add_subject(name, embeddings, clusters)
        self.embed_proj = nn.Linear(config.embed_dim, d)
        self.cluster_embed = nn.Parameter(torch.randn(k, d) * 0.02)
        self.cluster_queries = nn.Parameter(torch.randn(k, d) * 0.02)
        self.null_token = nn.Parameter(torch.randn(d) * 0.02)
        self.pool = MultiHeadAttention(d, config.heads)  # no qk_norm: cluster_tokens splits its linear keys
        self.pool_norm = nn.LayerNorm(d)
        n_latent = config.latent_grid**2 if config.latent_channels else 0
        self.queries = nn.Parameter(torch.randn(config.n_tokens + n_latent, d) * 0.02)
        width = config.global_readout
        self.readout = nn.Sequential(  # all K cluster tokens flattened -> a start for every output query
            nn.Linear(k * d, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, (config.n_tokens + n_latent) * d)
        ) if width else None
        rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.cluster_blocks = nn.ModuleList(
            TransformerBlock(d, config.heads, mlp_ratio=config.mlp_ratio, drop_path=r) for r in rates
        )
        self.query_blocks = nn.ModuleList(
            TransformerBlock(d, config.heads, mlp_ratio=config.mlp_ratio, drop_path=r, cross_attention=True)
            for r in rates
        )
        self.norm = nn.LayerNorm(d)
        self.semantic_head = nn.Linear(d, config.clip_dim)
        # retrieval head apart from the regression head, so SoftCLIP does not pull on the tokens reconstructions use
        self.projector = Projector(config.clip_dim, config.projector_dim) if config.projector_dim else None
        self.latent_head = (
            nn.Linear(d, config.latent_channels * config.latent_patch**2) if config.latent_channels else None
        )

    def add_subject(self, name: str, embeddings: Tensor, clusters: Tensor) -> SubjectVoxels:
        """Register a subject's voxels (embeddings ``(V, embed_dim)``, labels ``(V,)``); returns its module."""
        if not _SUBJECT_NAME.match(name):
            raise ConfigError(f"subject name {name!r} must start with a letter and hold only letters, digits, _ or -")
        if name in self.subjects:
            raise ConfigError(f"subject {name!r} is already part of this model")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise InvalidInputError(f"voxel embeddings of {name!r} must be (V, {self.config.embed_dim}), "
                                    f"got {tuple(embeddings.shape)}")
        module = SubjectVoxels(embeddings, clusters, self.config.n_clusters)
        existing = next(iter(self.parameters()), None)
        if existing is not None:
            module.to(existing.device)
        self.subjects[name] = module
        return module

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter not owned by one subject (transformer, projections, cluster queries), by name."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("subjects.")}

    def _subject(self, subject: str, betas: Tensor) -> SubjectVoxels:
        if subject not in self.subjects:
            raise InvalidInputError(f"unknown subject {subject!r}; this model knows {sorted(self.subjects)}")
        voxels = self.subjects[subject]
        if betas.dim() != 2 or betas.shape[1] != voxels.n_voxels:
            raise InvalidInputError(f"betas of {subject!r} must be (B, {voxels.n_voxels}), got {tuple(betas.shape)}")
        return voxels

    def voxel_tokens(self, subject: str, betas: Tensor) -> Tensor:
        """``betas (B, V)`` -> voxel tokens ``(B, V, dim)``: ``proj(e_v) * a_v + cluster_embed[k(v)]``."""
        voxels = self._subject(subject, betas)
        emb = self.embed_proj(voxels.embedding)  # (V, d)
        return betas[..., None] * emb[None] + self.cluster_embed[voxels.cluster][None]  # (B, V, d)

    def cluster_tokens(self, subject: str, betas: Tensor) -> Tensor:
        """Pool each cluster's voxels into one token: ``betas (B, V)`` -> ``(B, K, dim)``.

        Graph attention along the voxel -> cluster edges: cluster ``k``'s query (through ``self.pool``'s
        projections) attends to the voxels labelled ``k`` and to a learned null key only, so a voxel reaches no
        other cluster's token. The softmax runs per cluster over the voxel list (segment max / sum) and the
        values are summed per cluster segment, so memory grows as B x V x heads whatever the cluster sizes, with no
        padding to the largest cluster.
        """
        voxels = self._subject(subject, betas)
        betas = F.dropout(betas, self.config.voxel_dropout, self.training)  # (B, V), identity in eval
        pool, k = self.pool, self.config.n_clusters
        b, h, hd = betas.shape[0], pool.heads, pool.head_dim
        label = voxels.cluster  # (V,)
        # A voxel token is a * u_v + c_k (u_v = proj(e_v), c_k its cluster's embedding) and kv_proj is linear, so
        # its key and value are a * (W u_v) + kv_proj(c_k): per-voxel and per-cluster parts, never (B, V, dim).
        acc = torch.promote_types(betas.dtype, torch.float32)  # softmax and sums in >= float32 under autocast
        voxel_kv = (self.embed_proj(voxels.embedding) @ pool.kv_proj.weight.T).unflatten(-1, (2, h, hd))  # (V,2,h,hd)
        cluster_kv = pool.kv_proj(self.cluster_embed).unflatten(-1, (2, h, hd))  # (K, 2, h, hd), with the bias
        null_kv = pool.kv_proj(self.null_token).unflatten(-1, (2, h, hd))  # (2, h, hd)
        query = pool.q_proj(self.cluster_queries).unflatten(-1, (h, hd))  # (K, h, hd)
        voxel_kv, cluster_kv, null_kv, query = (t.to(acc) for t in (voxel_kv, cluster_kv, null_kv, query))
        scale = hd**-0.5
        slope = (voxel_kv[:, 0] * query[label]).sum(-1) * scale  # (V, h): score = a * slope + offset
        offset = (cluster_kv[:, 0] * query).sum(-1) * scale  # (K, h)
        null_score = ((null_kv[0] * query).sum(-1) * scale).expand(b, k, h)  # (B, K, h)
        activation = betas.to(acc)[..., None]  # (B, V, 1)
        score = activation * slope[None] + offset[label][None]  # (B, V, h)
        index = label[None, :, None].expand(b, -1, h)  # (B, V, h)
        peak = null_score.scatter_reduce(1, index, score, reduce="amax").detach()  # (B, K, h), softmax shift
        weight = torch.exp(score - peak.gather(1, index))  # (B, V, h)
        weight_null = torch.exp(null_score - peak)  # (B, K, h)
        in_cluster = torch.zeros_like(weight_null).index_add(1, label, weight)  # (B, K, h)
        mixed = _segment_weighted_sum(weight * activation, voxel_kv[:, 1], label, k)  # (B, K, h, hd)
        mixed = mixed + in_cluster[..., None] * cluster_kv[None, :, 1] + weight_null[..., None] * null_kv[1]
        mixed = (mixed / (in_cluster + weight_null)[..., None]).flatten(-2)  # (B, K, h*hd)
        pooled = pool.out_proj(mixed.to(pool.out_proj.weight.dtype))  # (B, K, dim)
        queries = self.cluster_queries[None].expand(b, k, -1)  # (B, K, d)
        return self.pool_norm(queries + pool.proj_drop(pooled))  # (B, K, d)

    def interact(self, clusters: Tensor) -> Tensor:
        """Cluster tokens ``(B, K, dim)`` (any mix of subjects) -> output query tokens ``(B, Q, dim)``,
        ``Q = n_tokens [+ latent_grid**2]``, after the interaction layers."""
        queries = self.queries[None].expand(clusters.shape[0], -1, -1)  # (B, Q, d)
        if self.readout is not None:  # per-cluster weights; everything below treats the clusters as a set
            queries = queries + self.readout(clusters.flatten(1)).view_as(queries)
        for cluster_block, query_block in zip(self.cluster_blocks, self.query_blocks, strict=True):
            clusters = cluster_block(clusters)
            queries = query_block(queries, context=clusters)
        return self.norm(queries)

    def forward_features(self, subject: str, betas: Tensor) -> Tensor:
        """Output query tokens of ``betas (B, V)``, ``(B, Q, dim)``."""
        return self.interact(self.cluster_tokens(subject, betas))

    def decode_outputs(self, feats: Tensor) -> BrainITOutput:
        """Output query tokens ``(B, Q, dim)`` -> CLIP tokens ``(B, L, D)``, VAE latents ``(B, C, h, w)`` and the
        retrieval-space tokens ``(B, L, D)``."""
        cfg = self.config
        tokens = self.semantic_head(feats[:, : cfg.n_tokens])  # (B, L, D)
        latents = None
        if self.latent_head is not None:
            g, p, c = cfg.latent_grid, cfg.latent_patch, cfg.latent_channels
            patches = self.latent_head(feats[:, cfg.n_tokens :])  # (B, g*g, C*p*p)
            patches = patches.reshape(-1, g, g, c, p, p)  # (B, gy, gx, C, py, px)
            latents = patches.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, g * p, g * p)  # (B, C, h, w)
        retrieval = tokens if self.projector is None else self.projector(tokens)  # (B, L, D)
        return BrainITOutput(tokens=tokens, latents=latents, retrieval=retrieval)

    def forward(self, subject: str, betas: Tensor) -> BrainITOutput:
        """``betas (B, V)`` of ``subject`` -> semantic tokens ``(B, L, D)`` and VAE latents ``(B, C, h, w)``."""
        return self.decode_outputs(self.forward_features(subject, betas))


__all__ = ["BrainIT", "BrainITConfig", "BrainITOutput", "SubjectVoxels"]
