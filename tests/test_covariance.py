"""Covariance estimates from GaussianStats vs numpy and scikit-learn (Ledoit-Wolf, PCA)."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf
from sklearn.covariance import ledoit_wolf_shrinkage as sk_shrinkage
from sklearn.decomposition import PCA

from distunlearn.commands.config import JobConfig, add_arguments, from_args
from distunlearn.core.covariance import estimate_covariance, ledoit_wolf_shrinkage, pooled
from distunlearn.core.stats import GaussianStats
from distunlearn.errors import ConfigError, InputError

LOGGER = "distunlearn.core.covariance"


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
    assert est.dense is None  # only the variances are carried
    np.testing.assert_allclose(est.variances, np.var(x, axis=0), rtol=1e-9, atol=1e-12)
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


@pytest.mark.parametrize("kind", ["full", "diagonal", "ledoit_wolf", "ridge", "lowrank"])
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


# --------------------------------------------------------------------------- lowrank
def lowrank_reference(x: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Top-r eigenvalues, their eigenvectors, sigma^2 and Sigma built from np.linalg.eigh of
    np.cov(bias=True), written from the formula in the covariance module docstring."""
    s = np.cov(x, rowvar=False, bias=True)
    d = s.shape[0]
    w, u = np.linalg.eigh(s)
    order = np.argsort(w)[::-1][:rank]
    lam, v = w[order], u[:, order]
    sigma2 = (np.trace(s) - lam.sum()) / (d - rank)
    return lam, v, sigma2, v @ np.diag(lam) @ v.T + sigma2 * (np.eye(d) - v @ v.T)


@pytest.mark.parametrize("n,d,rank", [(300, 12, 3), (500, 8, 1), (40, 30, 5)])
def test_lowrank_matches_numpy_eigh(n: int, d: int, rank: int) -> None:
    """kind="lowrank": eigenvalues, spanned subspace, sigma^2 and the matrix equal the numpy
    construction (also for n < d, where S is singular but Sigma is not)."""
    x = correlated(np.random.default_rng(n + d + rank), n, d, loc=50.0)
    lam, v, sigma2, ref = lowrank_reference(x, rank)
    est = estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=rank)
    assert est.kind == "lowrank" and est.reason == "requested" and est.dense is None
    assert est.basis is not None and est.basis.shape == (d, rank)
    np.testing.assert_allclose(est.eigenvalues, lam, rtol=1e-9)
    assert est.isotropic == pytest.approx(sigma2, rel=1e-8)
    np.testing.assert_allclose(est.basis.T @ est.basis, np.eye(rank), atol=1e-12)
    np.testing.assert_allclose(est.basis @ est.basis.T, v @ v.T, atol=1e-8)  # same subspace
    np.testing.assert_allclose(est.matrix, ref, rtol=1e-8, atol=1e-10 * np.trace(ref) / d)
    assert np.linalg.eigvalsh(est.matrix)[0] > 0.0


def test_lowrank_matches_sklearn_pca_covariance() -> None:
    """Independent of eigh: sklearn's probabilistic PCA (an SVD of the centred rows) has the
    same model covariance, up to its n - 1 denominator."""
    n, rank = 250, 4
    x = correlated(np.random.default_rng(11), n, 10, loc=-20.0)
    pca = PCA(n_components=rank, svd_solver="full").fit(x)
    est = estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=rank)
    np.testing.assert_allclose(est.matrix, pca.get_covariance() * (n - 1) / n, rtol=1e-8, atol=1e-12)
    assert est.isotropic == pytest.approx(pca.noise_variance_ * (n - 1) / n, rel=1e-8)


def test_lowrank_recovers_a_spiked_covariance() -> None:
    """Rows whose sample covariance is exactly U diag(9, 4) U^T + 0.5 (I - U U^T) (d = 7):
    lowrank with r = 2 recovers the spikes, the subspace and sigma^2 = 0.5."""
    rng = np.random.default_rng(12)
    d, n = 7, 400
    u = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    sigma = u @ np.diag([9.0, 4.0]) @ u.T + 0.5 * (np.eye(d) - u @ u.T)
    z = rng.normal(size=(n, d))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / n)).T  # sample covariance exactly I
    x = z @ np.linalg.cholesky(sigma).T + 3.0
    est = estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=2)
    np.testing.assert_allclose(est.eigenvalues, [9.0, 4.0], rtol=1e-9)
    assert est.isotropic == pytest.approx(0.5, rel=1e-9)
    np.testing.assert_allclose(est.basis @ est.basis.T, u @ u.T, atol=1e-9)
    np.testing.assert_allclose(est.matrix, sigma, atol=1e-9)


def test_lowrank_with_rank_d_minus_1_is_s() -> None:
    """r = d - 1: sigma^2 is the one discarded eigenvalue, so Sigma = S exactly."""
    x = correlated(np.random.default_rng(13), 200, 6, loc=5.0)
    est = estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=5)
    assert est.kind == "lowrank"
    np.testing.assert_allclose(est.matrix, np.cov(x, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rank", [6, 64])
def test_lowrank_rank_ge_d_falls_back_to_full(caplog: pytest.LogCaptureFixture, rank: int) -> None:
    """r >= d leaves no isotropic rest: the full covariance is used, with a warning and the
    reason recorded."""
    x = correlated(np.random.default_rng(14), 200, 6)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    est = estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=rank, label="pooled covariance")
    assert est.kind == "full" and est.reason == f"lowrank rank {rank} >= d = 6"
    np.testing.assert_allclose(est.matrix, np.cov(x, rowvar=False, bias=True), rtol=1e-10)
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "pooled covariance" in msgs[0] and f"rank {rank} >= d = 6" in msgs[0]


def test_lowrank_rank_above_rank_of_s_floors_sigma2(caplog: pytest.LogCaptureFixture) -> None:
    """5 rows in d = 20 (S has rank 4) with r = 8: no variance is left for sigma^2, which is
    floored at 1e-12 tr(S)/d with a warning; Sigma stays positive definite."""
    x = correlated(np.random.default_rng(15), 5, 20)
    s = np.cov(x, rowvar=False, bias=True)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    est = estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=8)
    assert est.isotropic == pytest.approx(1e-12 * np.trace(s) / 20, rel=1e-9)
    assert np.all(est.eigenvalues >= est.isotropic)
    np.testing.assert_allclose(est.eigenvalues[:4], np.linalg.eigvalsh(s)[::-1][:4], rtol=1e-9)
    assert any("rank" in r.getMessage() for r in caplog.records if r.name == LOGGER)


@pytest.mark.parametrize("rank", [0, -3])
def test_lowrank_rank_below_one_raises(rank: int) -> None:
    x = correlated(np.random.default_rng(16), 50, 4)
    with pytest.raises(InputError, match=f"rank must be at least 1, got {rank}"):
        estimate_covariance(GaussianStats.from_array(x), kind="lowrank", rank=rank)


# --------------------------------------------------------------------------- config
def test_config_covariance_rank_default_flag_and_check() -> None:
    """--covariance-rank parses to an int (default 64); check() rejects r < 1 naming the value."""
    assert JobConfig().covariance_rank == 64
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--covariance", "lowrank", "--covariance-rank", "16"]))
    assert cfg.covariance == "lowrank" and cfg.covariance_rank == 16
    cfg.check(required=())
    with pytest.raises(ConfigError, match="covariance_rank must be at least 1, got 0"):
        JobConfig(covariance_rank=0).check(required=())
