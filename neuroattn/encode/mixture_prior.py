"""A Gaussian-mixture prior on a voxel's standardised encoder weights, and the exact posterior mean it gives.

BraInCoRL's Bayes path (:class:`~neuroattn.encode.braincorl.BraInCoRL`, ``prior_components > 0``): given a voxel's
support set, the posterior under ``w ~ sum_c pi_c N(mu_c, P_c^-1)`` and ``z = X w + noise`` is a mixture of
per-component Gaussian posteriors weighted by each component's evidence. It uses the support's own ``X^T X``, so it
is exact at any k (k < D included), and every parameter is differentiable, so meta-training tunes the prior.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from neuroattn.errors import InvalidInputError


class MixturePrior(nn.Module):
    """``C`` Gaussian components on ``D``-dim weights in standardised response units, plus the noise share.

    Each component's precision is ``P_c = R_c R_c^T`` with ``R_c`` lower triangular (its diagonal stored as a
    log), so ``P_c`` stays positive definite and ``log det P_c`` is exact. The noise share ``s2`` (of a
    standardised response's unit variance) is a sigmoid, in (0, 1).
    """

    def __init__(self, dim: int, components: int, noise: float = 0.5) -> None:
        super().__init__()
        if components < 1 or dim < 1 or not 0.0 < noise < 1.0:
            raise ValueError(f"need dim >= 1, components >= 1 and noise in (0, 1); got {dim}, {components}, {noise}")
        self.mean = nn.Parameter(torch.zeros(components, dim))  # mu (C, D)
        self.precision_factor = nn.Parameter(torch.zeros(components, dim, dim))  # R_c, log on the diagonal
        self.mix_logit = nn.Parameter(torch.zeros(components))  # log pi_c up to a constant
        self.noise_logit = nn.Parameter(torch.tensor(math.log(noise / (1.0 - noise))))

    @property
    def noise(self) -> Tensor:
        """Noise share ``s2`` of a standardised response (scalar)."""
        return torch.sigmoid(self.noise_logit)

    def factor(self) -> Tensor:
        """``R`` ``(C, D, D)``: lower triangular with a positive diagonal, ``P = R R^T``."""
        raw = self.precision_factor
        return torch.tril(raw, diagonal=-1) + torch.diag_embed(torch.diagonal(raw, dim1=-2, dim2=-1).exp())

    @torch.no_grad()
    def initialise(self, means: np.ndarray, covariances: np.ndarray, weights: np.ndarray, noise: float) -> None:
        """Set the prior to given components (e.g. a Gaussian mixture fit to other subjects' ridge weights).

        ``means`` ``(C, D)``, ``covariances`` ``(C, D, D)`` positive definite, ``weights`` ``(C,)`` > 0.
        """
        c, d = self.mean.shape
        means, covs, weights = (np.asarray(a, dtype=np.float64) for a in (means, covariances, weights))
        if means.shape != (c, d) or covs.shape != (c, d, d) or weights.shape != (c,) or not (weights > 0).all():
            raise InvalidInputError(f"prior components {means.shape}, {covs.shape}, {weights.shape} do not fit "
                                    f"({c}, {d}) with positive weights", None)  # fmt: skip
        if not 0.0 < noise < 1.0:
            raise InvalidInputError(f"noise share must be in (0, 1), got {noise}", None)
        factor = np.linalg.cholesky(np.linalg.inv(covs))  # (C, D, D), P = R R^T
        raw = np.tril(factor, -1) + np.einsum("cd,de->cde", np.log(np.diagonal(factor, axis1=1, axis2=2)), np.eye(d))
        self.mean.copy_(torch.from_numpy(means))
        self.precision_factor.copy_(torch.from_numpy(raw))
        self.mix_logit.copy_(torch.from_numpy(np.log(weights / weights.sum())))
        self.noise_logit.fill_(math.log(noise / (1.0 - noise)))

    def _joint(self, gram: Tensor, xz: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component posterior means ``(B, C, D)``, ``log pi_c + log evidence`` ``(B, C)`` and ``chol(A)``.

        ``gram`` is ``X^T X / s2`` ``(G, D, D)``, with G = B or 1 (one support set shared by all B voxels), and
        ``xz`` is ``X^T z / s2`` ``(B, D)``. With ``A_c = X^T X / s2 + P_c`` and ``h_c = X^T z / s2 + P_c mu_c``
        the posterior mean is ``A_c^-1 h_c`` and the log evidence, up to terms shared by every component, is
        ``-(mu_c^T P_c mu_c - h_c^T A_c^-1 h_c + log det A_c - log det P_c) / 2``. ``chol`` is ``(G, C, D, D)``.
        """
        dtype = gram.dtype
        factor = self.factor().to(dtype)  # (C, D, D)
        precision = factor @ factor.transpose(-1, -2)  # (C, D, D)
        mean = self.mean.to(dtype)
        p_mu = torch.einsum("cde,ce->cd", precision, mean)  # (C, D)
        rhs = xz[:, None] + p_mu  # (B, C, D)
        chol = torch.linalg.cholesky(gram[:, None] + precision)  # (G, C, D, D)
        if len(gram) == 1:  # one factorisation per component, every voxel a right-hand side
            weights = torch.cholesky_solve(rhs.permute(1, 2, 0), chol[0]).permute(2, 0, 1)  # (B, C, D)
        else:
            weights = torch.cholesky_solve(rhs[..., None], chol)[..., 0]  # (B, C, D)
        log_det_a = 2.0 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # (G, C)
        log_det_p = 2.0 * torch.diagonal(self.precision_factor, dim1=-2, dim2=-1).to(dtype).sum(-1)  # (C,)
        log_evidence = -0.5 * ((mean * p_mu).sum(-1) - (rhs * weights).sum(-1) + log_det_a - log_det_p)  # (B, C)
        return weights, torch.log_softmax(self.mix_logit.to(dtype), 0) + log_evidence, chol

    def posterior(self, centred: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component posterior means ``(B, C, D)`` and responsibilities ``(B, C)`` of B support sets.

        ``centred`` ``(B, k, D)`` support embeddings minus their mean (0 rows for padding), ``z`` ``(B, k)`` the
        standardised responses (0 for padding); see :meth:`_joint`. Computed in float32 or wider.
        """
        dtype = torch.promote_types(centred.dtype, torch.float32)
        with torch.autocast(device_type=centred.device.type, enabled=False):
            x, z, s2 = centred.to(dtype), z.to(dtype), self.noise.to(dtype)
            shared = bool((x == x[:1]).all())  # every voxel read the same support set: one factorisation per component
            gram = (x[:1].mT @ x[:1] if shared else x.mT @ x) / s2  # (1 or B, D, D)
            weights, joint, _ = self._joint(gram, torch.einsum("bkd,bk->bd", x, z) / s2)
        return weights, torch.softmax(joint, dim=-1)

    @torch.no_grad()
    def adapt(self, centred: Tensor, z: Tensor, iters: int, min_share: float = 1e-3) -> list[float]:
        """Empirical Bayes over one subject: EM steps on the mixture from many voxels that share a support set.

        ``centred`` ``(k, D)`` support embeddings minus their mean, ``z`` ``(k, V)`` each voxel's standardised
        responses. Each step sets every component's weight, mean and covariance to the responsibility-weighted
        average of the voxels' posterior weights (covariance: their scatter plus the posterior covariance),
        which never lowers the voxels' joint evidence; components holding less than ``min_share`` of the voxels
        keep their parameters. The noise share is kept. Returns the mean log evidence per voxel before each
        step and after the last (up to a constant), a record that EM climbs.
        """
        x, z = centred.double(), z.double()
        s2 = float(self.noise)
        gram, xz = (x.T @ x / s2)[None], (x.T @ z / s2).T  # (1, D, D) shared by every voxel, (V, D)
        history = []
        for step in range(iters + 1):
            weights, joint, chol = self._joint(gram, xz)  # (V, C, D), (V, C), (1, C, D, D)
            history.append(float(torch.logsumexp(joint, 1).mean()))
            if step == iters:
                break
            resp = torch.softmax(joint, dim=1)  # (V, C)
            count = resp.sum(0)  # (C,)
            keep = count < min_share * z.shape[1]
            mean = self.mean.double()
            new_mean = torch.einsum("vcd,vc->cd", weights, resp) / count.clamp_min(1e-12)[:, None]
            dev = weights - new_mean  # (V, C, D)
            dev = (dev * resp.sqrt()[..., None]).permute(1, 0, 2)  # (C, V, D), rows weighted by sqrt(resp)
            scatter = dev.transpose(1, 2) @ dev / count.clamp_min(1e-12)[:, None, None]
            new_cov = torch.cholesky_inverse(chol[0]) + scatter  # posterior covariance + scatter, (C, D, D)
            factor = self.factor().double()
            old_cov = torch.cholesky_inverse(factor)  # P^-1 = (R R^T)^-1, R lower triangular, (C, D, D)
            new_mean = torch.where(keep[:, None], mean, new_mean)
            new_cov = torch.where(keep[:, None, None], old_cov, new_cov)
            mix = torch.where(keep, self.mix_logit.double().softmax(0), count / count.sum())
            self.initialise(new_mean.cpu().numpy(), new_cov.cpu().numpy(), mix.clamp_min(1e-12).cpu().numpy(), s2)
        return history

    def posterior_mean(self, centred: Tensor, z: Tensor) -> Tensor:
        """The mixture's posterior-mean weights ``(B, D)`` (see :meth:`posterior`)."""
        weights, resp = self.posterior(centred, z)
        return torch.einsum("bcd,bc->bd", weights, resp)


def fit_mixture(weights: np.ndarray, components: int, *, seed: int = 0, reg: float = 1e-3
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian mixture (full covariances) fit to voxel weights ``(V, D)``: means, covariances, mixing weights.

    ``reg`` is added to every covariance's diagonal, relative to the mean weight variance (keeps them invertible).
    """
    from sklearn.mixture import GaussianMixture

    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or len(weights) < 2 * components or not np.isfinite(weights).all():
        raise InvalidInputError(f"a {components}-component prior needs finite (V, D) weights with V >= "
                                f"{2 * components}; got {weights.shape}", None)  # fmt: skip
    floor = reg * float(weights.var(axis=0).mean())
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=max(floor, 1e-12), random_state=seed,
                          max_iter=200).fit(weights)  # fmt: skip
    return gmm.means_, gmm.covariances_, gmm.weights_
