"""The distributed statistics pass against numpy on the whole data: many partitions, some
of them empty, several Arrow batches per partition, and features offset by 1e6."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from distunlearn.transforms.prepare import normalize
from distunlearn.transforms.statistics import domain_stats as compute_stats

OFFSET = 1e6


def _frame(spark, x: np.ndarray, partitions: int, empty_every: int):
    """Rows spread over ``partitions`` partitions, leaving every ``empty_every``-th one empty."""
    used = [p for p in range(partitions) if p % empty_every]
    rows = [(i, used[i % len(used)], row.tolist()) for i, row in enumerate(x)]
    df = spark.createDataFrame(rows, "id long, part int, features array<double>")
    # Partition p holds exactly the rows with part == p (repartition by a key whose hash we do
    # not control would not guarantee empty partitions).
    return df.rdd.map(lambda r: (r.part, r)).partitionBy(partitions, lambda k: k).values().toDF(df.schema)


@pytest.mark.parametrize("partitions,empty_every", [(12, 3), (5, 2)])
def test_statistics_match_numpy_with_offset_and_empty_partitions(spark, partitions, empty_every):
    rng = np.random.default_rng(partitions)
    base = rng.standard_normal((203, 5)) @ (np.eye(5) + 0.5 * rng.standard_normal((5, 5)))
    x = base + OFFSET
    df = _frame(spark, x, partitions, empty_every)
    sizes = df.groupBy(F.spark_partition_id().alias("p")).count().collect()
    assert len(sizes) < partitions, "the layout must leave some partitions empty"
    result = compute_stats(normalize(df, "id", "features", "forget"), "forget", "features", "fail")
    s = result.stats
    assert s.n == 203 and result.counts.rows == 203 and s.dim == 5
    np.testing.assert_allclose(s.mean - OFFSET, base.mean(0), rtol=0, atol=1e-8)
    # The reference covariance comes from the unshifted data: numpy on x itself would lose
    # digits at this offset.  A raw E[xx^T] - E[x]E[x]^T in float64 is off by ~1e-3 here.
    np.testing.assert_allclose(s.m2 / s.n, np.cov(base.T, bias=True), rtol=1e-7, atol=1e-7)
    y = base - base.mean(0)
    sq = (y * y).sum(1)
    np.testing.assert_allclose(s.t3, y.T @ sq, rtol=1e-5, atol=1e-4)
    assert s.q4 == pytest.approx(float(sq @ sq), rel=1e-7)


def test_drop_policy_counts_and_excludes_nonfinite_rows(spark):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3))
    bad = x.copy()
    bad[[3, 17], 1] = np.nan
    bad[25, 0] = np.inf
    df = _frame(spark, bad, 4, 5)
    result = compute_stats(normalize(df, "id", "features", "forget"), "forget", "features", "drop")
    keep = np.ones(40, dtype=bool)
    keep[[3, 17, 25]] = False
    assert result.counts.nonfinite == 3 and result.stats.n == 37
    np.testing.assert_allclose(result.stats.mean, x[keep].mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.stats.m2 / 37, np.cov(x[keep].T, bias=True), rtol=1e-10, atol=1e-12)


def test_a_result_the_driver_cannot_take_is_refused_before_the_pass():
    """The removal-set statistics come to the driver as one d x d float64 matrix per method and
    part; above spark.driver.maxResultSize Spark aborts the stage after the work (and once
    crashed the JVM killing its other tasks), so the job stops first with one line."""
    from distunlearn.errors import ConfigError
    from distunlearn.transforms.statistics import byte_size, check_result_size

    assert [byte_size(s) for s in ("1g", "4096m", "512k", "2GB", "512", "0")] == [
        2**30, 2**32, 2**19, 2**31, 512, 0]
    check_result_size(10, 4096, "4g")  # 10 x (4096^2 + 2 x 4096 + 2) x 8 bytes = 1.25 GiB fits
    check_result_size(10**6, 4096, "0")  # 0: no limit
    with pytest.raises(ConfigError, match=r"^the diagnostics bring 10 statistics of d = 4096 to the driver, 1\.25 GiB, "
                                          r"above spark\.driver\.maxResultSize = 1g: raise it \(--spark-conf "
                                          r"spark\.driver\.maxResultSize=3g;"):
        check_result_size(10, 4096, "1g")
    with pytest.raises(ConfigError, match=r"^spark\.driver\.maxResultSize 'lots' is not a size"):
        byte_size("lots")
