"""Batch sizes from the feature dimension and the memory the JVM that reads the batches has.

Spark's defaults size batches in rows: 4096 rows per Parquet vectorized-reader batch and 10 000
per Arrow batch.  At d = 384 that is 1.6M and 3.8M floats; at d = 4096 it is 16.8M and 41M
floats per batch and task, and two tasks in the default 2 GB heap ran out of it in the
Parquet reader (docs/BENCHMARKS.md, profiling log #9).  So the job caps both at a number of
floats that grows with the heap per task slot (:func:`distunlearn.core.batches.batch_rows`),
for the passes over the features only, and never raises a setting above the session's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from distunlearn.core.batches import batch_rows
from distunlearn.errors import ConfigError

log = logging.getLogger(__name__)

ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"
PARQUET_BATCH = "spark.sql.parquet.columnarReaderBatchSize"
ARROW_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"
#: Spark's defaults, for a session that answers nothing (a Connect server may hide its settings).
_DEFAULTS = {ARROW_BATCH: 10000, PARQUET_BATCH: 4096, ARROW_BYTES: 2**28}
_DEFAULT_MEMORY = "1g"

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30,
          "t": 2**40, "tb": 2**40, "p": 2**50, "pb": 2**50}


def byte_size(setting: str, name: str = "spark.driver.maxResultSize") -> int:
    """Bytes of a Spark size setting ("1g", "4096m", "512k", "0"; a bare number is bytes, as
    for spark.driver.maxResultSize).  ConfigError naming the setting for anything else."""
    text = setting.strip().lower()
    digits = len(text) - len(text.lstrip("0123456789"))
    if not digits or text[digits:] not in _UNITS:
        raise ConfigError(f"{name} {setting!r} is not a size (e.g. 1g, 4096m)")
    return int(text[:digits]) * _UNITS[text[digits:]]


def _get(spark: SparkSession, key: str) -> str | None:
    try:
        return spark.conf.get(key, None)
    except PySparkException:  # a Connect server may refuse to show a setting
        return None


def heap_per_task(spark: SparkSession) -> int:
    """Bytes of JVM heap per task slot: spark.driver.memory over N for local[N] (the driver's
    JVM runs the tasks), else spark.executor.memory over spark.executor.cores (1g and 2 when
    the session does not say)."""
    master = _get(spark, "spark.master") or ""
    local = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master)
    if local:
        memory, slots = _get(spark, "spark.driver.memory"), local[1]
        tasks = 1 if slots is None else 2 if slots == "*" else int(slots)
    else:
        memory, cores = _get(spark, "spark.executor.memory"), _get(spark, "spark.executor.cores")
        tasks = int(cores) if cores and cores.isdigit() else 2
    name = "spark.driver.memory" if local else "spark.executor.memory"
    return byte_size(memory or _DEFAULT_MEMORY, name) // max(tasks, 1)


@contextmanager
def batches_for(spark: SparkSession, dim: int) -> Iterator[dict[str, int]]:
    """Within the block, Arrow and Parquet batches of at most :func:`batch_rows` rows of
    ``dim`` floats, and Arrow batches of at most 1/16 of the heap per task in bytes (the
    statistics merges' rows are pieces of up to 8 MB: 1024 of them in one batch would be
    8 GB); the session's settings are put back after it.  Yields the settings used."""
    heap = heap_per_task(spark)
    before: dict[str, str] = {}
    used: dict[str, int] = {}
    for key in (ARROW_BATCH, PARQUET_BATCH, ARROW_BYTES):
        current = _get(spark, key)
        session = _DEFAULTS[key] if not current else byte_size(current, key) if key == ARROW_BYTES else int(current)
        wanted = min(session, heap // 16) if key == ARROW_BYTES else batch_rows(dim, heap, session)
        used[key] = session
        if wanted < session:
            try:
                spark.conf.set(key, str(wanted))
            except PySparkException as exc:  # a managed platform may refuse it: keep the session's
                log.warning("the session refuses %s=%d for d = %d (%s); keeping %d", key, wanted, dim,
                            str(exc).splitlines()[0][:160], session)
                continue
            before[key], used[key] = current or str(session), wanted
    if ARROW_BATCH in before or PARQUET_BATCH in before:
        log.info("d = %d: batches of %d rows (Arrow) and %d rows (Parquet reader) for %d MiB of heap per task",
                 dim, used[ARROW_BATCH], used[PARQUET_BATCH], heap // 2**20)
    try:
        yield used
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)
