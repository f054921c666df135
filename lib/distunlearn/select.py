"""Exact top-k removal sets per method and budget (Spark DataFrame -> DataFrame).

Order: score descending, then id ascending.  The order is total (ids are unique), so the
sets are nested across budgets and identical across reruns, whatever the partitioning.

How ranks are computed without collecting rows or a single-partition window:

1. *Prune* (only when the largest budget K is below the number of scored rows n): an
   approximate quantile per method (``percentile_approx``, rank error <= n / 10 000) gives a
   threshold a margin of 1% of n below the K-th score; rows under it cannot be selected.
   If the margin proves too small (fewer than K rows pass) that method keeps all rows.
   With the default budgets (up to 1.0) every row is ranked and nothing is pruned.
2. *Sort* the candidates with a range-partitioned sort (``repartitionByRange`` samples the
   keys to pick partition boundaries, then each partition sorts locally): only rows in the
   same range are ever compared, i.e. exact ordering happens only between neighbours.
3. *Rank*: per (partition, method) the row count and the first ``monotonically_increasing_id``
   (collected: #partitions x #methods small rows) give each partition's offset; a row's rank
   is its offset plus its position in the partition.  This is zipWithIndex in SQL.
4. *Explode* to one row per budget the row belongs to: a broadcast join on rank <= k.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.budgets import Budget
from distunlearn.prepare import ID
from distunlearn.score import METHOD, SCORE, SCRATCH

log = logging.getLogger(__name__)

RANK = "rank"
_PID, _POS = "_pid", "_pos"
_PRUNE_ACCURACY = 10_000
_PRUNE_MARGIN = 0.01
_ROWS_PER_SORT_PARTITION = 1_000_000


def sort_partitions(n: int, methods: int, minimum: int) -> int:
    """Partitions of the selection's sort: ``minimum`` (the shuffle partitions), or more so that
    none holds more than ~1M of the n x methods score rows.  At 10M forget rows x 4 methods
    in 8 partitions, the sort feeding the cache could not get memory with the default 2 GB
    driver heap (UNABLE_TO_ACQUIRE_MEMORY; docs/BENCHMARKS.md)."""
    return max(minimum, -(-n * methods // _ROWS_PER_SORT_PARTITION))


@dataclass(frozen=True)
class Selection:
    """The exploded removal sets and, per (method, k), the last row selected: its score (the
    threshold) and id.  A row is in the set of size k iff (score, -id) >= that pair."""

    rows: DataFrame  # method, budget, budget_count, k, rank, id, score
    boundaries: dict[tuple[str, int], tuple[float, object]]  # (method, k > 0) -> (score, id) at rank k
    persisted: tuple[DataFrame, ...]  # call release() once the rows are written

    def threshold(self, method: str, k: int) -> float | None:
        """Score of the k-th row (None for k = 0)."""
        found = self.boundaries.get((method, k))
        return None if found is None else float(found[0])

    def release(self) -> None:
        for frame in self.persisted:
            frame.unpersist()


def _prune(scores: DataFrame, k_max: int, n: int) -> DataFrame:
    q = max(0.0, 1.0 - k_max / n - _PRUNE_MARGIN)
    cut = scores.groupBy(METHOD).agg(F.percentile_approx(SCORE, q, _PRUNE_ACCURACY).alias("_cut"))
    passed = (scores.join(F.broadcast(cut), METHOD).where(F.col(SCORE) >= F.col("_cut"))
              .groupBy(METHOD, "_cut").count().collect())
    cuts = {r[METHOD]: r["_cut"] for r in passed if r["count"] >= k_max}
    log.info("pruning at the approximate %.4f quantile keeps %s of %d rows per method", q,
             {r[METHOD]: r["count"] for r in passed}, n)
    if not cuts:
        return scores
    keep = ~F.col(METHOD).isin(list(cuts))  # methods whose margin was too small keep every row
    for method, value in cuts.items():
        keep = keep | ((F.col(METHOD) == method) & (F.col(SCORE) >= F.lit(value)))
    return scores.where(keep)


def rank_scores(scores: DataFrame, k_max: int, n: int, partitions: int) -> tuple[DataFrame, DataFrame]:
    """DataFrame[method, id, score, rank] of the top ``k_max`` rows of each method, and the
    persisted sorted frame it is computed from (the caller unpersists it)."""
    start = time.monotonic()
    candidates = _prune(scores, k_max, n) if k_max < n else scores
    ordered = (candidates.repartitionByRange(partitions, METHOD, F.desc(SCORE), F.asc(ID))
               .sortWithinPartitions(METHOD, F.desc(SCORE), F.asc(ID))
               .withColumn(_PID, F.spark_partition_id())
               .withColumn(_POS, F.monotonically_increasing_id())
               .persist(SCRATCH))
    blocks = (ordered.groupBy(_PID, METHOD).agg(F.count(F.lit(1)).alias("n"), F.min(_POS).alias("first"))
              .collect())
    offsets: list[tuple[int, str, int]] = []
    seen: dict[str, int] = {}
    for row in sorted(blocks, key=lambda r: (r[METHOD], r[_PID])):
        before = seen.get(row[METHOD], 0)
        offsets.append((row[_PID], row[METHOD], before + 1 - row["first"]))
        seen[row[METHOD]] = before + row["n"]
    schema = T.StructType([T.StructField(_PID, T.IntegerType()), T.StructField(METHOD, T.StringType()),
                          T.StructField("_base", T.LongType())])
    bases = scores.sparkSession.createDataFrame(offsets, schema)
    ranked = (ordered.join(F.broadcast(bases), [_PID, METHOD])
              .withColumn(RANK, F.col(_POS) + F.col("_base"))
              .where(F.col(RANK) <= k_max)
              .select(METHOD, ID, SCORE, RANK))
    log.info("ranked %s rows of %d methods in %.1f s", {m: c for m, c in seen.items()},
             len(seen), time.monotonic() - start)
    return ranked, ordered


def select_removal_sets(scores: DataFrame, budgets: list[Budget], n: int, partitions: int) -> Selection:
    """Exact top-k rows per method for every budget (see the module docstring)."""
    spark = scores.sparkSession
    k_max = max(b.k for b in budgets)
    if k_max == 0:
        ranked, ordered = scores.limit(0).withColumn(RANK, F.lit(0).cast("long")), scores.limit(0)
    else:
        ranked, ordered = rank_scores(scores, k_max, n, partitions)
    ranked = ranked.persist(SCRATCH)
    budget_df = spark.createDataFrame([(b.budget, b.count, b.k) for b in budgets],
                                      "budget double, budget_count long, k long")
    rows = (ranked.join(F.broadcast(budget_df), F.col(RANK) <= F.col("k"))
            .select(METHOD, "budget", "budget_count", "k", RANK, ID, SCORE))
    ks = sorted({b.k for b in budgets if b.k > 0})
    boundaries = {(r[METHOD], r[RANK]): (r[SCORE], r[ID]) for r in ranked.where(F.col(RANK).isin(ks)).collect()}
    return Selection(rows, boundaries, (ranked, ordered))
