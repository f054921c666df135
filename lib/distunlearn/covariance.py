"""Covariance estimates from sufficient statistics (pure numpy, no pyspark).

Options (``covariance`` in the configuration):

``full``
    The maximum-likelihood covariance S = m2 / n.  The default.  When n <= d, or the
    condition number of S exceeds ``max_condition``, or S is not positive definite, the job
    falls back to ``ledoit_wolf`` and logs a warning: a Mahalanobis distance through a
    near-singular S is dominated by noise directions.
``diagonal``
    diag(S): per-feature variances, no correlations.  O(d) to apply.
``ledoit_wolf``
    Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance
    matrices": (1 - s) S + s * mu * I with mu = tr(S) / d and the intensity s estimated from
    the data.  The estimate of s needs sum_k ||x_k - mean||^4, which
    :class:`~distunlearn.stats.GaussianStats` carries as ``q4``; the formulas are those of
    scikit-learn's ``ledoit_wolf_shrinkage`` (the tests compare against it).
``ridge``
    S + ridge * (tr(S) / d) * I: a fixed ridge relative to the mean variance, so the same
    ``ridge`` value means the same thing whatever the units of the features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from distunlearn.errors import InputError
from distunlearn.stats import Array, GaussianStats

log = logging.getLogger(__name__)

COVARIANCE_KINDS = ("full", "diagonal", "ledoit_wolf", "ridge")


@dataclass(frozen=True)
class CovarianceEstimate:
    """A covariance matrix and how it was obtained (``kind`` may differ from the request)."""

    matrix: Array
    kind: str
    shrinkage: float
    reason: str


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


def estimate_covariance(
    stats: GaussianStats,
    kind: str = "full",
    ridge: float = 1e-3,
    max_condition: float = 1e8,
    label: str = "covariance",
) -> CovarianceEstimate:
    """The covariance used by the Mahalanobis rules, per the options in the module docstring.

    ``label`` names the estimate in log messages and errors (e.g. "pooled covariance").
    Raises :class:`InputError` when every row is identical (the covariance is zero and no
    estimate is positive definite).
    """
    if kind not in COVARIANCE_KINDS:
        raise InputError(f"unknown covariance {kind!r}; choose one of {', '.join(COVARIANCE_KINDS)}")
    if stats.n < 1:
        raise InputError(f"{label}: no rows")
    s = stats.covariance()
    d = stats.dim
    scale = float(np.trace(s)) / d
    if not scale > 0.0:
        raise InputError(f"{label} is zero: every row has the same feature vector")

    if kind == "diagonal":
        var = np.diag(s).copy()
        floor = 1e-12 * scale
        if np.any(var <= floor):
            log.warning("%s: %d features have zero variance; flooring them at %.3g",
                        label, int(np.sum(var <= floor)), floor)
            var = np.maximum(var, floor)
        return CovarianceEstimate(np.diag(var), "diagonal", 0.0, "requested")
    if kind == "ridge":
        return CovarianceEstimate(s + ridge * scale * np.eye(d), "ridge", ridge, "requested")
    if kind == "ledoit_wolf":
        return _ledoit_wolf(stats, s, scale, "requested")

    # kind == "full": keep S unless it is unusable, then shrink and say why.
    if stats.n <= d:
        reason = f"n = {stats.n} <= d = {d}"
    else:
        cond = _condition_number(s)
        if cond <= max_condition:
            return CovarianceEstimate(s, "full", 0.0, "requested")
        reason = f"condition number {cond:.3g} > max_condition {max_condition:.3g}"
    log.warning("%s: full covariance unusable (%s); using Ledoit-Wolf shrinkage instead", label, reason)
    return _ledoit_wolf(stats, s, scale, reason)


def _ledoit_wolf(stats: GaussianStats, s: Array, scale: float, reason: str) -> CovarianceEstimate:
    shrink = ledoit_wolf_shrinkage(stats)
    matrix = (1.0 - shrink) * s + shrink * scale * np.eye(stats.dim)
    if _condition_number(matrix) == float("inf"):
        # Only when the data are rank-deficient *and* the estimated intensity is ~0;
        # add the smallest ridge that makes the matrix usable rather than failing.
        matrix = matrix + 1e-10 * scale * np.eye(stats.dim)
    return CovarianceEstimate(matrix, "ledoit_wolf", shrink, reason)


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
