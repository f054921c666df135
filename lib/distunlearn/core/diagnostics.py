"""Removal and preservation of each removal set, from sufficient statistics (pure numpy).

Every distribution is the maximum-likelihood Gaussian fit of a set of rows:
p1 of the forget set S1, p2 of the retain set S2, and p of the edited data S2 + (S1 \\ R)
after removing the set R.  For each method and budget:

* kappa = KL(p1 || p2): how different the two domains are (nats);
* alpha = KL(p1 || p): removal -- how badly a model fitted to the edited data explains the
  forget domain.  Larger is better.  alpha0 (no removal) <= alpha; full removal gives kappa;
* eps   = KL(p2 || p): preservation cost -- how much worse the edited fit explains the retain
  domain.  Smaller is better; 0 when S1 is removed entirely;
* frontier_eps = (max(0, sqrt(alpha) - sqrt(kappa)))^2: the smallest eps any removal can have
  at that alpha when p1 and p2 share a covariance (PAPER.md); ``frontier_gap`` = eps -
  frontier_eps is how far a point is above it (slightly negative values come from unequal
  covariances or sampling);
* unlearned = (alpha - alpha0) / (kappa - alpha0): the share of full removal's effect that
  the budget achieves (0 = nothing removed, 1 = as good as deleting the whole forget set).

Calibration: for a tolerated eps, the largest reachable removal on the frontier is
alpha_max = (sqrt(kappa) + sqrt(eps))^2; per method, the smallest budget whose alpha reaches a
target (default: halfway between alpha0 and kappa) is reported, or None.

The edited fit needs no pass over the data: stats(S2 + S1 \\ R) is the merge of the retain
statistics and the statistics of the forget rows *not* in R, which are the merged statistics
of the removal "buckets" above the budget (see :func:`kept_by_budget`).  Merges only, no
subtraction, so nothing cancels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from distunlearn.core.groups import deletion_rate, sample_weight
from distunlearn.core.stats import Array, GaussianStats

log = logging.getLogger(__name__)

#: Relative jitter added to a covariance that is not positive definite (n <= d, or constant
#: features) so that the KL divergences stay finite; a warning names the distribution.
_JITTER = 1e-9


def _fit(stats: GaussianStats, name: str) -> tuple[Array, Array, np.ndarray, float]:
    """Mean, covariance, its Cholesky factor and log-determinant of the ML fit of ``stats``."""
    cov = stats.covariance()
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        # Rank-deficient (n <= d): rounding leaves eigenvalues slightly below zero, so the
        # jitter grows by 1000x until the factorisation succeeds (1e-9, 1e-6, 1e-3).
        scale = max(float(np.trace(cov)) / stats.dim, np.finfo(float).tiny)
        for jitter in (_JITTER, _JITTER * 1e3, _JITTER * 1e6):
            try:
                chol = np.linalg.cholesky(cov + jitter * scale * np.eye(stats.dim))
                break
            except np.linalg.LinAlgError:
                continue
        else:
            raise
        log.warning("%s: maximum-likelihood covariance is singular (n=%d, d=%d); adding %.1g x mean "
                    "variance to its diagonal for the KL diagnostics", name, stats.n, stats.dim, jitter)
        cov = cov + jitter * scale * np.eye(stats.dim)
    logdet = 2.0 * float(np.sum(np.log(np.diag(chol))))
    return stats.mean, cov, chol, logdet


def gaussian_kl(p: GaussianStats, q: GaussianStats, p_name: str = "p", q_name: str = "q") -> float:
    """KL(N(m0, S0) || N(m1, S1)) of the maximum-likelihood fits of ``p`` and ``q``:
    1/2 [tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - d + ln det S1 - ln det S0]."""
    m0, s0, _, logdet0 = _fit(p, p_name)
    m1, _, chol1, logdet1 = _fit(q, q_name)
    a = np.linalg.solve(chol1, s0)  # L1^-1 S0
    trace = float(np.trace(np.linalg.solve(chol1, a.T)))  # tr(L1^-1 (L1^-1 S0)^T) = tr(S1^-1 S0)
    z = np.linalg.solve(chol1, m1 - m0)
    kl = 0.5 * (trace + float(z @ z) - p.dim + logdet1 - logdet0)
    return max(kl, 0.0)


def frontier_eps(alpha: float, kappa: float) -> float:
    """Smallest preservation cost at removal ``alpha`` (shared covariance): (sqrt a - sqrt k)_+^2."""
    return max(0.0, math.sqrt(max(alpha, 0.0)) - math.sqrt(max(kappa, 0.0))) ** 2


def alpha_max(kappa: float, tolerated_eps: float) -> float:
    """Largest removal reachable on the frontier with preservation cost at most ``tolerated_eps``."""
    return (math.sqrt(max(kappa, 0.0)) + math.sqrt(max(tolerated_eps, 0.0))) ** 2


def kept_by_budget(buckets: list[GaussianStats]) -> list[GaussianStats]:
    """Statistics of the forget rows kept at each budget.

    ``buckets[j]`` holds the rows whose smallest containing budget is the j-th (budgets sorted
    by k), and ``buckets[-1]`` the rows in no budget.  The rows kept at budget j are those of
    the buckets after j, so kept[j] = merge(buckets[j+1:]) (computed as a suffix merge).
    """
    kept = [buckets[-1]]
    for bucket in reversed(buckets[1:-1]):
        kept.append(kept[-1].merge(bucket))
    return list(reversed(kept))


@dataclass(frozen=True)
class Point:
    """Diagnostics of one removal set (or of no removal: method "none", k = 0)."""

    method: str
    k: int
    alpha: float
    eps: float
    frontier_eps: float
    frontier_gap: float
    unlearned: float


def evaluate_points(forget: GaussianStats, retain: GaussianStats, method: str, ks: list[int],
                    buckets: list[GaussianStats], alpha0: float, kappa: float) -> list[Point]:
    """Points for one method: ``ks`` sorted ascending and unique, ``buckets`` as in
    :func:`kept_by_budget` (len(ks) + 1 of them).  Raises ValueError if a bucket count does not
    add up to the budget's k (a selection bug, never bad input)."""
    if len(buckets) != len(ks) + 1:
        raise ValueError(f"{method}: {len(buckets)} buckets for {len(ks)} budgets")
    removed = np.cumsum([b.n for b in buckets[:-1]])
    if [int(r) for r in removed] != list(ks) or sum(b.n for b in buckets) != forget.n:
        raise ValueError(f"{method}: bucket sizes {[b.n for b in buckets]} do not match k = {ks} "
                         f"of n_forget = {forget.n}")
    points = []
    for k, kept in zip(ks, kept_by_budget(buckets), strict=True):
        edited = retain.merge(kept)
        alpha = gaussian_kl(forget, edited, "forget", f"edited data ({method}, k={k})")
        eps = gaussian_kl(retain, edited, "retain", f"edited data ({method}, k={k})")
        points.append(_point(method, k, alpha, eps, alpha0, kappa))
    return points


def baseline(forget: GaussianStats, retain: GaussianStats) -> tuple[float, Point]:
    """kappa and the no-removal point (alpha0, eps0) of the two domains."""
    kappa = gaussian_kl(forget, retain, "forget", "retain")
    everything = retain.merge(forget)
    alpha0 = gaussian_kl(forget, everything, "forget", "all rows")
    eps0 = gaussian_kl(retain, everything, "retain", "all rows")
    return kappa, _point("none", 0, alpha0, eps0, alpha0, kappa)


def _point(method: str, k: int, alpha: float, eps: float, alpha0: float, kappa: float) -> Point:
    front = frontier_eps(alpha, kappa)
    span = kappa - alpha0
    unlearned = (alpha - alpha0) / span if span > 0 else float("nan")
    return Point(method, k, alpha, eps, front, eps - front, unlearned)


def smallest_budget_reaching(budgets: list[float], alphas: list[float], target: float) -> float | None:
    """The smallest budget (in the given order, ascending) whose alpha is at least ``target``."""
    for budget, alpha in zip(budgets, alphas, strict=True):
        if alpha >= target:
            return budget
    return None


@dataclass(frozen=True)
class Diagnostics:
    """All points of a run, and its calibration."""

    kappa: float
    baseline: Point
    points: dict[tuple[str, int], Point]  # (method, k) -> point, every k of the run
    tolerated_eps: float
    alpha_max: float
    target_alpha: float
    budget_for_target: dict[str, float | None]  # method -> smallest budget reaching target_alpha


def best_methods(budget_for_target: dict[str, float | None]) -> tuple[list[str], float] | None:
    """The methods (sorted) that reach the target removal with the smallest budget, and that
    budget; None when no method reaches it (the calibration's ``budget_for_target``)."""
    reached = {m: b for m, b in budget_for_target.items() if b is not None}
    if not reached:
        return None
    best = min(reached.values())
    return sorted(m for m, b in reached.items() if b == best), best


def diagnose(forget: GaussianStats, retain: GaussianStats, buckets: dict[str, list[GaussianStats]],
             ks: list[int], budgets: list[tuple[float, int]], tolerated_eps: float = 0.1,
             target_alpha: float = 0.0) -> Diagnostics:
    """Diagnostics of every method at every budget.

    ``ks``: the distinct positive set sizes, ascending; ``buckets[m]``: as in
    :func:`kept_by_budget` for those ks; ``budgets``: (budget value, k) pairs of the run, in
    output order (k may be 0: no removal).  ``target_alpha`` 0 means halfway between alpha0
    and kappa.
    """
    kappa, base = baseline(forget, retain)
    points: dict[tuple[str, int], Point] = {}
    for method, method_buckets in buckets.items():
        for p in evaluate_points(forget, retain, method, ks, method_buckets, base.alpha, kappa):
            points[(method, p.k)] = p
    return _calibrated(list(buckets), points, kappa, base, budgets, tolerated_eps, target_alpha)


def diagnose_kept(forget: GaussianStats, retain: GaussianStats,
                  kept: Iterable[tuple[tuple[str, int], GaussianStats]], budgets: list[tuple[float, int]],
                  tolerated_eps: float = 0.1, target_alpha: float = 0.0) -> Diagnostics:
    """:func:`diagnose` from the statistics of the forget rows each removal set keeps, per
    (method, k > 0), taken one at a time (at large d each is a d x d matrix; only its point is
    kept): for removal sets that need not be nested across budgets (group budgets).  Raises
    ValueError if a kept count is not n_forget - k (a selection bug)."""
    kappa, base = baseline(forget, retain)
    found: dict[tuple[str, int], Point] = {}
    for (method, k), stats in kept:
        if stats.n != forget.n - k:
            raise ValueError(f"{method}: the set of k = {k} keeps {stats.n} of n_forget = {forget.n} rows")
        edited = retain.merge(stats)
        alpha = gaussian_kl(forget, edited, "forget", f"edited data ({method}, k={k})")
        eps = gaussian_kl(retain, edited, "retain", f"edited data ({method}, k={k})")
        found[(method, k)] = _point(method, k, alpha, eps, base.alpha, kappa)
    methods = list(dict.fromkeys(m for m, _ in found))
    points = {key: found[key] for key in sorted(found)}
    return _calibrated(methods, points, kappa, base, budgets, tolerated_eps, target_alpha)


def _calibrated(methods: list[str], points: dict[tuple[str, int], Point], kappa: float, base: Point,
                budgets: list[tuple[float, int]], tolerated_eps: float, target_alpha: float) -> Diagnostics:
    """Add the no-removal point of every method and the calibration."""
    for method in methods:
        points[(method, 0)] = Point(method, 0, base.alpha, base.eps, base.frontier_eps, base.frontier_gap, 0.0)
    target = target_alpha if target_alpha > 0 else base.alpha + 0.5 * (kappa - base.alpha)
    ordered = sorted(budgets, key=lambda b: (b[1], b[0]))
    reach = {m: smallest_budget_reaching([b for b, _ in ordered], [points[(m, k)].alpha for _, k in ordered], target)
             for m in methods}
    return Diagnostics(kappa, base, points, tolerated_eps, alpha_max(kappa, tolerated_eps), target, reach)


# ---------------------------------------------------------------------- per group
@dataclass(frozen=True)
class GroupPoint:
    """One group under one removal set (:mod:`distunlearn.core.groups` for the definitions).

    ``kl_shift`` = KL(p_before_g || p_after_g): the Gaussian fit of the group's rows before
    removal (its retain and forget rows) against the fit after (its retain rows and the forget
    rows the set keeps); 0 when nothing of the group is removed, None when either side has
    fewer than 2 rows."""

    method: str
    k: int
    group: str
    n_forget: int
    n_retain: int
    removed: int
    deletion_rate: float | None
    forget_removed_share: float | None
    kl_shift: float | None
    sample_weight: float | None


def group_point(method: str, k: int, group: str, forget_g: GaussianStats, retain_g: GaussianStats,
                kept_g: GaussianStats) -> GroupPoint:
    """The :class:`GroupPoint` of ``group`` from its forget, retain and kept-forget statistics."""
    removed = forget_g.n - kept_g.n
    before, after = retain_g.merge(forget_g), retain_g.merge(kept_g)
    if removed == 0:
        shift: float | None = 0.0
    elif before.n < 2 or after.n < 2:
        shift = None
    else:
        shift = gaussian_kl(before, after, f"group {group!r} before removal",
                            f"group {group!r} after ({method}, k={k})")
    return GroupPoint(method, k, group, forget_g.n, retain_g.n, removed, deletion_rate(removed, before.n),
                      removed / forget_g.n if forget_g.n else None, shift, sample_weight(retain_g.n, removed))
