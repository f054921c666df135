"""Covariance estimates from sufficient statistics (pure numpy, no pyspark).

Options (``covariance`` in the configuration):

``full``
    The maximum-likelihood covariance S = m2 / n.  The default.  When n <= d, or the
    condition number of S exceeds ``max_condition``, or S is not positive definite, the job
    falls back to ``ledoit_wolf`` and logs a warning: a Mahalanobis distance through a
    near-singular S is dominated by noise directions.
``diagonal``
    diag(S): per-feature variances, no correlations.  O(d) to apply.
``lowrank``
    The top ``rank`` = r eigenpairs (lambda_i, v_i) of S plus an isotropic rest (probabilistic
    PCA, Tipping & Bishop 1999):

        Sigma = V diag(lambda) V^T + sigma^2 (I - V V^T),
        sigma^2 = (tr S - sum_{i<=r} lambda_i) / (d - r),

    the mean of the d - r discarded eigenvalues, so tr Sigma = tr S.  Sigma^-1 has the same
    eigenvectors, V diag(1/lambda) V^T + (I - V V^T) / sigma^2, and costs O(d r) to apply.
    When S has rank <= r (e.g. fewer rows than r) sigma^2 is 0; it is floored at 1e-12 tr(S)/d
    with a warning.  With r = d - 1 the estimate is S itself; r >= d leaves no rest, so the
    job uses ``full`` instead and logs a warning.
``ledoit_wolf``
    Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance
    matrices": (1 - s) S + s * mu * I with mu = tr(S) / d and the intensity s estimated from
    the data.  The estimate of s needs sum_k ||x_k - mean||^4, which
    :class:`~distunlearn.core.stats.GaussianStats` carries as ``q4``; the formulas are those of
    scikit-learn's ``ledoit_wolf_shrinkage`` (the tests compare against it).
``ridge``
    S + ridge * (tr(S) / d) * I: a fixed ridge relative to the mean variance, so the same
    ``ridge`` value means the same thing whatever the units of the features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from distunlearn.core.stats import Array, GaussianStats
from distunlearn.errors import InputError

log = logging.getLogger(__name__)

COVARIANCE_KINDS = ("full", "diagonal", "ledoit_wolf", "ridge", "lowrank")
#: Smallest variance kept, relative to the mean variance tr(S) / d (diagonal and lowrank).
VARIANCE_FLOOR = 1e-12


@dataclass(frozen=True)
class CovarianceEstimate:
    """A covariance and how it was obtained (``kind`` may differ from the request).

    The dense kinds (full, ledoit_wolf, ridge) carry the d x d matrix in ``dense``.  The
    structured kinds carry only their factors, so that a scoring model holding the estimate
    stays O(d r) to broadcast:

    - diagonal: Sigma = diag(variances);
    - lowrank:  Sigma = V diag(eigenvalues) V^T + isotropic (I - V V^T), V = ``basis`` (d, r)
      with orthonormal columns, eigenvalues descending and all >= isotropic > 0.
    """

    kind: str
    shrinkage: float
    reason: str
    dense: Array | None = None
    variances: Array | None = None
    basis: Array | None = None
    eigenvalues: Array | None = None
    isotropic: float = 0.0

    @property
    def matrix(self) -> Array:
        """Sigma as a dense d x d array, built on demand for the structured kinds (for checks
        and small d: scoring never needs it for diagonal or lowrank)."""
        if self.dense is not None:
            return self.dense
        if self.variances is not None:
            return np.diag(self.variances)
        if self.basis is None or self.eigenvalues is None:
            raise ValueError(f"{self.kind} covariance estimate carries no factors")
        v = self.basis
        rest = self.isotropic * (np.eye(v.shape[0]) - v @ v.T)
        return (v * self.eigenvalues) @ v.T + rest


def ledoit_wolf_shrinkage(stats: GaussianStats) -> float:
    """Ledoit-Wolf shrinkage intensity in [0, 1] from sufficient statistics.

    With S = m2 / n, mu = tr(S) / d (scikit-learn's notation):
      beta  = (q4 / n - ||S||_F^2) / (d n),   delta = ||S - mu I||_F^2 / d,
      s = min(beta, delta) / delta  (0 when delta = 0).
    """
    n, d = stats.n, stats.dim
    s = stats.covariance()
    mu = float(np.trace(s)) / d
    frob2 = float(np.sum(s * s))
    beta = (stats.q4 / n - frob2) / (d * n)
    delta = (frob2 - 2.0 * mu * float(np.trace(s)) + d * mu * mu) / d
    if delta <= 0.0:
        return 0.0
    return float(min(max(beta, 0.0), delta) / delta)


def _condition_number(matrix: Array) -> float:
    eig = np.linalg.eigvalsh(matrix)
    if eig[0] <= 0.0:
        return float("inf")
    return float(eig[-1] / eig[0])


@dataclass(frozen=True)
class CovarianceSpec:
    """Which estimate to make (module docstring): its kind, and the parameters of the kinds
    that take one (``ridge``; ``max_condition`` of ``full``; ``rank`` r of ``lowrank``)."""

    kind: str = "full"
    ridge: float = 1e-3
    max_condition: float = 1e8
    rank: int = 64


def estimate_covariance(stats: GaussianStats, kind: str = CovarianceSpec.kind, ridge: float = CovarianceSpec.ridge,
                        max_condition: float = CovarianceSpec.max_condition, label: str = "covariance",
                        rank: int = CovarianceSpec.rank) -> CovarianceEstimate:
    """The covariance used by the Mahalanobis rules, per the options in the module docstring.

    ``label`` names the estimate in log messages and errors (e.g. "pooled covariance");
    ``rank`` is r of ``lowrank``.  Raises :class:`InputError` when every row is identical
    (the covariance is zero and no estimate is positive definite) or ``rank`` < 1.
    """
    if kind not in COVARIANCE_KINDS:
        raise InputError(f"unknown covariance {kind!r}; choose one of {', '.join(COVARIANCE_KINDS)}")
    if kind == "lowrank" and rank < 1:
        raise InputError(f"covariance rank must be at least 1, got {rank}")
    if stats.n < 1:
        raise InputError(f"{label}: no rows")
    s = stats.covariance()
    d = stats.dim
    scale = float(np.trace(s)) / d
    if not scale > 0.0:
        raise InputError(f"{label} is zero: every row has the same feature vector")

    if kind == "diagonal":
        var = np.diag(s).copy()
        floor = VARIANCE_FLOOR * scale
        if np.any(var <= floor):
            log.warning("%s: %d features have zero variance; flooring them at %.3g",
                        label, int(np.sum(var <= floor)), floor)
            var = np.maximum(var, floor)
        return CovarianceEstimate("diagonal", 0.0, "requested", variances=var)
    if kind == "ridge":
        return CovarianceEstimate("ridge", ridge, "requested", dense=s + ridge * scale * np.eye(d))
    if kind == "ledoit_wolf":
        return _ledoit_wolf(stats, s, scale, "requested")
    if kind == "lowrank":
        if rank < d:
            return _lowrank(s, rank, scale, label)
        log.warning("%s: covariance rank %d >= d = %d leaves no isotropic rest; using the full "
                    "covariance instead", label, rank, d)
    requested = f"lowrank rank {rank} >= d = {d}" if kind == "lowrank" else "requested"

    # kind == "full" (or lowrank with r >= d): keep S unless it is unusable, then shrink and say why.
    if stats.n <= d:
        reason = f"n = {stats.n} <= d = {d}"
    else:
        cond = _condition_number(s)
        if cond <= max_condition:
            return CovarianceEstimate("full", 0.0, requested, dense=s)
        reason = f"condition number {cond:.3g} > max_condition {max_condition:.3g}"
    log.warning("%s: full covariance unusable (%s); using Ledoit-Wolf shrinkage instead", label, reason)
    return _ledoit_wolf(stats, s, scale, reason)


def _lowrank(s: Array, rank: int, scale: float, label: str) -> CovarianceEstimate:
    """Top-``rank`` eigenpairs of S plus the mean of the other eigenvalues (module docstring)."""
    d = s.shape[0]
    eigenvalues, vectors = np.linalg.eigh(s)  # ascending
    top = eigenvalues[::-1][:rank]
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank])
    isotropic = (float(np.trace(s)) - float(top.sum())) / (d - rank)
    floor = VARIANCE_FLOOR * scale
    if not isotropic > floor:
        log.warning("%s: S has rank <= %d, so no variance is left outside the top %d eigenvectors; "
                    "flooring the isotropic variance at %.3g (a lower --covariance-rank avoids this)",
                    label, rank, rank, floor)
        isotropic = floor
    # lambda_r >= sigma^2 holds exactly (sigma^2 averages smaller eigenvalues); the clip only
    # guards rounding and eigenvalues that are ~0 when S has rank < r.
    top = np.maximum(top, isotropic)
    return CovarianceEstimate("lowrank", 0.0, "requested", basis=basis, eigenvalues=top,
                              isotropic=isotropic)


def _ledoit_wolf(stats: GaussianStats, s: Array, scale: float, reason: str) -> CovarianceEstimate:
    shrink = ledoit_wolf_shrinkage(stats)
    matrix = (1.0 - shrink) * s + shrink * scale * np.eye(stats.dim)
    if _condition_number(matrix) == float("inf"):
        # Only when the data are rank-deficient *and* the estimated intensity is ~0;
        # add the smallest ridge that makes the matrix usable rather than failing.
        matrix = matrix + 1e-10 * scale * np.eye(stats.dim)
    return CovarianceEstimate("ledoit_wolf", shrink, reason, dense=matrix)


def pooled(forget: GaussianStats, retain: GaussianStats) -> GaussianStats:
    """Statistics of the forget and retain rows each centred on its own mean, concatenated.

    Their covariance (m2_forget + m2_retain) / (n_forget + n_retain) is the maximum-likelihood
    shared covariance of a two-Gaussian model, the one linear discriminant analysis uses.
    The concatenated rows have mean 0, so every moment simply adds.
    """
    return GaussianStats(
        n=forget.n + retain.n,
        mean=np.zeros(forget.dim),
        m2=forget.m2 + retain.m2,
        t3=forget.t3 + retain.t3,
        q4=forget.q4 + retain.q4,
    )
