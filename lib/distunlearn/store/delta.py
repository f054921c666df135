"""Delta writes shared by the output store and the cleaning of user tables: a run's rows
replaced in one commit, retried when a concurrent writer won the optimistic-concurrency race.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructType

from distunlearn.errors import ConflictError, InputError
from distunlearn.progress import note
from distunlearn.store.sources import last_commit
from distunlearn.transforms.payload import local_frame

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Writes of a run replace only that run's rows, so a write that lost a race with another
#: run's commit (two runs creating a table at once, or appending to ``runs``) is safe to repeat.
WRITE_ATTEMPTS = 5
_CONFLICT = re.compile(r"io\.delta\.exceptions\.(\w+Exception)|\[(DELTA_CONCURRENT_\w+|DELTA_PROTOCOL_CHANGED|"
                       r"DELTA_METADATA_CHANGED)\]")


def delta_conflict(exc: BaseException) -> str | None:
    """The name of the Delta optimistic-concurrency exception in ``exc``, or None."""
    match = _CONFLICT.search(f"{type(exc).__name__}: {exc}")
    return (match.group(1) or match.group(2)) if match else None


def frame_of(spark: SparkSession, rows: list[dict[str, Any]], schema: str, columns: list[str]) -> DataFrame:
    """A DataFrame of ``rows`` (dicts keyed by column name) with the DDL ``schema`` whose
    column names are ``columns``: each row's values are taken in that order.

    Rows holding numpy arrays (the statistics' d x d scatter, n-gram counts) go through Arrow:
    a list of Python floats is a boxed object per element, and at d = 4096 the 33.5M of them
    took ``createDataFrame`` over 9 minutes (docs/BENCHMARKS.md, profiling log #10)."""
    if not any(isinstance(v, np.ndarray) for r in rows for v in r.values()):
        return spark.createDataFrame([tuple(r.get(c) for c in columns) for r in rows], schema)
    arrays = []
    for c in columns:
        values = [r.get(c) for r in rows]
        matrices = [v for v in values if isinstance(v, np.ndarray)]
        if values and len(matrices) == len(values):
            offsets = np.concatenate([[0], np.cumsum([v.size for v in matrices])]).astype(np.int32)
            flat = np.concatenate([v.ravel() for v in matrices])
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
        else:
            arrays.append(pa.array(values))
    return local_frame(spark, pa.Table.from_arrays(arrays, names=columns), schema)


def check_schema(spark: SparkSession, schema: StructType, path: str) -> None:
    """Fail before writing when an existing output table stores a column with another type
    (typically the id: long in earlier runs, string now)."""
    from distunlearn.store.sources import is_delta

    if not is_delta(spark, path):
        return
    current = {f.name: f.dataType for f in spark.read.format("delta").load(path).schema.fields}
    for f in schema.fields:
        if f.name in current and current[f.name] != f.dataType:
            raise InputError(f"output table {path!r} stores column {f.name!r} as "
                             f"{current[f.name].simpleString()}, this run has {f.dataType.simpleString()}; "
                             "use another --output")


def plain_strings(df: DataFrame) -> DataFrame:
    """``df`` with its string columns cast to plain ``string``.  Over Spark Connect on Spark 4.2
    a string column that comes out of mapInArrow is typed ``string collate UTF8_BINARY`` (the
    same bytes and order), which Delta stores as such and other Delta readers (delta-rs) refuse.
    The cast names the type in SQL: a client-side ``StringType()`` is sent with its collation."""
    strings = {f.name for f in df.schema.fields if isinstance(f.dataType, StringType)}
    if not strings:
        return df
    return df.select(*[F.col(c).cast("string").alias(c) if c in strings else F.col(c) for c in df.columns])


def retrying(action: Callable[[], T], what: str) -> T:
    """``action()``, repeated (up to WRITE_ATTEMPTS times) while it loses a Delta
    optimistic-concurrency race; ConflictError after the last.  Only for writes that are safe
    to repeat: ones that replace a run's rows, or whose condition is evaluated again."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            return action()
        except Exception as exc:
            conflict = delta_conflict(exc)
            if conflict is None:
                raise
            if attempt == WRITE_ATTEMPTS:
                raise ConflictError(f"{what}: {conflict} from a concurrent writer, {WRITE_ATTEMPTS} times; "
                                    "nothing of this write landed, run again") from exc
            log.warning("%s: %s from a concurrent writer; retrying (%d of %d)", what, conflict, attempt + 1,
                        WRITE_ATTEMPTS)
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def replace_run(df: DataFrame, path: str, run_id: str, partition_by: tuple[str, ...] = ("run_id",),
                compression: str | None = None) -> int:
    """Write ``df`` (which has a run_id column equal to ``run_id``) as the run's rows of the
    Delta table at ``path``, replacing earlier rows of the same run in one commit; return the
    table version written.  ``compression``: the Parquet codec, when not the session's."""
    start = time.monotonic()
    writer = plain_strings(df).write.format("delta").mode("overwrite").option("replaceWhere", f"run_id = '{run_id}'")
    if compression:
        writer = writer.option("compression", compression)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    retrying(lambda: writer.save(path), f"writing {path!r} for run {run_id!r}")
    version, rows = last_commit(df.sparkSession, path)
    log.debug("wrote %s rows to %s (version %d) for run %s in %.1f s", rows, path, version, run_id,
              time.monotonic() - start)
    note(f"{path.rstrip('/').rsplit('/', 1)[-1]} v{version} {rows} rows")
    return version


def append(df: DataFrame, path: str) -> None:
    """Append ``df`` to the Delta table at ``path`` (created on first use)."""
    plain_strings(df).write.format("delta").mode("append").save(path)
