"""Distributed sufficient statistics: one pass of mapInArrow, merged with treeAggregate.

Each partition turns its Arrow batches into float64 matrices (a reshape, see
:mod:`distunlearn.batches`), accumulates :class:`~distunlearn.stats.GaussianStats` with the
pairwise merge, and emits a single row: its validity counts and its statistics as bytes.
The per-partition rows are combined by ``treeAggregate`` (depth 2) so the driver receives one
d x d matrix per reducer instead of one per partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from distunlearn.batches import ArrowUdf, InputCounts, list_to_matrix
from distunlearn.errors import InputError
from distunlearn.prepare import FEATURES, GROUP, ID
from distunlearn.score import gumbel_noise, random_score, score_batches, scoring_columns
from distunlearn.scoring import KERNEL_METHODS, ScoringModel
from distunlearn.stats import GaussianStats

log = logging.getLogger(__name__)

_COUNT_FIELDS = ("rows", "null_arrays", "null_elements", "nonfinite", "min_len", "max_len")
_GUMBEL = "_gumbel"
_SCHEMA = ", ".join(f"{name} long" for name in _COUNT_FIELDS) + ", stats binary"


@dataclass(frozen=True)
class DomainStats:
    """Statistics of the valid rows of one table, and the counts of its invalid ones."""

    stats: GaussianStats
    counts: InputCounts


def _partition_stats(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: all batches of one partition -> one row of counts and statistics."""
    counts = InputCounts()
    acc: GaussianStats | None = None
    with threadpool_limits(limits=1, user_api="blas"):
        for rb in batches:
            batch = list_to_matrix(rb.column(0))
            counts = counts.merge(batch.counts)
            # Batches of different lengths (ragged within the partition) cannot be merged;
            # the counts carry min_len != max_len and counts.check reports them.
            if batch.x.shape[0] and counts.min_len == counts.max_len:
                part = GaussianStats.from_array(batch.x)
                acc = part if acc is None else acc.merge(part)
    ragged = counts.min_len != counts.max_len
    payload = b"" if acc is None or ragged else acc.to_flat().tobytes()
    values = [getattr(counts, name) for name in _COUNT_FIELDS]
    arrays = [pa.array([v], pa.int64()) for v in values] + [pa.array([payload], pa.binary())]
    yield pa.RecordBatch.from_arrays(arrays, names=[*_COUNT_FIELDS, "stats"])


def _decode(row: tuple[int | bytes, ...]) -> tuple[InputCounts, GaussianStats | None]:
    counts = InputCounts(*(int(v) for v in row[:6]))  # type: ignore[arg-type]
    payload = bytes(row[6])  # type: ignore[arg-type]
    if not payload:
        return counts, None
    flat = np.frombuffer(payload, dtype=np.float64)
    return counts, GaussianStats.from_flat(flat, counts.min_len)


def _combine(a: tuple[InputCounts, GaussianStats | None],
             b: tuple[InputCounts, GaussianStats | None]) -> tuple[InputCounts, GaussianStats | None]:
    counts = a[0].merge(b[0])
    if a[1] is None or b[1] is None:
        return counts, a[1] if b[1] is None else b[1]
    if a[1].dim != b[1].dim:  # ragged across partitions: reported by counts.check
        return counts, a[1]
    return counts, a[1].merge(b[1])


def compute_stats(df: DataFrame, domain: str, feature_col: str, on_invalid: str) -> DomainStats:
    """Statistics of ``df[features]`` (see :func:`distunlearn.prepare.normalize`).

    Raises InputError (naming the table and ``feature_col``) for null, ragged or, unless
    ``on_invalid == "drop"``, non-finite features, and for a table with no usable row.
    """
    start = time.monotonic()
    per_partition = df.select(FEATURES).mapInArrow(_partition_stats, _SCHEMA)
    zero: tuple[InputCounts, GaussianStats | None] = (InputCounts(), None)
    counts, stats = per_partition.rdd.map(tuple).map(_decode).treeAggregate(
        zero, _combine, _combine, depth=2)
    counts.check(domain, feature_col, on_invalid)
    if stats is None or stats.n == 0:
        raise InputError(f"the {domain} table has no usable rows ({counts.rows} rows, "
                         f"{counts.nonfinite} with NaN or infinite values)")
    if counts.nonfinite:
        log.warning("%s: dropped %d of %d rows with NaN or infinite features (on_invalid=drop)",
                    domain, counts.nonfinite, counts.rows)
    log.info("statistics of %s: %d rows x %d dims in %.1f s", domain, stats.n, stats.dim,
             time.monotonic() - start)
    return DomainStats(stats, counts)


def _bucket_of(scores: np.ndarray, ids: pa.Array, bounds: list[tuple[float, object]]) -> np.ndarray:
    """Index of the smallest removal set holding each row (len(bounds) for none).

    ``bounds`` are the (score, id) of the last row of each set, sets sorted by size.  A row is
    in a set iff score > s or (score == s and id <= id_s): the selection order (score
    descending, id ascending).  The sets are nested, so the index is the number of sets the
    row is *not* in.
    """
    outside = np.zeros(len(scores), dtype=np.int64)
    for s, last_id in bounds:
        inside = scores > s
        tie = scores == s
        if tie.any():
            le = pc.less_equal(ids, pa.scalar(last_id, type=ids.type)).to_numpy(zero_copy_only=False)
            inside |= tie & le
        outside += ~inside
    return outside


K = TypeVar("K")


def _merge_keyed(a: dict[K, GaussianStats], b: dict[K, GaussianStats]) -> dict[K, GaussianStats]:
    """treeAggregate's combiner of keyed statistics: the union, merging equal keys."""
    out = dict(a)
    for key, value in b.items():
        out[key] = out[key].merge(value) if key in out else value
    return out


#: Bounds of one method: per group, the (score, id) of the last row of each nested set
#: (sorted by size); the key None holds global bounds that apply to every row.
Bounds = dict[str | None, list[tuple[float, object]]]


def _bucket_aggregator(broadcast: object, methods: tuple[str, ...], bounds: dict[str, Bounds]) -> ArrowUdf:
    kernel = tuple(m for m in methods if m in KERNEL_METHODS)

    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = broadcast.value  # type: ignore[attr-defined]  # once per partition
        acc: dict[tuple[str, str | None, int], GaussianStats] = {}
        for rb, batch, scores in score_batches(batches, model, kernel):  # one BLAS thread
            if "random" in methods:
                scores["random"] = rb.column("random").to_numpy()
            if _GUMBEL in rb.schema.names:  # the same sum as score_forget's, so the same keys
                noise = rb.column(_GUMBEL).to_numpy()
                scores = {m: v + noise for m, v in scores.items()}
            if GROUP in rb.schema.names:
                groups = np.asarray(rb.column(GROUP).to_pylist(), dtype=object)
                parts = [(g, groups == g) for g in sorted(set(groups.tolist()))]
            else:
                parts = [(None, None)]
            for m in methods:
                for g, mask in parts:
                    # global bounds (key None) apply to every row; per-group bounds to the group's
                    # rows, and a group without bounds has no row in any set
                    b = bounds[m][None] if None in bounds[m] else bounds[m].get(g, [])
                    x, s, ids = (batch.x, scores[m], rb.column(ID)) if mask is None else (
                        batch.x[mask], scores[m][mask], rb.column(ID).filter(pa.array(mask)))
                    bucket = _bucket_of(s, ids, b)
                    for j in np.unique(bucket):
                        part = GaussianStats.from_array(x[bucket == j], products=np.float32)
                        key = (m, g, int(j))
                        acc[key] = acc[key].merge(part) if key in acc else part
        # One batch per set: a batch of all of them would hold methods x (budgets + 1) d x d
        # blobs at once (11 GB at d = 4096 with 4 methods and 20 budgets, past Arrow's 2 GB
        # binary offsets and any default heap); one at a time, the JVM holds one.
        for (method, group, index), stats in sorted(acc.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
            yield pa.RecordBatch.from_arrays(
                [pa.array([method], pa.string()), pa.array([group], pa.string()), pa.array([index], pa.int64()),
                 pa.array([stats.to_flat().tobytes()], pa.binary())],
                names=["method", "grp", "bucket", "stats"])

    return partition


def removal_bucket_stats(forget: DataFrame, model: Broadcast[ScoringModel], methods: tuple[str, ...], seed: int,
                         bounds: dict[str, list[tuple[float, object]]], dim: int,
                         selection: str = "topk") -> dict[str, list[GaussianStats]]:
    """Per method, statistics of the forget rows grouped by the smallest removal set that holds
    them (``len(bounds[m]) + 1`` entries, the last for rows in no set).

    One more pass over the forget table (id, features) that scores each row again with the
    same broadcast model: the removal sets are defined by (score, id) against ``bounds``, so no join
    with the written sets is needed.  The same batches give bit-identical scores; were a
    GEMM to round a row differently on a rerun, only a row tied with a set's last row to
    the last bit could land in the neighbouring set, which moves a statistic by one row.
    """
    merged = bucket_stats(forget, model, methods, seed, {m: {None: b} for m, b in bounds.items()}, dim, selection)
    return {m: [merged.get((m, None, j), GaussianStats.empty(dim)) for j in range(len(bounds[m]) + 1)]
            for m in methods}


def bucket_stats(forget: DataFrame, model: Broadcast[ScoringModel], methods: tuple[str, ...], seed: int,
                 bounds: dict[str, Bounds], dim: int, selection: str = "topk"
                 ) -> dict[tuple[str, str | None, int], GaussianStats]:
    """Statistics of the forget rows per (method, group, bucket): the bucket of a row is the
    number of its bounds (:data:`Bounds`) whose set does not hold it; the group is the row's
    (None without a ``group`` column).  See :func:`removal_bucket_stats`."""
    start = time.monotonic()
    cols = [F.col(c) for c in scoring_columns(forget, methods)]
    cols += [random_score(seed).alias("random")] if "random" in methods else []
    cols += [gumbel_noise(seed).alias(_GUMBEL)] if selection == "gumbel" else []
    sc = forget.sparkSession.sparkContext
    # Each task emits one d x d blob per (method, removal set): with 12 input partitions,
    # 4 methods and 20 budgets at d = 384 that was 1.2 GB of pickled statistics through
    # treeAggregate, which took most of this pass (profiled with py-spy, docs/BENCHMARKS.md).
    # One task per core keeps the output at #cores x blobs; coalesce does not shuffle.
    source = forget.select(*cols)
    if source.rdd.getNumPartitions() > sc.defaultParallelism:
        source = source.coalesce(sc.defaultParallelism)
    parts = source.mapInArrow(_bucket_aggregator(model, methods, bounds),
                              "method string, grp string, bucket long, stats binary")

    def decode(row: tuple[str, str | None, int, bytes]) -> dict[tuple[str, str | None, int], GaussianStats]:
        return {(row[0], row[1], int(row[2])): GaussianStats.from_flat(np.frombuffer(bytes(row[3]), np.float64), dim)}

    zero: dict[tuple[str, str | None, int], GaussianStats] = {}
    merged = parts.rdd.map(tuple).map(decode).treeAggregate(zero, _merge_keyed, _merge_keyed, depth=2)
    log.info("statistics of the removal sets of %d methods in %.1f s", len(methods), time.monotonic() - start)
    return merged


def group_stats(df: DataFrame, domain: str, group_cols: tuple[str, ...], dim: int) -> dict[str, GaussianStats]:
    """Statistics of ``df[features]`` per ``group`` value (one mapInArrow pass, merged with
    treeAggregate; rows with non-finite features are left out, as the scoring leaves them).
    InputError, naming the column(s), when a group value is null."""
    start = time.monotonic()

    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        acc: dict[str | None, GaussianStats] = {}
        with threadpool_limits(limits=1, user_api="blas"):
            for rb in batches:
                batch = list_to_matrix(rb.column(FEATURES))
                groups = np.asarray(rb.column(GROUP).to_pylist(), dtype=object)
                if batch.mask is not None:
                    groups = groups[batch.mask]
                for g in set(groups.tolist()):
                    part = GaussianStats.from_array(batch.x[groups == g])
                    acc[g] = acc[g].merge(part) if g in acc else part
        for g, stats in acc.items():
            yield pa.RecordBatch.from_arrays([pa.array([g], pa.string()), pa.array([stats.to_flat().tobytes()])],
                                             names=["grp", "stats"])

    def decode(row: tuple[str | None, bytes]) -> dict[str | None, GaussianStats]:
        return {row[0]: GaussianStats.from_flat(np.frombuffer(bytes(row[1]), np.float64), dim)}

    parts = df.select(FEATURES, GROUP).mapInArrow(partition, "grp string, stats binary")
    zero: dict[str | None, GaussianStats] = {}
    merged = parts.rdd.map(tuple).map(decode).treeAggregate(zero, _merge_keyed, _merge_keyed, depth=2)
    if None in merged:
        raise InputError(f"group column {', '.join(map(repr, group_cols))} of the {domain} table has null values "
                         f"({merged[None].n} rows); give every row a group")
    log.info("statistics of %s per group: %d groups in %.1f s", domain, len(merged), time.monotonic() - start)
    return {str(g): s for g, s in merged.items()}
