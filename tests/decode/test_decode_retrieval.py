"""FAISS indexes: exact search equals numpy argsort, approximate indexes keep recall on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from neuroattn.decode.base import normalize_rows
from neuroattn.decode.retrieval import EmbeddingIndex, brain_to_image, image_to_brain, recall_at_k
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
