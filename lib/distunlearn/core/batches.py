"""Arrow list column -> numpy matrix, with per-row validity (pyarrow + numpy, no pyspark).

Spark hands ``array<float>``/``array<double>`` columns to Arrow UDFs as list arrays: one
flat values buffer plus offsets.  When every non-null list has the same length d, the values
buffer *is* the row-major (n, d) matrix, so the conversion is a reshape, not a per-row loop.

Validity of a row, checked here and counted in :class:`InputCounts`:

* a null array                -> always an error (``null_arrays``);
* a null element in the array -> always an error (``null_elements``);
* NaN or +-inf                -> an error, or dropped under ``on_invalid: drop`` (``nonfinite``);
* lists of different lengths  -> always an error (``min_len`` != ``max_len``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from distunlearn.errors import InputError

_NO_LEN = -1

#: The function type Spark's ``mapInArrow`` takes: a partition's batches in, batches out.
ArrowUdf = Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]


@dataclass(frozen=True)
class InputCounts:
    """Row counts of one batch, partition or table; merged by addition (lengths by min/max)."""

    rows: int = 0
    null_arrays: int = 0
    null_elements: int = 0
    nonfinite: int = 0
    min_len: int = _NO_LEN  # -1: no non-null array seen
    max_len: int = _NO_LEN

    @property
    def valid(self) -> int:
        return self.rows - self.null_arrays - self.null_elements - self.nonfinite

    def merge(self, other: InputCounts) -> InputCounts:
        lens = [v for v in (self.min_len, other.min_len) if v != _NO_LEN]
        maxs = [v for v in (self.max_len, other.max_len) if v != _NO_LEN]
        return InputCounts(
            rows=self.rows + other.rows,
            null_arrays=self.null_arrays + other.null_arrays,
            null_elements=self.null_elements + other.null_elements,
            nonfinite=self.nonfinite + other.nonfinite,
            min_len=min(lens) if lens else _NO_LEN,
            max_len=max(maxs) if maxs else _NO_LEN,
        )

    def check(self, domain: str, column: str, on_invalid: str) -> None:
        """Raise InputError (one line, naming the table and column) for unusable rows."""
        where = f"feature column {column!r} of the {domain} table"
        if self.null_arrays:
            raise InputError(f"{where} has {self.null_arrays} null arrays")
        if self.min_len != self.max_len:
            raise InputError(f"{where} has arrays of different lengths ({self.min_len} to {self.max_len})")
        if self.min_len == 0:
            raise InputError(f"{where} holds empty arrays")
        if self.null_elements:
            raise InputError(f"{where} has {self.null_elements} arrays with null elements")
        if self.nonfinite and on_invalid == "fail":
            raise InputError(f"{where} has {self.nonfinite} rows with NaN or infinite values "
                             "(use --on-invalid drop to drop them)")


@dataclass(frozen=True)
class Batch:
    """The valid rows of one Arrow batch as a matrix, and which input rows they are."""

    x: NDArray[np.floating]  # (n_valid, d), float32 or float64 as stored
    mask: NDArray[np.bool_] | None  # (n,) True for rows in x; None when every row is valid
    counts: InputCounts


def list_to_matrix(column: pa.Array | pa.ChunkedArray) -> Batch:
    """Convert a list<float|double> Arrow column to the matrix of its valid rows.

    A batch whose lists differ in length cannot be reshaped: its matrix is empty and its
    counts carry min_len != max_len, which the caller turns into an error.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    lengths = pc.list_value_length(column)
    null_arrays = column.null_count
    if null_arrays == n:
        return Batch(np.empty((0, 0)), np.zeros(n, dtype=bool), InputCounts(rows=n, null_arrays=n))
    lo, hi = pc.min_max(lengths).values()
    min_len, max_len = int(lo.as_py()), int(hi.as_py())
    if min_len != max_len:
        counts = InputCounts(rows=n, null_arrays=null_arrays, min_len=min_len, max_len=max_len)
        return Batch(np.empty((0, 0)), np.zeros(n, dtype=bool), counts)
    d = min_len
    if d == 0:  # empty arrays: nothing to reshape; counts.check reports them
        counts = InputCounts(rows=n, null_arrays=null_arrays, min_len=0, max_len=0)
        return Batch(np.empty((0, 0)), np.zeros(n, dtype=bool), counts)
    values = column.flatten()  # values of the non-null lists, in row order
    x = values.to_numpy(zero_copy_only=False).reshape(-1, d)
    ok = np.isfinite(x).all(axis=1)
    null_elem_rows = np.zeros(x.shape[0], dtype=bool)
    if values.null_count:
        null_elem_rows = values.is_null().to_numpy(zero_copy_only=False).reshape(-1, d).any(axis=1)
    nonfinite = int(np.count_nonzero(~ok & ~null_elem_rows))
    good = ok & ~null_elem_rows
    counts = InputCounts(rows=n, null_arrays=null_arrays, null_elements=int(null_elem_rows.sum()),
                         nonfinite=nonfinite, min_len=d, max_len=d)
    if null_arrays == 0 and bool(good.all()):
        return Batch(x, None, counts)
    mask = np.zeros(n, dtype=bool)
    mask[np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))[good]] = True
    return Batch(x[good], mask, counts)


#: Heap bytes per float of a batch in flight: the Parquet reader's column vectors, the Arrow
#: copy the JVM sends and the Python worker's float64 matrix are each a few bytes per float,
#: and a task holds a batch of each at once.  2 GB for two task slots gives 4M floats.
HEAP_PER_FLOAT = 256


def batch_rows(dim: int, heap_per_task: int, most: int) -> int:
    """Rows per batch of ``dim``-float rows for ``heap_per_task`` bytes of JVM heap: at most
    ``most`` (the session's setting) and at least 16.  d = 384 with 1 GiB per task: the
    default 10 000 rows; d = 4096: 1024 rows."""
    return max(16, min(most, heap_per_task // HEAP_PER_FLOAT // max(dim, 1)))


def check_dims(forget_dim: int, retain_dim: int, column: str) -> None:
    """Forget and retain features must have the same dimension."""
    if forget_dim != retain_dim:
        raise InputError(f"feature column {column!r} has dimension {forget_dim} in the forget table "
                         f"but {retain_dim} in the retain table")
