"""The job's math written again in plain numpy, for the benchmark's baselines (b) and (c).

Deliberately independent of ``distunlearn``'s statistics and scoring code, so that the
benchmark's agreement check compares two implementations, not one with itself:

* statistics: a shifted two-moment accumulation (sum and scatter of x - c, with c the first
  batch's mean), not the job's pairwise Chan/Pebay merge;
* scoring: the model from an explicit inverse Cholesky factor and ``np.linalg.solve``;
* ``random``: Spark's ``xxhash64(seed, id)`` re-implemented in numpy (XXH64 of a 4-byte int
  seed, then of the 8-byte id), so the random removal sets can be compared too.

Methods (see README "Scoring rules"): lr_gauss, maha_mu2, mu2, random, with the pooled
within-domain covariance (m2_forget + m2_retain) / (n_forget + n_retain).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

METHODS = ("lr_gauss", "maha_mu2", "mu2", "random")
KERNEL = ("lr_gauss", "maha_mu2", "mu2")


class Moments:
    """n, mean and centred scatter of streamed row batches (float64, shifted accumulation)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.s1 = np.zeros(x.shape[1])
            self.s2 = np.zeros((x.shape[1], x.shape[1]))
        y = x - self.shift
        self.s1 += y.sum(axis=0)
        self.s2 += y.T @ y
        self.n += x.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.s1 / self.n

    @property
    def m2(self) -> np.ndarray:
        return self.s2 - np.outer(self.s1, self.s1) / self.n


@dataclass(frozen=True)
class Model:
    mu1: np.ndarray
    mu2: np.ndarray
    inv_chol: np.ndarray  # L^-1 with pooled covariance = L L^T
    weight: np.ndarray  # Sigma^-1 (mu1 - mu2)
    offset: float


def fit(mu1: np.ndarray, mu2: np.ndarray, pooled_cov: np.ndarray) -> Model:
    """Model from the two means and the pooled maximum-likelihood covariance."""
    chol = np.linalg.cholesky(pooled_cov)
    inv_chol = np.linalg.inv(chol)
    weight = np.linalg.solve(pooled_cov, mu1 - mu2)
    offset = 0.5 * (mu2 @ np.linalg.solve(pooled_cov, mu2) - mu1 @ np.linalg.solve(pooled_cov, mu1))
    return Model(mu1, mu2, inv_chol, weight, float(offset))


def scores(model: Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Kernel scores of the rows of x (higher = removed first)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - model.mu2
    return {
        "lr_gauss": x @ model.weight + model.offset,
        "maha_mu2": np.linalg.norm(centred @ model.inv_chol.T, axis=1),
        "mu2": np.linalg.norm(centred, axis=1),
    }


# ---------------------------------------------------------------- Spark's xxhash64 in numpy
_P1, _P2, _P3 = np.uint64(11400714785074694791), np.uint64(14029467366897019727), np.uint64(1609587929392839161)
_P4, _P5 = np.uint64(9650029242287828579), np.uint64(2870177450012600261)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def _hash_int(value: int, seed: int) -> np.ndarray:
    h = np.array([seed], dtype=np.uint64) + _P5 + np.uint64(4)
    h = h ^ (np.array([value & 0xFFFFFFFF], dtype=np.uint64) * _P1)
    return _fmix(_rotl(h, 23) * _P2 + _P3)


def _hash_long(values: np.ndarray, seed: np.ndarray) -> np.ndarray:
    h = seed + _P5 + np.uint64(8)
    h = h ^ (_rotl(values.astype(np.int64).view(np.uint64) * _P2, 31) * _P1)
    return _fmix(_rotl(h, 27) * _P1 + _P4)


def random_scores(ids: np.ndarray, seed: int) -> np.ndarray:
    """Spark's ``xxhash64(lit(seed), id)`` (default seed 42), low 53 bits / 2^53."""
    with np.errstate(over="ignore"):
        h = _hash_long(np.asarray(ids, dtype=np.int64), _hash_int(seed, 42))
    return (h & np.uint64((1 << 53) - 1)).astype(np.float64) / float(1 << 53)


def top_k_order(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k rows with the highest score, ties by smaller id, in rank order."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[: k]
        cut = scores[part].min()
        part = np.flatnonzero(scores >= cut)  # every row tied with the k-th is a candidate
    else:
        part = np.arange(len(scores))
    order = part[np.lexsort((ids[part], -scores[part]))]
    return order[:k]


def contender_args(doc: str) -> argparse.ArgumentParser:
    """Command line shared by the contenders (b) and (c): FORGET RETAIN OUT --budgets ... [--seed]."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("forget")
    parser.add_argument("retain")
    parser.add_argument("out")
    parser.add_argument("--budgets", type=float, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    return parser
