"""All reads and writes: input tables, and the Delta tables under ``--output``.

Output tables (Delta, created on first write, one folder each under ``output``):

``removal_sets`` partitioned by (run_id, method)
    run_id, method, budget, budget_count, k, rank, id, score
``statistics`` partitioned by run_id
    run_id, domain ("forget"/"retain"), n, dim, mean, m2 (row-major d*d), t3, q4, rows,
    dropped_nonfinite, source, created_at
``ngram_statistics`` partitioned by run_id (text input only)
    run_id, domain, buckets, ngram_order, ngram_hash, tokenizer, n_docs, n_grams, counts
    (summed n-gram counts per bucket), doc_freq (documents per bucket), source, created_at
``group_diagnostics`` partitioned by run_id, ``retain_weights`` by (run_id, method) (runs
with ``--group-col``; see :mod:`distunlearn.grouping`)
``runs`` partitioned by nothing (one small row per run)
    run_id, status, started_at, finished_at, config (JSON), sources, counts, covariance,
    timings, summary (per method and budget: k and the score threshold)

Every write of a run replaces that run's rows in one Delta commit (``replaceWhere
run_id = ...``), so rerunning a run id never duplicates rows, and runs with other ids are
untouched.  Within a run the order is statistics, removal_sets, runs: a ``runs`` row with
status "succeeded" marks a complete run.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.types import DataType, StructType
from pyspark.sql.utils import AnalysisException

from distunlearn.errors import ConflictError, InputError

log = logging.getLogger(__name__)

REMOVAL_SETS = "removal_sets"
STATISTICS = "statistics"
NGRAM_STATISTICS = "ngram_statistics"
RUNS = "runs"
DIAGNOSTICS = "diagnostics"
CALIBRATION = "calibration"
EVALUATION = "evaluation"
EVALUATION_SUMMARY = "evaluation_summary"
APPLIES = "applies"


def _is_path(source: str) -> bool:
    return "/" in source or "\\" in source or "://" in source or Path(source).exists()


def first_row(df: DataFrame) -> Row:
    """The first row of a query that always has one (a count, DESCRIBE DETAIL, history(1))."""
    row = df.first()
    if row is None:
        raise RuntimeError("query returned no row")
    return row


def delta_version(spark: SparkSession, source: str) -> int | None:
    """The current version of a Delta table (path or catalog name); None for anything else."""
    from delta.tables import DeltaTable

    if _is_path(source):
        if not DeltaTable.isDeltaTable(spark, source):
            return None
        handle = DeltaTable.forPath(spark, source)
    else:
        if not spark.catalog.tableExists(source):
            return None
        try:
            handle = DeltaTable.forName(spark, source)
        except AnalysisException:  # a catalog table in another format
            return None
    return int(first_row(handle.history(1).select("version"))[0])


def read_source(spark: SparkSession, source: str, domain: str, version: int | None = None) -> DataFrame:
    """Read a Delta path, a Parquet folder or a catalog table; InputError if none exists.
    ``version`` pins a Delta table's version (what the run ledger records)."""
    from delta.tables import DeltaTable

    if _is_path(source):
        if DeltaTable.isDeltaTable(spark, source):
            log.info("%s: Delta table %s%s", domain, source, "" if version is None else f" version {version}")
            reader = spark.read.format("delta")
            return (reader if version is None else reader.option("versionAsOf", version)).load(source)
        try:
            df = spark.read.parquet(source)
        except AnalysisException as exc:
            raise InputError(f"{domain} table {source!r} not found: not a Delta table or a Parquet "
                             f"folder ({str(exc).splitlines()[0][:160]})") from exc
        log.info("%s: Parquet folder %s", domain, source)
        return df
    if spark.catalog.tableExists(source):
        log.info("%s: catalog table %s%s", domain, source, "" if version is None else f" version {version}")
        return spark.table(source) if version is None else spark.sql(
            f"SELECT * FROM {source} VERSION AS OF {version}")
    raise InputError(f"{domain} table {source!r} not found: not a path and not a catalog table")


def frame_of(spark: SparkSession, rows: list[dict[str, Any]], schema: str) -> DataFrame:
    """A DataFrame of ``rows`` (dicts keyed by column name) with the DDL ``schema`` ("name type,
    ..."): each row's values are taken in the schema's column order."""
    columns = [c.split()[0] for c in schema.split(", ")]
    return spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], schema)


def table_path(output: str, name: str) -> str:
    return str(Path(output) / name) if "://" not in output else f"{output.rstrip('/')}/{name}"


def exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def check_schema(spark: SparkSession, schema: StructType, path: str) -> None:
    """Fail before writing when an existing output table stores a column with another type
    (typically the id: long in earlier runs, string now)."""
    if not exists(spark, path):
        return
    current = {f.name: f.dataType for f in spark.read.format("delta").load(path).schema.fields}
    for f in schema.fields:
        if f.name in current and current[f.name] != f.dataType:
            raise InputError(f"output table {path!r} stores column {f.name!r} as "
                             f"{current[f.name].simpleString()}, this run has {f.dataType.simpleString()}; "
                             "use another --output")


def replace_run(df: DataFrame, path: str, run_id: str, partition_by: tuple[str, ...] = ("run_id",),
                merge_schema: bool = False) -> int:
    """Write ``df`` (which has a run_id column equal to ``run_id``) as the run's rows of the
    Delta table at ``path``, replacing earlier rows of the same run in one commit; return the
    table version written.  ``merge_schema`` adds new columns to an older table."""
    start = time.monotonic()
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", f"run_id = '{run_id}'")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            writer.save(path)
            break
        except Exception as exc:
            conflict = delta_conflict(exc)
            if conflict is None:
                raise
            if attempt == WRITE_ATTEMPTS:
                raise ConflictError(f"writing {path!r} for run {run_id!r}: {conflict} from a concurrent writer, "
                                    f"{WRITE_ATTEMPTS} times; nothing of this write landed, run again") from exc
            log.warning("writing %s for run %s: %s from a concurrent writer; retrying (%d of %d)", path, run_id,
                        conflict, attempt + 1, WRITE_ATTEMPTS)
            time.sleep(0.5 * attempt)
    version, rows = _last_commit(df.sparkSession, path)
    log.info("wrote %s rows to %s (version %d) for run %s in %.1f s", rows, path, version, run_id,
             time.monotonic() - start)
    return version


#: Writes of a run replace only that run's rows, so a write that lost a race with another
#: run's commit (two runs creating a table at once, or appending to ``runs``) is safe to repeat.
WRITE_ATTEMPTS = 5
_CONFLICT = re.compile(r"io\.delta\.exceptions\.(\w+Exception)|\[(DELTA_CONCURRENT_\w+|DELTA_PROTOCOL_CHANGED|"
                       r"DELTA_METADATA_CHANGED)\]")


def delta_conflict(exc: BaseException) -> str | None:
    """The name of the Delta optimistic-concurrency exception in ``exc``, or None."""
    match = _CONFLICT.search(f"{type(exc).__name__}: {exc}")
    return (match.group(1) or match.group(2)) if match else None


def _last_commit(spark: SparkSession, path: str) -> tuple[int, str]:
    """Version and numOutputRows of the table's last commit (from the log; no data is read)."""
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics").first()
    metrics = (last[1] or {}) if last else {}
    return (int(last[0]) if last else -1), str(metrics.get("numOutputRows", "?"))


def read_run(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    """The rows of ``run_id`` in the Delta table at ``path`` (empty if the table is missing)."""
    if not exists(spark, path):
        raise InputError(f"no Delta table at {path!r}; run the stats step first")
    return spark.read.format("delta").load(path).where(f"run_id = '{run_id}'")


def removal_id_type(spark: SparkSession, output: str) -> DataType:
    """The id type the removal_sets table under ``output`` stores (long or string)."""
    path = table_path(output, REMOVAL_SETS)
    if not exists(spark, path):
        raise InputError(f"no Delta table at {path!r}; run the job first")
    return spark.read.format("delta").load(path).schema["id"].dataType
