"""All reads and writes: input tables, and the Delta tables under ``--output``.

Output tables (Delta, created on first write, one folder each under ``output``):

``removal_sets`` partitioned by (run_id, method)
    run_id, method, budget, budget_count, k, rank, id, score
``statistics`` partitioned by run_id
    run_id, domain ("forget"/"retain"), n, dim, mean, m2 (row-major d*d), t3, q4, rows,
    dropped_nonfinite, source, created_at
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
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType
from pyspark.sql.utils import AnalysisException

from distunlearn.errors import InputError

log = logging.getLogger(__name__)

REMOVAL_SETS = "removal_sets"
STATISTICS = "statistics"
RUNS = "runs"
DIAGNOSTICS = "diagnostics"
CALIBRATION = "calibration"
EVALUATION = "evaluation"
EVALUATION_SUMMARY = "evaluation_summary"


def _is_path(source: str) -> bool:
    return "/" in source or "\\" in source or "://" in source or Path(source).exists()


def read_source(spark: SparkSession, source: str, domain: str) -> DataFrame:
    """Read a Delta path, a Parquet folder or a catalog table; InputError if none exists."""
    from delta.tables import DeltaTable

    if _is_path(source):
        if DeltaTable.isDeltaTable(spark, source):
            log.info("%s: Delta table %s", domain, source)
            return spark.read.format("delta").load(source)
        try:
            df = spark.read.parquet(source)
        except AnalysisException as exc:
            raise InputError(f"{domain} table {source!r} not found: not a Delta table or a Parquet "
                             f"folder ({str(exc).splitlines()[0][:160]})") from exc
        log.info("%s: Parquet folder %s", domain, source)
        return df
    if spark.catalog.tableExists(source):
        log.info("%s: catalog table %s", domain, source)
        return spark.table(source)
    raise InputError(f"{domain} table {source!r} not found: not a path and not a catalog table")


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


def replace_run(df: DataFrame, path: str, run_id: str, partition_by: tuple[str, ...] = ("run_id",)) -> None:
    """Write ``df`` (which has a run_id column equal to ``run_id``) as the run's rows of the
    Delta table at ``path``, replacing earlier rows of the same run in one commit."""
    start = time.monotonic()
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", f"run_id = '{run_id}'")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)
    log.info("wrote %s rows to %s for run %s in %.1f s", _rows_written(df.sparkSession, path), path, run_id,
             time.monotonic() - start)


def _rows_written(spark: SparkSession, path: str) -> str:
    """numOutputRows of the table's last commit (Delta records it; no data is read)."""
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").first()
    metrics = (last[0] or {}) if last else {}
    return str(metrics.get("numOutputRows", "?"))


def read_run(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    """The rows of ``run_id`` in the Delta table at ``path`` (empty if the table is missing)."""
    if not exists(spark, path):
        raise InputError(f"no Delta table at {path!r}; run the stats step first")
    return spark.read.format("delta").load(path).where(f"run_id = '{run_id}'")
