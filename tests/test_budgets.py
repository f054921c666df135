"""Budgets: exact k = floor(f * n1) and resolution of fraction / count budgets (hand-computed)."""

from __future__ import annotations

import math

import pytest

from distunlearn.core.budgets import DEFAULT_BUDGETS, Budget, exact_k, resolve_budgets
from distunlearn.errors import ConfigError


@pytest.mark.parametrize("fraction,n1,k", [
    (0.29, 100, 29),  # 0.29 * 100 == 28.999999999999996 in floating point
    (0.1, 30, 3),  # 0.1 * 30 == 3.0000000000000004
    (0.57, 100, 57),  # 0.57 * 100 == 56.99999999999999
    (0.05, 10, 0),  # floor(0.5)
    (0.15, 10, 1),  # floor(1.5)
    (0.999, 1000, 999),
    (0.5, 7, 3),
    (1 / 3, 3, 0),  # repr 0.3333333333333333 -> floor(0.9999999999999999)
])
def test_exact_k(fraction: float, n1: int, k: int) -> None:
    assert exact_k(fraction, n1) == k


def test_exact_k_premise_float_product_is_wrong() -> None:
    """The cases above are meaningful: the naive float product gives a different floor."""
    assert math.floor(0.29 * 100) == 28
    assert math.floor(0.57 * 100) == 56


@pytest.mark.parametrize("n1", [1, 7, 100, 12345])
def test_exact_k_full_budget(n1: int) -> None:
    assert exact_k(1.0, n1) == n1


def test_default_budgets() -> None:
    assert DEFAULT_BUDGETS[0] == 0.05 and DEFAULT_BUDGETS[-1] == 1.0 and len(DEFAULT_BUDGETS) == 20
    assert [exact_k(b, 100) for b in DEFAULT_BUDGETS] == list(range(5, 101, 5))


def test_resolve_sorts_and_dedups_fractions() -> None:
    out = resolve_budgets((0.5, 0.1, 0.5, 0.29), (), 100)
    assert [(b.k, b.budget, b.count) for b in out] == [(10, 0.1, None), (29, 0.29, None), (50, 0.5, None)]
    assert [b.label for b in out] == ["0.1", "0.29", "0.5"]


def test_resolve_counts() -> None:
    """A count k gives budget k / n1 and count = k; counts are deduplicated."""
    out = resolve_budgets((), (40, 3, 40), 80)
    assert [(b.k, b.budget, b.count) for b in out] == [(3, 3 / 80, 3), (40, 0.5, 40)]
    assert [b.label for b in out] == ["k=3", "k=40"]


def test_resolve_mixes_fractions_and_counts() -> None:
    """Fractions and counts in one call, sorted by k."""
    out = resolve_budgets((1.0, 0.25), (150, 7), 200)
    assert [(b.k, b.budget, b.count) for b in out] == [
        (7, 7 / 200, 7), (50, 0.25, None), (150, 0.75, 150), (200, 1.0, None)
    ]
    assert [b.label for b in out] == ["k=7", "0.25", "k=150", "1"]


def test_resolve_integer_valued_float_count() -> None:
    out = resolve_budgets((), (5.0,), 10)  # type: ignore[arg-type]
    assert out == [Budget(k=5, budget=0.5, count=5)]
    assert isinstance(out[0].count, int)


def test_resolve_fraction_and_count_with_same_k() -> None:
    """Fraction 0.29 and count 29 with n1 = 100 both give k = 29, budget 0.29: resolving must not
    crash (either one entry or both, with k = 29)."""
    out = resolve_budgets((0.29,), (29,), 100)
    assert out and all(b.k == 29 and b.budget == 0.29 for b in out)


@pytest.mark.parametrize("bad,needle", [
    (0.0, "0.0"), (-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"), (float("inf"), "inf"),
])
def test_resolve_rejects_bad_fraction(bad: float, needle: str) -> None:
    with pytest.raises(ConfigError, match="budget") as exc:
        resolve_budgets((0.1, bad), (), 100)
    assert needle in str(exc.value)


@pytest.mark.parametrize("bad,needle", [(0, "0"), (-3, "-3"), (2.5, "2.5"), (True, "True")])
def test_resolve_rejects_bad_count(bad: object, needle: str) -> None:
    with pytest.raises(ConfigError, match="count") as exc:
        resolve_budgets((), (bad,), 100)  # type: ignore[arg-type]
    assert needle in str(exc.value)


def test_resolve_rejects_count_above_n1() -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_budgets((0.5,), (11,), 10)
    assert "11" in str(exc.value) and "n1 = 10" in str(exc.value)
    assert resolve_budgets((), (10,), 10)[0].k == 10  # boundary is allowed


def test_resolve_rejects_nothing() -> None:
    with pytest.raises(ConfigError, match="no budget"):
        resolve_budgets((), (), 100)
