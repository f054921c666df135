"""Exact removal sets for every method and budget, in every group mode (Spark DataFrame ->
DataFrame and values).

Order: score descending, then id ascending.  The order is total (ids are unique), so the
ranks are identical across reruns whatever the partitioning.  The rank arithmetic and why a
set is ``group_rank <= quota`` in every group are in :mod:`distunlearn.core.ranking`.

How ranks are computed without collecting rows or a window without a partition key:

1. *Prune* (only when every set is a prefix of the global order, i.e. global budgets and no
   binding cap, and the largest budget K is below the number of scored rows n): an
   approximate quantile per method (``percentile_approx``, rank error <= n / 10 000) gives a
   threshold a margin of 1% of n below the K-th score; rows under it cannot be selected.
   If the margin proves too small (fewer than K rows pass) that method keeps all rows.
   With the default budgets (up to 1.0) every row is ranked and nothing is pruned.
2. *Sort* the candidates with one range-partitioned sort (``repartitionByRange`` samples the
   keys to pick partition boundaries, then each partition sorts locally): only rows in the
   same range are ever compared.
3. *Count* the rows of every (partition, method, group) block (collected: a few hundred
   small rows) and derive each block's offsets on the driver.
4. *Rank*: one mapInArrow pass over the sorted partitions gives each row its ``group_rank``
   and, when it is eligible (within its group's cap), its ``rank``; ineligible rows are
   dropped.  Without groups both are the plain rank.
5. *Quotas*: with global budgets and groups, each group's part of the set of size k is the
   number of its rows of rank <= k (one aggregation); with stratified budgets the apportioned
   share (:mod:`distunlearn.core.groups`); without groups, k.
6. *Keep* the rows some set holds (``group_rank <=`` the group's largest quota) and collect
   the last row of every group's part of every set: the thresholds, and the bounds the
   diagnostics pass sorts rows by.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.core.batches import ArrowUdf
from distunlearn.core.budgets import Budget
from distunlearn.core.groups import GroupPlan
from distunlearn.core.ranking import Group, Offsets, offsets
from distunlearn.progress import note
from distunlearn.transforms.prepare import GROUP, ID
from distunlearn.transforms.score import METHOD, SCORE, SCRATCH
from distunlearn.transforms.statistics import Bounds

log = logging.getLogger(__name__)

RANK = "rank"
GROUP_RANK = "group_rank"
_PID = "_pid"
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
class BudgetSet:
    """One method's removal set of one budget: in each group, the top ``quotas[g]`` rows of the
    group's ranking; ``thresholds[g]`` is the score of the last of them (None for quota 0)."""

    method: str
    budget: Budget  # k: the set's size
    quotas: dict[Group, int]
    thresholds: dict[Group, float | None]

    @property
    def threshold(self) -> float | None:
        """The lowest score in the set (None for an empty set)."""
        scores = [t for g, t in self.thresholds.items() if self.quotas[g] > 0 and t is not None]
        return min(scores) if scores else None


@dataclass(frozen=True)
class Ranking:
    """The stored ranking rows, every (method, budget) set, and the bounds of the diagnostics."""

    rows: DataFrame  # method, id, score, rank, group, group_rank: every row some set holds
    sets: list[BudgetSet]  # per method, then per budget in the given order
    bounds: Bounds  # method -> group -> (score, id) of the last row of each distinct positive quota
    persisted: tuple[DataFrame, ...]

    def release(self) -> None:
        for frame in self.persisted:
            frame.unpersist()


def _prune(scores: DataFrame, k_max: int, n: int) -> DataFrame:
    q = max(0.0, 1.0 - k_max / n - _PRUNE_MARGIN)
    cut = scores.groupBy(METHOD).agg(F.percentile_approx(SCORE, q, _PRUNE_ACCURACY).alias("_cut"))
    passed = (scores.join(F.broadcast(cut), METHOD).where(F.col(SCORE) >= F.col("_cut"))
              .groupBy(METHOD, "_cut").count().collect())
    cuts = {r[METHOD]: r["_cut"] for r in passed if r["count"] >= k_max}
    log.debug("pruning at the approximate %.4f quantile keeps %s of %d rows per method", q,
              {r[METHOD]: r["count"] for r in passed}, n)
    note(f"pruned at the {q:.3g} quantile")
    if not cuts:
        return scores
    keep = ~F.col(METHOD).isin(list(cuts))  # methods whose margin was too small keep every row
    for method, value in cuts.items():
        keep = keep | ((F.col(METHOD) == method) & (F.col(SCORE) >= F.lit(value)))
    return scores.where(keep)


def _running_count(codes: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same code (0 for the first)."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    out = np.empty(len(codes), dtype=np.int64)
    out[order] = np.arange(len(codes)) - run_start
    return out


def _codes(column: pa.Array) -> tuple[np.ndarray, list[object]]:
    """Dictionary codes of a string column (nulls: the last code) and the values they stand for."""
    encoded = pc.dictionary_encode(column)
    values: list[object] = encoded.dictionary.to_pylist()
    codes = pc.fill_null(encoded.indices, len(values)).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [*values, None]


def _ranker(offs: Offsets, caps: dict[Group, int]) -> ArrowUdf:
    """mapInArrow body over the sorted partitions (module docstring, step 4)."""

    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        group_seen: dict[tuple[int, object, object], int] = {}
        eligible_seen: dict[tuple[int, object], int] = {}
        for rb in batches:
            if rb.num_rows == 0:
                continue
            pid = rb.column(_PID).to_numpy(zero_copy_only=False).astype(np.int64)
            m_codes, m_values = _codes(rb.column(METHOD))
            g_codes, g_values = _codes(rb.column(GROUP))
            width_g = len(g_values)
            key = (pid * len(m_values) + m_codes) * width_g + g_codes
            uniq, first = np.unique(key, return_index=True)
            base = np.empty(len(uniq), dtype=np.int64)
            cap = np.empty(len(uniq), dtype=np.int64)
            at = np.searchsorted(uniq, key)
            sizes = np.bincount(at, minlength=len(uniq))
            for i, row in enumerate(first):
                block = (int(pid[row]), m_values[m_codes[row]], g_values[g_codes[row]])
                before = offs.group_before[block] + group_seen.get(block, 0)  # type: ignore[index]
                base[i], cap[i] = before, caps.get(block[2], 0)  # type: ignore[arg-type]
                group_seen[block] = group_seen.get(block, 0) + int(sizes[i])
            group_rank = base[at] + _running_count(key) + 1
            eligible = group_rank <= cap[at]
            pm = (pid * len(m_values) + m_codes)[eligible]
            rank = np.zeros(int(eligible.sum()), dtype=np.int64)
            if len(pm):
                puniq, pfirst = np.unique(pm, return_index=True)
                pat = np.searchsorted(puniq, pm)
                psizes = np.bincount(pat, minlength=len(puniq))
                pbase = np.empty(len(puniq), dtype=np.int64)
                rows = np.flatnonzero(eligible)
                for i, j in enumerate(pfirst):
                    r = rows[j]
                    pkey = (int(pid[r]), m_values[m_codes[r]])
                    pbase[i] = offs.eligible_before[pkey] + eligible_seen.get(pkey, 0)  # type: ignore[index]
                    eligible_seen[pkey] = eligible_seen.get(pkey, 0) + int(psizes[i])
                rank = pbase[pat] + _running_count(pm) + 1
            kept = rb.filter(pa.array(eligible))
            yield pa.RecordBatch.from_arrays(
                [kept.column(METHOD), kept.column(ID), kept.column(SCORE), kept.column(GROUP),
                 pa.array(rank, pa.int64()), pa.array(group_rank[eligible], pa.int64())],
                names=[METHOD, ID, SCORE, GROUP, RANK, GROUP_RANK])

    return partition


def _quotas(ranked: DataFrame, plan: GroupPlan, methods: tuple[str, ...],
            budgets: list[Budget]) -> dict[tuple[str, int], dict[Group, int]]:
    """(method, k) -> group -> rows of the group in the set (module docstring, step 5)."""
    ks = sorted({b.k for b in budgets})
    if plan.mode == "stratified":
        per_k = {k: plan.stratified_quotas(k) for k in ks}
        return {(m, k): per_k[k] for m in methods for k in ks}
    if not plan.grouped:
        return {(m, k): {None: k} for m in methods for k in ks}
    sums = [F.sum((F.col(RANK) <= F.lit(k)).cast("long")).alias(f"_k{k}") for k in ks]
    counts = ranked.groupBy(METHOD, GROUP).agg(*sums).collect()
    out: dict[tuple[str, int], dict[Group, int]] = {(m, k): dict.fromkeys(plan.groups, 0) for m in methods for k in ks}
    for r in counts:
        for k in ks:
            out[(r[METHOD], k)][r[GROUP]] = int(r[f"_k{k}"])
    return out


def _empty(scores: DataFrame) -> DataFrame:
    schema = T.StructType([T.StructField(METHOD, T.StringType()), scores.schema[ID],
                           T.StructField(SCORE, T.DoubleType()), T.StructField(GROUP, T.StringType()),
                           T.StructField(RANK, T.LongType()), T.StructField(GROUP_RANK, T.LongType())])
    return scores.sparkSession.createDataFrame([], schema)


def rank_scores(scores: DataFrame, methods: tuple[str, ...], budgets: list[Budget], plan: GroupPlan, n: int,
                partitions: int) -> Ranking:
    """The removal sets of every method for ``budgets`` (their k already reduced by the caps)
    from long-format scores DataFrame[id, (group), method, score] of ``n`` forget rows."""
    start = time.monotonic()
    spark = scores.sparkSession
    if GROUP not in scores.columns:
        scores = scores.withColumn(GROUP, F.lit(None).cast("string"))
    k_max = max(b.k for b in budgets)
    caps = plan.capacities
    if k_max == 0:
        return Ranking(_empty(scores), [BudgetSet(m, b, dict.fromkeys(plan.groups, 0), dict.fromkeys(plan.groups))
                                        for m in methods for b in budgets], {m: {} for m in methods}, ())
    candidates = _prune(scores, k_max, n) if k_max < n and not plan.ranked_by_group else scores
    ordered = (candidates.repartitionByRange(partitions, METHOD, F.desc(SCORE), F.asc(ID))
               .sortWithinPartitions(METHOD, F.desc(SCORE), F.asc(ID))
               .withColumn(_PID, F.spark_partition_id())
               .persist(SCRATCH))
    blocks = [(int(r[_PID]), r[METHOD], r[GROUP], int(r["count"]))
              for r in ordered.groupBy(_PID, METHOD, GROUP).count().collect()]
    offs = offsets(blocks, caps)
    schema = T.StructType([T.StructField(METHOD, T.StringType()), ordered.schema[ID],
                           T.StructField(SCORE, T.DoubleType()), T.StructField(GROUP, T.StringType()),
                           T.StructField(RANK, T.LongType()), T.StructField(GROUP_RANK, T.LongType())])
    ranked = (ordered.select(METHOD, ID, SCORE, GROUP, _PID).mapInArrow(_ranker(offs, caps), schema)
              .persist(SCRATCH))
    quotas = _quotas(ranked, plan, methods, budgets)
    for (m, k), per_group in quotas.items():
        if sum(per_group.values()) != k:  # a selection bug, never bad input
            raise ValueError(f"{m}: the parts {per_group} of the set of k = {k} do not add up to k")

    largest = [(m, g, max(quotas[(m, b.k)][g] for b in budgets)) for m in methods for g in plan.groups]
    largest_df = spark.createDataFrame(largest, "_m string, _g string, _q long")
    rows = (ranked.join(F.broadcast(largest_df), (F.col(METHOD) == F.col("_m")) & F.col(GROUP).eqNullSafe(F.col("_g")))
            .where(F.col(GROUP_RANK) <= F.col("_q")).select(METHOD, ID, SCORE, RANK, GROUP, GROUP_RANK))

    wanted = sorted({(m, g, q) for (m, _), per in quotas.items() for g, q in per.items() if q > 0},
                    key=lambda t: (t[0], "" if t[1] is None else t[1], t[2]))
    wanted_df = spark.createDataFrame(wanted, "_m string, _g string, _q long")
    found = (ranked.join(F.broadcast(wanted_df), (F.col(METHOD) == F.col("_m")) & F.col(GROUP).eqNullSafe(F.col("_g"))
                         & (F.col(GROUP_RANK) == F.col("_q")))
             .select(METHOD, GROUP, GROUP_RANK, SCORE, ID).collect())
    last = {(r[METHOD], r[GROUP], int(r[GROUP_RANK])): (float(r[SCORE]), r[ID]) for r in found}
    if len(last) != len(wanted):
        raise ValueError(f"found {len(last)} of the {len(wanted)} last rows of the removal sets' parts")
    sets = [BudgetSet(m, b, quotas[(m, b.k)],
                      {g: last[(m, g, q)][0] if q else None for g, q in quotas[(m, b.k)].items()})
            for m in methods for b in budgets]
    bounds: Bounds = {m: {} for m in methods}
    for m, g, q in wanted:
        bounds[m].setdefault(g, []).append(last[(m, g, q)])
    ranked_rows = sum(b[3] for b in blocks)
    log.debug("ranked %d candidate rows of %d methods in %.1f s", ranked_rows, len(methods), time.monotonic() - start)
    note(f"{ranked_rows} candidate rows of {len(methods)} methods ranked")
    return Ranking(rows, sets, bounds, (ranked, ordered))
