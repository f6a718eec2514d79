"""The classic voxelwise encoding model: ridge from image embeddings to every voxel, one penalty per voxel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neuroattn.decode.ridge import default_alphas, solve_ridge_cv
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint

MODEL_CLASS = "RidgeEncoder"


class RidgeEncoder:
    """Voxelwise ridge regression ``y_v = (x - x_mean) @ coef[:, v] + intercept[v]`` (himalaya, penalty per voxel).

    Parameters
    ----------
    alphas : list of float, optional
        Penalties tried by cross-validation (default ``logspace(-1, 6, 15)``).
    cv : int
        CV folds (fewer when there are fewer images; leave-one-out below that).
    seed : int
        Seed of the fold shuffling.
    """

    name = "ridge"

    def __init__(self, alphas: list[float] | None = None, cv: int = 5, seed: int = 0) -> None:
        self.alphas = list(alphas) if alphas is not None else default_alphas()
        self.cv = cv
        self.seed = seed
        if not self.alphas or min(self.alphas) <= 0:
            raise ConfigError(f"'alphas' must be a non-empty list of positive penalties, got {self.alphas}")
        if cv < 2:
            raise ConfigError(f"'cv' must be >= 2 folds, got {cv}")
        self.trained = False  # set by callers when the embeddings come from trained weights

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeEncoder:
        """Fit on image embeddings ``x`` (n, D) and responses ``y`` (n, V) of the same n images (n >= 3)."""
        from sklearn.model_selection import KFold

        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise InvalidInputError(f"embeddings {x.shape} and responses {y.shape} must be (n, D) and (n, V)")
        if len(x) < 3:
            raise InvalidInputError(f"ridge needs at least 3 images, got {len(x)}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise InvalidInputError("embeddings or responses contain NaN/inf")
        self.x_mean_ = x.mean(axis=0)
        y_mean = y.mean(axis=0)
        folds = KFold(min(self.cv, len(x)), shuffle=True, random_state=self.seed)
        alphas, coef, scores = solve_ridge_cv(x - self.x_mean_, y - y_mean, self.alphas, folds, local_alpha=True)
        self.coef_ = coef.astype(np.float32)  # (D, V)
        self.intercept_ = (y_mean - self.x_mean_ @ coef).astype(np.float32)  # (V,)
        self.alphas_ = np.broadcast_to(alphas, (y.shape[1],)).copy()
        self.cv_scores_ = np.broadcast_to(scores, (y.shape[1],)).copy()
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("RidgeEncoder is not fitted; call fit() first")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted responses (m, V) float32 for embeddings ``x`` (m, D)."""
        self._check_fitted()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.coef_.shape[0]:
            raise InvalidInputError(f"embeddings must be (m, {self.coef_.shape[0]}), got {x.shape}")
        return x @ self.coef_ + self.intercept_

    @property
    def weights_(self) -> np.ndarray:
        """Per-voxel linear weights (D, V) on the embeddings (the same role as BraInCoRL's)."""
        self._check_fitted()
        return self.coef_

    @property
    def bias_(self) -> np.ndarray:
        self._check_fitted()
        return self.intercept_

    def save(self, directory: str | Path) -> Path:
        """Write weights (safetensors) and settings (JSON) in the shared checkpoint format."""
        self._check_fitted()
        state = {
            "coef": torch.from_numpy(np.ascontiguousarray(self.coef_)),
            "intercept": torch.from_numpy(self.intercept_),
            "x_mean": torch.from_numpy(self.x_mean_.astype(np.float32)),
            "alphas": torch.from_numpy(self.alphas_.astype(np.float64)),
            "cv_scores": torch.from_numpy(self.cv_scores_.astype(np.float64)),
        }
        config = {"alphas": self.alphas, "cv": self.cv, "seed": self.seed}
        return save_checkpoint(directory, state, config, model_class=MODEL_CLASS, trained=self.trained)

    @classmethod
    def load(cls, directory: str | Path) -> RidgeEncoder:
        """Rebuild an encoder saved by :meth:`save`."""
        ckpt = load_checkpoint(directory, expected_class=MODEL_CLASS)
        out = cls(alphas=ckpt.config["alphas"], cv=ckpt.config["cv"], seed=ckpt.config["seed"])
        state = {k: v.numpy() for k, v in ckpt.state_dict.items()}
        out.coef_, out.intercept_ = state["coef"], state["intercept"]
        out.x_mean_ = state["x_mean"].astype(np.float64)
        out.alphas_, out.cv_scores_ = state["alphas"], state["cv_scores"]
        out.trained = ckpt.trained
        return out
