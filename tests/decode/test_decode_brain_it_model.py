"""Brain-IT model: config checks, shapes, cluster pooling confined to each cluster, latent patch layout."""

from __future__ import annotations

import pytest
import torch

from neuroattn.decode.brain_it import BrainIT, BrainITConfig, _segment_weighted_sum
from neuroattn.errors import ConfigError, InvalidInputError

torch.set_num_threads(1)


def _config(**overrides: object) -> BrainITConfig:
    base = dict(n_tokens=5, clip_dim=12, dim=32, depth=1, latent_channels=2, latent_size=8, latent_grid=2)
    return BrainITConfig.tiny(**(base | overrides))


def _model(n_voxels: int = 40, seed: int = 0, empty_cluster: int | None = 7) -> BrainIT:
    gen = torch.Generator().manual_seed(seed)
    cfg = _config()
    labels = torch.randint(0, cfg.n_clusters, (n_voxels,), generator=gen)
    if empty_cluster is not None:
        labels[labels == empty_cluster] = 0
    torch.manual_seed(seed)
    return BrainIT(cfg, {"subj01": (torch.randn(n_voxels, cfg.embed_dim, generator=gen), labels)}).eval()


def test_config_defaults_and_validation() -> None:
    cfg = BrainITConfig()
    assert (cfg.n_clusters, cfg.n_tokens) == (128, 256)  # published
    assert BrainITConfig.from_dict(cfg.to_dict()) == cfg
    tiny = BrainITConfig.tiny()
    assert (tiny.n_tokens, tiny.clip_dim, tiny.latent_size, tiny.latent_patch) == (65, 64, 16, 4)
    with pytest.raises(ConfigError, match="divisible"):
        BrainITConfig.tiny(dim=30, heads=4)
    with pytest.raises(ConfigError, match="multiple"):
        BrainITConfig.tiny(latent_size=10, latent_grid=4)
    with pytest.raises(ConfigError, match="unknown"):
        BrainITConfig.from_dict({"n_clustrs": 3})


def test_forward_shapes_and_gradients_reach_every_part() -> None:
    model = _model().train()
    betas = torch.randn(3, 40)
    out = model("subj01", betas)
    assert out.tokens.shape == (3, 5, 12)
    assert out.latents is not None and out.latents.shape == (3, 2, 8, 8)
    (out.tokens.square().mean() + out.latents.square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
    assert model.decode_outputs(model.forward_features("subj01", betas)).tokens.shape == (3, 5, 12)


def test_voxel_token_is_embedding_times_activation_plus_cluster_embedding() -> None:
    model = _model()
    betas = torch.randn(2, 40)
    voxels = model.subjects["subj01"]
    expected = betas[..., None] * model.embed_proj(voxels.embedding)[None] + model.cluster_embed[voxels.cluster]
    torch.testing.assert_close(model.voxel_tokens("subj01", betas), expected, rtol=0, atol=0)


def _padded_pooling(model: BrainIT, subject: str, betas: torch.Tensor) -> torch.Tensor:
    """Reference: each cluster's query runs the dense attention layer over its voxels padded to the largest
    cluster, plus the null key (the textbook masked cross-attention the segment softmax must equal)."""
    labels = model.subjects[subject].cluster
    tokens = model.voxel_tokens(subject, betas)  # (B, V, d)
    b, k, d = betas.shape[0], model.config.n_clusters, model.config.dim
    members = [torch.nonzero(labels == c).flatten() for c in range(k)]
    width = max(len(m) for m in members)
    context = torch.zeros(b, k, width + 1, d, dtype=tokens.dtype)
    keep = torch.zeros(k, width + 1, dtype=torch.bool)
    for c, idx in enumerate(members):
        context[:, c, : len(idx)] = tokens[:, idx]
        keep[c, : len(idx)] = True
    context[:, :, width] = model.null_token
    keep[:, width] = True
    queries = model.cluster_queries[None].expand(b, k, d)
    pooled = model.pool(queries.reshape(b * k, 1, d), context=context.reshape(b * k, width + 1, d),
                        key_padding_mask=keep[None].expand(b, k, width + 1).reshape(b * k, width + 1))
    return model.pool_norm(queries + pooled.reshape(b, k, d))


def test_segment_softmax_pooling_equals_padded_dense_attention_in_float64() -> None:
    model = _model(n_voxels=60).double()
    betas = torch.randn(3, 60, dtype=torch.float64) * 4  # large activations: the softmax shift matters
    with torch.no_grad():
        model.null_token.normal_()
        expected = _padded_pooling(model, "subj01", betas)
        got = model.cluster_tokens("subj01", betas)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # gradients agree too
    betas.requires_grad_(True)
    (model.cluster_tokens("subj01", betas) ** 2).sum().backward()
    grad = betas.grad.clone()
    betas.grad = None
    (_padded_pooling(model, "subj01", betas) ** 2).sum().backward()
    torch.testing.assert_close(grad, betas.grad, rtol=1e-8, atol=1e-10)


def test_cluster_pooling_only_changes_the_perturbed_voxels_cluster() -> None:
    model = _model()
    labels = model.subjects["subj01"].cluster
    betas = torch.randn(2, 40)
    with torch.no_grad():
        base = model.cluster_tokens("subj01", betas)  # (B, K, d)
        assert torch.isfinite(base).all()  # cluster 7 has no voxel: its query sees the null key only
        for voxel in (0, 13, 39):
            moved = betas.clone()
            moved[:, voxel] += 3.0
            out = model.cluster_tokens("subj01", moved)
            own = int(labels[voxel])
            others = [k for k in range(base.shape[1]) if k != own]
            assert torch.equal(out[:, others], base[:, others])
            assert (out[:, own] - base[:, own]).abs().max() > 1e-3


def test_latent_patches_land_where_their_query_points() -> None:
    model = _model()
    cfg = model.config
    with torch.no_grad():
        model.latent_head.bias.zero_()
        for q in range(cfg.latent_grid**2):
            feats = torch.zeros(1, cfg.n_tokens + cfg.latent_grid**2, cfg.dim)
            feats[0, cfg.n_tokens + q] = 1.0
            latents = model.decode_outputs(feats).latents[0]  # (C, h, w)
            row, col, p = q // cfg.latent_grid, q % cfg.latent_grid, cfg.latent_patch
            block = torch.zeros_like(latents, dtype=torch.bool)
            block[:, row * p : (row + 1) * p, col * p : (col + 1) * p] = True
            assert torch.count_nonzero(latents[~block]) == 0
            expected = model.latent_head.weight.sum(1).reshape(cfg.latent_channels, p, p)  # (C, p, p)
            torch.testing.assert_close(latents[block].reshape(cfg.latent_channels, p, p), expected)


def test_no_latent_branch_and_bad_inputs() -> None:
    cfg = _config(latent_channels=0)
    model = BrainIT(cfg, {"a": (torch.randn(10, cfg.embed_dim), torch.zeros(10, dtype=torch.long))})
    out = model("a", torch.randn(2, 10))
    assert out.latents is None and model.latent_head is None
    with pytest.raises(InvalidInputError, match="unknown subject"):
        model("b", torch.randn(2, 10))
    with pytest.raises(InvalidInputError, match=r"\(B, 10\)"):
        model("a", torch.randn(2, 11))
    with pytest.raises(ConfigError, match="already"):
        model.add_subject("a", torch.randn(3, cfg.embed_dim), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="letter"):
        model.add_subject("sub.1", torch.randn(3, cfg.embed_dim), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="cluster labels"):
        model.add_subject("c", torch.randn(3, cfg.embed_dim), torch.full((3,), cfg.n_clusters))
    shared = model.shared_parameters()
    assert shared and not any(name.startswith("subjects.") for name in shared)


def test_projector_takes_softclip_and_leaves_the_regression_tokens_alone() -> None:
    """With a projector, SoftCLIP reaches the tokens only through it: the token losses never touch the projector,
    and the retrieval tokens are the projector applied to the regression tokens."""
    from neuroattn.decode.brain_it_training import brain_it_loss

    gen = torch.Generator().manual_seed(1)
    cfg = _config(projector_dim=16, contrastive_weight=1.0, mse_weight=1.0, cosine_weight=1.0)
    labels = torch.randint(0, cfg.n_clusters, (40,), generator=gen)
    model = BrainIT(cfg, {"subj01": (torch.randn(40, cfg.embed_dim, generator=gen), labels)}).train()
    out = model("subj01", torch.randn(4, 40, generator=gen))
    torch.testing.assert_close(out.retrieval, model.projector(out.tokens), rtol=0, atol=0)
    target = torch.randn(4, 5, 12, generator=gen)
    token_only = BrainITConfig.from_dict(cfg.to_dict() | {"contrastive_weight": 0.0})
    brain_it_loss(out.tokens, target, token_only, retrieval=out.retrieval)[0].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.projector.parameters())
    model.zero_grad()
    loss, metrics = brain_it_loss(out.tokens, target, cfg, retrieval=out.retrieval)
    loss.backward()
    assert all(p.grad is not None and p.grad.any() for p in model.projector.parameters())
    plain = brain_it_loss(out.tokens, target, cfg)[1]["softclip"]  # default: SoftCLIP on the tokens themselves
    assert not torch.isclose(metrics["softclip"], plain)
    no_projector = _model()
    assert no_projector.projector is None
    out = no_projector("subj01", torch.randn(2, 40))
    assert out.retrieval is out.tokens
    with pytest.raises(ConfigError, match="projector_dim"):
        BrainITConfig.tiny(projector_dim=-1)


def test_voxel_dropout_only_acts_in_training() -> None:
    model = _model()
    dropped = BrainIT(_config(voxel_dropout=0.5), {"subj01": (model.subjects["subj01"].embedding.detach(),
                                                              model.subjects["subj01"].cluster)})
    dropped.load_state_dict(model.state_dict())
    betas = torch.randn(3, 40)
    torch.testing.assert_close(dropped.eval()("subj01", betas).tokens, model.eval()("subj01", betas).tokens)
    dropped.train()
    torch.manual_seed(0)
    noisy = dropped.cluster_tokens("subj01", betas)
    torch.manual_seed(0)
    zeroed = torch.nn.functional.dropout(betas, 0.5, True)  # the same draw: those voxels count as silent
    torch.testing.assert_close(noisy, model.train().cluster_tokens("subj01", zeroed))
    assert not torch.allclose(noisy, model.cluster_tokens("subj01", betas))
    with pytest.raises(ConfigError, match="voxel_dropout"):
        BrainITConfig.tiny(voxel_dropout=1.0)
    with pytest.raises(ConfigError, match=r"mixup_fraction 1\.5"):
        BrainITConfig.tiny(mixup_fraction=1.5)
    with pytest.raises(ConfigError, match="adapt_prior_weight"):
        BrainITConfig.tiny(adapt_prior_weight=-0.5)


def test_segment_weighted_sum_equals_masked_sum_in_float64() -> None:
    """Uneven segments (one far above the chunk size, empty ones, singletons) against the defining sum."""
    gen = torch.Generator().manual_seed(3)
    label = torch.cat([torch.full((23,), 2), torch.tensor([0, 5, 5, 7]), torch.full((3,), 4)])
    label = label[torch.randperm(len(label), generator=gen)]  # 30 voxels in 8 segments, 1, 3 and 6 empty
    weights = torch.randn(4, 30, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    values = torch.randn(30, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    got = _segment_weighted_sum(weights, values, label, 8)
    onehot = torch.nn.functional.one_hot(label, 8).to(torch.float64)  # (V, K)
    expected = torch.einsum("bvh,vk,vhd->bkhd", weights, onehot, values)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(got[:, [1, 3, 6]]) == 0
    grads = torch.autograd.grad((got * torch.sin(expected.detach())).sum(), (weights, values))
    refs = torch.autograd.grad((expected * torch.sin(expected.detach())).sum(), (weights, values))
    for grad, ref in zip(grads, refs, strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)


def test_global_readout_gives_each_cluster_its_own_weights() -> None:
    """Attention reads the cluster tokens as a set: permuting them leaves the output queries unchanged. The
    global read-out gives every cluster weights of its own, so the same permutation moves the outputs, and it is
    the only change from a model without it (same output when its last layer is zero)."""
    gen = torch.Generator().manual_seed(3)
    clusters = torch.randn(2, 8, 32, generator=gen, dtype=torch.float64)
    perm = torch.randperm(8, generator=gen)
    plain = _model().double()
    torch.testing.assert_close(plain.interact(clusters[:, perm]), plain.interact(clusters), rtol=1e-12, atol=1e-12)
    labels = plain.subjects["subj01"].cluster
    torch.manual_seed(0)
    model = BrainIT(_config(global_readout=16), {"subj01": (plain.subjects["subj01"].embedding, labels)})
    model = model.double().eval()
    shift = (model.interact(clusters[:, perm]) - model.interact(clusters)).abs().amax()
    assert shift > 1e-3
    out = model.train()("subj01", torch.randn(3, 40, dtype=torch.float64))
    out.tokens.square().mean().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.readout.parameters())
    model.eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("readout.")}
    plain.load_state_dict(state)
    last = model.readout[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    torch.testing.assert_close(model.interact(clusters), plain.interact(clusters), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="global_readout"):
        BrainITConfig.tiny(global_readout=-1)
