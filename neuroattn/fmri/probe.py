"""Linear probes on frozen features: the one way every fMRI model's representations are scored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuroattn.errors import ConfigError

PROBE_TASKS = ("classification", "regression")


@dataclass
class ProbeResult:
    """Cross-validated probe scores; ``folds`` holds the per-fold primary score (accuracy or R²)."""

    task: str
    score: float  # mean accuracy (classification) or R² (regression) over folds
    folds: list[float]
    auc: float | None = None  # binary classification only
    chance: float | None = None  # majority-class accuracy, for classification

    def to_dict(self) -> dict[str, object]:
        return {"task": self.task, "score": self.score, "folds": self.folds, "auc": self.auc, "chance": self.chance}


def _estimator(task: str):
    if task == "classification":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


def cross_validated_probe(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    task: str = "classification",
    groups: np.ndarray | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> ProbeResult:
    """Fit a linear probe with grouped K-fold CV (no group — e.g. subject — in train and test).

    Parameters
    ----------
    features : (N, D) frozen features, one row per sample (window or subject).
    targets : (N,) class labels or continuous values.
    groups : (N,) group ids (subjects); ``None`` treats every sample as its own group.
    """
    if task not in PROBE_TASKS:
        raise ConfigError(f"'task' must be one of {list(PROBE_TASKS)}. {task!r} was provided.")
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(targets)
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    n_groups = len(np.unique(groups))
    n_splits = min(n_folds, n_groups)
    if n_splits < 2:
        raise ConfigError(f"a probe needs at least 2 groups for cross-validation, got {n_groups}")
    if task == "classification":
        # every test fold needs each class: no more folds than groups in the rarest class
        rarest = min(len(np.unique(groups[y == label])) for label in np.unique(y))
        n_splits = min(n_splits, rarest)
        if n_splits < 2:
            raise ConfigError(f"a classification probe needs at least 2 groups per class, the rarest has {rarest}")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=n_splits)
    scores: list[float] = []
    probabilities = np.full(len(y), np.nan)
    for train, test in splitter.split(x, y, groups):
        model = _estimator(task).fit(x[train], y[train])
        prediction = model.predict(x[test])
        if task == "classification":
            scores.append(float(accuracy_score(y[test], prediction)))
            if len(np.unique(y)) == 2 and len(np.unique(y[train])) == 2:
                probabilities[test] = model.predict_proba(x[test])[:, 1]
        else:
            scores.append(float(r2_score(y[test], prediction)))
    auc = None
    chance = None
    if task == "classification":
        _, counts = np.unique(y, return_counts=True)
        chance = float(counts.max() / counts.sum())
        if len(counts) == 2 and np.isfinite(probabilities).all():
            auc = float(roc_auc_score(y, probabilities))
    return ProbeResult(task=task, score=float(np.mean(scores)), folds=scores, auc=auc, chance=chance)
