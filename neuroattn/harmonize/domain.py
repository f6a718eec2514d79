"""Site (domain) classifier retrained on the data being judged, with subject-grouped cross-validation.

One sample is one axial slice of one visit (subject at a site), described by in-slice intensity quantiles
and texture statistics of every modality. Folds are grouped by SUBJECT (``StratifiedGroupKFold``): a
traveling subject's slices from every site are all in train or all in test, so neither anatomy nor slices
of one scan leak across the split. Slice probabilities are averaged per scan; the headline accuracy and
AUC are scan-level (one decision per visit), slice-level numbers are reported beside them. Headline values
are computed on the pooled out-of-fold predictions (every scan predicted by a model that never saw its
subject); per-fold means are reported too, but a fold holds only 1-2 traveling subjects (2-4 scans), where
a fold's AUC is nearly degenerate. 95 % CIs come from a seeded bootstrap over subjects of the pooled
out-of-fold predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from neuroattn.errors import InvalidInputError

SLICE_FEATURES = (
    "p05",
    "p25",
    "p50",
    "p75",
    "p95",
    "mean",
    "std",
    "grad_mean",  # mean in-plane gradient magnitude (intensity units)
    "grad_rel",  # grad_mean / std: edge sharpness, scale-free
    "lap_rel",  # mean |in-plane Laplacian| / std: noise and fine texture, scale-free
)
CLASSIFIERS = ("logistic", "gboost")
_LAPLACE_2D = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32)[:, :, None]  # (3, 3, 1): in-plane


def slice_features(
    volume: np.ndarray, mask: np.ndarray, *, min_mask_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Per-axial-slice features of one scan (:data:`SLICE_FEATURES`).

    Slices ``volume[:, :, z]`` with at least ``min_mask_fraction`` of their voxels in the mask are used;
    gradient and Laplacian statistics are taken over the mask eroded by one voxel in-plane (so the
    brain/background edge does not count) and fall back to the whole slice mask if erosion empties it.

    Returns
    -------
    features : ndarray, float64 ``(S, len(SLICE_FEATURES))``
    slices : ndarray, int64 ``(S,)``, the ``z`` index of each row.
    """
    vol = np.asarray(volume, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if vol.shape != m.shape or vol.ndim != 3:
        raise InvalidInputError(f"volume {vol.shape} and mask {m.shape} must be the same 3-D shape.")
    if not m.any():
        raise InvalidInputError("the brain mask is empty.")
    if not np.isfinite(vol[m]).all():
        raise InvalidInputError("the volume has NaN or infinite values inside the brain mask.")
    slice_area = m.shape[0] * m.shape[1]
    # In-plane crop to the mask's box plus one voxel: every statistic below is local and in-mask.
    xs, ys = (np.flatnonzero(m.any(axis=ax)) for ax in ((1, 2), (0, 2)))
    box = (slice(max(0, xs[0] - 1), xs[-1] + 2), slice(max(0, ys[0] - 1), ys[-1] + 2))
    vol, m = vol[box], m[box]
    area = m.sum(axis=(0, 1))  # (Z,)
    slices = np.flatnonzero(area >= max(2.0, min_mask_fraction * slice_area))
    inner = ndi.binary_erosion(m, structure=np.ones((3, 3, 1), dtype=bool))
    gx, gy = np.gradient(vol, axis=(0, 1))
    grad = np.hypot(gx, gy)
    lap = np.abs(ndi.convolve(vol, _LAPLACE_2D, mode="nearest"))

    def by_slice(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(a[:, :, slices], 2, 0))  # (S, X, Y)

    vol, m, inner, grad, lap = map(by_slice, (vol, m, inner, grad, lap))
    rows = np.empty((slices.size, len(SLICE_FEATURES)))
    for r in range(slices.size):
        v = vol[r][m[r]].astype(np.float64)
        core = inner[r] if inner[r].any() else m[r]
        sd = float(v.std())
        g = float(grad[r][core].mean())
        scale = sd if sd > 0 else 1.0
        rows[r, :5] = np.quantile(v, (0.05, 0.25, 0.5, 0.75, 0.95))
        rows[r, 5:] = (v.mean(), sd, g, g / scale, float(lap[r][core].mean()) / scale)
    return rows, slices


@dataclass
class DomainClassifierResult:
    """Cross-validated site-classification performance; CIs are 95 % subject-bootstrap percentiles."""

    accuracy: float  # scan level, pooled out-of-fold
    accuracy_ci: tuple[float, float]
    auc: float  # scan level, pooled out-of-fold (one-vs-rest macro for > 2 sites)
    auc_ci: tuple[float, float]
    accuracy_fold_mean: float  # scan level, mean over folds
    auc_fold_mean: float  # scan level, mean over folds holding both classes
    slice_accuracy: float  # slice level, pooled out-of-fold
    slice_accuracy_ci: tuple[float, float]
    slice_auc: float
    slice_auc_ci: tuple[float, float]
    chance: float  # share of the most frequent site among scans
    n_subjects: int
    n_scans: int
    n_slices: int
    n_splits: int
    classifier: str
    sites: list[str]
    fold_accuracy: list[float] = field(default_factory=list)  # scan level, per fold
    fold_auc: list[float] = field(default_factory=list)
    accuracy_p_value: float = float("nan")  # label-permutation p of the scan-level accuracy (NaN: not run)
    n_label_permutations: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def make_classifier(name: str = "logistic", seed: int = 0) -> Pipeline:
    """Standardize-then-classify pipeline: ``"logistic"`` (L2, C = 1) or ``"gboost"`` (histogram boosting)."""
    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    if name == "gboost":
        return make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=100, random_state=seed))
    raise InvalidInputError(f"'classifier' must be one of {list(CLASSIFIERS)}. {name!r} was provided.")


def grouped_folds(
    labels: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds in which every group (subject) is wholly in train or wholly in test.

    ``n_splits`` is capped at the number of groups. Raises if any split would put a group on both sides.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise InvalidInputError(f"grouped cross-validation needs at least 2 subjects; got {n_groups}.")
    cv = StratifiedGroupKFold(n_splits=min(n_splits, n_groups), shuffle=True, random_state=seed)
    folds = []
    for train, test in cv.split(np.zeros(len(labels)), labels, groups):
        if set(groups[train]) & set(groups[test]):
            raise RuntimeError("a subject ended up in both train and test folds")
        folds.append((train, test))
    return folds


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties count 1/2); NaN without both classes. Equals sklearn's."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """Binary ROC AUC (class 1 score), or one-vs-rest macro AUC over the classes present in ``y``."""
    if n_classes == 2:
        return binary_auc(y == 1, proba[:, 1])
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    return float(np.mean([binary_auc(y == c, proba[:, c]) for c in present]))


def _scores(y: np.ndarray, proba: np.ndarray, n_classes: int) -> tuple[float, float]:
    return float(np.mean(proba.argmax(axis=1) == y)), _auc(y, proba, n_classes)


def _bootstrap_ci(
    y: np.ndarray, proba: np.ndarray, groups: np.ndarray, n_classes: int, n_bootstrap: int, seed: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """95 % percentile CIs of accuracy and AUC, resampling subjects (with all their rows) with replacement."""
    if n_bootstrap <= 0:
        nan = (float("nan"), float("nan"))
        return nan, nan
    subjects, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == s) for s in range(subjects.size)]
    rng = np.random.default_rng(seed)
    accs, aucs = [], []
    for _ in range(n_bootstrap):
        idx = np.concatenate([rows_of[s] for s in rng.integers(0, subjects.size, subjects.size)])
        a, u = _scores(y[idx], proba[idx], n_classes)
        accs.append(a)
        if np.isfinite(u):
            aucs.append(u)

    def ci(v: list[float]) -> tuple[float, float]:
        return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (float("nan"),) * 2

    return ci(accs), ci(aucs)


def _out_of_fold_proba(x: np.ndarray, y: np.ndarray, folds: list, k: int, classifier: str, seed: int) -> np.ndarray:
    """Class probabilities ``(N, k)`` of every row from the model of the fold that held it out."""
    oof = np.zeros((len(y), k))
    for train, test in folds:
        with threadpool_limits(1):  # small fits: extra BLAS/OpenMP threads only contend (100x slower seen)
            clf = make_classifier(classifier, seed).fit(x[train], y[train])
            oof[np.ix_(test, clf.classes_)] = clf.predict_proba(x[test])
    return oof


def _scan_proba(oof: np.ndarray, scan_of: np.ndarray, n_scans: int) -> np.ndarray:
    """Mean row probability per scan, ``(n_scans, k)``."""
    counts = np.bincount(scan_of, minlength=n_scans)[:, None]
    sums = np.stack([np.bincount(scan_of, weights=oof[:, c], minlength=n_scans) for c in range(oof.shape[1])], 1)
    return sums / counts


def cross_validate_domain(
    features: np.ndarray,
    labels: Sequence,
    groups: Sequence,
    scans: Sequence | None = None,
    *,
    classifier: str = "logistic",
    n_splits: int = 5,
    n_bootstrap: int = 1000,
    n_label_permutations: int = 0,
    seed: int = 0,
) -> DomainClassifierResult:
    """Grouped cross-validated site classification of ``features`` ``(N, F)`` with site ``labels`` ``(N,)``.

    ``groups`` ``(N,)`` are subject ids (no subject in train and test); ``scans`` ``(N,)`` are scan ids
    whose rows' class probabilities are averaged into one scan-level decision (default: each row its own
    scan). Every scan must belong to one subject and one site. ``n_label_permutations > 0`` adds a
    permutation p-value for "scan-level accuracy above chance": site labels are shuffled among each
    subject's scans (the exchangeability that holds for traveling subjects when sites do not matter) and
    the whole cross-validation is rerun on the same folds each time.
    """
    x = np.asarray(features, dtype=np.float64)
    sites, y = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    groups = np.asarray(groups).astype(str)
    scans = np.arange(len(y)).astype(str) if scans is None else np.asarray(scans).astype(str)
    if x.ndim != 2 or not (len(x) == len(y) == len(groups) == len(scans)):
        raise InvalidInputError(
            f"features {x.shape}, labels ({len(y)},), groups ({len(groups)},), scans ({len(scans)},) disagree."
        )
    if sites.size < 2:
        raise InvalidInputError(f"site classification needs at least 2 sites; got {list(sites)}.")
    if not np.isfinite(x).all():
        raise InvalidInputError("domain-classifier features contain NaN or infinite values.")
    scan_ids, scan_of = np.unique(scans, return_inverse=True)
    scan_y = np.zeros(scan_ids.size, dtype=np.int64)
    scan_group = np.empty(scan_ids.size, dtype=object)
    for s in range(scan_ids.size):
        rows = scan_of == s
        if np.unique(y[rows]).size != 1 or np.unique(groups[rows]).size != 1:
            raise InvalidInputError(f"scan {scan_ids[s]!r} mixes several sites or subjects.")
        scan_y[s], scan_group[s] = y[rows][0], groups[rows][0]
    k = sites.size
    folds = grouped_folds(y, groups, n_splits, seed)
    oof = _out_of_fold_proba(x, y, folds, k, classifier, seed)  # (N, k)
    fold_acc, fold_auc = [], []
    for _, test in folds:
        test_scans = np.unique(scan_of[test])
        sp = np.stack([oof[scan_of == s].mean(axis=0) for s in test_scans])  # (scans in fold, k)
        a, u = _scores(scan_y[test_scans], sp, k)
        fold_acc.append(a)
        fold_auc.append(u)
    scan_proba = _scan_proba(oof, scan_of, scan_ids.size)  # (n_scans, k)
    acc, auc = _scores(scan_y, scan_proba, k)
    slice_acc, slice_auc = _scores(y, oof, k)
    acc_ci, auc_ci = _bootstrap_ci(scan_y, scan_proba, scan_group.astype(str), k, n_bootstrap, seed)
    sacc_ci, sauc_ci = _bootstrap_ci(y, oof, groups, k, n_bootstrap, seed)
    p_value = float("nan")
    if n_label_permutations > 0:
        rng = np.random.default_rng([seed, 1])
        hits = 0
        for _ in range(n_label_permutations):
            perm_y = scan_y.copy()
            for g in np.unique(scan_group):
                idx = np.flatnonzero(scan_group == g)
                perm_y[idx] = scan_y[rng.permutation(idx)]  # sites shuffled among one subject's scans
            perm_oof = _out_of_fold_proba(x, perm_y[scan_of], folds, k, classifier, seed)
            hits += _scores(perm_y, _scan_proba(perm_oof, scan_of, scan_ids.size), k)[0] >= acc - 1e-12
        p_value = (1 + hits) / (1 + n_label_permutations)

    def mean(v: list[float]) -> float:
        v = [a for a in v if np.isfinite(a)]
        return float(np.mean(v)) if v else float("nan")

    return DomainClassifierResult(
        accuracy=acc,
        accuracy_ci=acc_ci,
        auc=auc,
        auc_ci=auc_ci,
        accuracy_fold_mean=mean(fold_acc),
        auc_fold_mean=mean(fold_auc),
        slice_accuracy=slice_acc,
        slice_accuracy_ci=sacc_ci,
        slice_auc=slice_auc,
        slice_auc_ci=sauc_ci,
        chance=float(np.bincount(scan_y).max() / scan_y.size),
        n_subjects=int(np.unique(groups).size),
        n_scans=int(scan_ids.size),
        n_slices=len(y),
        n_splits=len(folds),
        classifier=classifier,
        sites=[str(s) for s in sites],
        fold_accuracy=fold_acc,
        fold_auc=fold_auc,
        accuracy_p_value=p_value,
        n_label_permutations=n_label_permutations,
    )


def visit_slice_features(
    scans: Sequence[np.ndarray], mask: np.ndarray, *, min_mask_fraction: float = 0.05
) -> np.ndarray:
    """Slice features of one visit, its modalities side by side: ``(S, M * len(SLICE_FEATURES))``."""
    parts = [slice_features(v, mask, min_mask_fraction=min_mask_fraction)[0] for v in scans]
    return np.concatenate(parts, axis=1)


def domain_classifier(
    visits: Mapping[tuple[str, str], np.ndarray | Sequence[np.ndarray]],
    masks: Mapping[str, np.ndarray],
    *,
    classifier: str = "logistic",
    n_splits: int = 5,
    n_bootstrap: int = 1000,
    n_label_permutations: int = 0,
    seed: int = 0,
    min_mask_fraction: float = 0.05,
) -> DomainClassifierResult:
    """Site classification of visits ``{(subject, site): volume or [volume per modality]}``.

    ``masks`` maps subject -> brain mask ``(X, Y, Z)`` (shared by the subject's visits, so every visit of a
    subject yields the same slices). Folds group by subject.
    """
    feats, labels, groups, scan_ids = [], [], [], []
    for (subject, site), vols in visits.items():
        if subject not in masks:
            raise InvalidInputError(f"no brain mask for subject {subject!r}.")
        vols = [vols] if isinstance(vols, np.ndarray) else list(vols)
        f = visit_slice_features(vols, masks[subject], min_mask_fraction=min_mask_fraction)
        feats.append(f)
        labels += [site] * len(f)
        groups += [subject] * len(f)
        scan_ids += [f"{subject}|{site}"] * len(f)
    if not feats:
        raise InvalidInputError("no visits to classify.")
    return cross_validate_domain(
        np.concatenate(feats),
        labels,
        groups,
        scan_ids,
        classifier=classifier,
        n_splits=n_splits,
        n_bootstrap=n_bootstrap,
        n_label_permutations=n_label_permutations,
        seed=seed,
    )


__all__ = [
    "CLASSIFIERS",
    "SLICE_FEATURES",
    "DomainClassifierResult",
    "binary_auc",
    "cross_validate_domain",
    "domain_classifier",
    "grouped_folds",
    "make_classifier",
    "slice_features",
    "visit_slice_features",
]
