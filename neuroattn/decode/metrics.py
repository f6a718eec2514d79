"""Decoding metrics as MindEye reports them: retrieval top-1 in pools, 2-way identification, PixCorr, SSIM, chance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neuroattn.errors import ConfigError, InvalidInputError


def _paired(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a.reshape(len(a), -1)  # (N, F): tokens or images flattened per item
    b = b.reshape(len(b), -1)
    if a.shape != b.shape:
        raise InvalidInputError(f"{what}: paired arrays differ in shape, {a.shape} vs {b.shape}")
    if len(a) < 2:
        raise InvalidInputError(f"{what}: needs at least 2 items, got {len(a)}")
    return a, b


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of (N, F) float64 scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    """Rows of (N, F) centred and scaled to unit norm, so that a @ b.T is the Pearson correlation."""
    return _unit(x - x.mean(axis=1, keepdims=True))


def _top1_rate(sim: np.ndarray) -> float:
    """Fraction of rows of a square similarity matrix whose diagonal entry beats every other entry in the row."""
    diag = np.diag(sim)[:, None]
    return float(np.mean((sim > diag).sum(axis=1) == 0))


def top1_among(
    brain_emb: np.ndarray, image_emb: np.ndarray, pool_size: int = 300, n_draws: int = 30, seed: int = 0
) -> dict[str, float]:
    """Top-1 retrieval in random pools of ``pool_size`` paired test items, both directions (MindEye's metric).

    Each draw picks ``pool_size`` items at random; brain embedding i must be most similar (cosine) to image i
    among the pool's images (brain -> image), and image i most similar to brain i among the pool's brain
    embeddings (image -> brain). Rates are averaged over draws.

    Parameters
    ----------
    brain_emb, image_emb : (N, E)
        Paired embeddings; row i of both belong to the same test image.

    Returns
    -------
    dict with ``brain_to_image``, ``image_to_brain``, ``chance`` (1 / pool size) and the ``pool_size`` used
    (``min(pool_size, N)``).
    """
    b, i = _paired(brain_emb, image_emb, "top1_among")
    b, i = _unit(b), _unit(i)
    n = len(b)
    size = min(int(pool_size), n)
    if size < 2 or n_draws < 1:
        raise ConfigError(f"'pool_size' must be >= 2 and 'n_draws' >= 1, got {pool_size} and {n_draws}")
    rng = np.random.default_rng(seed)
    fwd, bwd = [], []
    for _ in range(int(n_draws)):
        pick = rng.permutation(n)[:size]
        sim = b[pick] @ i[pick].T  # (pool, pool): brain rows, image columns
        fwd.append(_top1_rate(sim))
        bwd.append(_top1_rate(sim.T))
    return {
        "brain_to_image": float(np.mean(fwd)),
        "image_to_brain": float(np.mean(bwd)),
        "chance": 1.0 / size,
        "pool_size": size,
    }


def topk_in_pool(
    brain_emb: np.ndarray,
    image_emb: np.ndarray,
    ks: Sequence[int] = (1, 5),
    distractors: np.ndarray | None = None,
) -> dict[str, float]:
    """Brain -> image top-k accuracy among all test images plus optional distractor images.

    Parameters
    ----------
    brain_emb, image_emb : (N, E)
        Paired embeddings (row i of both is test image i).
    distractors : (M, E), optional
        Extra image embeddings that are never correct.

    Returns
    -------
    dict with ``top{k}`` and ``top{k}_chance`` (k / pool) per k, and ``pool`` = N + M.
    """
    b, i = _paired(brain_emb, image_emb, "topk_in_pool")
    b, pool = _unit(b), _unit(i)
    if distractors is not None:
        d = np.asarray(distractors, dtype=np.float64).reshape(len(distractors), -1)
        if d.shape[1] != pool.shape[1]:
            raise InvalidInputError(f"distractors have dimension {d.shape[1]}, embeddings {pool.shape[1]}")
        pool = np.concatenate([pool, _unit(d)])  # (N + M, E)
    ranks = np.empty(len(b), dtype=np.int64)
    for start in range(0, len(b), 1024):  # chunks keep the (chunk, pool) similarity block small
        sim = b[start : start + 1024] @ pool.T
        true = sim[np.arange(len(sim)), np.arange(start, start + len(sim))][:, None]
        ranks[start : start + len(sim)] = (sim > true).sum(axis=1)  # 0 = best
    out: dict[str, float] = {"pool": float(len(pool))}
    for k in ks:
        out[f"top{k}"] = float(np.mean(ranks < k))
        out[f"top{k}_chance"] = min(1.0, k / len(pool))
    return out


def two_way_identification(pred_feats: np.ndarray, true_feats: np.ndarray) -> float:
    """Standard 2-way identification: for each prediction, the fraction of other items whose true features
    correlate less with it than its own true features do; averaged over items. Chance is 0.5.

    Parameters
    ----------
    pred_feats, true_feats : (N, F) or (N, ...)
        Features predicted from the brain (or of reconstructions) and of the seen images; flattened per item.
    """
    p, t = _paired(pred_feats, true_feats, "two_way_identification")
    r = _zscore_rows(p) @ _zscore_rows(t).T  # (N, N) Pearson r[i, j] = corr(pred_i, true_j)
    n = len(r)
    wins = (r < np.diag(r)[:, None]).sum(axis=1)  # the diagonal never counts: r_ii < r_ii is False
    return float(np.mean(wins / (n - 1)))


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 3:
        arr = arr[None]  # (1, H, W, 3)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InvalidInputError(f"{what} must be images (N, H, W, 3), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def pixcorr(recon: np.ndarray, seen: np.ndarray) -> float:
    """Pearson correlation between each reconstruction and its seen image over all flattened pixels (H*W*3),
    averaged over images. ``recon`` and ``seen`` are (N, H, W, 3) uint8 (or floats in [0, 1])."""
    r = _as_images(recon, "reconstructions")
    s = _as_images(seen, "seen images")
    if r.shape != s.shape:
        raise InvalidInputError(f"reconstructions {r.shape} and seen images {s.shape} differ in shape")
    a = _zscore_rows(r.reshape(len(r), -1))  # (N, H*W*3)
    b = _zscore_rows(s.reshape(len(s), -1))
    return float(np.mean(np.sum(a * b, axis=1)))


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) floats in [0, 1] -> (N, H, W) luminance with skimage rgb2gray (Rec. 709 weights), as MindEye."""
    from skimage.color import rgb2gray

    return np.stack([rgb2gray(im) for im in images])


def ssim(recon: np.ndarray, seen: np.ndarray) -> float:
    """Mean structural similarity of grey-scale reconstructions and seen images, with MindEye's settings
    (Gaussian weights, sigma 1.5, population covariance, data range 1). Inputs (N, H, W, 3)."""
    from skimage.metrics import structural_similarity

    r = _as_images(recon, "reconstructions")
    s = _as_images(seen, "seen images")
    if r.shape != s.shape:
        raise InvalidInputError(f"reconstructions {r.shape} and seen images {s.shape} differ in shape")
    rg, sg = _grey(r), _grey(s)
    scores = [
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for a, b in zip(rg, sg, strict=True)
    ]
    return float(np.mean(scores))


def permutation_chance(
    metric: Callable[[np.ndarray, np.ndarray], float],
    pred: np.ndarray,
    true: np.ndarray,
    n_perm: int = 5,
    seed: int = 0,
) -> float:
    """Empirical chance of a paired metric: its mean over ``n_perm`` derangement-free shuffles of the pairing.

    Used for PixCorr and SSIM, whose chance depends on the image set (images share statistics).
    """
    true = np.asarray(true)
    n = len(true)
    if n < 2:
        raise InvalidInputError("permutation chance needs at least 2 items")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_perm)):
        perm = (np.arange(n) + rng.integers(1, n)) % n  # a cyclic shift: nobody keeps its own partner
        values.append(metric(pred, true[perm]))
    return float(np.mean(values))


def chance_levels(n_test: int, pool_size: int = 300, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Chance of each retrieval/identification metric for ``n_test`` test items."""
    pool = min(pool_size, n_test)
    out = {"top1_among": 1.0 / pool, "two_way": 0.5}
    for k in ks:
        out[f"top{k}"] = min(1.0, k / n_test)
    return out
