"""FAISS indexes: exact search equals numpy argsort, approximate indexes keep recall on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from neuroattn.decode.base import normalize_rows
from neuroattn.decode.retrieval import (
    EmbeddingIndex,
    brain_to_image,
    image_to_brain,
    principal_projection,
    recall_at_k,
)
from neuroattn.errors import ConfigError, InvalidInputError


def _clustered(n: int, dim: int, n_clusters: int, rng: np.random.Generator, centres=None):
    if centres is None:
        centres = normalize_rows(rng.standard_normal((n_clusters, dim)))
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return normalize_rows(x), centres


def test_exact_index_equals_numpy_argsort():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    scores, ids = EmbeddingIndex.build(pool, "exact").search(queries, 10)
    sims = normalize_rows(queries).astype(np.float64) @ normalize_rows(pool).astype(np.float64).T  # (40, 500)
    expected = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize(("kind", "kw"), [("ivf", {"nlist": 32, "nprobe": 8}), ("hnsw", {"m": 16, "ef_search": 64})])
def test_approximate_index_recall_on_clustered_data(kind, kw):
    rng = np.random.default_rng(1)
    pool, centres = _clustered(4000, 64, 40, rng)
    queries, _ = _clustered(200, 64, 40, rng, centres)
    _, exact = EmbeddingIndex.build(pool, "exact").search(queries, 10)
    _, approx = EmbeddingIndex.build(pool, kind, **kw).search(queries, 10)
    assert recall_at_k(approx, exact) >= 0.95
    rand = rng.integers(0, len(pool), size=exact.shape)
    assert recall_at_k(rand, exact) < 0.05  # the measure can fail


def _subspace(n: int, dim: int, rank: int, rng: np.random.Generator, basis=None):
    """Unit rows whose energy lies in a random ``rank``-dim subspace, plus 5% isotropic noise."""
    if basis is None:
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # (rank, dim)
    x = rng.standard_normal((n, rank)) @ basis + 0.05 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return normalize_rows(x).astype(np.float32), basis


def test_principal_projection_spans_the_planted_subspace():
    rng = np.random.default_rng(5)
    x, basis = _subspace(3000, 48, 6, rng)
    axes = principal_projection(x, 6)  # (6, 48)
    np.testing.assert_allclose(axes @ axes.T, np.eye(6), atol=1e-5)  # orthonormal rows
    overlap = np.linalg.svd(axes.astype(np.float64) @ basis.T, compute_uv=False)  # cosines of principal angles
    assert overlap.min() > 0.99
    with pytest.raises(ConfigError):
        principal_projection(x, 49)


# IVF visits every cell here, so recall measures the projection and re-ranking alone
@pytest.mark.parametrize(("kind", "kw"), [("hnsw", {"m": 16, "ef_search": 32}), ("ivf", {"nlist": 16, "nprobe": 16})])
def test_projected_index_reranks_to_exact_scores(kind, kw, tmp_path):
    rng = np.random.default_rng(6)
    pool, basis = _subspace(4000, 96, 12, rng)
    queries, _ = _subspace(100, 96, 12, rng, basis)
    exact_scores, exact = EmbeddingIndex.build(pool, "exact").search(queries, 10)
    index = EmbeddingIndex.build(pool, kind, reduce_dim=12, refine_factor=4, **kw)
    scores, ids = index.search(queries, 10)
    recall = recall_at_k(ids, exact)
    assert recall >= 0.95
    # returned scores are exact inner products of the full rows, not of the projections
    full = np.einsum("qd,qkd->qk", queries.astype(np.float64), pool[ids].astype(np.float64))
    np.testing.assert_allclose(scores, full, atol=1e-5)
    hits = ids == exact
    np.testing.assert_allclose(scores[hits], exact_scores[hits], atol=1e-5)
    # a projection that drops part of the subspace loses neighbours; a deeper re-ranking wins most back
    _, rough = EmbeddingIndex.build(pool, kind, reduce_dim=9, refine_factor=1, **kw).search(queries, 10)
    _, reranked = EmbeddingIndex.build(pool, kind, reduce_dim=9, refine_factor=8, **kw).search(queries, 10)
    assert recall_at_k(rough, exact) < 0.5 < recall_at_k(rough, exact) + 0.3 < recall_at_k(reranked, exact)
    index.save(tmp_path / "projected")
    loaded = EmbeddingIndex.load(tmp_path / "projected")
    assert loaded.config.reduce_dim == 12
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], ids)
    loaded.set_search_params(ef_search=8, nprobe=1)
    assert loaded.config.ef_search == 8 if kind == "hnsw" else loaded.core.nprobe == 1


def test_brain_image_directions_and_save_load(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.standard_normal((50, 16)).astype(np.float32)
    brain = images + 0.1 * rng.standard_normal(images.shape).astype(np.float32)
    _, ids = brain_to_image(brain, images, k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(50))
    _, ids_t = image_to_brain(images, brain, k=1)
    np.testing.assert_array_equal(ids_t[:, 0], np.arange(50))
    index = EmbeddingIndex.build(images, "ivf", nlist=4, nprobe=4)
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert loaded.config.kind == "ivf" and loaded.index.nprobe == 1  # nlist capped at 50 // 39 = 1
    np.testing.assert_array_equal(loaded.search(brain, 5)[1], index.search(brain, 5)[1])
    scores, ids = loaded.search(brain[:2], 60)  # more than indexed: padded
    assert ids.shape == (2, 60) and (ids[:, 50:] == -1).all() and np.isneginf(scores[:, 50:]).all()


def test_recall_and_errors():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]])) == pytest.approx(2 / 3)
    with pytest.raises(ConfigError):
        EmbeddingIndex.build(np.ones((3, 4)), "lsh")
    with pytest.raises(InvalidInputError):
        EmbeddingIndex.build(np.ones((3, 4)), "exact").search(np.ones((2, 5)), 1)
    with pytest.raises(InvalidInputError):
        EmbeddingIndex.load("/nonexistent-index-folder")
    with pytest.raises(ConfigError, match="reduce_dim"):
        EmbeddingIndex.build(np.ones((3, 4)), "exact", reduce_dim=2)
