"""Mergeable Gaussian sufficient statistics (pure numpy, no pyspark).

A :class:`GaussianStats` summarises a set of d-dimensional rows by

* ``n``     -- the row count,
* ``mean``  -- the mean, shape (d,),
* ``m2``    -- the centred scatter matrix  sum_k (x_k - mean)(x_k - mean)^T, shape (d, d),
* ``t3``    -- sum_k ||x_k - mean||^2 (x_k - mean), shape (d,),
* ``q4``    -- sum_k ||x_k - mean||^4, a scalar.

``n``, ``mean`` and ``m2`` are the Gaussian sufficient statistics (the MLE covariance is
``m2 / n``).  ``t3`` and ``q4`` are the two extra moments the Ledoit-Wolf shrinkage
intensity needs (see :func:`distunlearn.core.covariance.ledoit_wolf`); they cost one GEMV and one
dot product per batch.

Everything is accumulated in float64 around the running mean, never as raw sums
``E[xx^T] - E[x]E[x]^T`` (which loses all precision for features offset by 1e6).  Two
summaries are merged with the pairwise rule of Chan, Golub & LeVeque (1979), "Updating
formulae and a pairwise algorithm for computing sample variances", generalised to the
third and fourth moments as in Pebay (2008), SAND2008-6212: each part's centred moments are
shifted to the merged mean and then added.  The merge is associative and commutative up to
rounding, so Spark may combine partitions in any order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from distunlearn.core.batches import InputCounts

if TYPE_CHECKING:
    from distunlearn.core.text import TextModel

Array = NDArray[np.float64]


def _moments(y: NDArray[np.floating], products: type[np.floating], scale: float) -> tuple[Array, Array, float]:
    """m2, t3 and q4 (float64) of the centred rows ``y / scale`` multiplied in ``products``
    precision, scaled back by the powers of ``scale``."""
    y = y.astype(products, copy=False)
    sq = np.einsum("ij,ij->i", y, y)  # ||y_k||^2, shape (n,)
    m2 = (y.T @ y).astype(np.float64) * scale**2
    t3 = (y.T @ sq).astype(np.float64) * scale**3
    return m2, t3, float(sq.astype(np.float64) @ sq) * scale**4


@dataclass(frozen=True)
class GaussianStats:
    """Count, mean, scatter and the two extra moments of a set of rows (see module docstring)."""

    n: int
    mean: Array
    m2: Array
    t3: Array
    q4: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, dim: int) -> GaussianStats:
        """The identity of :meth:`merge`: zero rows in ``dim`` dimensions."""
        return cls(0, np.zeros(dim), np.zeros((dim, dim)), np.zeros(dim), 0.0)

    @classmethod
    def from_array(cls, x: NDArray[np.floating], products: type[np.floating] = np.float64) -> GaussianStats:
        """Statistics of the rows of ``x`` (shape (n, d)).

        One pass of vectorised numpy: a mean, one GEMM for the scatter, one GEMV for ``t3``.
        The mean and the centring are float64; ``products`` is the precision of the centred
        rows in the GEMM/GEMV (results are float64 either way).  float64, the default, is
        what the model's statistics use.  float32 runs the GEMM about 2.3x faster (measured
        at d = 384, docs/BENCHMARKS.md) with ~1e-6 relative rounding: the removal sets'
        diagnostics use it, where that is far below the statistical error of a KL estimate.
        """
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-d array of rows, got shape {x.shape}")
        n, d = x.shape
        if n == 0:
            return cls.empty(d)
        mean = x.mean(axis=0, dtype=np.float64)
        y = x - mean
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below (and by the callers)
            m2, t3, q4 = _moments(y, products, 1.0)
        if products != np.float64 and not (np.isfinite(m2).all() and np.isfinite(t3).all() and np.isfinite(q4)):
            # float32 products of rows far from 1 overflow (|y|^3 > 3.4e38 at |y| ~ 7e12; float32
            # features near their maximum overflow the cast itself): again with the centred rows
            # divided by a power of two, which is exact, and the results multiplied back.
            scale = float(2.0 ** np.ceil(np.log2(np.abs(y).max())))
            m2, t3, q4 = _moments(y / scale, products, scale)
        return cls(n, mean, m2, t3, q4)

    # ------------------------------------------------------------------ merging
    def shifted(self, center: Array) -> tuple[Array, Array, float]:
        """Moments of the same rows taken about ``center`` instead of about ``self.mean``.

        With y_k = x_k - mean (so sum_k y_k = 0) and delta = center - mean:

        * sum (y-delta)(y-delta)^T = m2 + n delta delta^T
        * sum ||y-delta||^2 (y-delta) = t3 - tr(m2) delta - 2 m2 delta - n ||delta||^2 delta
        * sum ||y-delta||^4 = q4 + 4 delta^T m2 delta + n ||delta||^4 - 4 delta^T t3
          + 2 ||delta||^2 tr(m2)
        """
        delta = center - self.mean
        dd = float(delta @ delta)
        m2_delta = self.m2 @ delta
        trace = float(np.trace(self.m2))
        m2 = self.m2 + self.n * np.outer(delta, delta)
        t3 = self.t3 - trace * delta - 2.0 * m2_delta - self.n * dd * delta
        q4 = (
            self.q4
            + 4.0 * float(delta @ m2_delta)
            + self.n * dd * dd
            - 4.0 * float(delta @ self.t3)
            + 2.0 * dd * trace
        )
        return m2, t3, q4

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Statistics of the union of the two row sets (Chan et al. pairwise merge)."""
        if self.dim != other.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        # Weighted update of the mean around self.mean keeps precision for offset data.
        mean = self.mean + (other.mean - self.mean) * (other.n / n)
        a_m2, a_t3, a_q4 = self.shifted(mean)
        b_m2, b_t3, b_q4 = other.shifted(mean)
        return GaussianStats(n, mean, a_m2 + b_m2, a_t3 + b_t3, a_q4 + b_q4)

    __add__ = merge

    # ------------------------------------------------------------------ derived values
    def covariance(self) -> Array:
        """Maximum-likelihood covariance m2 / n (divides by n, not n - 1: the KL diagnostics
        of the paper compare maximum-likelihood Gaussian fits)."""
        if self.n == 0:
            raise ValueError("covariance of an empty set of rows is undefined")
        return self.m2 / self.n

    # ------------------------------------------------------------------ serialisation
    def to_flat(self) -> Array:
        """One float64 vector [n, mean, m2 (row-major), t3, q4], length 2 + 2d + d^2."""
        return np.concatenate(
            [[float(self.n)], self.mean, self.m2.ravel(), self.t3, [self.q4]]
        ).astype(np.float64)

    @classmethod
    def from_flat(cls, values: NDArray[np.floating], dim: int) -> GaussianStats:
        """Inverse of :meth:`to_flat`."""
        flat: Array = np.asarray(values, dtype=np.float64)
        expected = 2 + 2 * dim + dim * dim
        if flat.shape != (expected,):
            raise ValueError(f"flat statistics of dim {dim} need {expected} values, got {flat.shape}")
        d = dim
        return cls(
            n=int(flat[0]),
            mean=flat[1 : 1 + d].copy(),
            m2=flat[1 + d : 1 + d + d * d].reshape(d, d).copy(),
            t3=flat[1 + d + d * d : 1 + 2 * d + d * d].copy(),
            q4=float(flat[-1]),
        )

    def to_dict(self) -> dict[str, object]:
        """JSON/Delta friendly form: plain lists (m2 row-major, flattened)."""
        return {
            "n": self.n,
            "dim": self.dim,
            "mean": self.mean.tolist(),
            "m2": self.m2.ravel().tolist(),
            "t3": self.t3.tolist(),
            "q4": self.q4,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> GaussianStats:
        d = int(data["dim"])  # type: ignore[call-overload]
        return cls(
            n=int(data["n"]),  # type: ignore[call-overload]
            mean=np.asarray(data["mean"], dtype=np.float64),
            m2=np.asarray(data["m2"], dtype=np.float64).reshape(d, d),
            t3=np.asarray(data["t3"], dtype=np.float64),
            q4=float(data["q4"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class DomainStats:
    """Statistics of the valid rows of one table, the counts of its invalid ones, and with
    groups the statistics of each group's valid rows."""

    stats: GaussianStats
    counts: InputCounts
    groups: dict[str | None, GaussianStats] = field(default_factory=dict)


@dataclass(frozen=True)
class Statistics:
    """Both tables' statistics: Gaussian (with groups: per group too) and, for text input, the
    n-gram statistics."""

    forget: DomainStats
    retain: DomainStats
    text: TextModel | None = None

    def digest(self) -> str:
        """sha256 of both domains' statistics (float64 bytes, then the n-gram counts of text
        input): names them in apply's commits."""
        h = hashlib.sha256()
        for s in (self.forget.stats, self.retain.stats):
            h.update(s.to_flat().tobytes())
        for n in (self.text.forget, self.text.retain) if self.text else ():
            h.update(n.counts.tobytes() + n.doc_freq.tobytes())
        return h.hexdigest()
