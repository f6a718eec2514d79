"""FAISS retrieval on CPU: exact vs IVF vs HNSW top-10 over clustered unit embeddings -- ms/query, recall, memory.

Data: a mixture of Gaussians in a random low-dimensional subspace plus isotropic noise, L2-normalised (see
:func:`clustered_unit_embeddings`), so approximate indexes meet the anisotropic structure real CLIP embeddings
have. Queries are fresh draws from the same mixture. Recall@10 is measured against the exact (IndexFlatIP)
top-10 of the same queries.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from neuroattn.decode.retrieval import EmbeddingIndex, recall_at_k
from neuroattn.io.atomic import atomic_write_text

DEFAULT_OUT = Path("benchmarks/results/faiss-retrieval-cpu.json")


def clustered_unit_embeddings(
    n: int, dim: int, n_clusters: int, spread: float, rng: np.random.Generator, centres: np.ndarray | None = None,
    *, intrinsic_dim: int = 64, ambient_noise: float = 0.1, basis: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` unit vectors (n, dim) float32 from a Gaussian mixture on a low-dimensional subspace, L2-normalised.

    CLIP embeddings of natural images are strongly anisotropic (most variance in a few dozen directions), so the
    mixture lives in a random ``intrinsic_dim``-dimensional subspace (orthonormal ``basis`` (r, dim)), each point its
    centre plus noise of norm ``spread`` there, plus isotropic noise of norm ``ambient_noise`` in all ``dim``
    directions. Returns the points, the centres (K, r) and the basis, so queries can be drawn from the same mixture.
    """
    r = min(intrinsic_dim, dim)
    if centres is None:
        centres = rng.standard_normal((n_clusters, r), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if basis is None:
        basis = np.linalg.qr(rng.standard_normal((dim, r)))[0].T.astype(np.float32)  # (r, dim) orthonormal rows
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 65536  # generate in float32 chunks: 1M x 768 in float64 would need 6 GB
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        labels = rng.integers(0, len(centres), size=stop - start)
        latent = centres[labels] + rng.standard_normal((stop - start, r), dtype=np.float32) * np.float32(
            spread / np.sqrt(r))
        block = latent @ basis + rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(
            ambient_noise / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out, centres, basis


def _rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _index_mb(index: EmbeddingIndex) -> float:
    """Bytes the index structure holds (vectors, ids, graph links), in MB; RSS deltas miss reused memory."""
    n, d, cfg = index.size, index.dim, index.config
    if cfg.kind == "exact":
        return n * d * 4 / 1e6
    inner = cfg.reduce_dim or d
    full = n * d * 4 + cfg.reduce_dim * d * 4 if cfg.reduce_dim else 0  # re-ranking copy + projection
    if cfg.kind == "ivf":
        return (full + n * (inner * 4 + 8) + cfg.nlist * inner * 4) / 1e6  # codes + int64 ids + centroids
    hnsw = index.core.hnsw
    return (full + n * inner * 4 + hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4
            + hnsw.offsets.size() * 8) / 1e6


def _time_search(index: EmbeddingIndex, queries: np.ndarray, k: int, n_single: int) -> tuple[float, float, np.ndarray]:
    """(batch ms/query, single-query ms/query, ids (Q, k)) for ``queries`` (Q, dim)."""
    start = time.perf_counter()
    _, ids = index.search(queries, k, normalize=False)
    batch_ms = (time.perf_counter() - start) * 1000 / len(queries)
    times = []
    for q in queries[:n_single]:
        t0 = time.perf_counter()
        index.search(q[None, :], k, normalize=False)
        times.append(time.perf_counter() - t0)
    single_ms = float(np.median(times) * 1000)
    return batch_ms, single_ms, ids


def run(args: argparse.Namespace, out: Path | None = None) -> dict:
    """Run the benchmark; with ``out``, rewrite the JSON after every row (``complete`` false until the end)."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    base, centres, basis = clustered_unit_embeddings(args.n, args.dim, args.clusters, args.spread, rng,
                                                     intrinsic_dim=args.intrinsic_dim, ambient_noise=args.ambient_noise)
    queries, _, _ = clustered_unit_embeddings(args.queries, args.dim, args.clusters, args.spread, rng, centres,
                                              intrinsic_dim=args.intrinsic_dim, ambient_noise=args.ambient_noise,
                                              basis=basis)
    print(f"data: {args.n} x {args.dim} in {time.perf_counter() - t0:.1f} s", flush=True)

    rows: list[dict] = []

    def result(complete: bool) -> dict:
        for r in rows:
            r["meets_target"] = bool(
                r["single_ms_per_query"] <= args.target_ms and r["recall_at_10"] >= args.target_recall
            )
            for key in ("build_s", "memory_mb", "batch_ms_per_query", "single_ms_per_query", "recall_at_10"):
                r[key] = round(float(r[key]), 4)
        return {
            "benchmark": "faiss_retrieval_cpu",
            "complete": complete,
            "data": {
                "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
                "distribution": f"mixture of {args.clusters} Gaussians in a random {args.intrinsic_dim}-d subspace "
                                f"(noise norm {args.spread}) plus isotropic noise of norm {args.ambient_noise}, "
                                "L2-normalised; queries drawn from the same mixture",
                "seed": args.seed,
            },
            "machine": {"faiss": faiss.__version__, "omp_threads": args.threads, "cpu": platform.processor()
                        or platform.machine(), "note": "shared machine; other processes were running"},
            "target": {"single_ms_per_query": args.target_ms, "recall_at_10": args.target_recall},
            "rows": rows,
        }

    def log(row: dict) -> None:
        rows.append(row)
        print(row, flush=True)
        if out is not None:
            atomic_write_text(out, json.dumps(result(False), indent=2) + "\n")

    def build(kind: str, **kw) -> tuple[EmbeddingIndex, float, float]:
        rss0 = _rss_mb()
        t = time.perf_counter()
        index = EmbeddingIndex.build(base, kind, normalize=False, seed=args.seed, **kw)
        build_s = time.perf_counter() - t
        print(f"built {kind} in {build_s:.1f} s", flush=True)
        return index, build_s, max(_rss_mb() - rss0, _index_mb(index))

    exact, build_s, mem = build("exact")
    batch_ms, single_ms, exact_ids = _time_search(exact, queries, args.k, args.single)
    log(dict(index="exact (IndexFlatIP)", param="-", build_s=build_s, memory_mb=mem,
             batch_ms_per_query=batch_ms, single_ms_per_query=single_ms, recall_at_10=1.0))
    del exact

    reduced = f" on {args.reduce_dim} principal axes, re-rank x{args.refine_factor}"
    for kind in args.kinds:
        base_kind = kind.removesuffix("-reduced")
        extra = {"reduce_dim": args.reduce_dim, "refine_factor": args.refine_factor} if kind != base_kind else {}
        suffix = reduced if extra else ""
        if base_kind == "ivf":
            nlist = min(args.nlist, args.n // 39)
            ivf, build_s, mem = build("ivf", nlist=nlist, train_size=args.train_size, **extra)
            for nprobe in args.nprobe:
                ivf.set_search_params(nprobe=nprobe)
                batch_ms, single_ms, ids = _time_search(ivf, queries, args.k, args.single)
                log(dict(index=f"IVFFlat nlist={nlist}{suffix}", param=f"nprobe={nprobe}", build_s=build_s,
                         memory_mb=mem, batch_ms_per_query=batch_ms, single_ms_per_query=single_ms,
                         recall_at_10=recall_at_k(ids, exact_ids)))
            del ivf
        else:
            hnsw, build_s, mem = build("hnsw", m=args.m, ef_construction=args.ef_construction,
                                       train_size=args.train_size, **extra)
            for ef in args.ef_search:
                hnsw.set_search_params(ef_search=ef)
                batch_ms, single_ms, ids = _time_search(hnsw, queries, args.k, args.single)
                log(dict(index=f"HNSWFlat M={args.m} efC={args.ef_construction}{suffix}", param=f"efSearch={ef}",
                         build_s=build_s, memory_mb=mem, batch_ms_per_query=batch_ms,
                         single_ms_per_query=single_ms, recall_at_10=recall_at_k(ids, exact_ids)))
            del hnsw

    return result(True)


def _print_table(result: dict) -> None:
    header = (f"{'index':<58} {'param':<12} {'build s':>9} {'mem MB':>9} {'batch ms/q':>11} {'single ms/q':>12} "
              f"{'R@10':>7} {'target':>7}")
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        print(f"{r['index']:<58} {r['param']:<12} {r['build_s']:>9.1f} {r['memory_mb']:>9.0f} "
              f"{r['batch_ms_per_query']:>11.3f} {r['single_ms_per_query']:>12.3f} {r['recall_at_10']:>7.3f} "
              f"{'yes' if r['meets_target'] else 'no':>7}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file, or a folder to write it into")
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed embeddings")
    parser.add_argument("--dim", type=int, default=768, help="embedding size (CLIP ViT-L/14: 768)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=10000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the unit centre")
    parser.add_argument("--intrinsic-dim", type=int, default=64, help="dimension of the subspace holding the mixture")
    parser.add_argument("--ambient-noise", type=float, default=0.1, help="isotropic noise norm in all dimensions")
    parser.add_argument("--kinds", default="ivf,hnsw",
                        help="comma list of ivf, hnsw, ivf-reduced, hnsw-reduced (reduced: searched on the top "
                             "--reduce-dim principal axes, candidates re-ranked exactly on the full vectors)")
    parser.add_argument("--reduce-dim", type=int, default=128, help="principal axes the *-reduced kinds search on")
    parser.add_argument("--refine-factor", type=int, default=4, help="*-reduced: k x this many candidates re-ranked")
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--train-size", type=int, default=131072, help="IVF k-means sample")
    parser.add_argument("--nprobe", type=_ints, default=_ints("1,4,16,64,128,256"))
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=_ints, default=_ints("8,16,32,64,128"))
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
    parser.add_argument("--target-ms", type=float, default=20.0)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(args.kinds) - {"ivf", "hnsw", "ivf-reduced", "hnsw-reduced"})
    if unknown:
        parser.error(f"unknown --kinds {unknown}")
    out = args.out if args.out.suffix == ".json" else args.out / DEFAULT_OUT.name
    result = run(args, out)
    _print_table(result)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
