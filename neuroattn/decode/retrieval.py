"""FAISS inner-product indexes over L2-normalised embeddings: brain -> image and image -> brain retrieval."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.decode.base import normalize_rows
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_path, atomic_write_text

INDEX_KINDS = ("exact", "ivf", "hnsw")
INDEX_NAME = "index.faiss"
META_NAME = "index.json"


@dataclass
class IndexConfig:
    """How an :class:`EmbeddingIndex` is built and searched."""

    kind: str = "exact"  # "exact" (IndexFlatIP), "ivf" (IndexIVFFlat) or "hnsw" (IndexHNSWFlat)
    nlist: int = 1024  # IVF cells; capped at n // 39 so k-means has enough points per centroid
    nprobe: int = 16  # IVF cells visited per query
    m: int = 32  # HNSW neighbours per node
    ef_construction: int = 80  # HNSW candidate list while building
    ef_search: int = 64  # HNSW candidate list while searching
    train_size: int = 131072  # IVF k-means / projection sample (vectors), raised to 39 per centroid when smaller
    seed: int = 0
    reduce_dim: int = 0  # > 0: the approximate index searches the top principal axes only, then re-ranks exactly
    refine_factor: int = 4  # with reduce_dim: k * refine_factor candidates are re-ranked on the full vectors

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"'kind' must be one of {list(INDEX_KINDS)}. {self.kind!r} was provided.")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search", "train_size", "refine_factor"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"'{name}' must be >= 1, got {getattr(self, name)}")
        if int(self.reduce_dim) < 0:
            raise ConfigError(f"'reduce_dim' must be >= 0 (0 = full vectors), got {self.reduce_dim}")
        if self.reduce_dim and self.kind == "exact":
            raise ConfigError("'reduce_dim' applies to the approximate kinds (ivf, hnsw), not to exact search")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared dependency
        raise ConfigError("retrieval needs faiss: pip install faiss-cpu") from exc
    return faiss


def _training_sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` rows of ``x`` drawn without replacement (all rows when there are fewer), in row order."""
    if len(x) <= size:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))]


def principal_projection(sample: np.ndarray, dim: int) -> np.ndarray:
    """The top ``dim`` uncentred principal axes of ``sample`` (N, E) as rows ``(dim, E)`` float32.

    Uncentred, so the projection ``P`` keeps inner products: ``<Px, Pq> = <x, q> - <(I - P)x, (I - P)q>``,
    and the dropped part is small when the embeddings' energy lies in few directions (CLIP's does).
    """
    x = np.asarray(sample, dtype=np.float64)
    if not 0 < dim <= x.shape[1]:
        raise ConfigError(f"'reduce_dim' must be in [1, {x.shape[1]}] (the embedding size), got {dim}")
    second_moment = x.T @ x / max(len(x), 1)  # (E, E)
    _, vectors = np.linalg.eigh(second_moment)  # ascending eigenvalues
    return np.ascontiguousarray(vectors[:, ::-1][:, :dim].T, dtype=np.float32)  # (dim, E)


def _projected(faiss: Any, inner: Any, axes: np.ndarray, dim: int, refine_factor: int) -> Any:
    """``inner`` searching ``axes``-projected vectors, its candidates re-ranked by exact inner product."""
    reduced = axes.shape[0]
    transform = faiss.LinearTransform(dim, reduced, True)
    faiss.copy_array_to_vector(axes.ravel(), transform.A)
    faiss.copy_array_to_vector(np.zeros(reduced, dtype=np.float32), transform.b)
    transform.is_trained = True
    index = faiss.IndexRefine(faiss.IndexPreTransform(transform, inner), faiss.IndexFlatIP(dim))
    index.k_factor = float(refine_factor)
    return index


def _core(index: Any) -> Any:
    """The IVF or HNSW index inside a refine / pre-transform wrapper (the index itself when unwrapped)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if hasattr(index, "base_index"):  # IndexRefine
        index = faiss.downcast_index(index.base_index)
    if hasattr(index, "chain"):  # IndexPreTransform
        index = faiss.downcast_index(index.index)
    return index


def _as_embeddings(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be (N, E), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"{what} have dimension {arr.shape[1]}, the index holds {dim}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


class EmbeddingIndex:
    """An inner-product FAISS index over L2-normalised rows; inner product is then cosine similarity.

    Build with :meth:`build`; ids returned by :meth:`search` are row numbers of the built embeddings.
    """

    def __init__(self, index: Any, config: IndexConfig, dim: int, size: int) -> None:
        self.index = index
        self.config = config
        self.dim = dim
        self.size = size

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        kind: str = "exact",
        *,
        nlist: int = 1024,
        nprobe: int = 16,
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        train_size: int = 131072,
        seed: int = 0,
        reduce_dim: int = 0,
        refine_factor: int = 4,
        normalize: bool = True,
    ) -> EmbeddingIndex:
        """Index ``embeddings`` (N, E) float32; rows are L2-normalised first unless ``normalize`` is False.

        With ``reduce_dim`` the IVF/HNSW structure holds each row projected on the top ``reduce_dim`` principal
        axes (cheaper distances, a faster build) and its ``k * refine_factor`` best candidates are re-ranked by
        exact inner product on the full rows, so the scores returned are exact.
        """
        config = IndexConfig(kind, nlist, nprobe, m, ef_construction, ef_search, train_size, seed, reduce_dim,
                             refine_factor)
        config.validate()
        x = _as_embeddings(embeddings, "embeddings")
        if normalize:
            x = normalize_rows(x)
        n, dim = x.shape
        if n == 0:
            raise InvalidInputError("cannot index zero embeddings")
        faiss = _faiss()
        inner_dim = reduce_dim or dim
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(inner_dim, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            nlist = max(1, min(nlist, n // 39))  # faiss wants >= 39 training points per centroid
            config.nlist = nlist
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(inner_dim), inner_dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.nprobe = min(nprobe, nlist)
        if reduce_dim:
            axes = principal_projection(_training_sample(x, train_size, seed), reduce_dim)  # (r, E)
            index = _projected(faiss, index, axes, dim, refine_factor)
        if kind == "ivf":
            index.train(_training_sample(x, max(train_size, 39 * config.nlist), seed))  # >= 39 points per centroid
        index.add(x)
        return cls(index, config, dim, n)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the speed/recall trade-off of an IVF (``nprobe``) or HNSW (``ef_search``) index."""
        if nprobe is not None and self.config.kind == "ivf":
            self.config.nprobe = int(nprobe)
            _core(self.index).nprobe = min(int(nprobe), self.config.nlist)
        if ef_search is not None and self.config.kind == "hnsw":
            self.config.ef_search = int(ef_search)
            _core(self.index).hnsw.efSearch = int(ef_search)

    @property
    def core(self) -> Any:
        """The underlying faiss IVF/HNSW/flat index, outside any projection and re-ranking wrapper."""
        return _core(self.index)

    def search(self, queries: np.ndarray, k: int = 10, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query (Q, E).

        Returns
        -------
        scores : float32 (Q, k)
            Inner products (cosine similarities), best first.
        ids : int64 (Q, k)
            Row numbers of the indexed embeddings; -1 where fewer than ``k`` were found.
        """
        q = _as_embeddings(queries, "queries", self.dim)
        if normalize:
            q = normalize_rows(q)
        k = int(k)
        if k < 1:
            raise ConfigError(f"'k' must be >= 1, got {k}")
        scores, ids = self.index.search(q, min(k, self.size))
        if k > self.size:  # pad so callers always get (Q, k)
            pad = k - self.size
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), ids.astype(np.int64)

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss`` and ``index.json`` (build settings) into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        with atomic_path(directory / INDEX_NAME) as tmp:
            faiss.write_index(self.index, str(tmp))
        meta = {"config": asdict(self.config), "dim": self.dim, "size": self.size}
        atomic_write_text(directory / META_NAME, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingIndex:
        """Read an index written by :meth:`save`."""
        directory = Path(directory)
        for name in (INDEX_NAME, META_NAME):
            if not (directory / name).is_file():
                raise InvalidInputError(f"missing {name}", directory)
        meta = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
        config = IndexConfig(**meta["config"])
        index = _faiss().read_index(str(directory / INDEX_NAME))
        out = cls(index, config, int(meta["dim"]), int(meta["size"]))
        out.set_search_params(nprobe=config.nprobe, ef_search=config.ef_search)
        return out


def brain_to_image(
    brain_emb: np.ndarray, image_emb: np.ndarray, k: int = 5, kind: str = "exact", **index_kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Retrieve images for each brain embedding: pool = ``image_emb`` (N, E), queries = ``brain_emb`` (Q, E).

    Returns ``(scores (Q, k), image row ids (Q, k))``.
    """
    return EmbeddingIndex.build(image_emb, kind, **index_kw).search(brain_emb, k)


def image_to_brain(
    image_emb: np.ndarray, brain_emb: np.ndarray, k: int = 5, kind: str = "exact", **index_kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The transpose: for each image (Q, E) retrieve brain embeddings (N, E). Returns ``(scores, brain ids)``."""
    return EmbeddingIndex.build(brain_emb, kind, **index_kw).search(image_emb, k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k (Q, k) also returned by the approximate search (Q, k')."""
    approx_ids = np.asarray(approx_ids)
    exact_ids = np.asarray(exact_ids)
    if approx_ids.ndim != 2 or exact_ids.ndim != 2 or approx_ids.shape[0] != exact_ids.shape[0]:
        raise InvalidInputError(f"id arrays must be (Q, k) with equal Q, got {approx_ids.shape} and {exact_ids.shape}")
    k = exact_ids.shape[1]
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits) / k)
