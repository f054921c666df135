"""Merging per-partition partial results with DataFrame operations only (no RDD), so the
statistics passes run on Spark Connect as on a classic session.

A statistics pass emits, from each input partition, a few *partial* rows: key columns (for
example the group), and values (counts, a serialized d x d statistic).  :func:`tree_merge`
combines them in a two-level tree:

1. each partial gets its input partition's number (``spark_partition_id``) as an order;
   level 1 gathers the partials of up to ``fan`` consecutive partitions per key, sorts them by
   (key, order) and folds each run of one key into one partial;
2. level 2 partitions those by key, sorts by (key, order) again and folds each key's run
   into its final value; the merged rows stay on the executors' disks and the driver takes
   them in rounds of a bounded size (:func:`merged_values`), one key at a time if it wants.

Every row on the way holds at most :data:`PIECE` bytes of a binary value: a pass emits its
partials cut in pieces (:func:`partial_batches`), and each fold joins a partial's pieces
before it decodes it and cuts its result again.  A row is never split by Spark: whole d x d
statistics (134 MB at d = 4096) ran the default 2 GB heap out of memory in the level-2 sort,
and a Spark Connect client receives each result batch in one gRPC message, 128 MB at most by
default.

Why sorted runs: a Python task then holds one accumulator and one Arrow batch at a time,
whatever the number of keys, and the fold order is the input partitions' order, not the
order in which a shuffle happens to deliver the rows, so a rerun on the same input partitions
gives the same bits.  With up to ``fan`` input partitions the fold is the one
``treeAggregate`` did: ((p0 + p1) + p2) + ... in partition order.  A level-2 task receives
ceil(partitions / fan) partials per key.

The fold itself is :class:`Merger`: decode a row's values, combine two decoded values,
encode one back into the values' columns.  Those are plain Python on plain values (no Spark),
so they stay next to the statistics they merge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, Generic, TypeVar

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.transforms.sizing import byte_size

V = TypeVar("V")

_ORDER = "_merge_order"
#: Input partitions folded per key by one level-1 task; a level-2 task gets
#: ceil(partitions / FAN) partials per key (32 for 1024 input partitions).
FAN = 32
#: Largest piece of a binary value in one row (see the module docstring).
PIECE = 8 * 2**20
#: Numbers the pieces of one partial (:func:`partial_batches`); a pass whose rows lack it
#: emits whole values, each its own partial.
PIECE_COLUMN = "_merge_piece"


@dataclass(frozen=True)
class Merger(Generic[V]):
    """How to fold the values of partial rows (a tuple of the value columns, in order)."""

    decode: Callable[[tuple[Any, ...]], V]
    combine: Callable[[V, V], V]
    encode: Callable[[V], tuple[Any, ...]]


def _cut(row: dict[str, Any], binary: Iterable[str], piece: int) -> Iterator[dict[str, Any]]:
    """``row`` with its binary values cut into pieces of at most ``piece`` bytes: one row per
    piece, numbered in :data:`PIECE_COLUMN` (the other values repeated)."""
    binary = [v for v in binary if row.get(v) is not None]
    size = max([len(row[v]) for v in binary], default=0)
    for i in range(max(1, -(-size // piece))):
        yield {**row, PIECE_COLUMN: i, **{v: row[v][i * piece:(i + 1) * piece] for v in binary}}


def partial_batches(row: dict[str, Any], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One partial of a pass (its key and value columns) as one-row Arrow batches of at most
    :data:`PIECE` bytes of each binary value, for a ``mapInArrow`` whose schema has the
    :data:`PIECE_COLUMN`: Spark then never sorts, shuffles or batches a row larger than a
    piece (a whole d x d float64 partial of d = 4096, 134 MB, ran the level-2 sort out of the
    default 2 GB heap).  :func:`tree_merge` joins the pieces before it decodes a partial; a
    pass that emits pieces emits at most one partial per key and input partition (a sort
    could interleave the pieces of two)."""
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    for cut in _cut(row, binary, PIECE):
        yield pa.RecordBatch.from_pylist([cut], schema=schema)


def _fold(merger: Merger[V], keys: Sequence[str], values: Sequence[str], schema: pa.Schema,
          group_of: Callable[[int], int], piece: int) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow body: rows sorted by (keys, order, piece) -> one partial per (keys, group),
    in pieces of at most ``piece`` bytes.  A partial is the run of rows of one (keys, order)
    whose piece numbers count up from 0 (whole values: piece 0 each, so each row its own
    partial); pieces of two partials of one key and order would interleave in the sort."""
    binary = {v for v in values if pa.types.is_binary(schema.field(v).type)}

    def partials(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[tuple[tuple[Any, ...], int], V]]:
        current: tuple[tuple[Any, ...], int] | None = None
        parts: dict[str, Any] = {}
        for rb in batches:
            cols = {name: rb.column(name).to_pylist() for name in (*keys, _ORDER, PIECE_COLUMN, *values)}
            for i in range(rb.num_rows):
                here = (tuple(cols[k][i] for k in keys), cols[_ORDER][i])
                if here == current and cols[PIECE_COLUMN][i] > 0:  # the next piece of the partial
                    for v in binary:
                        parts[v].append(cols[v][i])
                    continue
                if current is not None:
                    yield current, _decoded(merger, values, binary, parts)
                current = here
                parts = {v: [cols[v][i]] if v in binary else cols[v][i] for v in values}
            del cols
        if current is not None:
            yield current, _decoded(merger, values, binary, parts)

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        current: tuple[tuple[Any, ...], int] | None = None
        acc: V | None = None
        for (key, order), value in partials(batches):
            here = (key, group_of(order))
            if here == current:
                acc = merger.combine(acc, value)  # type: ignore[arg-type]
                continue
            if current is not None:
                yield from emit(*current, acc)  # type: ignore[arg-type]
            current, acc = here, value
        if current is not None:
            yield from emit(*current, acc)  # type: ignore[arg-type]

    def emit(key: tuple[Any, ...], group: int, acc: V) -> Iterator[pa.RecordBatch]:
        row = {**dict(zip(keys, key, strict=True)), _ORDER: group, **dict(zip(values, merger.encode(acc), strict=True))}
        for cut in _cut(row, binary, piece):
            yield pa.RecordBatch.from_pylist([cut], schema=schema)

    return run


def _decoded(merger: Merger[V], values: Sequence[str], binary: set[str], parts: dict[str, Any]) -> V:
    """A partial from its pieces: binary values joined (a null binary value stays null)."""
    return merger.decode(tuple((None if parts[v][0] is None else b"".join(bytes(x) for x in parts[v]))
                               if v in binary else parts[v] for v in values))


def tree_merge(parts: DataFrame, keys: Sequence[str], merger: Merger[V],
               fan: int | None = FAN) -> dict[tuple[Any, ...], V]:
    """The partial rows of ``parts`` (key columns ``keys``, every other column a value)
    folded per key: {key tuple: decoded value}, every key in memory at once (see
    :func:`merged_values` to take them one at a time).  ``parts`` must not be re-partitioned
    between its partial-emitting step and this call (the partition number is the order).
    ``fan=None`` skips level 1, for callers that know ``parts`` has few partitions: each
    key's partials then go straight to one level-2 task (one shuffle less)."""
    return {key: value for key, value in merged_values(parts, keys, merger, fan) if value is not None}


def merged_values(parts: DataFrame, keys: Sequence[str], merger: Merger[V], fan: int | None = FAN,
                  wanted: Sequence[tuple[Any, ...]] | None = None) -> Iterator[tuple[tuple[Any, ...], V | None]]:
    """:func:`tree_merge`, one key at a time: (key, value) in the order of ``wanted`` (a key
    no partial had gives None), or of every merged key sorted (None first) without it.

    The merged rows stay on the executors' local disks and come to the driver in rounds of at
    most :func:`round_bytes` (a Spark job each), so neither the driver's memory nor
    spark.driver.maxResultSize bounds the sum of the values, only the caller's use of them: the
    diagnostics at d = 4096 merge 84 d x d statistics of 134 MB each with the default methods
    and budgets, 11 GB (docs/BENCHMARKS.md)."""
    spark = parts.sparkSession
    limit = round_bytes(spark.conf.get("spark.driver.maxResultSize", None) or "1g")
    values = [c for c in parts.columns if c not in keys and c != PIECE_COLUMN]
    schema: T.StructType = parts.schema
    binary = {v for v in values if isinstance(schema[v].dataType, T.BinaryType)}
    final = _merged(parts, keys, values, merger, fan, min(PIECE, limit)).persist(StorageLevel.DISK_ONLY)
    try:
        # The first job computes the merge onto disk and returns each row's size, and the small
        # rows whole (every row of low d: the suite's runs need no second job).
        size = sum((F.coalesce(F.length(v), F.lit(0)) for v in binary), F.lit(_ROW_OVERHEAD))
        small = size <= SMALL_ROW
        first = final.select(*keys, PIECE_COLUMN, size.alias("_bytes"), small.alias("_inline"),
                             *(F.when(small, F.col(v)).alias(v) for v in values))
        pieces: dict[tuple[Any, ...], int] = {}
        remote: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        pending: dict[tuple[Any, ...], list[Any]] = {}
        for row in first.collect():
            key = tuple(row[k] for k in keys)
            pieces[key] = pieces.get(key, 0) + 1
            if row["_inline"]:
                pending.setdefault(key, []).append(row)
            else:
                remote.setdefault(key, []).append((row[PIECE_COLUMN], row["_bytes"]))
        order = list(wanted) if wanted is not None else sorted(pieces, key=_sortable)
        done = 0  # keys of `order` yielded so far

        def ready() -> Iterator[tuple[tuple[Any, ...], V | None]]:
            """The keys of `order` from `done` on whose pieces have all arrived."""
            nonlocal done
            while done < len(order) and len(pending.get(order[done], ())) == pieces.get(order[done], 0):
                key = order[done]
                done += 1
                if key not in pieces:
                    yield key, None
                    continue
                rows = sorted(pending.pop(key), key=lambda r: r[PIECE_COLUMN])
                yield key, _decoded(merger, values, binary, {v: [r[v] for r in rows] if v in binary else rows[0][v]
                                                             for v in values})

        yield from ready()
        for batch in _rounds(order, remote, limit):
            cond = [_matches(keys, key, numbers[0], numbers[-1]) for key, numbers in batch]
            for row in final.filter(reduce(lambda a, b: a | b, cond)).collect():
                pending.setdefault(tuple(row[k] for k in keys), []).append(row)
            yield from ready()
        for key in order[done:]:  # keys without rows after the last round's
            yield key, None
    finally:
        final.unpersist()


def _merged(parts: DataFrame, keys: Sequence[str], values: list[str], merger: Merger[V], fan: int | None,
            piece: int) -> DataFrame:
    """The two levels of the tree: one row per key and piece of its merged value."""
    schema: T.StructType = parts.schema
    out_schema = T.StructType([*(schema[k] for k in keys), T.StructField(_ORDER, T.LongType()),
                               T.StructField(PIECE_COLUMN, T.LongType()), *(schema[v] for v in values)])
    arrow_schema = pa.schema([pa.field(f.name, _arrow_type(f.dataType)) for f in out_schema.fields])
    numbered = F.col(PIECE_COLUMN) if PIECE_COLUMN in parts.columns else F.lit(0).cast("long")
    ordered = parts.select(*keys, F.spark_partition_id().cast("long").alias(_ORDER), numbered.alias(PIECE_COLUMN),
                           *values)

    by_key = [F.col(k) for k in keys]
    level1 = ordered
    if fan is not None:
        step = fan
        level1 = (ordered.repartition(F.floor(F.col(_ORDER) / step))
                  .sortWithinPartitions(*by_key, _ORDER, PIECE_COLUMN)
                  .mapInArrow(_fold(merger, keys, values, arrow_schema, lambda o: o // step, PIECE), out_schema))
    level2 = level1.repartition(*by_key) if keys else level1.repartition(1)
    return (level2.sortWithinPartitions(*by_key, _ORDER, PIECE_COLUMN)
            .mapInArrow(_fold(merger, keys, values, arrow_schema, lambda o: 0, piece), out_schema))


#: Bytes a collected row is counted for besides its binary values (keys, counts, framing).
_ROW_OVERHEAD = 256
#: Rows up to this size come with the first job (statistics of d <= 43, n-gram counts of a
#: few hundred buckets); larger ones in the rounds.  10 000 keys of it are 160 MB.
SMALL_ROW = 16 * 2**10
#: Most bytes of merged values one round brings to the driver: the driver's JVM holds a
#: round's serialized rows while its Python process decodes them.
ROUND = 128 * 2**20


def round_bytes(max_result_size: str) -> int:
    """Bytes of one collected round: :data:`ROUND`, or a quarter of spark.driver.maxResultSize
    when that is smaller (0: no limit), and never below a 64 KiB piece."""
    limit = byte_size(max_result_size)
    return max(64 * 2**10, min(ROUND, limit // 4)) if limit else ROUND


def _rounds(order: list[tuple[Any, ...]], plan: dict[tuple[Any, ...], list[tuple[int, int]]],
            limit: int) -> Iterator[list[tuple[tuple[Any, ...], list[int]]]]:
    """The pieces of the keys of ``order`` in rounds of at most ``limit`` bytes (a piece larger
    than that alone): each round a list of (key, its piece numbers in the round, ascending)."""
    batch: list[tuple[tuple[Any, ...], list[int]]] = []
    used = 0
    for key in order:
        for number, nbytes in sorted(plan.get(key, [])):
            if batch and used + nbytes > limit:
                yield batch
                batch, used = [], 0
            if not batch or batch[-1][0] != key:
                batch.append((key, []))
            batch[-1][1].append(number)
            used += nbytes
    if batch:
        yield batch


def _matches(keys: Sequence[str], key: tuple[Any, ...], first: int, last: int) -> Column:
    """Rows of ``key`` (null-safe) whose piece number is in [first, last]."""
    cond = F.col(PIECE_COLUMN).between(first, last)
    for name, value in zip(keys, key, strict=True):
        cond = cond & F.col(name).eqNullSafe(F.lit(value))
    return cond


def _sortable(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    return tuple((v is not None, v) for v in key)


def _arrow_type(dtype: T.DataType) -> pa.DataType:
    simple = {T.LongType: pa.int64(), T.IntegerType: pa.int32(), T.StringType: pa.string(),
              T.BinaryType: pa.binary(), T.BooleanType: pa.bool_(), T.DoubleType: pa.float64()}
    for kind, arrow in simple.items():
        if isinstance(dtype, kind):
            return arrow
    raise TypeError(f"tree_merge: unsupported column type {dtype.simpleString()}")
