"""GaussianStats (pure numpy): construction, pairwise merge, serialisation.

References are plain numpy computed directly on the rows (np.mean, np.cov(bias=True), explicit
sums over rows), never the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from distunlearn.core.stats import GaussianStats

OFFSET = 1e6


def reference_moments(x: np.ndarray) -> dict[str, object]:
    """n, mean, m2, t3, q4 by explicit loops over the rows (small inputs only)."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mean = x.sum(axis=0) / n
    m2 = np.zeros((d, d))
    t3 = np.zeros(d)
    q4 = 0.0
    for row in x:
        y = row - mean
        m2 += np.outer(y, y)
        t3 += float(y @ y) * y
        q4 += float(y @ y) ** 2
    return {"n": n, "mean": mean, "m2": m2, "t3": t3, "q4": q4}


def assert_stats_equal(a: GaussianStats, b: GaussianStats, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    assert a.n == b.n
    np.testing.assert_allclose(a.mean, b.mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.m2, b.m2, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.t3, b.t3, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.q4, b.q4, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- from_array
@pytest.mark.parametrize("n,d", [(1, 3), (2, 1), (7, 4), (50, 6)])
def test_from_array_matches_row_loop(n: int, d: int) -> None:
    """Every field equals the explicit per-row sums of the module docstring."""
    x = np.random.default_rng(n * 100 + d).normal(size=(n, d)) * 3.0 + 2.0
    s = GaussianStats.from_array(x)
    ref = reference_moments(x)
    assert s.n == ref["n"] and s.dim == d
    np.testing.assert_allclose(s.mean, ref["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.m2, ref["m2"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s.t3, ref["t3"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.q4, ref["q4"], rtol=1e-10)


def test_from_array_covariance_matches_np_cov() -> None:
    """covariance() = m2 / n equals np.cov(bias=True) (maximum-likelihood, divides by n)."""
    x = np.random.default_rng(1).normal(size=(300, 5)) @ np.random.default_rng(2).normal(size=(5, 5))
    s = GaussianStats.from_array(x)
    np.testing.assert_allclose(s.covariance(), np.cov(x, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-12)


def test_from_array_float32_input_is_accumulated_in_float64() -> None:
    """A float32 input gives the same statistics as its exact float64 upcast."""
    x32 = np.random.default_rng(3).normal(size=(100, 4)).astype(np.float32)
    s = GaussianStats.from_array(x32)
    ref = reference_moments(x32.astype(np.float64))
    assert s.mean.dtype == np.float64 and s.m2.dtype == np.float64
    np.testing.assert_allclose(s.m2, ref["m2"], rtol=1e-10)
    np.testing.assert_allclose(s.q4, ref["q4"], rtol=1e-10)


def test_from_array_float32_products_round_to_single_precision_only() -> None:
    """products=float32 (the removal sets' diagnostics): float64 mean, results within single
    precision of the exact moments, even for rows offset by 1e3 (centred before the cast)."""
    x = np.random.default_rng(4).normal(size=(5000, 6)) * 2.0 + 1e3
    s = GaussianStats.from_array(x, products=np.float32)
    ref = reference_moments(x)
    assert s.m2.dtype == np.float64
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(s.m2, ref["m2"], rtol=1e-5, atol=1e-5 * np.abs(ref["m2"]).max())
    np.testing.assert_allclose(s.q4, ref["q4"], rtol=1e-5)
    assert not np.array_equal(s.m2, ref["m2"])  # the float32 path was taken


def test_float32_products_of_values_near_the_float32_maximum_stay_finite_and_exact() -> None:
    """Rows scaled by 2**120 (float32 values up to ~1e37, exact copies: a power of two) give the
    statistics of the unscaled rows times 2**120 per power of y, bit for bit; unscaled, the
    float32 products overflowed and the diagnostics held inf."""
    x = np.random.default_rng(5).standard_normal((200, 3)).astype(np.float32)
    small = GaussianStats.from_array(x, products=np.float32)
    big = GaussianStats.from_array(x * np.float32(2.0**120), products=np.float32)
    assert np.all(np.isfinite(big.m2)) and np.all(np.isfinite(big.t3)) and np.isfinite(big.q4)
    np.testing.assert_array_equal(big.mean, small.mean * 2.0**120)
    np.testing.assert_array_equal(big.m2, small.m2 * 2.0**240)
    np.testing.assert_array_equal(big.t3, small.t3 * 2.0**360)
    assert big.q4 == small.q4 * 2.0**480


def test_from_array_empty_is_zero() -> None:
    """Zero rows: n = 0 and all moments zero in the right shapes."""
    s = GaussianStats.from_array(np.empty((0, 3)))
    assert s.n == 0 and s.dim == 3
    assert s.m2.shape == (3, 3) and not s.m2.any() and not s.t3.any() and s.q4 == 0.0


def test_from_array_rejects_1d() -> None:
    with pytest.raises(ValueError, match="2-d"):
        GaussianStats.from_array(np.zeros(5))


def test_covariance_of_empty_raises() -> None:
    with pytest.raises(ValueError):
        GaussianStats.empty(2).covariance()


# --------------------------------------------------------------------------- merge
SPLITS = [
    [0, 0, 200, 200],  # empty parts at the start and end
    [1, 2, 3, 199],  # single-row parts
    [100],  # two halves
    [37, 38, 120, 121, 199],  # mixed sizes
    [0, 1],  # empty part, single row, then the rest
    list(range(0, 200, 13)),  # many parts, the first empty
    [199, 199, 199],  # big part, empty parts, single last row
]


def split_stats(x: np.ndarray, cuts: list[int]) -> list[GaussianStats]:
    return [GaussianStats.from_array(p) for p in np.split(x, cuts)]


def fold(parts: list[GaussianStats]) -> GaussianStats:
    acc = GaussianStats.empty(parts[0].dim)
    for p in parts:
        acc = acc.merge(p)
    return acc


@pytest.mark.parametrize("cuts", SPLITS, ids=[str(c)[:30] for c in SPLITS])
def test_merge_of_parts_equals_row_loop(cuts: list[int]) -> None:
    """Merging the statistics of contiguous parts reproduces the per-row sums of the whole."""
    x = np.random.default_rng(11).normal(size=(200, 4)) * np.array([1.0, 2.0, 0.5, 4.0]) + 3.0
    merged = fold(split_stats(x, cuts))
    ref = reference_moments(x)
    assert merged.n == 200
    np.testing.assert_allclose(merged.mean, ref["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.m2, ref["m2"], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(merged.t3, ref["t3"], rtol=1e-8, atol=1e-7)
    np.testing.assert_allclose(merged.q4, ref["q4"], rtol=1e-10)


@pytest.mark.parametrize("cuts", SPLITS, ids=[str(c)[:30] for c in SPLITS])
def test_merge_at_offset_1e6_is_stable(cuts: list[int]) -> None:
    """Features = 1e6 + N(0, 1): the merged covariance matches the covariance of the generating
    N(0, 1) data (float64 numpy on unshifted data, exact reference) to rtol 1e-6."""
    rng = np.random.default_rng(12)
    z = rng.normal(size=(200, 4)) @ np.array(
        [[1.0, 0.3, 0.0, 0.0], [0.0, 1.0, 0.2, 0.0], [0.0, 0.0, 1.0, -0.4], [0.0, 0.0, 0.0, 1.0]]
    )
    x = OFFSET + z
    # Reference on the unshifted data: adding a constant does not change the covariance.
    ref_cov = np.cov(z, rowvar=False, bias=True)
    ref = reference_moments(z)
    merged = fold(split_stats(x, cuts))
    assert merged.n == 200
    np.testing.assert_allclose(merged.mean - OFFSET, z.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(merged.covariance(), ref_cov, rtol=1e-6, atol=1e-6)
    # The higher moments are also centred, so they stay accurate (relative to their scale).
    t3_scale = np.abs(ref["t3"]).max()
    np.testing.assert_allclose(merged.t3, ref["t3"], atol=1e-5 * t3_scale)
    np.testing.assert_allclose(merged.q4, ref["q4"], rtol=1e-6)


def test_naive_raw_moments_fail_at_offset_1e6() -> None:
    """Sanity check that the offset test is meaningful: E[xx^T] - E[x]E[x]^T in float64 at
    offset 1e6 is off by far more than the 1e-6 tolerance used above."""
    rng = np.random.default_rng(12)
    z = rng.normal(size=(200, 4))
    x = OFFSET + z
    naive = (x.T @ x) / len(x) - np.outer(x.mean(axis=0), x.mean(axis=0))
    ref_cov = np.cov(z, rowvar=False, bias=True)
    assert np.max(np.abs(naive - ref_cov)) > 1e-3
    stable = GaussianStats.from_array(x).covariance()
    np.testing.assert_allclose(stable, ref_cov, rtol=1e-6, atol=1e-6)


def test_merge_is_associative_and_commutative() -> None:
    """(a + b) + c, a + (b + c) and c + (a + b) agree with each other and with the row loop."""
    rng = np.random.default_rng(13)
    a, b, c = (rng.normal(loc=m, size=(k, 3)) for m, k in ((0.0, 17), (5.0, 40), (-2.0, 3)))
    sa, sb, sc = (GaussianStats.from_array(p) for p in (a, b, c))
    left = (sa + sb) + sc
    right = sa + (sb + sc)
    swapped = sc + (sb + sa)
    ref = reference_moments(np.vstack([a, b, c]))
    for s in (left, right, swapped):
        assert s.n == 60
        np.testing.assert_allclose(s.mean, ref["mean"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.m2, ref["m2"], rtol=1e-10)
        np.testing.assert_allclose(s.t3, ref["t3"], rtol=1e-9, atol=1e-8)
        np.testing.assert_allclose(s.q4, ref["q4"], rtol=1e-10)


def test_merge_two_single_rows_closed_form() -> None:
    """Two rows p, q: mean (p+q)/2, m2 = (p-q)(p-q)^T/2, t3 = 0, q4 = ||p-q||^4 / 8."""
    p, q = np.array([1.0, 2.0, -1.0]), np.array([3.0, -2.0, 0.0])
    s = GaussianStats.from_array(p[None]).merge(GaussianStats.from_array(q[None]))
    diff = p - q
    np.testing.assert_allclose(s.mean, [2.0, 0.0, -0.5])
    np.testing.assert_allclose(s.m2, np.outer(diff, diff) / 2)
    np.testing.assert_allclose(s.t3, np.zeros(3), atol=1e-12)
    assert s.q4 == pytest.approx(float(diff @ diff) ** 2 / 8)


def test_merge_with_empty_is_identity() -> None:
    """empty + s and s + empty both leave every field unchanged."""
    x = np.random.default_rng(14).normal(size=(9, 2))
    s = GaussianStats.from_array(x)
    ref = reference_moments(x)
    for merged in (s.merge(GaussianStats.empty(2)), GaussianStats.empty(2).merge(s)):
        assert merged.n == 9
        np.testing.assert_allclose(merged.mean, ref["mean"], rtol=1e-12)
        np.testing.assert_allclose(merged.m2, ref["m2"], rtol=1e-12)
        np.testing.assert_allclose(merged.t3, ref["t3"], rtol=1e-10, atol=1e-12)
        assert merged.q4 == pytest.approx(ref["q4"], rel=1e-12)
    both_empty = GaussianStats.empty(2).merge(GaussianStats.empty(2))
    assert both_empty.n == 0


def test_merge_dimension_mismatch_raises() -> None:
    a = GaussianStats.from_array(np.ones((2, 3)))
    b = GaussianStats.from_array(np.ones((2, 4)))
    with pytest.raises(ValueError, match="dimension 3 and 4"):
        a.merge(b)
    with pytest.raises(ValueError):
        GaussianStats.empty(3) + GaussianStats.empty(2)


# --------------------------------------------------------------------------- serialisation
def test_to_flat_layout_and_round_trip() -> None:
    """to_flat is [n, mean, m2 row-major, t3, q4] (checked by hand); from_flat inverts it."""
    x = np.random.default_rng(15).normal(size=(6, 3))
    s = GaussianStats.from_array(x)
    ref = reference_moments(x)
    flat = s.to_flat()
    assert flat.dtype == np.float64 and flat.shape == (2 + 2 * 3 + 9,)
    assert flat[0] == 6.0
    np.testing.assert_allclose(flat[1:4], ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(flat[4:13].reshape(3, 3), ref["m2"], rtol=1e-12)
    np.testing.assert_allclose(flat[13:16], ref["t3"], rtol=1e-10, atol=1e-12)
    assert flat[16] == pytest.approx(ref["q4"], rel=1e-12)
    back = GaussianStats.from_flat(flat, 3)
    assert isinstance(back.n, int)
    assert_stats_equal(back, s, rtol=0, atol=0)


def test_from_flat_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="dim 3"):
        GaussianStats.from_flat(np.zeros(16), 3)


def test_to_dict_round_trip_and_json() -> None:
    """to_dict holds plain lists (JSON serialisable); from_dict restores every field exactly."""
    import json

    x = np.random.default_rng(16).normal(size=(11, 4))
    s = GaussianStats.from_array(x)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["n"] == 11 and d["dim"] == 4 and len(d["m2"]) == 16
    back = GaussianStats.from_dict(d)
    assert_stats_equal(back, s, rtol=0, atol=0)
    np.testing.assert_allclose(back.m2, reference_moments(x)["m2"], rtol=1e-12)


def test_empty_round_trips() -> None:
    e = GaussianStats.empty(2)
    assert_stats_equal(GaussianStats.from_flat(e.to_flat(), 2), e, rtol=0, atol=0)
    assert_stats_equal(GaussianStats.from_dict(e.to_dict()), e, rtol=0, atol=0)
