"""Merging per-partition partial results with DataFrame operations only (no RDD), so the
statistics passes run on Spark Connect as on a classic session.

A statistics pass emits, from each input partition, a few *partial* rows: key columns (for
example the group), and values (counts, a serialized d x d statistic).  :func:`tree_merge`
combines them in a two-level tree:

1. each partial gets its input partition's number (``spark_partition_id``) as an order;
   level 1 gathers the partials of up to ``fan`` consecutive partitions per key, sorts them by
   (key, order) and folds each run of one key into one partial;
2. level 2 partitions those by key, sorts by (key, order) again and folds each key's run
   into its final value, which the driver collects: one row per key, or, when a binary value
   is larger than :data:`PIECE`, several rows that carry it in pieces (a Spark Connect client
   receives each result batch in one gRPC message, 128 MB at most by default, and a row is
   never split: the d x d scatter of d = 4096 is 134 MB).

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
from typing import Any, Generic, TypeVar

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

V = TypeVar("V")

_ORDER = "_merge_order"
#: Input partitions folded per key by one level-1 task; a level-2 task gets
#: ceil(partitions / FAN) partials per key (32 for 1024 input partitions).
FAN = 32
#: Largest piece of a binary value in one collected row (see the module docstring).
PIECE = 8 * 2**20


@dataclass(frozen=True)
class Merger(Generic[V]):
    """How to fold the values of partial rows (a tuple of the value columns, in order)."""

    decode: Callable[[tuple[Any, ...]], V]
    combine: Callable[[V, V], V]
    encode: Callable[[V], tuple[Any, ...]]


def _fold(merger: Merger[V], keys: Sequence[str], values: Sequence[str], schema: pa.Schema,
          group_of: Callable[[int], int], piece: int | None = None
          ) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow body: rows sorted by (keys, group, order) -> one row per (keys, group).
    With ``piece``: the binary values cut into pieces of at most that many bytes, one row per
    piece, numbered in the order column (the other values repeated)."""
    binary = {v for v in values if pa.types.is_binary(schema.field(v).type)}

    def emit(key: tuple[Any, ...], group: int, acc: V) -> Iterator[pa.RecordBatch]:
        encoded = dict(zip(values, merger.encode(acc), strict=True))
        size = max([len(encoded[v]) for v in binary], default=0)
        count = max(1, -(-size // piece)) if piece else 1
        for i in range(count):
            row = dict(zip(keys, key, strict=True))
            row[_ORDER] = i if piece else group
            row.update({v: encoded[v][i * piece:(i + 1) * piece] if piece and v in binary else encoded[v]
                        for v in values})
            yield pa.RecordBatch.from_pylist([row], schema=schema)

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        current: tuple[tuple[Any, ...], int] | None = None
        acc: V | None = None
        for rb in batches:
            cols = {name: rb.column(name).to_pylist() for name in (*keys, _ORDER, *values)}
            for i in range(rb.num_rows):
                here = (tuple(cols[k][i] for k in keys), group_of(cols[_ORDER][i]))
                value = merger.decode(tuple(cols[v][i] for v in values))
                if here == current:
                    acc = merger.combine(acc, value)  # type: ignore[arg-type]
                    continue
                if current is not None:
                    yield from emit(*current, acc)  # type: ignore[arg-type]
                current, acc = here, value
            del cols
        if current is not None:
            yield from emit(*current, acc)  # type: ignore[arg-type]

    return run


def tree_merge(parts: DataFrame, keys: Sequence[str], merger: Merger[V],
               fan: int | None = FAN) -> dict[tuple[Any, ...], V]:
    """The partial rows of ``parts`` (key columns ``keys``, every other column a value)
    folded per key: {key tuple: decoded value}.  ``parts`` must not be re-partitioned
    between its partial-emitting step and this call (the partition number is the order).
    ``fan=None`` skips level 1, for callers that know ``parts`` has few partitions: each
    key's partials then go straight to one level-2 task (one shuffle less)."""
    values = [c for c in parts.columns if c not in keys]
    schema: T.StructType = parts.schema
    out_schema = T.StructType([*(schema[k] for k in keys), T.StructField(_ORDER, T.LongType()),
                               *(schema[v] for v in values)])
    arrow_schema = pa.schema([pa.field(f.name, _arrow_type(f.dataType)) for f in out_schema.fields])
    ordered = parts.select(*keys, F.spark_partition_id().cast("long").alias(_ORDER), *values)

    by_key = [F.col(k) for k in keys]
    level1 = ordered
    if fan is not None:
        step = fan
        level1 = (ordered.repartition(F.floor(F.col(_ORDER) / step))
                  .sortWithinPartitions(*by_key, _ORDER)
                  .mapInArrow(_fold(merger, keys, values, arrow_schema, lambda o: o // step), out_schema))
    level2 = level1.repartition(*by_key) if keys else level1.repartition(1)
    final = (level2.sortWithinPartitions(*by_key, _ORDER)
             .mapInArrow(_fold(merger, keys, values, arrow_schema, lambda o: 0, PIECE), out_schema))
    pieces: dict[tuple[Any, ...], list[Any]] = {}
    for row in final.collect():
        pieces.setdefault(tuple(row[k] for k in keys), []).append(row)
    binary = {v for v in values if isinstance(schema[v].dataType, T.BinaryType)}
    merged: dict[tuple[Any, ...], V] = {}
    for key, rows in pieces.items():
        rows.sort(key=lambda r: r[_ORDER])
        merged[key] = merger.decode(tuple(b"".join(bytes(r[v]) for r in rows) if v in binary else rows[0][v]
                                          for v in values))
    return merged


def _arrow_type(dtype: T.DataType) -> pa.DataType:
    simple = {T.LongType: pa.int64(), T.IntegerType: pa.int32(), T.StringType: pa.string(),
              T.BinaryType: pa.binary(), T.BooleanType: pa.bool_(), T.DoubleType: pa.float64()}
    for kind, arrow in simple.items():
        if isinstance(dtype, kind):
            return arrow
    raise TypeError(f"tree_merge: unsupported column type {dtype.simpleString()}")
