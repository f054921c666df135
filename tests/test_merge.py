"""The DataFrame tree merge (distunlearn.transforms.merge) that replaced treeAggregate: every
partial folded once, per key, in input-partition order, through both levels."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from distunlearn.transforms.merge import Merger, tree_merge

# A fold that is not commutative: concatenation shows both that every partial is folded
# exactly once and the order in which it was folded.
CONCAT: Merger[str] = Merger(lambda v: v[0], lambda a, b: a + b, lambda s: (s,))


def _partials(spark, partitions: int, keys: tuple[str, ...], skip_every: int):
    """``partitions`` input partitions; partition p emits '<p>,' under every key, except the
    partitions p with p % skip_every == 0, which emit nothing (an empty partition)."""

    def emit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        p = TaskContext.get().partitionId()  # type: ignore[union-attr]
        for _ in batches:
            pass
        if p % skip_every:
            yield pa.RecordBatch.from_pylist([{"key": k, "value": f"{p},"} for k in reversed(keys)])

    return spark.range(0, partitions, numPartitions=partitions).mapInArrow(emit, "key string, value string")


@pytest.mark.parametrize("partitions,fan", [(70, 4), (5, 32), (33, 32), (7, None)])
def test_every_partial_is_folded_once_per_key_in_partition_order(spark, partitions, fan):
    keys = ("b", "a", None)
    merged = tree_merge(_partials(spark, partitions, keys, skip_every=3), ["key"], CONCAT, fan=fan)
    want = "".join(f"{p}," for p in range(partitions) if p % 3)
    assert merged == {(k,): want for k in keys}


def test_no_keys_folds_everything_into_one_value(spark):
    parts = _partials(spark, 9, ("x",), skip_every=4).select("value")
    assert tree_merge(parts, [], CONCAT, fan=2) == {(): "".join(f"{p}," for p in range(9) if p % 4)}


def test_no_partials_give_an_empty_result(spark):
    parts = _partials(spark, 3, ("x",), skip_every=1)
    assert tree_merge(parts, ["key"], CONCAT) == {}


def test_a_binary_value_larger_than_a_piece_is_collected_in_pieces(spark, monkeypatch):
    """The final fold cuts binary values into pieces (one collected row each, so no row is
    larger than one Spark Connect message); the driver joins them in order, and the other
    values, here a count, are taken once."""
    from distunlearn.transforms import merge

    monkeypatch.setattr(merge, "PIECE", 5)
    schema = pa.schema([("key", pa.string()), ("n", pa.int64()), ("blob", pa.binary())])

    def emit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        p = TaskContext.get().partitionId()  # type: ignore[union-attr]
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"key": "big", "n": 1, "blob": bytes([65 + p]) * 7},
                                          {"key": "empty", "n": 1, "blob": b""}], schema=schema)

    parts = spark.range(0, 4, numPartitions=4).mapInArrow(emit, "key string, n long, blob binary")
    summed: Merger[tuple[int, bytes]] = Merger(lambda v: (int(v[0]), bytes(v[1])),
                                               lambda a, b: (a[0] + b[0], a[1] + b[1]), lambda s: s)
    got = tree_merge(parts, ["key"], summed, fan=2)
    assert got == {("big",): (4, b"AAAAAAABBBBBBBCCCCCCCDDDDDDD"), ("empty",): (4, b"")}


def test_rounds_hold_whole_pieces_in_key_order_up_to_the_limit():
    from distunlearn.transforms.merge import _rounds

    plan = {("a",): [(1, 40), (0, 40)], ("b",): [(0, 90)], ("c",): [(0, 10)]}
    # b alone exceeds the limit: a round of its own; a's two pieces split; "z" has no rows
    got = list(_rounds([("a",), ("z",), ("b",), ("c",)], plan, 50))
    assert got == [[(("a",), [0])], [(("a",), [1])], [(("b",), [0])], [(("c",), [0])]]
    assert list(_rounds([("c",), ("a",)], plan, 1000)) == [[(("c",), [0]), (("a",), [0, 1])]]


def test_values_come_in_the_wanted_order_over_many_small_rounds(spark, monkeypatch):
    """With rounds of one piece each (a driver result limit far below the values), every
    value still arrives whole, in the order asked for, and a key without rows gives None."""
    from distunlearn.transforms import merge

    schema = pa.schema([("key", pa.string()), ("n", pa.int64()), ("blob", pa.binary())])

    def emit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        p = TaskContext.get().partitionId()  # type: ignore[union-attr]
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"key": k, "n": 1, "blob": f"{k}{p}".encode() * 100}
                                          for k in ("x", "y", None)], schema=schema)

    parts = spark.range(0, 3, numPartitions=3).mapInArrow(emit, "key string, n long, blob binary")
    summed: Merger[tuple[int, bytes]] = Merger(lambda v: (int(v[0]), bytes(v[1])),
                                               lambda a, b: (a[0] + b[0], a[1] + b[1]), lambda s: s)
    want = {k: (3, b"".join(f"{k}{p}".encode() * 100 for p in range(3))) for k in ("x", "y", None)}
    wanted = [("y",), ("w",), (None,), ("x",)]
    expected = [(("y",), want["y"]), (("w",), None), ((None,), want[None]), (("x",), want["x"])]
    monkeypatch.setattr(merge, "round_bytes", lambda setting: 300)  # pieces of 300 bytes
    assert list(merge.merged_values(parts, ["key"], summed, fan=2, wanted=wanted)) == expected  # all in the first job
    monkeypatch.setattr(merge, "SMALL_ROW", 0)  # no row comes with the first job: one round per piece
    assert list(merge.merged_values(parts, ["key"], summed, fan=2, wanted=wanted)) == expected


def test_partials_emitted_in_pieces_are_joined_before_they_are_folded(spark):
    """A pass emits each partial in pieces of at most 8 MiB (:func:`partial_batches`), so Spark
    never sorts or shuffles a whole d x d statistic; the fold joins a partial's pieces, in
    order, before it combines partials, and two partials of one key stay apart."""
    from distunlearn.transforms.merge import PIECE, PIECE_COLUMN, partial_batches

    size = PIECE + PIECE // 2 + 3  # two pieces per partial
    schema = pa.schema([("key", pa.string()), ("blob", pa.binary()), (PIECE_COLUMN, pa.int64())])

    def emit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        p = TaskContext.get().partitionId()  # type: ignore[union-attr]
        for _ in batches:
            pass
        for key in ("a", "b"):  # each partial: byte p repeated, then its key and p as a tail
            yield from partial_batches({"key": key, "blob": bytes([p]) * size + f"{key}{p}".encode()}, schema)

    parts = spark.range(0, 3, numPartitions=3).mapInArrow(emit, f"key string, blob binary, {PIECE_COLUMN} long")
    got = tree_merge(parts, ["key"], Merger(lambda v: bytes(v[0]), lambda a, b: a + b, lambda s: (s,)), fan=2)
    for key in ("a", "b"):
        assert got[(key,)] == b"".join(bytes([p]) * size + f"{key}{p}".encode() for p in range(3))
