"""Diagnostics against numpy: KL closed form with explicit inverses and determinants, the
paper's worked example, and, end to end, the Gaussian fit of each edited data set computed
directly from the removal sets read back with delta-rs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import gaussian_tables, make_config, read_delta, read_sets
from distunlearn.commands.run import run_pipeline
from distunlearn.core.diagnostics import alpha_max, frontier_eps, gaussian_kl, kept_by_budget
from distunlearn.core.stats import GaussianStats


def kl_reference(x0: np.ndarray, x1: np.ndarray) -> float:
    """KL(N(m0,S0) || N(m1,S1)) of the ML fits of two row sets, written out with np.linalg.inv."""
    m0, m1 = x0.mean(0), x1.mean(0)
    s0, s1 = np.cov(x0.T, bias=True), np.cov(x1.T, bias=True)
    inv1 = np.linalg.inv(s1)
    d = x0.shape[1]
    return 0.5 * (np.trace(inv1 @ s0) + (m1 - m0) @ inv1 @ (m1 - m0) - d
                  + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1])


def test_gaussian_kl_matches_closed_form():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((300, 4)) @ rng.standard_normal((4, 4))
    x1 = rng.standard_normal((500, 4)) * 2 + 1
    got = gaussian_kl(GaussianStats.from_array(x0), GaussianStats.from_array(x1))
    assert got == pytest.approx(kl_reference(x0, x1), rel=1e-10)
    assert gaussian_kl(GaussianStats.from_array(x1), GaussianStats.from_array(x1)) == pytest.approx(0, abs=1e-12)


def test_kl_of_shared_covariance_is_half_the_mahalanobis_distance():
    """Same covariance, means apart by delta: KL = 1/2 delta^T S^-1 delta (PAPER.md)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.2], [0, 0, 2]])
    delta = np.array([0.3, -0.2, 0.5])
    s = np.cov(x.T, bias=True)
    expected = 0.5 * delta @ np.linalg.inv(s) @ delta
    assert gaussian_kl(GaussianStats.from_array(x), GaussianStats.from_array(x + delta)) == pytest.approx(expected)


def test_frontier_and_calibration_match_the_paper_example():
    # kappa = 2, tolerated eps = 0.1: alpha_max = (sqrt 2 + sqrt 0.1)^2 ~= 3 (PAPER.md).
    assert alpha_max(2.0, 0.1) == pytest.approx((math.sqrt(2) + math.sqrt(0.1)) ** 2)
    assert alpha_max(2.0, 0.1) == pytest.approx(3.0, abs=0.01)
    assert frontier_eps(alpha_max(2.0, 0.1), 2.0) == pytest.approx(0.1)
    assert frontier_eps(1.5, 2.0) == 0.0  # below kappa: reachable at no cost
    assert frontier_eps(4.0, 1.0) == pytest.approx(1.0)


def test_kept_by_budget_is_the_rows_after_each_bucket():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 2))
    cuts = [0, 5, 20, 50]  # buckets: rows 0-4, 5-19, 20-49 (the last: in no budget)
    buckets = [GaussianStats.from_array(x[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    kept = kept_by_budget(buckets)
    for j, start in enumerate(cuts[1:-1]):
        assert kept[j].n == 50 - start
        np.testing.assert_allclose(kept[j].m2, GaussianStats.from_array(x[start:]).m2, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def diagnosed(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    f, r, xf, xr = gaussian_tables(spark, root, n_forget=150, n_retain=400, dim=3, shift=0.7, seed=21)
    cfg = make_config(root, f, r, methods=("lr_gauss", "mu2", "random"), budgets=(0.1, 0.3, 1.0),
                      budget_counts=(1,), tolerated_eps=0.05)
    report = run_pipeline(spark, cfg)
    return cfg, report, xf, xr


def test_diagnostics_table_matches_numpy_on_the_edited_data(diagnosed):
    cfg, _, xf, xr = diagnosed
    sets = read_sets(cfg.output)
    diag = read_delta(f"{cfg.output}/diagnostics")
    kappa = kl_reference(xf, xr)
    everything = np.vstack([xf, xr])
    base = diag[diag.method == "none"].iloc[0]
    assert base.k == 0 and base.kappa == pytest.approx(kappa, rel=1e-9)
    alpha0 = kl_reference(xf, everything)
    assert base.alpha == pytest.approx(alpha0, rel=1e-9)
    assert base.eps == pytest.approx(kl_reference(xr, everything), rel=1e-9)
    checked = 0
    for _, row in diag[diag.method != "none"].iterrows():
        removed = sets[(sets.method == row.method) & (sets.budget == row.budget)
                       & (sets.budget_count.fillna(-1) == (-1 if np.isnan(row.budget_count) else row.budget_count))]
        assert len(removed) == row.k
        keep = np.setdiff1d(np.arange(len(xf)), removed["id"].to_numpy())
        edited = np.vstack([xr, xf[keep]])
        alpha, eps = kl_reference(xf, edited), kl_reference(xr, edited)
        assert row.kappa == pytest.approx(kappa, rel=1e-9)
        # The removal sets' statistics use float32 products (GaussianStats.from_array,
        # products=np.float32): ~1e-7 relative on these KLs, measured; 1e-6 leaves margin.
        assert row.alpha == pytest.approx(alpha, rel=1e-6, abs=1e-12), (row.method, row.budget)
        assert row.eps == pytest.approx(eps, rel=1e-6, abs=1e-12), (row.method, row.budget)
        front = max(0.0, math.sqrt(alpha) - math.sqrt(kappa)) ** 2
        assert row.frontier_eps == pytest.approx(front, rel=1e-6, abs=1e-12)
        assert row.frontier_gap == pytest.approx(eps - front, rel=1e-6, abs=1e-10)
        # a difference of alphas: it inherits alpha's absolute error, scaled by 1 / (kappa - alpha0)
        assert row.unlearned == pytest.approx((alpha - alpha0) / (kappa - alpha0), rel=1e-6,
                                              abs=1e-6 * alpha / (kappa - alpha0))
        checked += 1
    assert checked == 3 * 4
    full = diag[(diag.budget == 1.0)]
    assert np.allclose(full.eps, 0, atol=1e-12) and np.allclose(full.alpha, kappa)


def test_calibration_table(diagnosed):
    cfg, report, xf, xr = diagnosed
    cal = read_delta(f"{cfg.output}/calibration").set_index("method")
    diag = read_delta(f"{cfg.output}/diagnostics")
    kappa = kl_reference(xf, xr)
    alpha0 = diag[diag.method == "none"].alpha.iloc[0]
    target = alpha0 + 0.5 * (kappa - alpha0)
    for method, row in cal.iterrows():
        assert row.alpha_max == pytest.approx((math.sqrt(kappa) + math.sqrt(0.05)) ** 2, rel=1e-9)
        assert row.target_alpha == pytest.approx(target, rel=1e-9)
        curve = diag[diag.method == method].sort_values(["k", "budget"])
        reached = curve[curve.alpha >= target]
        expected = reached.budget.iloc[0] if len(reached) else None
        assert (row.budget_for_target is None or np.isnan(row.budget_for_target)) if expected is None \
            else row.budget_for_target == pytest.approx(expected)
    assert "calibration: tolerating eps = 0.05" in report.table()
