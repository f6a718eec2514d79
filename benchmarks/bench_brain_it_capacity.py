"""What Brain-IT's cluster tokens can carry: ridge retrieval from uniformly pooled cluster features vs cluster count.

At initialisation each cluster token pools its voxels' ``activation x embedding`` (embeddings = whitened PCA of
the voxel encoding profiles, clusters = the shared Gaussian mixture). With uniform attention that pool is the
mean of ``a_v e_v`` over the cluster's voxels: ``n_clusters x embed_dim`` numbers per trial. A ridge decoder (the
project's baseline, CV penalty) from those numbers to the CLIP tokens bounds what a linear read-out of the cluster
tokens gives, beside ridge on every voxel. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.decode.clip_features import retrieval_targets
from neuroattn.decode.data_bundle import open_decoding_data
from neuroattn.decode.metrics import top1_among
from neuroattn.decode.ridge import RidgeDecoder
from neuroattn.decode.voxel_clusters import encoding_profiles, fit_voxel_clusters
from neuroattn.io.atomic import atomic_write_text


def pooled_cluster_features(betas: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, n_clusters: int
                            ) -> np.ndarray:
    """Per cluster, the mean over its voxels of ``activation x embedding``: ``(N, V)`` -> ``(N, K * E)``."""
    counts = np.maximum(np.bincount(labels, minlength=n_clusters), 1)  # (K,)
    out = np.zeros((betas.shape[0], n_clusters, embeddings.shape[1]), dtype=np.float64)
    for k in range(n_clusters):
        members = labels == k
        out[:, k] = betas[:, members] @ embeddings[members] / counts[k]
    return out.reshape(len(betas), -1).astype(np.float32)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = open_decoding_data(args.data)
    names = data.subject_names[: args.subjects]
    tokens = data.features.tokens
    trials = {n: data.subject(n).trials(test=False) for n in names}
    profiles = [encoding_profiles(b, tokens[ids][:, 0]) for b, ids in trials.values()]
    betas, ids = trials[names[0]]
    test_betas, test_ids = data.subject(names[0]).averaged(test=True)
    images = retrieval_targets(data.features.subset(test_ids))
    rows = []

    def score(label: str, k: int | None, e: int | None, train_x: np.ndarray, test_x: np.ndarray) -> None:
        start = time.perf_counter()
        decoder = RidgeDecoder(seed=0).fit(train_x, tokens[ids], groups=ids)
        top1 = top1_among(decoder.brain_embeddings(test_x), images)
        rows.append({"features": label, "n_clusters": k, "embed_dim": e, "n_features": int(train_x.shape[1]),
                     "top1_brain_to_image": round(top1["brain_to_image"], 4),
                     "top1_image_to_brain": round(top1["image_to_brain"], 4),
                     "fit_s": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)

    for k, e in args.sizes:
        clusters, labels = fit_voxel_clusters(profiles, k, seed=0, n_components=e)
        emb = clusters.embed(profiles[0])
        score("pooled cluster tokens", k, e, pooled_cluster_features(betas, emb, labels[0], k),
              pooled_cluster_features(test_betas, emb, labels[0], k))
    if args.voxels:
        score("every voxel (ridge baseline)", None, None, betas, test_betas)
    return {"benchmark": "brain_it_capacity", "data": str(args.data), "subject": names[0],
            "clusters_fitted_on": names, "test_images": len(test_ids), "pool_size": min(300, len(test_ids)),
            "clip": "UNTRAINED tiny random CLIP" if not data.clip_trained else data.clip_info.get("source"),
            "rows": rows}


def _sizes(text: str) -> list[tuple[int, int]]:
    return [(int(k), int(e)) for k, e in (item.split("x") for item in text.split(",") if item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench_results/decoding/data"))
    parser.add_argument("--sizes", type=_sizes, default=_sizes("8x8,16x16,32x32,128x32"),
                        help="comma list of n_clusters x embed_dim")
    parser.add_argument("--subjects", type=int, default=2, help="subjects the shared clusters are fitted on")
    parser.add_argument("--voxels", action=argparse.BooleanOptionalAction, default=True,
                        help="also fit ridge on every voxel (minutes)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/brain-it-capacity.json"))
    args = parser.parse_args()
    result = run(args)
    print(f"{'features':<30} {'K x E':>9} {'top-1 b->i':>11} {'top-1 i->b':>11}")
    for r in result["rows"]:
        size = f"{r['n_clusters']}x{r['embed_dim']}" if r["n_clusters"] else str(r["n_features"])
        print(f"{r['features']:<30} {size:>9} {r['top1_brain_to_image']:>11.3f} {r['top1_image_to_brain']:>11.3f}")
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
