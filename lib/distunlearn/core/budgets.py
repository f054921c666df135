"""Deletion budgets and exact removal-set sizes (pure Python).

A budget is either a fraction f of the forget set, with k = floor(f * n1) computed in exact
rational arithmetic (0.29 * 100 is 28.999999999999996 in floating point; here it is 29), or
an absolute count k.  Both kinds may be mixed in one run.  In the output, a fraction budget
is stored as given; a count budget k is stored as the fraction k / n1 with ``budget_count``
set to k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from distunlearn.errors import ConfigError

DEFAULT_BUDGETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05, 0.10, ..., 1.00


@dataclass(frozen=True)
class Budget:
    """One resolved budget: its output value, its size k, and the count if given as one."""

    k: int
    budget: float
    count: int | None = None

    @property
    def label(self) -> str:
        return budget_label(self.budget, self.count)


def budget_label(budget: float, count: int | None) -> str:
    """How a budget is shown: the fraction as given, or ``k=COUNT`` for a count budget."""
    return f"k={count}" if count is not None else f"{budget:g}"


def exact_k(fraction: float, n1: int) -> int:
    """floor(fraction * n1) with the fraction read from its shortest decimal repr."""
    return math.floor(Fraction(repr(float(fraction))) * n1)


def resolve_budgets(fractions: tuple[float, ...], counts: tuple[int, ...], n1: int) -> list[Budget]:
    """Validate budgets against the forget-set size n1 and compute each k.

    Raises ConfigError naming the value when a fraction is outside (0, 1], a count is not
    a positive integer or exceeds n1, or no budget is given at all.
    """
    if not fractions and not counts:
        raise ConfigError("no budget given; pass --budgets (fractions) or --budget-counts")
    out: dict[tuple[float, int | None], Budget] = {}
    for f in fractions:
        f = float(f)
        if not (0.0 < f <= 1.0) or math.isnan(f):
            raise ConfigError(f"budget {f!r} is outside (0, 1]; budgets are fractions of the forget set")
        b = Budget(k=exact_k(f, n1), budget=f)
        out[(b.budget, None)] = b
    for c in counts:
        if isinstance(c, bool) or int(c) != c or c < 1:
            raise ConfigError(f"budget count {c!r} is not a positive integer")
        if c > n1:
            raise ConfigError(f"budget count {c} exceeds the forget set size n1 = {n1}")
        b = Budget(k=int(c), budget=int(c) / n1, count=int(c))
        out[(b.budget, b.count)] = b
    # By size, then fraction budgets before count budgets of the same size.
    return sorted(out.values(), key=lambda b: (b.k, b.budget, b.count is not None, b.count or 0))


def one_per_size(budgets: list[Budget]) -> tuple[list[Budget], list[tuple[Budget, Budget]]]:
    """Budgets that resolve to the same k hold the same removal set: keep the first budget of
    each k (in the given order) and return the others as (dropped, kept) pairs, so the set is
    recorded once.  ``--budgets 0.29 --budget-counts 29`` on 100 forget rows, or two budgets
    that a group cap reduces to the same size, are one set."""
    kept: dict[int, Budget] = {}
    merged: list[tuple[Budget, Budget]] = []
    for b in budgets:
        if b.k in kept:
            merged.append((b, kept[b.k]))
        else:
            kept[b.k] = b
    return list(kept.values()), merged
