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

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.budgets import Budget
from distunlearn.prepare import GROUP, ID
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


def rank_scores(scores: DataFrame, k_max: int, n: int, partitions: int, keys: tuple[str, ...] = (METHOD,),
                rank_col: str = RANK, carry: tuple[str, ...] = ()) -> tuple[DataFrame, DataFrame]:
    """DataFrame[*keys, id, score, rank_col, *carry] of the top ``k_max`` rows of each ``keys``
    value (a method; with groups, a method and group), and the persisted sorted frame it is
    computed from (the caller unpersists it).  Pruning is tried only for per-method ranks."""
    start = time.monotonic()
    candidates = _prune(scores, k_max, n) if k_max < n and keys == (METHOD,) else scores
    ordered = (candidates.repartitionByRange(partitions, *keys, F.desc(SCORE), F.asc(ID))
               .sortWithinPartitions(*keys, F.desc(SCORE), F.asc(ID))
               .withColumn(_PID, F.spark_partition_id())
               .withColumn(_POS, F.monotonically_increasing_id())
               .persist(SCRATCH))
    blocks = (ordered.groupBy(_PID, *keys).agg(F.count(F.lit(1)).alias("n"), F.min(_POS).alias("first"))
              .collect())
    offsets: list[tuple[object, ...]] = []
    seen: dict[tuple[object, ...], int] = {}
    for row in sorted(blocks, key=lambda r: (*(str(r[k]) for k in keys), r[_PID])):
        key = tuple(row[k] for k in keys)
        before = seen.get(key, 0)
        offsets.append((row[_PID], *key, before + 1 - row["first"]))
        seen[key] = before + row["n"]
    schema = T.StructType([T.StructField(_PID, T.IntegerType()),
                           *[T.StructField(k, scores.schema[k].dataType) for k in keys],
                           T.StructField("_base", T.LongType())])
    bases = scores.sparkSession.createDataFrame(offsets, schema)
    ranked = (ordered.join(F.broadcast(bases), [_PID, *keys])
              .withColumn(rank_col, F.col(_POS) + F.col("_base"))
              .where(F.col(rank_col) <= k_max)
              .select(*keys, ID, SCORE, rank_col, *carry))
    log.info("ranked %d rows by %s in %.1f s", sum(seen.values()), "/".join(keys), time.monotonic() - start)
    return ranked, ordered


def select_removal_sets(scores: DataFrame, budgets: list[Budget], n: int, partitions: int) -> Selection:
    """Exact top-k rows per method for every budget (see the module docstring).  A ``group``
    column of ``scores`` is carried into the rows."""
    spark = scores.sparkSession
    k_max = max(b.k for b in budgets)
    carry = (GROUP,) if GROUP in scores.columns else ()
    if k_max == 0:
        ranked, ordered = scores.limit(0).withColumn(RANK, F.lit(0).cast("long")), scores.limit(0)
    else:
        ranked, ordered = rank_scores(scores, k_max, n, partitions, carry=carry)
    ranked = ranked.persist(SCRATCH)
    budget_df = _budget_frame(spark, budgets)
    rows = (ranked.join(F.broadcast(budget_df), F.col(RANK) <= F.col("k"))
            .select(METHOD, "budget", "budget_count", "k", RANK, ID, SCORE, *carry))
    ks = sorted({b.k for b in budgets if b.k > 0})
    boundaries = {(r[METHOD], r[RANK]): (r[SCORE], r[ID]) for r in ranked.where(F.col(RANK).isin(ks)).collect()}
    return Selection(rows, boundaries, (ranked, ordered))


def _budget_frame(spark: SparkSession, budgets: list[Budget]) -> DataFrame:
    return spark.createDataFrame([(b.budget, b.count, b.k) for b in budgets],
                                 "budget double, budget_count long, k long")


# ---------------------------------------------------------------------- group-aware selection
GRANK = "_grank"


def select_group_sets(scores: DataFrame, budgets: list[Budget], mode: str, quotas: dict[int, dict[str, int]],
                      caps: dict[str, int], partitions: int) -> Selection:
    """Removal sets under a group budget or cap (:mod:`distunlearn.groups`); ``scores`` has a
    ``group`` column.

    Every forget row is first ranked within its (method, group), score descending then id
    ascending (the range-partitioned sort of :func:`rank_scores`, keyed by method and group;
    nothing is pruned).  Then

    * ``stratified``: the set of budget k is, in every group g, its top ``quotas[k][g]`` rows;
      ``rank`` is the row's rank within its group;
    * ``global`` with caps: rows past their group's capacity ``caps[g]`` are dropped and the
      rest ranked globally per method (a second sort); the set of budget k is its top k and
      ``rank`` the rank among the rows the cap allows.

    ``budgets`` carry the effective k (:func:`distunlearn.groups.effective_k`).  The boundaries
    are, per (method, k), the lowest-ranked row of the set (the smallest score, then the
    largest id), whose score is the reported threshold.
    """
    spark = scores.sparkSession
    total = sum(caps.values())
    # ranks within (method, group) up to the longest prefix any set takes (n: no pruning by group)
    by_group, ordered_g = rank_scores(scores, max(total, 1) if mode == "global" else _largest(quotas), 0,
                                      partitions, keys=(METHOD, GROUP), rank_col=GRANK)
    by_group = by_group.persist(SCRATCH)
    persisted: list[DataFrame] = [by_group, ordered_g]
    if mode == "stratified":
        rows_q = [(g, b.budget, b.count, b.k, q) for b in budgets for g, q in quotas[b.k].items() if q > 0]
        quota_df = spark.createDataFrame(rows_q, "_g string, budget double, budget_count long, k long, _quota long")
        rows = (by_group.join(F.broadcast(quota_df), (F.col(GROUP) == F.col("_g")) & (F.col(GRANK) <= F.col("_quota")))
                .select(METHOD, "budget", "budget_count", "k", F.col(GRANK).alias(RANK), ID, SCORE, GROUP, GRANK))
    else:
        cap_df = spark.createDataFrame(list(caps.items()), "_g string, _cap long")
        eligible = (by_group.join(F.broadcast(cap_df), F.col(GROUP) == F.col("_g"))
                    .where(F.col(GRANK) <= F.col("_cap")).select(METHOD, ID, SCORE, GROUP, GRANK))
        k_max = max(b.k for b in budgets)
        ranked, ordered = rank_scores(eligible, max(k_max, 1), total, partitions, carry=(GROUP, GRANK))
        ranked = ranked.persist(SCRATCH)
        persisted += [ranked, ordered]
        rows = (ranked.join(F.broadcast(_budget_frame(spark, budgets)), F.col(RANK) <= F.col("k"))
                .select(METHOD, "budget", "budget_count", "k", RANK, ID, SCORE, GROUP, GRANK))
    rows = rows.persist(SCRATCH)
    persisted.append(rows)
    boundaries = _lowest_rows(rows)
    return Selection(rows, boundaries, tuple(persisted))


def _largest(quotas: dict[int, dict[str, int]]) -> int:
    return max([1, *(q for per in quotas.values() for q in per.values())])


def _lowest_rows(rows: DataFrame) -> dict[tuple[str, int], tuple[float, object]]:
    """Per (method, k) the (score, id) of the set's last row in the order score descending, id
    ascending: the smallest score, and among rows with it the largest id."""
    low = rows.groupBy(METHOD, "k").agg(F.min(SCORE).alias("_s"))
    last = (rows.join(F.broadcast(low), [METHOD, "k"]).where(F.col(SCORE) == F.col("_s"))
            .groupBy(METHOD, "k", "_s").agg(F.max(ID).alias("_id")).collect())
    return {(r[METHOD], int(r["k"])): (float(r["_s"]), r["_id"]) for r in last}


def group_removed(rows: DataFrame) -> dict[tuple[str, int, str], int]:
    """Rows removed per (method, k, group) (one aggregation of the selection's rows, counted per
    budget: two budgets of the same k, e.g. both reduced by a cap, hold the same set)."""
    counts = rows.groupBy(METHOD, "budget", "budget_count", "k", GROUP).count().collect()
    return {(r[METHOD], int(r["k"]), r[GROUP]): int(r["count"]) for r in counts}


def group_boundaries(rows: DataFrame, removed: dict[tuple[str, int, str], int]
                     ) -> dict[str, dict[str, list[tuple[float, object]]]]:
    """Per method and group, the (score, id) of the last row of the group's part of each set,
    for the distinct part sizes in ascending order (``rows``: :func:`select_group_sets`'
    rows, with the rank within the group).  A set's part in group g is a prefix of g's
    ranking (score descending, id ascending) in every group mode, so a row of g is in the set
    iff (score, -id) >= the boundary of that prefix: the per-group analogue of the global
    boundaries, used by the diagnostics pass."""
    need = sorted({(m, g, q) for (m, _, g), q in removed.items() if q > 0})
    if not need:
        return {}
    wanted = rows.sparkSession.createDataFrame(need, "_m string, _g string, _q long")
    found = (rows.join(F.broadcast(wanted), (F.col(METHOD) == F.col("_m")) & (F.col(GROUP) == F.col("_g"))
                       & (F.col(GRANK) == F.col("_q"))).select(METHOD, GROUP, GRANK, SCORE, ID).distinct().collect())
    out: dict[str, dict[str, list[tuple[float, object]]]] = {}
    for r in sorted(found, key=lambda r: (r[METHOD], r[GROUP], r[GRANK])):
        out.setdefault(r[METHOD], {}).setdefault(r[GROUP], []).append((float(r[SCORE]), r[ID]))
    return out
