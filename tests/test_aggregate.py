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


def test_the_driver_takes_merged_statistics_in_rounds_a_quarter_of_its_result_limit():
    """The removal-set statistics are one d x d float64 matrix per method and part (11 GB at
    d = 4096 with the defaults): they come to the driver in rounds of at most a quarter of
    spark.driver.maxResultSize and 128 MiB, never the whole at once."""
    from distunlearn.errors import ConfigError
    from distunlearn.transforms.merge import round_bytes
    from distunlearn.transforms.sizing import byte_size

    assert [byte_size(s) for s in ("1g", "4096m", "512k", "2GB", "512", "0")] == [
        2**30, 2**32, 2**19, 2**31, 512, 0]
    assert round_bytes("1g") == 128 * 2**20  # the cap: a quarter of 1g is 256 MiB
    assert round_bytes("200m") == 50 * 2**20
    assert round_bytes("0") == 128 * 2**20  # 0: no limit, the cap still holds
    assert round_bytes("1k") == 64 * 2**10  # never below a 64 KiB piece
    with pytest.raises(ConfigError, match=r"^spark\.driver\.maxResultSize 'lots' is not a size"):
        byte_size("lots")


def test_large_d_lowers_the_batch_settings_inside_the_block_only(spark):
    """The suite's session: 7-row Arrow batches stay (never raised), the Parquet reader's 4096
    rows drop to what the heap per task allows at d = 100 000, and both are put back after."""
    from distunlearn.core.batches import batch_rows
    from distunlearn.transforms import sizing
    from distunlearn.transforms.sizing import ARROW_BATCH, ARROW_BYTES, PARQUET_BATCH, byte_size

    before = {k: spark.conf.get(k) for k in (ARROW_BATCH, PARQUET_BATCH, ARROW_BYTES)}
    heap = sizing.heap_per_task(spark)
    assert heap == byte_size(spark.conf.get("spark.driver.memory", "1g")) // 2  # local[2]
    with sizing.batches_for(spark, 100_000) as used:
        assert spark.conf.get(ARROW_BATCH) == before[ARROW_BATCH] == "7"
        assert spark.conf.get(PARQUET_BATCH) == str(batch_rows(100_000, heap, int(before[PARQUET_BATCH])))
        assert spark.conf.get(ARROW_BYTES) == str(heap // 16)  # pieces of the statistics: 8 MB each
        assert used == {ARROW_BATCH: 7, PARQUET_BATCH: int(spark.conf.get(PARQUET_BATCH)), ARROW_BYTES: heap // 16}
        assert used[PARQUET_BATCH] < int(before[PARQUET_BATCH])
    assert {k: spark.conf.get(k) for k in (ARROW_BATCH, PARQUET_BATCH)} == {k: before[k] for k in (ARROW_BATCH,
                                                                                                PARQUET_BATCH)}
    # put back with the same value; Spark shows a default of 256 MiB as "268435456b", a setting without the unit
    assert byte_size(spark.conf.get(ARROW_BYTES)) == byte_size(before[ARROW_BYTES]) == 2**28
