"""Arrow list column -> numpy matrix with validity counts; InputCounts checks.

References are the Python row lists the Arrow arrays are built from, filtered by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from distunlearn.core.batches import InputCounts, check_dims, list_to_matrix
from distunlearn.errors import InputError

LIST_TYPES = {
    "list<float>": pa.list_(pa.float32()),
    "list<double>": pa.list_(pa.float64()),
    "large_list<float>": pa.large_list(pa.float32()),
    "large_list<double>": pa.large_list(pa.float64()),
}
NP_DTYPE = {"float": np.float32, "double": np.float64}


def expected_valid(rows: list) -> tuple[np.ndarray, list[bool]]:
    """Rows that are non-null, without null elements, and finite; and the mask, by hand."""
    mask = [r is not None and all(v is not None and math.isfinite(v) for v in r) for r in rows]
    return np.array([r for r, m in zip(rows, mask, strict=True) if m], dtype=np.float64), mask


# --------------------------------------------------------------------------- clean input
@pytest.mark.parametrize("name", list(LIST_TYPES))
def test_clean_rows_become_matrix(name: str) -> None:
    """All rows valid: x equals the rows (dtype as stored), mask None, counts all valid."""
    rows = np.random.default_rng(0).normal(size=(7, 3)).tolist()
    arr = pa.array(rows, type=LIST_TYPES[name])
    b = list_to_matrix(arr)
    dtype = NP_DTYPE[name.split("<")[1].rstrip(">")]
    assert b.x.dtype == dtype and b.x.shape == (7, 3)
    np.testing.assert_array_equal(b.x, np.array(rows, dtype=dtype))
    assert b.mask is None
    assert b.counts == InputCounts(rows=7, min_len=3, max_len=3)
    assert b.counts.valid == 7


def test_chunked_array_is_combined() -> None:
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    col = pa.chunked_array([pa.array(rows[:1], type=pa.list_(pa.float64())),
                            pa.array(rows[1:], type=pa.list_(pa.float64()))])
    b = list_to_matrix(col)
    np.testing.assert_array_equal(b.x, rows)
    assert b.counts.rows == 3 and b.counts.valid == 3


# --------------------------------------------------------------------------- invalid rows
@pytest.mark.parametrize("name", list(LIST_TYPES))
def test_null_arrays_are_counted_and_excluded(name: str) -> None:
    rows = [[1.0, 2.0], None, [3.0, 4.0], None, [5.0, 6.0]]
    b = list_to_matrix(pa.array(rows, type=LIST_TYPES[name]))
    ref_x, ref_mask = expected_valid(rows)
    np.testing.assert_array_equal(b.x, ref_x)
    assert b.mask is not None and b.mask.tolist() == ref_mask == [True, False, True, False, True]
    assert b.counts.null_arrays == 2 and b.counts.rows == 5 and b.counts.valid == 3
    assert (b.counts.min_len, b.counts.max_len) == (2, 2)


@pytest.mark.parametrize("name", list(LIST_TYPES))
def test_null_elements_are_counted_and_excluded(name: str) -> None:
    rows = [[1.0, None, 2.0], [3.0, 4.0, 5.0], [None, None, None], [6.0, 7.0, 8.0]]
    b = list_to_matrix(pa.array(rows, type=LIST_TYPES[name]))
    ref_x, ref_mask = expected_valid(rows)
    np.testing.assert_array_equal(b.x, ref_x)
    assert b.mask is not None and b.mask.tolist() == ref_mask
    assert b.counts.null_elements == 2 and b.counts.nonfinite == 0 and b.counts.valid == 2


@pytest.mark.parametrize("name", list(LIST_TYPES))
def test_nonfinite_rows_are_counted_and_excluded(name: str) -> None:
    nan, inf = float("nan"), float("inf")
    rows = [[1.0, 2.0], [nan, 0.0], [3.0, 4.0], [0.0, inf], [-inf, nan], [5.0, 6.0]]
    b = list_to_matrix(pa.array(rows, type=LIST_TYPES[name]))
    ref_x, ref_mask = expected_valid(rows)
    np.testing.assert_array_equal(b.x, ref_x)
    assert b.mask is not None and b.mask.tolist() == ref_mask == [True, False, True, False, False, True]
    assert b.counts.nonfinite == 3 and b.counts.null_elements == 0 and b.counts.valid == 3


def test_mixed_invalid_rows() -> None:
    """Null array, null element, NaN, inf and a row with both a null element and a NaN (counted
    once, as a null element): mask and counts by hand."""
    nan, inf = float("nan"), float("inf")
    rows = [None, [1.0, 2.0, 3.0], [1.0, None, 3.0], [nan, 1.0, 1.0], [4.0, 5.0, 6.0],
            [None, nan, 0.0], [inf, 0.0, 0.0], None, [7.0, 8.0, 9.0]]
    b = list_to_matrix(pa.array(rows, type=pa.list_(pa.float64())))
    ref_x, ref_mask = expected_valid(rows)
    np.testing.assert_array_equal(b.x, ref_x)
    assert b.mask is not None and b.mask.tolist() == ref_mask
    c = b.counts
    assert (c.rows, c.null_arrays, c.null_elements, c.nonfinite) == (9, 2, 2, 2)
    assert c.valid == 3 == int(b.mask.sum()) == len(b.x)


def test_null_list_backed_by_values_is_skipped() -> None:
    """A null list whose offsets still span values (legal in Arrow) contributes nothing."""
    arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6], type=pa.int32()),
                                   pa.array([1.0, 2.0, 99.0, 99.0, 5.0, 6.0]),
                                   mask=pa.array([False, True, False]))
    assert arr.to_pylist() == [[1.0, 2.0], None, [5.0, 6.0]]
    b = list_to_matrix(arr)
    np.testing.assert_array_equal(b.x, [[1.0, 2.0], [5.0, 6.0]])
    assert b.mask is not None and b.mask.tolist() == [True, False, True]
    assert b.counts.null_arrays == 1 and b.counts.valid == 2


def test_ragged_lengths() -> None:
    """Lists of lengths 2 and 3: min_len != max_len and an empty matrix, nothing selected."""
    rows = [[1.0, 2.0], [1.0, 2.0, 3.0], None, [4.0, 5.0]]
    b = list_to_matrix(pa.array(rows, type=pa.list_(pa.float32())))
    assert (b.counts.min_len, b.counts.max_len) == (2, 3)
    assert b.counts.null_arrays == 1 and b.counts.rows == 4
    assert b.x.size == 0
    assert b.mask is not None and not b.mask.any() and len(b.mask) == 4


def test_all_null_batch() -> None:
    b = list_to_matrix(pa.array([None, None, None], type=pa.list_(pa.float64())))
    assert b.counts == InputCounts(rows=3, null_arrays=3)
    assert b.counts.valid == 0 and b.x.size == 0
    assert b.mask is not None and b.mask.tolist() == [False, False, False]


def test_empty_lists_are_reported_not_crash() -> None:
    """Every list empty: counts carry min_len = max_len = 0 so check() reports 'empty arrays'."""
    b = list_to_matrix(pa.array([[], []], type=pa.list_(pa.float64())))
    assert (b.counts.min_len, b.counts.max_len) == (0, 0)
    with pytest.raises(InputError, match="empty arrays"):
        b.counts.check("forget", "emb", "fail")


@pytest.mark.parametrize("name", list(LIST_TYPES))
@pytest.mark.parametrize("start,length", [(1, 3), (0, 2), (3, 3), (2, 1)])
def test_sliced_arrays(name: str, start: int, length: int) -> None:
    """arr.slice(start, length) converts like the corresponding slice of the Python rows."""
    nan = float("nan")
    rows = [[0.0, 0.5], None, [1.0, 2.0], [3.0, nan], [4.0, 5.0], [6.0, None]]
    arr = pa.array(rows, type=LIST_TYPES[name]).slice(start, length)
    sub = rows[start:start + length]
    b = list_to_matrix(arr)
    ref_x, ref_mask = expected_valid(sub)
    assert b.counts.rows == length
    assert b.counts.null_arrays == sum(r is None for r in sub)
    assert b.counts.valid == sum(ref_mask)
    np.testing.assert_array_equal(b.x.reshape(-1, 2), ref_x.reshape(-1, 2))
    if all(ref_mask):
        assert b.mask is None
    else:
        assert b.mask is not None and b.mask.tolist() == ref_mask


def test_sliced_clean_array_has_right_values() -> None:
    arr = pa.array([[9.0, 9.0], [1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], type=pa.list_(pa.float64()))
    b = list_to_matrix(arr.slice(1, 2))
    np.testing.assert_array_equal(b.x, [[1.0, 2.0], [3.0, 4.0]])
    assert b.mask is None and b.counts.rows == 2


# --------------------------------------------------------------------------- InputCounts
def test_input_counts_merge_hand_computed() -> None:
    a = InputCounts(rows=10, null_arrays=1, null_elements=2, nonfinite=3, min_len=4, max_len=4)
    b = InputCounts(rows=5, null_arrays=0, null_elements=1, nonfinite=0, min_len=3, max_len=6)
    m = a.merge(b)
    assert m == InputCounts(rows=15, null_arrays=1, null_elements=3, nonfinite=3, min_len=3, max_len=6)
    assert m.valid == 15 - 1 - 3 - 3
    assert b.merge(a) == m


def test_input_counts_merge_ignores_unseen_lengths() -> None:
    """A part with no non-null array (lengths -1) does not pull min_len down to -1."""
    seen = InputCounts(rows=4, min_len=8, max_len=8)
    unseen = InputCounts(rows=2, null_arrays=2)
    assert seen.merge(unseen) == InputCounts(rows=6, null_arrays=2, min_len=8, max_len=8)
    assert unseen.merge(seen) == InputCounts(rows=6, null_arrays=2, min_len=8, max_len=8)
    assert InputCounts().merge(InputCounts()) == InputCounts()


def test_merge_of_batches_detects_ragged_across_batches() -> None:
    """Each batch is rectangular but the dimensions differ: the merged counts are ragged."""
    b1 = list_to_matrix(pa.array([[1.0, 2.0]], type=pa.list_(pa.float64()))).counts
    b2 = list_to_matrix(pa.array([[1.0, 2.0, 3.0]], type=pa.list_(pa.float64()))).counts
    with pytest.raises(InputError, match="different lengths"):
        b1.merge(b2).check("retain", "features", "fail")


@pytest.mark.parametrize("counts,needle", [
    (InputCounts(rows=3, null_arrays=1, min_len=2, max_len=2), "1 null arrays"),
    (InputCounts(rows=3, min_len=2, max_len=5), "different lengths (2 to 5)"),
    (InputCounts(rows=3, null_elements=2, min_len=2, max_len=2), "2 arrays with null elements"),
    (InputCounts(rows=3, nonfinite=1, min_len=2, max_len=2), "1 rows with NaN"),
    (InputCounts(rows=3, min_len=0, max_len=0), "empty arrays"),
])
@pytest.mark.parametrize("on_invalid", ["fail", "drop"])
def test_check_raises_naming_column_and_table(counts: InputCounts, needle: str, on_invalid: str) -> None:
    """Each problem raises InputError naming the column and the table; only non-finite rows
    are tolerated, and only under on_invalid="drop"."""
    if counts.nonfinite and on_invalid == "drop":
        counts.check("forget", "my_embedding_col", on_invalid)  # no error
        return
    with pytest.raises(InputError) as exc:
        counts.check("forget", "my_embedding_col", on_invalid)
    msg = str(exc.value)
    assert "my_embedding_col" in msg and "forget" in msg and needle in msg
    assert "\n" not in msg


def test_check_passes_clean_counts() -> None:
    InputCounts(rows=3, min_len=2, max_len=2).check("retain", "x", "fail")


def test_check_from_real_batch_nonfinite() -> None:
    b = list_to_matrix(pa.array([[1.0, float("nan")], [1.0, 2.0]], type=pa.list_(pa.float32())))
    with pytest.raises(InputError, match="'vec'.*retain"):
        b.counts.check("retain", "vec", "fail")
    b.counts.check("retain", "vec", "drop")


def test_check_dims() -> None:
    check_dims(5, 5, "emb")
    with pytest.raises(InputError) as exc:
        check_dims(5, 6, "emb")
    assert "'emb'" in str(exc.value) and "5" in str(exc.value) and "6" in str(exc.value)


def test_batch_rows_hold_a_number_of_floats_set_by_the_heap_per_task():
    from distunlearn.core.batches import batch_rows

    gib = 2**30
    # 1 GiB per task (2g for local[2]): 4M floats, so Spark's defaults stand at d = 384
    assert batch_rows(384, gib, 10000) == 10000 and batch_rows(384, gib, 4096) == 4096
    assert batch_rows(1024, gib, 10000) == 4096
    assert batch_rows(4096, gib, 10000) == 1024 and batch_rows(4096, 4 * gib, 10000) == 4096
    assert batch_rows(4096, gib, 500) == 500  # never above the session's setting
    assert batch_rows(10**6, gib, 10000) == 16  # at least 16 rows, whatever d
