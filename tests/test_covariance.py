"""Covariance estimates from GaussianStats vs numpy and scikit-learn's Ledoit-Wolf."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf
from sklearn.covariance import ledoit_wolf_shrinkage as sk_shrinkage

from distunlearn.covariance import estimate_covariance, ledoit_wolf_shrinkage, pooled
from distunlearn.errors import InputError
from distunlearn.stats import GaussianStats

LOGGER = "distunlearn.covariance"


def correlated(rng: np.random.Generator, n: int, d: int, loc: float = 0.0) -> np.ndarray:
    """Rows with a random (well-conditioned for n >> d) covariance and non-zero mean."""
    a = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ a + loc + rng.normal(size=d)


SHAPES = [(200, 5), (40, 8), (10, 10), (6, 12), (3, 20), (50, 1), (1000, 3)]


@pytest.mark.parametrize("n,d", SHAPES)
def test_ledoit_wolf_shrinkage_matches_sklearn(n: int, d: int) -> None:
    """Intensity from (n, m2, q4) equals sklearn.covariance.ledoit_wolf_shrinkage(X), which
    centres X itself (assume_centered=False)."""
    x = correlated(np.random.default_rng(n * 31 + d), n, d, loc=7.0)
    ours = ledoit_wolf_shrinkage(GaussianStats.from_array(x))
    ref = sk_shrinkage(x)
    assert 0.0 <= ours <= 1.0
    assert ours == pytest.approx(ref, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("n,d", SHAPES)
def test_estimate_ledoit_wolf_matches_sklearn(n: int, d: int) -> None:
    """kind="ledoit_wolf": matrix and intensity equal sklearn.covariance.ledoit_wolf(X)."""
    x = correlated(np.random.default_rng(n * 17 + d), n, d, loc=-3.0)
    ref_cov, ref_shrink = ledoit_wolf(x)
    est = estimate_covariance(GaussianStats.from_array(x), kind="ledoit_wolf")
    assert est.kind == "ledoit_wolf" and est.reason == "requested"
    assert est.shrinkage == pytest.approx(ref_shrink, rel=1e-8, abs=1e-12)
    np.testing.assert_allclose(est.matrix, ref_cov, rtol=1e-8, atol=1e-12)


def test_ledoit_wolf_shrinkage_is_substantial_when_n_lt_d() -> None:
    """Guard that the n < d comparison is not trivially 0 == 0."""
    x = correlated(np.random.default_rng(5), 6, 12)
    assert sk_shrinkage(x) > 0.05
    assert ledoit_wolf_shrinkage(GaussianStats.from_array(x)) == pytest.approx(sk_shrinkage(x), rel=1e-8)


def test_full_returns_mle_covariance(caplog: pytest.LogCaptureFixture) -> None:
    """kind="full" on well-conditioned data is np.cov(bias=True), with no warning."""
    x = correlated(np.random.default_rng(1), 300, 6, loc=100.0)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    est = estimate_covariance(GaussianStats.from_array(x), kind="full")
    assert est.kind == "full" and est.reason == "requested" and est.shrinkage == 0.0
    np.testing.assert_allclose(est.matrix, np.cov(x, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("n,d", [(5, 8), (8, 8), (2, 3)])
def test_full_falls_back_to_ledoit_wolf_when_n_le_d(caplog: pytest.LogCaptureFixture, n: int, d: int) -> None:
    """n <= d: kind becomes "ledoit_wolf", the reason names n and d, the matrix is sklearn's LW,
    and a warning is logged with the label."""
    x = correlated(np.random.default_rng(n + 10 * d), n, d)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    est = estimate_covariance(GaussianStats.from_array(x), kind="full", label="pooled covariance")
    ref_cov, ref_shrink = ledoit_wolf(x)
    assert est.kind == "ledoit_wolf"
    assert f"n = {n} <= d = {d}" in est.reason
    assert est.shrinkage == pytest.approx(ref_shrink, rel=1e-8)
    np.testing.assert_allclose(est.matrix, ref_cov, rtol=1e-8, atol=1e-12)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "pooled covariance" in msg and "Ledoit-Wolf" in msg and f"n = {n}" in msg


def test_full_falls_back_when_ill_conditioned(caplog: pytest.LogCaptureFixture) -> None:
    """A feature with scale 1e-6 of the others gives cond(S) ~ 1e12 > 1e8: fallback to LW."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 4)) * np.array([1.0, 2.0, 1.5, 1e-6])
    s = np.cov(x, rowvar=False, bias=True)
    assert np.linalg.cond(s) > 1e8  # the premise, by numpy
    caplog.set_level(logging.WARNING, logger=LOGGER)
    est = estimate_covariance(GaussianStats.from_array(x), kind="full")
    ref_cov, ref_shrink = ledoit_wolf(x)
    assert est.kind == "ledoit_wolf"
    assert "condition number" in est.reason and "max_condition" in est.reason
    np.testing.assert_allclose(est.matrix, ref_cov, rtol=1e-7, atol=1e-14)
    assert est.shrinkage == pytest.approx(ref_shrink, rel=1e-7)
    assert any("condition number" in r.getMessage() for r in caplog.records
               if r.name == LOGGER and r.levelno == logging.WARNING)


def test_full_respects_max_condition_threshold(caplog: pytest.LogCaptureFixture) -> None:
    """Same data, threshold either side of numpy's condition number: full kept vs fallback."""
    x = np.random.default_rng(3).normal(size=(400, 3)) * np.array([1.0, 3.0, 10.0])
    cond = np.linalg.cond(np.cov(x, rowvar=False, bias=True))
    st = GaussianStats.from_array(x)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    kept = estimate_covariance(st, kind="full", max_condition=cond * 1.01)
    assert kept.kind == "full"
    np.testing.assert_allclose(kept.matrix, np.cov(x, rowvar=False, bias=True), rtol=1e-10)
    assert not [r for r in caplog.records if r.name == LOGGER]
    shrunk = estimate_covariance(st, kind="full", max_condition=cond * 0.99)
    assert shrunk.kind == "ledoit_wolf" and "condition number" in shrunk.reason
    np.testing.assert_allclose(shrunk.matrix, ledoit_wolf(x)[0], rtol=1e-8)
    ours = [r for r in caplog.records if r.name == LOGGER]
    assert len(ours) == 1 and ours[0].levelno == logging.WARNING


def test_diagonal_is_np_var() -> None:
    """kind="diagonal" is diag(np.var(X, axis=0)) (ddof 0)."""
    x = correlated(np.random.default_rng(4), 120, 5, loc=1e3)
    est = estimate_covariance(GaussianStats.from_array(x), kind="diagonal")
    assert est.kind == "diagonal" and est.shrinkage == 0.0
    np.testing.assert_allclose(est.matrix, np.diag(np.var(x, axis=0)), rtol=1e-9, atol=1e-12)


def test_diagonal_floors_constant_feature(caplog: pytest.LogCaptureFixture) -> None:
    """A constant feature gets variance 1e-12 * tr(S)/d (hand-computed), with a warning."""
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.normal(size=50), np.full(50, 3.0), 2.0 * rng.normal(size=50)])
    var = np.var(x, axis=0)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    est = estimate_covariance(GaussianStats.from_array(x), kind="diagonal")
    expected = var.copy()
    expected[1] = 1e-12 * var.sum() / 3
    np.testing.assert_allclose(np.diag(est.matrix), expected, rtol=1e-9)
    assert np.count_nonzero(est.matrix - np.diag(np.diag(est.matrix))) == 0
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER)


@pytest.mark.parametrize("ridge", [1e-3, 0.5])
def test_ridge_formula(ridge: float) -> None:
    """kind="ridge" is S + ridge * tr(S)/d * I with S = np.cov(bias=True)."""
    x = correlated(np.random.default_rng(6), 80, 6)
    s = np.cov(x, rowvar=False, bias=True)
    est = estimate_covariance(GaussianStats.from_array(x), kind="ridge", ridge=ridge)
    assert est.kind == "ridge" and est.shrinkage == ridge
    np.testing.assert_allclose(est.matrix, s + ridge * np.trace(s) / 6 * np.eye(6), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["full", "diagonal", "ledoit_wolf", "ridge"])
def test_identical_rows_raise_input_error(kind: str) -> None:
    """All rows identical: covariance is zero, every kind raises InputError naming the label."""
    x = np.tile(np.array([1.0, -2.0, 3.0]), (10, 1))
    with pytest.raises(InputError, match="retain covariance"):
        estimate_covariance(GaussianStats.from_array(x), kind=kind, label="retain covariance")


def test_no_rows_raises_input_error() -> None:
    with pytest.raises(InputError):
        estimate_covariance(GaussianStats.empty(3), kind="full")


def test_unknown_kind_raises_input_error() -> None:
    x = np.random.default_rng(7).normal(size=(20, 2))
    with pytest.raises(InputError, match="'shrunk'"):
        estimate_covariance(GaussianStats.from_array(x), kind="shrunk")


# --------------------------------------------------------------------------- pooled
def _two_domains() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    forget = correlated(rng, 30, 5, loc=4.0)
    retain = correlated(rng, 170, 5, loc=-1.0) * 1.5
    return forget, retain


def test_pooled_covariance_is_within_domain_scatter() -> None:
    """pooled().covariance() = (sum of per-domain centred scatter) / (n1 + n2), by numpy."""
    f, r = _two_domains()
    fc, rc = f - f.mean(axis=0), r - r.mean(axis=0)
    ref = (fc.T @ fc + rc.T @ rc) / (len(f) + len(r))
    p = pooled(GaussianStats.from_array(f), GaussianStats.from_array(r))
    assert p.n == 200
    np.testing.assert_allclose(p.mean, 0.0, atol=0)
    np.testing.assert_allclose(p.covariance(), ref, rtol=1e-10, atol=1e-12)
    # It differs from the covariance of the plain concatenation (the means differ).
    assert not np.allclose(ref, np.cov(np.vstack([f, r]), rowvar=False, bias=True), rtol=1e-2)


def test_pooled_moments_equal_stats_of_centred_concatenation() -> None:
    """t3 and q4 of pooled() equal the explicit sums over the per-domain-centred rows."""
    f, r = _two_domains()
    y = np.vstack([f - f.mean(axis=0), r - r.mean(axis=0)])
    sq = (y * y).sum(axis=1)
    p = pooled(GaussianStats.from_array(f), GaussianStats.from_array(r))
    np.testing.assert_allclose(p.t3, (sq[:, None] * y).sum(axis=0), rtol=1e-9, atol=1e-9)
    assert p.q4 == pytest.approx(float((sq**2).sum()), rel=1e-10)


@pytest.mark.parametrize("n_f,n_r,d", [(30, 170, 5), (4, 6, 12)])
def test_pooled_ledoit_wolf_matches_sklearn_assume_centered(n_f: int, n_r: int, d: int) -> None:
    """LW of the pooled stats equals sklearn ledoit_wolf on the vstack of per-domain-centred
    rows with assume_centered=True (also for n1 + n2 < d)."""
    rng = np.random.default_rng(n_f + n_r + d)
    f, r = correlated(rng, n_f, d, loc=2.0), correlated(rng, n_r, d, loc=-2.0)
    y = np.vstack([f - f.mean(axis=0), r - r.mean(axis=0)])
    ref_cov, ref_shrink = ledoit_wolf(y, assume_centered=True)
    p = pooled(GaussianStats.from_array(f), GaussianStats.from_array(r))
    est = estimate_covariance(p, kind="ledoit_wolf")
    assert est.shrinkage == pytest.approx(ref_shrink, rel=1e-8)
    np.testing.assert_allclose(est.matrix, ref_cov, rtol=1e-8, atol=1e-12)
