"""Meta-training BraInCoRL on a planted low-rank world: it learns the shared prior and beats ridge at small k."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from neuroattn.encode.braincorl import BraInCoRLConfig, load_braincorl
from neuroattn.encode.braincorl_training import (
    EpisodeDataset,
    InContextEncoder,
    collate_episodes,
    episode_forward,
    in_context_curve,
)
from neuroattn.errors import InvalidInputError

D, RANK = 32, 3


def planted_world(seed: int = 0, n_img: int = 500, n_subjects: int = 5, n_voxels: int = 200, n_train: int = 300):
    """Voxel weights = a mix of RANK shared axes + a small specific part; each voxel has its own units.

    Returns the image embeddings (n_img, D), the shared axes (D, RANK) and per subject
    ``(train_ids, train_responses, test_ids, test_responses)``.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_img, D)).astype(np.float32)
    axes = np.linalg.qr(rng.standard_normal((D, RANK)))[0]  # (D, RANK) orthonormal
    subjects = []
    for _ in range(n_subjects):
        w = axes @ rng.standard_normal((RANK, n_voxels)) + 0.15 * rng.standard_normal((D, n_voxels))  # (D, V)
        scale, offset = rng.uniform(0.5, 3.0, n_voxels), rng.normal(0.0, 2.0, n_voxels)
        y = (x @ w + rng.standard_normal((n_img, n_voxels))) * scale + offset  # (n_img, V), noise sd = 1 unit
        ids = rng.permutation(n_img)
        subjects.append((ids[:n_train], y[ids[:n_train]], ids[n_train:], y[ids[n_train:]]))
    return x, axes, subjects


def _encoder(config: BraInCoRLConfig | None = None, **overrides) -> InContextEncoder:
    config = config or BraInCoRLConfig(embedding_dim=D, dim=32, depth=2, heads=4, n_registers=2, mlp_ratio=2.0,
                                       head_hidden=64)  # fmt: skip
    settings = dict(k_min=5, k_max=60, n_query=40, voxels_per_episode=16, episodes_per_step=8, lr=2e-3,
                    warmup_steps=20, device="cpu", progress=False) | overrides  # fmt: skip
    return InContextEncoder(config, **settings)


@pytest.fixture(scope="module")
def world():
    return planted_world()


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    torch.set_num_threads(1)
    x, _, subjects = world
    run = tmp_path_factory.mktemp("braincorl") / "run"
    encoder = _encoder().meta_train([(x, s[1], s[0]) for s in subjects[:-1]], run, steps=300)
    return encoder, run


def _curve(encoder: InContextEncoder, world) -> dict[int, dict]:
    x, _, subjects = world
    train_ids, train_y, test_ids, test_y = subjects[-1]  # the held-out subject
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rows = in_context_curve(encoder, x, train_ids, train_y, test_ids, test_y, ks=(10, 20, 25, 50), seeds=3,
                                progress=False)  # fmt: skip
    return {row["k"]: row for row in rows}


@pytest.fixture(scope="module")
def trained_rows(world, trained):
    return _curve(trained[0], world)


def test_meta_trained_beats_ridge_on_the_same_k_images(trained_rows) -> None:
    rows = trained_rows
    for k in (10, 20):
        row = rows[k]
        print(
            f"k={k}: BraInCoRL r={row['braincorl_r']:.3f} (EV {row['braincorl_ev']:.3f}), "
            f"ridge r={row['ridge_r']:.3f} (EV {row['ridge_ev']:.3f}), ridge on all r={row['ridge_full_r']:.3f}"
        )
        assert row["braincorl_status"] == "trained" and row["n_train"] == 300
        assert row["braincorl_r"] >= row["ridge_r"] + 0.1
        assert row["braincorl_ev"] > row["ridge_ev"]
        assert row["braincorl_r"] < row["ridge_full_r"]  # 300 images still beat 20


def test_meta_trained_moment_path_beats_ridge_in_ev_at_25_and_50(trained, trained_rows) -> None:
    """The moment path (A m, with A learned towards the planted prior) keeps a clear EV lead where ridge catches up.

    This world's noise ceiling is ~78 %, so ridge on 50 images is already within ~0.2 EV of its 300-image
    ceiling and the prior's gain there is smaller than at k = 25 (measured: +0.22 EV at k = 25, +0.05 at 50).
    """
    rows = trained_rows
    assert trained[0].model_.config.moment_path
    for k, margin in ((25, 0.1), (50, 0.03)):
        row = rows[k]
        print(f"k={k}: BraInCoRL EV {row['braincorl_ev']:.4f}, ridge EV {row['ridge_ev']:.4f}")
        assert row["braincorl_ev"] >= row["ridge_ev"] + margin


def test_untrained_model_does_not_beat_ridge(world) -> None:
    """A random transformer read-out (no moment path) is no encoder at all."""
    config = BraInCoRLConfig(embedding_dim=D, dim=32, depth=2, heads=4, n_registers=2, mlp_ratio=2.0, head_hidden=64,
                             moment_path=False)  # fmt: skip
    rows = _curve(InContextEncoder(config, device="cpu", progress=False), world)
    for k in (10, 20):
        print(f"untrained k={k}: r={rows[k]['braincorl_r']:.3f} vs ridge {rows[k]['ridge_r']:.3f}")
        assert rows[k]["braincorl_status"] == "UNTRAINED"
        assert rows[k]["braincorl_r"] < rows[k]["ridge_r"]


def test_learned_weights_live_in_the_shared_subspace(world, trained) -> None:
    """At k = 10 BraInCoRL's weights lie mostly in the planted axes' span; ridge's do not."""
    from neuroattn.encode.ridge_encoder import RidgeEncoder

    encoder, _ = trained
    x, axes, subjects = world
    train_ids, train_y = subjects[-1][:2]
    pick = np.random.default_rng(0).choice(len(train_ids), size=10, replace=False)
    xs, ys = x[train_ids[pick]], train_y[pick]

    def in_span(w: np.ndarray) -> float:
        return float(((axes.T @ w) ** 2).sum() / (w**2).sum())

    ours, ridge = in_span(encoder.fit(xs, ys).weights_), in_span(RidgeEncoder().fit(xs, ys).coef_)
    print(f"energy in the shared span at k=10: BraInCoRL {ours:.3f}, ridge {ridge:.3f}, chance {RANK / D:.3f}")
    assert ours > 0.8 and ours > ridge + 0.3


def test_fit_predict_shapes_and_missing_pairs(world, trained) -> None:
    encoder, _ = trained
    x, _, subjects = world
    ids, y = subjects[-1][:2]
    xs, ys = x[ids[:12]], y[:12, :5].copy()
    ys[[2, 7], 1] = np.nan  # two pairs missing for voxel 1
    encoder.fit(xs, ys)
    assert encoder.weights_.shape == (D, 5) and encoder.bias_.shape == (5,)
    pred = encoder.predict(x[:4])
    np.testing.assert_allclose(pred, x[:4] @ encoder.weights_ + encoder.bias_, rtol=1e-6)
    np.testing.assert_allclose(encoder.selectivity(x[:4]), pred)
    keep = np.isfinite(ys[:, 1])
    alone = _clone(encoder).fit(xs[keep], ys[keep, 1:2])  # voxel 1 from its 10 valid pairs only
    np.testing.assert_allclose(alone.weights_[:, 0], encoder.weights_[:, 1], rtol=1e-4, atol=1e-5)
    att = encoder.support_attention([1, 3])
    assert att.shape == (2, 12)
    np.testing.assert_allclose(att.sum(axis=1), 1.0, rtol=1e-5)
    assert (att[0, [2, 7]] == 0).all() and (att[0, keep] > 0).all() and (att[1] > 0).all()
    with pytest.raises(InvalidInputError):
        encoder.predict(x[:3, :5])


def _clone(encoder: InContextEncoder) -> InContextEncoder:
    out = _encoder()
    out.model_, out.trained = encoder.model_, encoder.trained
    return out


def test_checkpoint_round_trip_gives_identical_predictions(world, trained) -> None:
    encoder, run = trained
    meta = json.loads((run / "final" / "config.json").read_text())
    assert meta["model_class"] == "BraInCoRL" and meta["trained"] and meta["config"]["embedding_dim"] == D
    x, _, subjects = world
    ids, y = subjects[-1][:2]
    loaded = InContextEncoder.load(run, progress=False)
    assert loaded.trained and loaded.status == "trained"
    a = encoder.fit(x[ids[:15]], y[:15]).predict(x[:20])
    b = loaded.fit(x[ids[:15]], y[:15]).predict(x[:20])
    np.testing.assert_array_equal(a, b)
    model = load_braincorl(run)
    for key, value in encoder.model_.state_dict().items():
        assert torch.equal(model.state_dict()[key], value.cpu())


def test_untrained_fit_warns() -> None:
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="UNTRAINED"):
        encoder = _encoder().fit(rng.standard_normal((8, D)), rng.standard_normal((8, 3)))
    assert encoder.status == "UNTRAINED" and encoder.weights_.shape == (D, 3)


def test_episodes_are_disjoint_log_uniform_and_skip_zero_weight_voxels() -> None:
    rng = np.random.default_rng(1)
    n, v = 120, 30
    x = torch.from_numpy(rng.standard_normal((n, D)).astype(np.float32))
    y = torch.arange(n * v, dtype=torch.float32).reshape(n, v)  # value encodes (image, voxel)
    weights = np.ones(v)
    weights[::3] = 0.0
    data = EpisodeDataset([(x, y)], k_min=4, k_max=64, n_query=20, voxels_per_episode=8, voxel_weights=[weights])
    torch.manual_seed(0)
    ks = []
    for i in range(200):
        item = data[i]
        sup = (item["support_responses"][0] // v).long()
        qry = (item["query_responses"][0] // v).long()
        voxels = (item["support_responses"][:, 0] % v).long()
        assert not set(sup.tolist()) & set(qry.tolist()) and len(qry) == 20
        assert (voxels % 3 != 0).all() and len(set(voxels.tolist())) == 8
        torch.testing.assert_close(item["support_embeddings"], x[sup])
        ks.append(len(sup))
    ks = np.array(ks)
    assert ks.min() >= 4 and ks.max() <= 64
    # log-uniform: about as many draws in [4, 16) as in [16, 64]
    assert 0.35 < np.mean(ks < 16) < 0.65
    batch = collate_episodes([data[0], data[1], data[2]])
    k = batch["support_mask"].sum(1)
    assert batch["support_embeddings"].shape[1] == int(k.max())
    for b in range(3):
        assert bool((batch["support_responses"][b][:, int(k[b]) :] == 0).all())
    with pytest.raises(InvalidInputError, match="k_min"):
        EpisodeDataset([(x[:20], y[:20])], k_min=4, k_max=8, n_query=20, voxels_per_episode=2)


def test_bucketed_episode_forward_equals_one_padded_pass() -> None:
    """Running episodes in support-size buckets (less padding) gives the single padded pass's predictions."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((150, D)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((150, 20)).astype(np.float32))
    data = EpisodeDataset([(x, y)], k_min=3, k_max=100, n_query=10, voxels_per_episode=4)
    torch.manual_seed(3)
    batch = collate_episodes([data[i] for i in range(6)])
    assert len(set(batch["support_mask"].sum(1).tolist())) > 1  # support sizes differ
    model = _encoder()._model(D).eval()
    with torch.no_grad():
        for param in model.parameters():  # wake the zero-initialised read-out up, so the transformer counts
            param.add_(0.1 * torch.randn_like(param))
        one_pred, one_std = episode_forward(model, batch, buckets=1)
        pred, std = episode_forward(model, batch, buckets=3)
    torch.testing.assert_close(pred, one_pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, one_std)


def _bayes_config(**overrides) -> BraInCoRLConfig:
    return BraInCoRLConfig(embedding_dim=D, dim=32, depth=2, heads=4, n_registers=2, mlp_ratio=2.0, head_hidden=64,
                           moment_path=False, prior_components=2, **overrides)  # fmt: skip


@pytest.fixture(scope="module")
def bayes_trained(world, tmp_path_factory):
    torch.set_num_threads(1)
    x, _, subjects = world
    run = tmp_path_factory.mktemp("braincorl-bayes") / "run"
    encoder = _encoder(_bayes_config(prior_adapt_iters=5), warmup_steps=5)
    return encoder.meta_train([(x, s[1], s[0]) for s in subjects[:-1]], run, steps=20)


def test_empirical_prior_spans_the_planted_axes(world) -> None:
    """The Bayes path's start (a mixture on the training subjects' standardised ridge weights) finds the shared axes."""
    from neuroattn.encode.braincorl_training import _subject_tensors, empirical_prior

    x, axes, subjects = world
    means, covs, weights, noise = empirical_prior(_subject_tensors([(x, s[1], s[0]) for s in subjects[:-1]]), 2)
    centre = weights @ means
    pooled = np.einsum("c,cde->de", weights, covs + np.einsum("cd,ce->cde", means, means)) - np.outer(centre, centre)
    top = np.linalg.eigh(pooled)[1][:, -RANK:]  # (D, RANK)
    cosines = np.linalg.svd(top.T @ axes, compute_uv=False)  # principal-angle cosines with the planted span
    print(f"principal cosines {np.round(cosines, 3)}, noise share {noise:.3f}")
    assert cosines.min() > 0.95
    assert 0.05 <= noise < 0.5  # noise sd 1 against signal sd ~ sqrt(RANK) per unit: mostly signal


def test_bayes_path_beats_ridge_at_small_k(world, bayes_trained) -> None:
    rows = _curve(bayes_trained, world)
    for k in (10, 20, 25):
        row = rows[k]
        print(f"Bayes path k={k}: EV {row['braincorl_ev']:.3f} (r {row['braincorl_r']:.3f}), ridge EV "
              f"{row['ridge_ev']:.3f} (r {row['ridge_r']:.3f})")  # fmt: skip
        assert row["braincorl_status"] == "trained"
        assert row["braincorl_ev"] >= row["ridge_ev"] + 0.1
        assert row["braincorl_r"] >= row["ridge_r"] + 0.05


def test_fit_adapts_a_copy_of_the_prior_to_the_subject(world, bayes_trained) -> None:
    """EM over the subject's voxels climbs their evidence and leaves the stored model as it was."""
    x, _, subjects = world
    train_ids, train_y = subjects[-1][0], subjects[-1][1]
    stored = {k: v.clone() for k, v in bayes_trained.model_.state_dict().items()}
    bayes_trained.fit(x[train_ids[:15]], train_y[:15])
    history = bayes_trained.prior_evidence_
    assert len(history) == 6 and all(b >= a - 1e-9 for a, b in itertools.pairwise(history))
    for key, value in bayes_trained.model_.state_dict().items():
        assert torch.equal(value, stored[key]), key
    adapted = bayes_trained.fitted_model_
    assert adapted is not bayes_trained.model_
    assert not torch.equal(adapted.prior.mean, bayes_trained.model_.prior.mean)
    expected = adapted(torch.from_numpy(x[train_ids[:15]]).expand(2, 15, D),
                       torch.from_numpy(np.ascontiguousarray(train_y[:15, :2].T)).float())[0]
    np.testing.assert_allclose(bayes_trained.weights_[:, :2].T, expected.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_fit_with_a_layout_pools_the_full_support_fit(world, bayes_trained) -> None:
    """With a layout, fit returns the CV-chosen pooling of the very encoders an unpooled fit gives, and keeps the
    full support set's adapted model for attention (not a fold's)."""
    from neuroattn.encode.spatial_pooling import SpatialPooling, VoxelLayout, pool_weights

    x, _, subjects = world
    train_ids, train_y = subjects[-1][0], subjects[-1][1]
    support_x, support_y = x[train_ids[:40]], train_y[:40]
    n_vox = train_y.shape[1]
    layout = VoxelLayout.from_affine(np.argwhere(np.ones((10, 10, 2), dtype=bool))[:n_vox], np.eye(4))
    plain = _clone(bayes_trained).fit(support_x, support_y)
    pooled = _clone(bayes_trained)
    pooled.pooling = SpatialPooling(sigmas_mm=(0.0, 1.0, 2.0), mixes=(0.5, 1.0), folds=4)
    pooled.fit(support_x, support_y, layout=layout)
    choice = pooled.pooling_
    assert len(choice["candidates"]) == 5 and {"sigma_mm", "mix"} <= set(choice)
    best = min(choice["candidates"], key=lambda row: row["cv_error"])
    assert (best["sigma_mm"], best["mix"]) == (choice["sigma_mm"], choice["mix"])
    expected_w, expected_b = pool_weights(plain.weights_, plain.bias_, support_x, support_y, layout,
                                          choice["sigma_mm"], choice["mix"])  # fmt: skip
    np.testing.assert_allclose(pooled.weights_, expected_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled.bias_, expected_b, rtol=1e-4, atol=1e-5)
    assert pooled.prior_evidence_ == pytest.approx(plain.prior_evidence_)
    assert pooled.support_embeddings_.shape == (40, D)
    np.testing.assert_allclose(pooled.support_attention([0, 1]), plain.support_attention([0, 1]), rtol=1e-5)
    with pytest.raises(InvalidInputError, match="layout"):
        pooled.fit(support_x, support_y[:, :10], layout=layout)
