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

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from threadpoolctl import threadpool_limits

from distunlearn.batches import InputCounts, list_to_matrix
from distunlearn.errors import InputError
from distunlearn.prepare import FEATURES
from distunlearn.stats import GaussianStats

log = logging.getLogger(__name__)

_COUNT_FIELDS = ("rows", "null_arrays", "null_elements", "nonfinite", "min_len", "max_len")
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
