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
maha_mu2   d_M(x, mu2)                                      O(d^2) / O(d) / O(d r) [*]
cos_mu2    d_cos(x, mu2)                                    O(d)
lr_maha    d_M(x, mu2) - d_M(x, mu1)                        O(d^2) / O(d) / O(d r) [*]
lr_cos     d_cos(x, mu2) - d_cos(x, mu1)                    O(d)
lr_gauss   1/2 [d_M(x, mu2)^2 - d_M(x, mu1)^2]              O(d), one GEMV
coreset    -||x - mu1||                                     O(d)
lr_ngram   sum_j c_j(x) (log theta1_j - log theta2_j)       O(n-grams of x)  [text]
=========  ===============================================  ==========================

[text] lr_ngram scores the hashed n-gram counts c(x) of a text column with the multinomial
log-likelihood ratio (:mod:`distunlearn.core.text`); the other methods score its projected TF-IDF
features there.

[*] dense covariance (full, ledoit_wolf, ridge) / diagonal / lowrank of rank r.

lr_gauss is log p1(x)/p2(x) for two Gaussians with a shared covariance, up to a constant;
it is linear in x:  1/2 [d_M(x,mu2)^2 - d_M(x,mu1)^2] = w^T x + c with
w = Sigma^-1 (mu1 - mu2) and c = 1/2 (mu2^T Sigma^-1 mu2 - mu1^T Sigma^-1 mu1), which is how
it is computed (exact, and no cancellation between two large squared distances).

Sigma^-1 is never formed per row.  How d_M is computed depends on the structure of Sigma
(one small object per kind, see :func:`mahalanobis_kernel`):

- dense: with the Cholesky factor Sigma = L L^T, the whitening matrix W = L^-1 is computed
  once on the driver, and d_M(x, mu) = ||W x - W mu||.  A batch of rows is whitened with one
  GEMM, Z = X W^T, shared by maha_mu2 and lr_maha.
- diagonal: d_M(x, mu) = ||(x - mu) / sd||, elementwise; no d x d matrix anywhere.
- lowrank, Sigma = V diag(lambda) V^T + sigma^2 (I - V V^T) with V (d, r) orthonormal: the
  coordinates p = V^T (x - mu) in the top-r eigenbasis and the rest of x - mu give

      d_M(x, mu)^2 = ||p / sqrt(lambda)||^2 + (||x - mu||^2 - ||p||^2) / sigma^2,

  with one (n x d)(d x r) GEMM per batch shared by both means; the model holds V and a few
  vectors, not a d x d matrix.

Cosine distance of a zero vector is defined as 1 (cosine similarity 0).  With
``cosine_center = "pooled_mean"`` both x and the means are centred on the pooled mean of
forget and retain before the cosine (the paper leaves this choice open; the default "none"
uses the raw features, as embeddings usually are).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from distunlearn.core.covariance import CovarianceEstimate, CovarianceSpec, estimate_covariance, pooled
from distunlearn.core.stats import Array, GaussianStats
from distunlearn.core.text import NgramModel
from distunlearn.errors import ConfigError

METHODS = ("random", "mu2", "maha_mu2", "cos_mu2", "lr_maha", "lr_cos", "lr_gauss", "coreset", "lr_ngram")
DEFAULT_METHODS = ("lr_gauss", "maha_mu2", "mu2", "random")
#: Methods computed by the numpy kernel; ``random`` is a Spark SQL hash of the id.
KERNEL_METHODS = tuple(m for m in METHODS if m != "random")
#: Methods that score a feature vector: all but lr_ngram, which scores n-gram counts (text input).
FEATURE_METHODS = tuple(m for m in METHODS if m != "lr_ngram")
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


# --------------------------------------------------------------------------- Mahalanobis kernels
class MahalanobisKernel(ABC):
    """d_M(x, c) = sqrt((x - c)^T Sigma^-1 (x - c)) from rows x to fixed centres c_0, c_1, ...

    One subclass per structure of Sigma; each holds only what it needs to apply Sigma^-1.
    """

    centers: Array  # (k, d)

    @abstractmethod
    def distances(self, x: NDArray[np.floating], count: int) -> list[Array]:
        """d_M of each row of ``x`` (n, d) to each of the first ``count`` centres."""

    @abstractmethod
    def solve(self, v: Array) -> Array:
        """Sigma^-1 v for one vector."""

    def linear_form(self) -> tuple[Array, float]:
        """(w, c) with 1/2 [d_M(x, c_0)^2 - d_M(x, c_1)^2] = w^T x + c for every x:
        w = Sigma^-1 (c_1 - c_0) and c = 1/2 (c_0^T Sigma^-1 c_0 - c_1^T Sigma^-1 c_1),
        written c = -w^T (c_0 + c_1) / 2 (the same number, without the cancellation)."""
        c0, c1 = self.centers[0], self.centers[1]
        w = self.solve(c1 - c0)
        return w, -0.5 * float(w @ (c0 + c1))


@dataclass(frozen=True)
class DenseWhitener(MahalanobisKernel):
    """Sigma = L L^T, W = L^-1 (d x d, lower triangular): d_M(x, c) = ||W x - W c||, O(d^2)."""

    centers: Array
    whitener: Array
    w_centers: Array  # W c_k, row k

    @classmethod
    def build(cls, sigma: Array, centers: Array) -> DenseWhitener:
        chol = np.linalg.cholesky(sigma)
        whitener = np.linalg.solve(chol, np.eye(sigma.shape[0]))
        return cls(centers, whitener, np.array([whitener @ c for c in centers]))

    def distances(self, x: NDArray[np.floating], count: int) -> list[Array]:
        z = x @ self.whitener.T
        return [np.linalg.norm(z - self.w_centers[k], axis=1) for k in range(count)]

    def solve(self, v: Array) -> Array:
        return self.whitener.T @ (self.whitener @ v)

    def linear_form(self) -> tuple[Array, float]:
        # w = W^T (W c_1 - W c_0), c = 1/2 (||W c_0||^2 - ||W c_1||^2): the whitened centres.
        w0, w1 = self.w_centers[0], self.w_centers[1]
        return self.whitener.T @ (w1 - w0), 0.5 * (float(w0 @ w0) - float(w1 @ w1))


@dataclass(frozen=True)
class DiagonalWhitener(MahalanobisKernel):
    """Sigma = diag(sd^2): d_M(x, c) = ||(x - c) / sd||, O(d) per row."""

    centers: Array
    inv_sd: Array

    def distances(self, x: NDArray[np.floating], count: int) -> list[Array]:
        return [np.linalg.norm((x - self.centers[k]) * self.inv_sd, axis=1) for k in range(count)]

    def solve(self, v: Array) -> Array:
        return v * self.inv_sd**2


@dataclass(frozen=True)
class LowRankMetric(MahalanobisKernel):
    """Sigma = V diag(lambda) V^T + sigma^2 (I - V V^T), V (d, r) orthonormal, O(d r) per row.

    Sigma^-1 = V diag(1/lambda) V^T + (I - V V^T) / sigma^2 (same eigenvectors; this is what
    the Woodbury identity gives for an orthonormal V).  With p = V^T (x - c), the part of
    x - c outside span(V) has squared norm ||x - c||^2 - ||p||^2, so

        d_M(x, c)^2 = ||p / sqrt(lambda)||^2 + (||x - c||^2 - ||p||^2) / sigma^2.

    One GEMM P = (X - c_0) V serves every centre, p_k = P - (c_k - c_0)^T V.  ||x - c||^2 is
    summed from the centred row, so offset features do not cancel; the difference with
    ||p||^2 is clipped at 0; its rounding error, a few times 2.2e-16 ||x - c||^2 / sigma^2,
    is negligible unless sigma^2 is tiny next to the variance in span(V).
    """

    centers: Array
    basis: Array  # V, (d, r)
    inv_sqrt_eig: Array  # 1 / sqrt(lambda), (r,)
    inv_isotropic: float  # 1 / sigma^2
    offsets: Array  # (c_k - c_0)^T V, row k, (k, r)

    @classmethod
    def build(cls, basis: Array, eigenvalues: Array, isotropic: float, centers: Array) -> LowRankMetric:
        offsets = (centers - centers[0]) @ basis
        return cls(centers, basis, 1.0 / np.sqrt(eigenvalues), 1.0 / isotropic, offsets)

    def distances(self, x: NDArray[np.floating], count: int) -> list[Array]:
        x0 = x - self.centers[0]
        proj = x0 @ self.basis
        out = []
        for k in range(count):
            xk = x0 if k == 0 else x - self.centers[k]
            pk = proj if k == 0 else proj - self.offsets[k]
            inside = np.einsum("ij,ij->i", pk, pk)
            rest = np.maximum(np.einsum("ij,ij->i", xk, xk) - inside, 0.0)
            scaled = pk * self.inv_sqrt_eig
            out.append(np.sqrt(np.einsum("ij,ij->i", scaled, scaled) + rest * self.inv_isotropic))
        return out

    def solve(self, v: Array) -> Array:
        p = self.basis.T @ v
        return self.basis @ (p * self.inv_sqrt_eig**2) + (v - self.basis @ p) * self.inv_isotropic


def mahalanobis_kernel(est: CovarianceEstimate, centers: Array) -> MahalanobisKernel:
    """The kernel for an estimate's structure: factors only for diagonal and lowrank."""
    if est.variances is not None:
        return DiagonalWhitener(centers, 1.0 / np.sqrt(est.variances))
    if est.basis is not None and est.eigenvalues is not None:
        return LowRankMetric.build(est.basis, est.eigenvalues, est.isotropic, centers)
    return DenseWhitener.build(est.matrix, centers)


@dataclass(frozen=True)
class ScoringModel:
    """Everything a worker needs to score forget rows: a few vectors and the Mahalanobis
    kernel (one d x d matrix for a dense covariance, d x r for lowrank, a vector for diagonal).

    Built once on the driver from the statistics; it travels to the workers inside the
    scoring function (:mod:`distunlearn.transforms.score`).
    """

    mu1: Array
    mu2: Array
    kernel: MahalanobisKernel  # d_M to the centres (mu2, mu1)
    lr_weight: Array  # Sigma^-1 (mu1 - mu2)
    lr_offset: float  # 1/2 (mu2^T Sigma^-1 mu2 - mu1^T Sigma^-1 mu1)
    cos_center: Array  # subtracted from x before cosine (zeros for "none")
    cos_u1: Array  # unit vector of mu1 - cos_center
    cos_u2: Array  # unit vector of mu2 - cos_center
    covariance: CovarianceEstimate
    ngram: NgramModel | None = None  # lr_ngram's weights (text input only)

    @property
    def dim(self) -> int:
        return int(self.mu1.shape[0])

    def for_workers(self) -> ScoringModel:
        """The model without what :meth:`score` never reads: the covariance's matrix and
        factors (the kernel holds what scoring applies).  For a dense covariance that halves
        what travels to the workers: one d x d matrix (the whitener) instead of two."""
        bare = dataclasses.replace(self.covariance, dense=None, variances=None, basis=None, eigenvalues=None)
        return dataclasses.replace(self, covariance=bare)

    @classmethod
    def build(cls, forget: GaussianStats, retain: GaussianStats, covariance_source: str = "pooled",
              covariance: CovarianceSpec | None = None, cosine_center: str = "none") -> ScoringModel:
        """Means, Mahalanobis kernel and linear-discriminant weights from the two statistics.

        ``covariance`` (default: ``full``) is the estimate
        :func:`~distunlearn.core.covariance.estimate_covariance` makes; building models with
        different ones from the same statistics compares estimates directly.

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
        spec = covariance or CovarianceSpec()
        est = estimate_covariance(source, spec.kind, spec.ridge, spec.max_condition,
                                  label=f"{covariance_source} covariance", rank=spec.rank)
        kernel = mahalanobis_kernel(est, np.array([retain.mean, forget.mean]))
        lr_weight, lr_offset = kernel.linear_form()
        if cosine_center == "pooled_mean":
            center = (forget.n * forget.mean + retain.n * retain.mean) / (forget.n + retain.n)
        else:
            center = np.zeros(forget.dim)
        return cls(
            mu1=forget.mean, mu2=retain.mean, kernel=kernel,
            lr_weight=lr_weight, lr_offset=lr_offset, cos_center=center,
            cos_u1=_unit(forget.mean - center), cos_u2=_unit(retain.mean - center),
            covariance=est,
        )

    def score(self, x: NDArray[np.floating], methods: tuple[str, ...],
              grams: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None) -> dict[str, Array]:
        """Scores of the rows of ``x`` (shape (n, d)) for each kernel method, float64 (n,).
        ``grams``: the rows' n-gram buckets and counts per row (text input; lr_ngram)."""
        x = np.asarray(x, dtype=np.float64)
        out: dict[str, Array] = {}
        need = set(methods)
        if "lr_ngram" in need:
            if self.ngram is None or grams is None:
                raise ConfigError("method lr_ngram scores text: give the text column with --text-col")
            out["lr_ngram"] = self.ngram.score(*grams)
        if need & {"maha_mu2", "lr_maha"}:
            dist = self.kernel.distances(x, 2 if "lr_maha" in need else 1)
            if "maha_mu2" in need:
                out["maha_mu2"] = dist[0]
            if "lr_maha" in need:
                out["lr_maha"] = dist[0] - dist[1]
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
