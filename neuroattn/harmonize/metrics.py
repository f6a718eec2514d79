"""Distribution metrics for harmonization: kernel MMD with permutation tests, KS/Wasserstein, PSNR/SSIM in a mask.

MMD samples are scans (one feature vector per subject-scan), never voxels or slices, so the permutation
test exchanges whole scans. Two feature spaces are provided: :func:`intensity_features` (in-mask and
per-tissue intensity quantiles) and :func:`learned_features` (random-conv features (untrained): a fixed,
seeded, untrained small CNN applied to axial slices and pooled per scan; random convolutional features are
a legitimate, pretraining-free MMD feature space and need no downloaded weights). For traveling subjects
``mmd_test(..., paired=True)`` swaps scans only within a subject, the exact null for paired scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from skimage.metrics import structural_similarity

from neuroattn.errors import InvalidInputError

MULTI_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # times the median-heuristic bandwidth
KERNELS = ("median", "multi")
INTENSITY_QUANTILES = tuple(np.round(np.arange(1, 100) / 100.0, 2))  # 1 .. 99 %
TISSUE_QUANTILES = tuple(np.round(np.arange(5, 100, 5) / 100.0, 2))  # 5 .. 95 % per tissue
TISSUE_NAMES = {1: "csf", 2: "gm", 3: "wm"}  # dseg label -> tissue
ROBUST_RANGE_PERCENTILES = (0.5, 99.5)  # PSNR/SSIM data range: this in-mask percentile span of the target


# --------------------------------------------------------------------------------------------------- MMD


@dataclass
class MMDResult:
    """One two-sample MMD test."""

    mmd2: float  # unbiased MMD^2 estimate (can be slightly negative when the samples agree)
    p_value: float  # permutation p: (1 + #{null >= observed}) / (1 + n_permutations); exact: #{..} / 2^N
    kernel: str  # "median" (one RBF at the median heuristic) or "multi" (sum over MULTI_BANDWIDTH_FACTORS)
    bandwidths: list[float]  # RBF sigmas, in (standardized) feature units
    n_x: int
    n_y: int
    n_permutations: int  # relabelings drawn, or 2^N when exact
    standardized: bool  # features z-scored with the pooled sample's mean and sd before the kernel
    paired: bool = False  # x[i], y[i] same subject: within-subject swaps as the null, cross term skips pairs
    exact: bool = False  # every paired swap pattern enumerated (p exact) instead of random relabelings

    def to_dict(self) -> dict:
        return asdict(self)


def pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, float64 ``(N, M)`` for ``a`` ``(N, D)`` and ``b`` ``(M, D)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def median_bandwidth(z: np.ndarray) -> float:
    """Median heuristic: the median Euclidean distance between distinct rows of ``z`` ``(N, D)``.

    Zero distances (duplicated rows) are ignored; returns 1.0 when every row is identical.
    """
    d2 = pairwise_sq_dists(z, z)
    iu = np.triu_indices(len(z), k=1)
    d = np.sqrt(d2[iu])
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


def kernel_bandwidths(z: np.ndarray, kernel: str = "median") -> list[float]:
    """RBF sigmas for ``kernel``: ``[median]`` or ``median * MULTI_BANDWIDTH_FACTORS``."""
    if kernel not in KERNELS:
        raise InvalidInputError(f"'kernel' must be one of {list(KERNELS)}. {kernel!r} was provided.")
    med = median_bandwidth(z)
    return [med] if kernel == "median" else [med * f for f in MULTI_BANDWIDTH_FACTORS]


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidths: Sequence[float]) -> np.ndarray:
    """``sum_s exp(-|a_i - b_j|^2 / (2 s^2))`` over the sigmas ``bandwidths``, float64 ``(N, M)``."""
    d2 = pairwise_sq_dists(a, b)
    return sum(np.exp(-d2 / (2.0 * float(s) ** 2)) for s in bandwidths)


def _mmd2_from_kernel(k: np.ndarray, in_x: np.ndarray, paired: bool = False) -> np.ndarray:
    """Unbiased MMD^2 for each row of the assignment matrix ``in_x`` ``(P, N)`` (1 = sample x) on kernel ``k``.

    Returns float64 ``(P,)``. Diagonal terms (i = j) are excluded from the within-sample sums. With
    ``paired``, rows ``i`` and ``i + N/2`` of ``k`` are the same subject, every assignment puts one of each
    pair on each side, and the cross term leaves out the same-subject pairs (which are not independent).
    """
    a = in_x.astype(np.float64)  # (P, N)
    b = 1.0 - a
    k0 = k - np.diag(np.diag(k))
    m = a.sum(1)
    n = b.sum(1)
    sxx = ((a @ k0) * a).sum(1)
    syy = ((b @ k0) * b).sum(1)
    if paired:
        half = len(k) // 2
        same = np.eye(half, dtype=bool)
        kc = np.where(np.block([[same, same], [same, same]]), 0.0, k)  # same-subject pairs dropped
        return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * ((a @ kc) * b).sum(1) / (m * n - half)
    sxy = ((a @ k) * b).sum(1)
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidths: Sequence[float], paired: bool = False) -> float:
    """Unbiased MMD^2 between samples ``x`` ``(M, D)`` and ``y`` ``(N, D)`` with a (sum of) RBF kernel(s).

    ``sum_{i!=j} k(x_i,x_j)/(M(M-1)) + sum_{i!=j} k(y_i,y_j)/(N(N-1)) - 2 sum_{ij} k(x_i,y_j)/(MN)``.
    ``paired``: ``x[i]`` and ``y[i]`` come from the same subject (M = N); the cross term then runs over
    ``i != j`` only, ``/(N(N-1))``, so it stays unbiased for the marginal distributions.
    """
    x, y = _check_samples(x, y, paired)
    z = np.concatenate([x, y])  # (M + N, D)
    in_x = np.zeros((1, len(z)), dtype=bool)
    in_x[0, : len(x)] = True
    return float(_mmd2_from_kernel(rbf_kernel(z, z, bandwidths), in_x, paired)[0])


def _check_samples(x: np.ndarray, y: np.ndarray, paired: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InvalidInputError(f"MMD needs samples (M, D) and (N, D); got shapes {x.shape} and {y.shape}.")
    if len(x) < 2 or len(y) < 2:
        raise InvalidInputError(f"MMD needs at least 2 samples on each side; got {len(x)} and {len(y)}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInputError("MMD samples contain NaN or infinite values.")
    if paired and len(x) != len(y):
        raise InvalidInputError(f"paired MMD needs one x and one y per subject; got {len(x)} and {len(y)}.")
    return x, y


def standardize_pooled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score every feature with the pooled sample's mean and sd; constant features are dropped.

    Pooled statistics do not change when scans are permuted between the samples, so the test stays exact.
    """
    z = np.concatenate([x, y])  # (M + N, D)
    sd = z.std(axis=0)
    keep = sd > 1e-12 * max(1.0, float(np.abs(z).max()))
    if not keep.any():
        return np.zeros((len(x), 1)), np.zeros((len(y), 1))
    mu = z[:, keep].mean(axis=0)
    return (x[:, keep] - mu) / sd[keep], (y[:, keep] - mu) / sd[keep]


def _swap_assignments(n: int, n_permutations: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Paired relabelings: each subject's two scans swap sides or not. All ``2^n`` when that is at most
    ``n_permutations`` (exact test), else ``n_permutations`` random ones. Returns ``(P, 2n)`` bool, exact."""
    if 2**n <= n_permutations:
        swap = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)  # (2^n, n), row 0 = observed
        exact = True
    else:
        swap = rng.random((n_permutations, n)) < 0.5
        exact = False
    return np.concatenate([~swap, swap], axis=1), exact


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    kernel: str = "median",
    n_permutations: int = 1000,
    seed: int = 0,
    standardize: bool = True,
    paired: bool = False,
) -> MMDResult:
    """Two-sample MMD test with an RBF kernel and a permutation p-value.

    Parameters
    ----------
    x, y : ndarray, shape (M, D) and (N, D)
        One row per sample (per subject-scan in harmonization use).
    kernel : {"median", "multi"}
        ``"median"``: one RBF whose sigma is the median pairwise distance of the pooled sample;
        ``"multi"``: the sum of RBFs at ``median * (0.25, 0.5, 1, 2, 4)``.
    n_permutations : int
        Random relabelings of the pooled sample (seeded by ``seed``); 0 skips the test (p = NaN).
        p = (1 + #{null >= observed}) / (1 + n_permutations).
    standardize : bool
        Z-score each feature with pooled statistics first (so features in different units weigh alike).
    paired : bool
        ``x[i]`` and ``y[i]`` are the same subject (traveling subjects). The statistic's cross term skips
        same-subject pairs and the null swaps scans only within a subject, which is the exchangeability
        that holds when sites do not matter (free relabeling would be conservative for paired data). With
        ``2^N <= n_permutations`` every swap pattern is enumerated and p = #{null >= observed} / 2^N
        (smallest attainable p: 2 / 2^N, as swapping every pair gives the same statistic).
    """
    x, y = _check_samples(x, y, paired)
    if standardize:
        x, y = standardize_pooled(x, y)
    z = np.concatenate([x, y])  # (M + N, D)
    bw = kernel_bandwidths(z, kernel)
    k = rbf_kernel(z, z, bw)
    observed = np.zeros((1, len(z)), dtype=bool)
    observed[0, : len(x)] = True
    mmd2 = float(_mmd2_from_kernel(k, observed, paired)[0])
    p, exact = float("nan"), False
    if n_permutations > 0:
        rng = np.random.default_rng(seed)
        if paired:
            perms, exact = _swap_assignments(len(x), n_permutations, rng)
        else:
            perms = rng.permuted(np.tile(observed[0], (n_permutations, 1)), axis=1)  # (P, M + N)
        hits = np.count_nonzero(_mmd2_from_kernel(k, perms, paired) >= mmd2 - 1e-12)
        p = float(hits / len(perms)) if exact else float((1 + hits) / (1 + n_permutations))
    return MMDResult(
        mmd2,
        p,
        kernel,
        [float(b) for b in bw],
        len(x),
        len(y),
        len(perms) if exact else n_permutations,
        standardize,
        paired,
        exact,
    )


# ------------------------------------------------------------------------------------------ feature spaces


def _in_mask(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape:
        raise InvalidInputError(f"volume shape {volume.shape} differs from mask shape {mask.shape}.")
    vals = volume[mask].astype(np.float64)
    if vals.size == 0:
        raise InvalidInputError("the brain mask is empty.")
    if not np.isfinite(vals).all():
        raise InvalidInputError("the volume has NaN or infinite values inside the brain mask.")
    return vals


def intensity_features(
    volume: np.ndarray,
    mask: np.ndarray,
    dseg: np.ndarray | None = None,
    *,
    quantiles: Sequence[float] = INTENSITY_QUANTILES,
    tissue_quantiles: Sequence[float] = TISSUE_QUANTILES,
    tissue_labels: Sequence[int] = (1, 2, 3),
) -> np.ndarray:
    """Intensity feature vector of one scan: in-mask quantiles, then per-tissue quantiles if ``dseg`` is given.

    Parameters
    ----------
    volume, mask : ndarray, shape (X, Y, Z)
    dseg : ndarray, shape (X, Y, Z), optional
        Tissue labels (1 CSF, 2 GM, 3 WM); each label in ``tissue_labels`` must occur inside the mask.

    Returns
    -------
    ndarray, float64 ``(len(quantiles) + len(tissue_labels) * len(tissue_quantiles),)``
        (99 + 3 * 19 = 156 values by default; 99 without ``dseg``.)
    """
    vals = _in_mask(volume, mask)
    parts = [np.quantile(vals, quantiles)]
    if dseg is not None:
        lab = np.asarray(dseg)[np.asarray(mask, dtype=bool)]
        for t in tissue_labels:
            tv = vals[lab == t]
            if tv.size == 0:
                raise InvalidInputError(f"tissue label {t} does not occur inside the brain mask.")
            parts.append(np.quantile(tv, tissue_quantiles))
    return np.concatenate(parts)


def tissue_values(volume: np.ndarray, mask: np.ndarray, dseg: np.ndarray | None) -> dict[str, np.ndarray]:
    """In-mask intensities, float64, split by tissue (``"csf"``, ``"gm"``, ``"wm"``) plus ``"all"``."""
    vals = _in_mask(volume, mask)
    out = {"all": vals}
    if dseg is not None:
        lab = np.asarray(dseg)[np.asarray(mask, dtype=bool)]
        for t, name in TISSUE_NAMES.items():
            out[name] = vals[lab == t]
    return out


RANDOM_CONV_CHANNELS = (8, 16, 32)  # output channels of the three 3x3 conv layers, each of stride 2


def _random_conv_weights(seed: int, channels: Sequence[int]) -> list:
    """He-normal 3x3 kernels drawn from a seeded torch generator; the network is never trained."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    weights, c_in = [], 1
    for c_out in channels:
        std = (2.0 / (c_in * 9)) ** 0.5
        weights.append(torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float32) * std)
        c_in = c_out
    return weights


def learned_features(
    volumes: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    seed: int = 0,
    channels: Sequence[int] = RANDOM_CONV_CHANNELS,
    min_mask_fraction: float = 0.01,
    batch_size: int = 64,
) -> np.ndarray:
    """Random-conv features (untrained): a fixed, seeded, untrained CNN on axial slices, pooled per scan.

    Each in-mask axial slice (at least ``min_mask_fraction`` of its voxels in the mask) is zeroed outside
    the mask, cropped to the mask's in-plane bounding box and passed through three bias-free 3x3 conv + ReLU
    layers (stride 2 each; weights He-normal from ``seed``). Every layer's maps are averaged over in-mask
    positions, giving one vector per slice; the scan's features are the in-mask-area-weighted mean and the
    sd of those vectors over slices. No intensity normalization is applied (bias-free ReLU layers are
    positively homogeneous, so a global scale is removed later by the MMD's pooled standardization, not
    per scan). torch runs on one thread here and its previous thread count is restored afterwards.

    Parameters
    ----------
    volumes, masks : sequences of ndarray, shape (X, Y, Z) each; axial slices are ``[:, :, z]``.

    Returns
    -------
    ndarray, float64 ``(n_scans, 2 * sum(channels))`` (112 columns by default).
    """
    import torch

    if len(volumes) != len(masks):
        raise InvalidInputError(f"{len(volumes)} volumes but {len(masks)} masks were given.")
    weights = _random_conv_weights(seed, channels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # convolutions this small run fastest on one thread; more only adds contention
    try:
        rows = _random_conv_rows(volumes, masks, weights, min_mask_fraction, batch_size)
    finally:
        torch.set_num_threads(threads)
    return np.stack(rows)


def _random_conv_rows(
    volumes: Sequence[np.ndarray], masks: Sequence[np.ndarray], weights: list, min_mask_fraction: float, batch_size: int
) -> list[np.ndarray]:
    """One feature row per scan (see :func:`learned_features`)."""
    import torch
    import torch.nn.functional as F

    rows = []
    with torch.no_grad():
        for vol, msk in zip(volumes, masks, strict=True):
            _in_mask(vol, msk)
            m = np.asarray(msk, dtype=bool)
            area = m.sum(axis=(0, 1))  # (Z,)
            keep = np.flatnonzero(area >= max(1.0, min_mask_fraction * m.shape[0] * m.shape[1]))
            xs, ys = (np.flatnonzero(m.any(axis=ax)) for ax in ((1, 2), (0, 2)))
            box = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1), keep)
            x = np.where(m, np.asarray(vol, dtype=np.float32), np.float32(0.0))[box]  # (X', Y', S)
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 2, 0)))[:, None]  # (S, 1, X', Y')
            mk = torch.from_numpy(np.ascontiguousarray(np.moveaxis(m[box], 2, 0)))[:, None].float()
            per_slice = []
            for start in range(0, x.shape[0], batch_size):
                h, hm, feats = x[start : start + batch_size], mk[start : start + batch_size], []
                for w in weights:
                    h = F.relu(F.conv2d(h, w, stride=2, padding=1))  # (B, C, X'', Y'')
                    hm = F.interpolate(hm, size=h.shape[-2:], mode="area")  # in-mask share per position
                    wm = (hm >= 0.5).float()
                    feats.append((h * wm).sum((2, 3)) / wm.sum((2, 3)).clamp_min(1.0))  # (B, C)
                per_slice.append(torch.cat(feats, dim=1))
            f = torch.cat(per_slice).double().numpy()  # (S, sum(channels))
            wt = area[keep].astype(np.float64) / area[keep].sum()
            mean = wt @ f
            rows.append(np.concatenate([mean, np.sqrt(wt @ (f - mean) ** 2)]))
    return rows


# ---------------------------------------------------------------------------- KS / Wasserstein distances


def subsample(values: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """At most ``max_samples`` values, drawn without replacement by a seeded generator (all if fewer)."""
    values = np.asarray(values)
    if values.size <= max_samples:
        return values
    return np.random.default_rng(seed).choice(values, size=max_samples, replace=False)


def distribution_distances(
    a: np.ndarray, b: np.ndarray, *, scale: float | None = None, max_samples: int = 100_000, seed: int = 0
) -> dict[str, float]:
    """KS statistic and Wasserstein-1 distance between two 1-D intensity samples.

    Each sample is first cut to at most ``max_samples`` values (seeded, without replacement). ``scale``
    (e.g. the pooled in-mask sd) also gives ``wasserstein_normalized = wasserstein / scale``, comparable
    across methods whose outputs live on different intensity scales. No p-value: voxels are not independent.
    """
    a = subsample(np.asarray(a, dtype=np.float64).ravel(), max_samples, seed)
    b = subsample(np.asarray(b, dtype=np.float64).ravel(), max_samples, seed + 1)
    if a.size == 0 or b.size == 0:
        return {"ks": float("nan"), "wasserstein": float("nan"), "wasserstein_normalized": float("nan")}
    w1 = float(stats.wasserstein_distance(a, b))
    out = {"ks": float(stats.ks_2samp(a, b).statistic), "wasserstein": w1}
    out["wasserstein_normalized"] = w1 / scale if scale else float("nan")
    return out


# -------------------------------------------------------------------------------------------- PSNR / SSIM


def robust_range(
    target: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = ROBUST_RANGE_PERCENTILES
) -> float:
    """In-mask robust data range of ``target``: ``p99.5 - p0.5`` by default (falls back to max - min)."""
    vals = _in_mask(target, mask)
    lo, hi = np.percentile(vals, percentiles)
    rng = float(hi - lo)
    return rng if rng > 0 else float(vals.max() - vals.min())


def psnr_in_mask(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float | None = None) -> float:
    """``10 log10(R^2 / MSE)`` over mask voxels; ``R`` defaults to :func:`robust_range` of ``target``.

    Returns ``inf`` when the volumes agree exactly inside the mask.
    """
    p = _in_mask(pred, mask)
    t = _in_mask(target, mask)
    r = robust_range(target, mask) if data_range is None else float(data_range)
    mse = float(np.mean((p - t) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(r**2 / mse))


def _mask_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(
        slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin))
        for i, n in zip(idx, mask.shape, strict=True)
    )


def ssim_in_mask(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float | None = None, win_size: int = 7
) -> float:
    """Mean of the 3-D SSIM map (``skimage.metrics.structural_similarity``, ``full=True``) over mask voxels.

    The volumes are cropped to the mask's bounding box plus ``win_size // 2`` voxels first; every mask
    voxel's window then lies inside the crop, so the in-mask SSIM values equal those of the full volume.
    ``data_range`` defaults to :func:`robust_range` of ``target``.
    """
    _in_mask(pred, mask)
    _in_mask(target, mask)
    mask = np.asarray(mask, dtype=bool)
    r = robust_range(target, mask) if data_range is None else float(data_range)
    box = _mask_box(mask, win_size // 2)
    p = np.asarray(pred, dtype=np.float64)[box]
    t = np.asarray(target, dtype=np.float64)[box]
    if min(p.shape) < win_size:
        raise InvalidInputError(f"SSIM needs the masked region to span at least {win_size} voxels per axis.")
    _, smap = structural_similarity(t, p, data_range=r, win_size=win_size, full=True)
    return float(smap[mask[box]].mean())


__all__ = [
    "INTENSITY_QUANTILES",
    "KERNELS",
    "MULTI_BANDWIDTH_FACTORS",
    "RANDOM_CONV_CHANNELS",
    "ROBUST_RANGE_PERCENTILES",
    "TISSUE_QUANTILES",
    "MMDResult",
    "distribution_distances",
    "intensity_features",
    "kernel_bandwidths",
    "learned_features",
    "median_bandwidth",
    "mmd2_unbiased",
    "mmd_test",
    "pairwise_sq_dists",
    "psnr_in_mask",
    "rbf_kernel",
    "robust_range",
    "ssim_in_mask",
    "standardize_pooled",
    "subsample",
    "tissue_values",
]
