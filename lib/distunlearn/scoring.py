"""Scoring rules of the paper, as vectorised numpy kernels (pure numpy, no pyspark).

Higher score = removed first.  mu1 and mu2 are the forget and retain means, Sigma the
covariance chosen by ``covariance_source`` (see :class:`ScoringModel`), and

    d_M(x, mu)   = sqrt((x - mu)^T Sigma^-1 (x - mu))             Mahalanobis distance
    d_cos(x, mu) = 1 - x^T mu / (||x|| ||mu||)                    cosine distance

=========  ===============================================  ==========================
method     score                                            cost per row
=========  ===============================================  ==========================
random     uniform in [0, 1) from a seeded hash of the id   (computed in Spark SQL)
mu2        ||x - mu2||                                      O(d)
maha_mu2   d_M(x, mu2)                                      O(d^2), shared GEMM
cos_mu2    d_cos(x, mu2)                                    O(d)
lr_maha    d_M(x, mu2) - d_M(x, mu1)                        O(d^2), shared GEMM
lr_cos     d_cos(x, mu2) - d_cos(x, mu1)                    O(d)
lr_gauss   1/2 [d_M(x, mu2)^2 - d_M(x, mu1)^2]              O(d), one GEMV
coreset    -||x - mu1||                                     O(d)
=========  ===============================================  ==========================

lr_gauss is log p1(x)/p2(x) for two Gaussians with a shared covariance, up to a constant;
it is linear in x:  1/2 [d_M(x,mu2)^2 - d_M(x,mu1)^2] = w^T x + c with
w = Sigma^-1 (mu1 - mu2) and c = 1/2 (mu2^T Sigma^-1 mu2 - mu1^T Sigma^-1 mu1), which is how
it is computed (exact, and no cancellation between two large squared distances).

Sigma^-1 is never formed per row: with the Cholesky factor Sigma = L L^T, the whitening
matrix W = L^-1 is computed once on the driver, and d_M(x, mu) = ||W x - W mu||.  A batch of
rows is whitened with one GEMM, Z = X W^T, shared by maha_mu2 and lr_maha.

Cosine distance of a zero vector is defined as 1 (cosine similarity 0).  With
``cosine_center = "pooled_mean"`` both x and the means are centred on the pooled mean of
forget and retain before the cosine (the paper leaves this choice open; the default "none"
uses the raw features, as embeddings usually are).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from distunlearn.covariance import CovarianceEstimate, estimate_covariance, pooled
from distunlearn.errors import ConfigError
from distunlearn.stats import Array, GaussianStats

METHODS = ("random", "mu2", "maha_mu2", "cos_mu2", "lr_maha", "lr_cos", "lr_gauss", "coreset")
DEFAULT_METHODS = ("lr_gauss", "maha_mu2", "mu2", "random")
#: Methods computed by the numpy kernel; ``random`` is a Spark SQL hash of the id.
KERNEL_METHODS = tuple(m for m in METHODS if m != "random")
_MAHALANOBIS = frozenset({"maha_mu2", "lr_maha", "lr_gauss"})
COVARIANCE_SOURCES = ("pooled", "retain")
COSINE_CENTERS = ("none", "pooled_mean")


def validate_methods(methods: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return the methods as a tuple, or raise ConfigError naming the first unknown one."""
    if not methods:
        raise ConfigError("no scoring method given; choose from " + ", ".join(METHODS))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"method listed twice in {','.join(methods)}")
    return tuple(methods)


def _unit(v: Array) -> Array:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0.0 else np.zeros_like(v)


@dataclass(frozen=True)
class ScoringModel:
    """Everything a worker needs to score forget rows: a few vectors and one d x d matrix.

    Built once on the driver from the statistics and broadcast to the workers.
    """

    mu1: Array
    mu2: Array
    whitener: Array  # W = L^-1 with Sigma = L L^T, shape (d, d), lower triangular
    w_mu1: Array  # W mu1
    w_mu2: Array  # W mu2
    lr_weight: Array  # Sigma^-1 (mu1 - mu2)
    lr_offset: float  # 1/2 (mu2^T Sigma^-1 mu2 - mu1^T Sigma^-1 mu1)
    cos_center: Array  # subtracted from x before cosine (zeros for "none")
    cos_u1: Array  # unit vector of mu1 - cos_center
    cos_u2: Array  # unit vector of mu2 - cos_center
    covariance: CovarianceEstimate

    @property
    def dim(self) -> int:
        return int(self.mu1.shape[0])

    @classmethod
    def build(
        cls,
        forget: GaussianStats,
        retain: GaussianStats,
        covariance_source: str = "pooled",
        covariance: str = "full",
        ridge: float = 1e-3,
        max_condition: float = 1e8,
        cosine_center: str = "none",
    ) -> ScoringModel:
        """Means, whitening factor and linear-discriminant weights from the two statistics.

        ``covariance_source``: "pooled" (default) is the within-domain covariance
        (m2_forget + m2_retain) / (n_forget + n_retain): the maximum-likelihood shared
        covariance, which makes lr_gauss the exact shared-covariance Gaussian log-likelihood
        ratio.  "retain" uses the retain covariance alone (distance *to the retain
        distribution*); when n_retain >> n_forget the two nearly coincide.
        """
        if covariance_source not in COVARIANCE_SOURCES:
            raise ConfigError(f"unknown covariance_source {covariance_source!r}; "
                              f"choose one of {', '.join(COVARIANCE_SOURCES)}")
        if cosine_center not in COSINE_CENTERS:
            raise ConfigError(f"unknown cosine_center {cosine_center!r}; "
                              f"choose one of {', '.join(COSINE_CENTERS)}")
        source = pooled(forget, retain) if covariance_source == "pooled" else retain
        est = estimate_covariance(source, covariance, ridge, max_condition,
                                  label=f"{covariance_source} covariance")
        chol = np.linalg.cholesky(est.matrix)
        whitener = np.linalg.solve(chol, np.eye(forget.dim))
        w_mu1, w_mu2 = whitener @ forget.mean, whitener @ retain.mean
        lr_weight = whitener.T @ (w_mu1 - w_mu2)
        lr_offset = 0.5 * (float(w_mu2 @ w_mu2) - float(w_mu1 @ w_mu1))
        if cosine_center == "pooled_mean":
            center = (forget.n * forget.mean + retain.n * retain.mean) / (forget.n + retain.n)
        else:
            center = np.zeros(forget.dim)
        return cls(
            mu1=forget.mean, mu2=retain.mean, whitener=whitener, w_mu1=w_mu1, w_mu2=w_mu2,
            lr_weight=lr_weight, lr_offset=lr_offset, cos_center=center,
            cos_u1=_unit(forget.mean - center), cos_u2=_unit(retain.mean - center),
            covariance=est,
        )

    def score(self, x: NDArray[np.floating], methods: tuple[str, ...]) -> dict[str, Array]:
        """Scores of the rows of ``x`` (shape (n, d)) for each kernel method, float64 (n,)."""
        x = np.asarray(x, dtype=np.float64)
        out: dict[str, Array] = {}
        need = set(methods)
        if need & {"maha_mu2", "lr_maha"}:
            z = x @ self.whitener.T
            d2 = np.linalg.norm(z - self.w_mu2, axis=1)
            if "maha_mu2" in need:
                out["maha_mu2"] = d2
            if "lr_maha" in need:
                out["lr_maha"] = d2 - np.linalg.norm(z - self.w_mu1, axis=1)
        if "lr_gauss" in need:
            out["lr_gauss"] = x @ self.lr_weight + self.lr_offset
        if "mu2" in need:
            out["mu2"] = np.linalg.norm(x - self.mu2, axis=1)
        if "coreset" in need:
            out["coreset"] = -np.linalg.norm(x - self.mu1, axis=1)
        if need & {"cos_mu2", "lr_cos"}:
            xc = x - self.cos_center
            norms = np.linalg.norm(xc, axis=1)
            inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0.0)
            cos2 = 1.0 - (xc @ self.cos_u2) * inv
            if "cos_mu2" in need:
                out["cos_mu2"] = cos2
            if "lr_cos" in need:
                out["lr_cos"] = cos2 - (1.0 - (xc @ self.cos_u1) * inv)
        unknown = need - set(out) - {"random"}
        if unknown:
            raise ConfigError(f"unknown method {sorted(unknown)[0]!r}")
        return out

    @staticmethod
    def uses_covariance(methods: tuple[str, ...]) -> bool:
        return bool(set(methods) & _MAHALANOBIS)
