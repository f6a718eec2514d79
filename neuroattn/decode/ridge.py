"""Ridge regression baseline decoder: voxels -> retrieval targets, CLIP tokens and VAE latents (himalaya RidgeCV)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from neuroattn.decode.base import as_betas, normalize_rows
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint

MODEL_CLASS = "RidgeDecoder"
HEADS = ("retrieval", "clip", "latents")


SMALL_PROBLEM = 2_000_000  # trials x voxels below which the ridge solve runs on one BLAS thread


def default_alphas() -> list[float]:
    """Log grid of ridge penalties, 1e-1 .. 1e6 (15 values)."""
    return [float(a) for a in np.logspace(-1, 6, 15)]


def solve_ridge_cv(
    xc: np.ndarray, yc: np.ndarray, alphas: list[float], cv, *, local_alpha: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge without intercept on centred ``xc`` (n, F) -> ``yc`` (n, T), penalty chosen by CV (himalaya, SVD).

    ``cv`` is a fold count or a list of (train, test) index pairs; ``local_alpha`` picks one penalty per target
    column instead of one for all. Returns the chosen penalties (T,) (or (1,)), coefficients (F, T) and the CV
    R^2 (T,) at them, all float64.
    """
    from himalaya.ridge import solve_ridge_cv_svd
    from himalaya.scoring import r2_score

    # small problems: extra BLAS threads only contend with other work (100x slower seen); large ones use them
    threads = 1 if xc.size < SMALL_PROBLEM else None
    with threadpool_limits(threads):
        chosen, coef, scores = solve_ridge_cv_svd(
            np.asarray(xc, dtype=np.float64), np.asarray(yc, dtype=np.float64),
            alphas=np.asarray(alphas, dtype=np.float64), fit_intercept=False, cv=cv, local_alpha=local_alpha,
            warn=False, score_func=r2_score,
        )
    return (np.asarray(chosen, dtype=np.float64).reshape(-1), np.asarray(coef, dtype=np.float64),
            np.asarray(scores, dtype=np.float64).reshape(-1))


@dataclass
class RidgeConfig:
    """Hyper-parameters of :class:`RidgeDecoder`."""

    alphas: list[float] = field(default_factory=default_alphas)  # penalties tried by cross-validation
    cv: int = 5  # folds; grouped by image id when groups are given, so repeats never straddle folds
    alpha_per_target: bool = False  # one alpha per head (stable) or one per output dimension (himalaya local_alpha)
    seed: int = 0  # fold shuffling

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if not self.alphas or min(self.alphas) <= 0:
            raise ConfigError(f"'alphas' must be a non-empty list of positive penalties, got {self.alphas}")
        if self.cv < 2:
            raise ConfigError(f"'cv' must be >= 2 folds, got {self.cv}")


@dataclass
class _Head:
    """One linear map y = (x - x_mean) @ coef + y_mean, with the penalty(ies) chosen by CV."""

    coef: np.ndarray  # (V, T)
    y_mean: np.ndarray  # (T,)
    alphas: np.ndarray  # (T,) chosen penalties
    cv_score: float  # mean CV R^2 over outputs at the chosen penalties

    def predict(self, xc: np.ndarray) -> np.ndarray:
        return (xc @ self.coef + self.y_mean).astype(np.float32)


class RidgeDecoder:
    """The classic linear baseline (MindEye's and Ozcelik's): ridge from voxels to every decoding target.

    Three heads, each ``RidgeCV`` over a log grid of penalties: retrieval targets (flattened CLIP tokens,
    rows L2-normalised), raw CLIP tokens (for reconstruction) and optionally VAE latents.

    Parameters
    ----------
    alphas : list of float, optional
        Penalties tried by cross-validation (default ``logspace(-1, 6, 15)``).
    cv : int
        Number of CV folds.
    alpha_per_target : bool
        Choose a penalty per output dimension instead of one per head.
    seed : int
        Seed of the fold shuffling.
    """

    name = "ridge"

    def __init__(
        self, alphas: list[float] | None = None, cv: int = 5, alpha_per_target: bool = False, seed: int = 0
    ) -> None:
        self.config = RidgeConfig(alphas=list(alphas) if alphas is not None else default_alphas(), cv=cv,
                                  alpha_per_target=alpha_per_target, seed=seed)
        self.config.validate()
        self.targets_trained = False
        self.heads_: dict[str, _Head] = {}

    @property
    def trained(self) -> bool:
        """Fitted, and on targets from trained CLIP/VAE weights (random-weight targets make it UNTRAINED)."""
        return bool(self.heads_) and self.targets_trained

    # ------------------------------------------------------------------ fitting
    def _splitter(self, n: int, groups: np.ndarray | None):
        from sklearn.model_selection import GroupKFold, KFold

        if groups is None:
            return KFold(self.config.cv, shuffle=True, random_state=self.config.seed)
        n_groups = len(np.unique(groups))
        if n_groups < self.config.cv:
            raise InvalidInputError(f"{n_groups} distinct images cannot make {self.config.cv} CV folds")
        folds = GroupKFold(self.config.cv)
        return list(folds.split(np.zeros(n), groups=groups))

    def _fit_head(self, xc: np.ndarray, y: np.ndarray, cv) -> _Head:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)  # (N, T)
        y_mean = y.mean(axis=0)
        alphas, coef, cv_scores = solve_ridge_cv(xc, y - y_mean, self.config.alphas, cv,
                                                 local_alpha=self.config.alpha_per_target)
        return _Head(coef.astype(np.float32), y_mean.astype(np.float32), alphas, float(np.mean(cv_scores)))

    def fit(
        self,
        betas: np.ndarray,
        tokens: np.ndarray,
        latents: np.ndarray | None = None,
        *,
        groups: np.ndarray | None = None,
        targets_trained: bool = False,
    ) -> RidgeDecoder:
        """Fit every head.

        Parameters
        ----------
        betas : (N, V) float32
            Training voxel responses (z-scored per voxel over the training trials).
        tokens : (N, L, D) float32
            CLIP tokens of the seen image of each trial.
        latents : (N, C, h, w) float32, optional
            VAE latents of the seen images; without them :meth:`predict_latents` returns None.
        groups : (N,) int, optional
            Image id of each trial, so CV folds never split repeats of one image.
        targets_trained : bool
            Whether the CLIP (and VAE) that made the targets had trained weights; False labels the
            decoder UNTRAINED.
        """
        x = as_betas(betas).astype(np.float64)
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim != 3 or len(tokens) != len(x):
            raise InvalidInputError(f"tokens must be (N={len(x)}, L, D), got shape {tokens.shape}")
        if latents is not None and (np.ndim(latents) != 4 or len(latents) != len(x)):
            raise InvalidInputError(f"latents must be (N={len(x)}, C, h, w), got shape {np.shape(latents)}")
        if groups is not None and len(groups) != len(x):
            raise InvalidInputError(f"groups must have one entry per trial ({len(x)}), got {len(groups)}")
        self.x_mean_ = x.mean(axis=0)
        xc = x - self.x_mean_  # (N, V)
        cv = self._splitter(len(x), None if groups is None else np.asarray(groups))
        self.token_shape_ = tuple(int(s) for s in tokens.shape[1:])  # (L, D)
        self.heads_ = {
            "retrieval": self._fit_head(xc, normalize_rows(tokens.reshape(len(tokens), -1)), cv),  # (N, L*D)
            "clip": self._fit_head(xc, tokens, cv),
        }
        self.latent_shape_: tuple[int, ...] | None = None
        if latents is not None:
            self.latent_shape_ = tuple(int(s) for s in np.shape(latents)[1:])  # (C, h, w)
            self.heads_["latents"] = self._fit_head(xc, latents, cv)
        self.n_voxels_ = x.shape[1]
        self.targets_trained = bool(targets_trained)
        return self

    @property
    def chosen_alphas_(self) -> dict[str, float]:
        """Median penalty chosen per head."""
        self._check_fitted()
        return {k: float(np.median(h.alphas)) for k, h in self.heads_.items()}

    @property
    def cv_scores_(self) -> dict[str, float]:
        """Mean cross-validated R^2 per head at the chosen penalties."""
        self._check_fitted()
        return {k: h.cv_score for k, h in self.heads_.items()}

    # --------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not self.heads_:
            raise ConfigError("RidgeDecoder is not fitted; call fit() or RidgeDecoder.load() first")

    def _centred(self, betas: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return as_betas(betas, self.n_voxels_).astype(np.float32) - self.x_mean_.astype(np.float32)

    def brain_embeddings(self, betas: np.ndarray) -> np.ndarray:
        """(B, V) -> (B, L*D) predicted retrieval targets, rows L2-normalised."""
        xc = self._centred(betas)
        return normalize_rows(self.heads_["retrieval"].predict(xc))

    def predict_clip(self, betas: np.ndarray) -> np.ndarray:
        """(B, V) -> (B, L, D) predicted CLIP tokens."""
        xc = self._centred(betas)
        pred = self.heads_["clip"].predict(xc)
        return pred.reshape(len(pred), *self.token_shape_)  # (B, L, D)

    def predict_latents(self, betas: np.ndarray) -> np.ndarray | None:
        """(B, V) -> (B, C, h, w) predicted VAE latents, or None when fitted without latents."""
        xc = self._centred(betas)
        if "latents" not in self.heads_:
            return None
        pred = self.heads_["latents"].predict(xc)
        return pred.reshape(len(pred), *self.latent_shape_)  # (B, C, h, w)

    # ----------------------------------------------------------- checkpointing
    def save(self, directory: str | Path) -> Path:
        """Write weights (safetensors) and config (JSON) with :func:`neuroattn.io.checkpoints.save_checkpoint`."""
        self._check_fitted()
        state = {"x_mean": torch.from_numpy(self.x_mean_.astype(np.float32))}
        for key, head in self.heads_.items():
            state[f"{key}.coef"] = torch.from_numpy(head.coef)
            state[f"{key}.y_mean"] = torch.from_numpy(head.y_mean)
            state[f"{key}.alphas"] = torch.from_numpy(head.alphas)
        config = {
            **asdict(self.config),
            "token_shape": list(self.token_shape_),
            "latent_shape": None if self.latent_shape_ is None else list(self.latent_shape_),
            "n_voxels": self.n_voxels_,
            "cv_scores": self.cv_scores_,
        }
        return save_checkpoint(directory, state, config, model_class=MODEL_CLASS, trained=self.trained,
                               data_summary={"targets_trained": self.targets_trained})

    @classmethod
    def load(cls, directory: str | Path) -> RidgeDecoder:
        """Rebuild a decoder saved by :meth:`save`."""
        ckpt = load_checkpoint(directory, expected_class=MODEL_CLASS)
        cfg = ckpt.config
        out = cls(alphas=cfg["alphas"], cv=cfg["cv"], alpha_per_target=cfg["alpha_per_target"], seed=cfg["seed"])
        state = {k: v.numpy() for k, v in ckpt.state_dict.items()}
        heads = [h for h in HEADS if f"{h}.coef" in state]
        if "x_mean" not in state or "retrieval" not in heads or "clip" not in heads:
            raise CheckpointError(f"{directory}: ridge checkpoint lacks x_mean or a retrieval/clip head")
        out.x_mean_ = state["x_mean"].astype(np.float64)
        out.heads_ = {
            h: _Head(state[f"{h}.coef"], state[f"{h}.y_mean"], state[f"{h}.alphas"], float(cfg["cv_scores"][h]))
            for h in heads
        }
        out.token_shape_ = tuple(cfg["token_shape"])
        out.latent_shape_ = None if cfg["latent_shape"] is None else tuple(cfg["latent_shape"])
        out.n_voxels_ = int(cfg["n_voxels"])
        out.targets_trained = bool(ckpt.data_summary.get("targets_trained", ckpt.trained))
        return out
