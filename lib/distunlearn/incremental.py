"""Incremental statistics for nightly runs: when the inputs only gained rows since the last
succeeded run, read only the new rows and merge their statistics with that run's.

The sufficient statistics are mergeable (Chan et al.'s pairwise rule, ``GaussianStats.merge``),
so statistics(old rows + new rows) = merge(statistics(old rows), statistics(new rows)).
What is needed is the exact set of new rows.  The run ledger (``runs``) records the Delta
version each run read; the commits between that version and today's are read from the
table's transaction log (``_delta_log/<version>.json``, the public Delta protocol):

* every ``add`` with ``dataChange = true`` is a file of new rows;
* ``add``/``remove`` with ``dataChange = false`` are compactions (OPTIMIZE): same rows;
* a ``remove`` with ``dataChange = true`` (DELETE, UPDATE, MERGE, overwrite), a ``metaData``
  action (schema or property change) or a ``protocol`` change means rows may have been
  deleted or rewritten, and the run recomputes in full.

Also in full: ``--no-incremental``; an input that is not a Delta table; no earlier
succeeded run over the same sources with the same id column, feature column and
``on_invalid``; a commit file that is gone (log retention, 30 days by default); column
mapping (file columns are not the table's names); deletion vectors on a new file.

Why not the change data feed: it needs ``delta.enableChangeDataFeed`` set before the rows
arrive, which most tables do not have; the log is always there.  The new files are read
with the table's own schema for the id and feature columns, so Spark ML vectors and typed
arrays read exactly as through Delta.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn import io
from distunlearn.config import FIELDS, JobConfig

log = logging.getLogger(__name__)

#: Config fields the statistics depend on: a base run must agree on all of them (a run that
#: recorded no value, from before a field existed, had the field's default).  ``text_col``
#: keeps a feature run from merging the projected features of a text run.
STATISTICS_FIELDS = ("id_col", "feature_col", "on_invalid", "text_col")


@dataclass(frozen=True)
class Input:
    """One input table as a run read it."""

    domain: str
    source: str
    version: int | None  # None: not a Delta table


@dataclass(frozen=True)
class Base:
    """The run whose statistics are reused, and the files of new rows per domain."""

    run_id: str
    versions: dict[str, int]
    new_files: dict[str, list[str]]


def find_base(spark: SparkSession, cfg: JobConfig, inputs: dict[str, Input]) -> tuple[Base | None, str]:
    """The base run and the new files, or None and the reason for a full recompute."""
    if not cfg.incremental:
        return None, "--no-incremental"
    plain = [i.domain for i in inputs.values() if i.version is None]
    if plain:
        return None, f"the {plain[0]} table is not a Delta table"
    path = io.table_path(cfg.output, io.RUNS)
    if not io.exists(spark, path):
        return None, "no earlier run in the ledger"
    runs = spark.read.format("delta").load(path)
    if "forget_version" not in runs.columns:
        return None, "the ledger predates input versions"
    candidates = (runs.where((F.col("status") == "succeeded") & (F.col("run_id") != cfg.run_id)
                             & (F.col("forget_source") == cfg.forget) & (F.col("retain_source") == cfg.retain)
                             & F.col("forget_version").isNotNull() & F.col("retain_version").isNotNull())
                  .orderBy(F.col("finished_at").desc()).select("run_id", "config", "forget_version",
                                                              "retain_version").collect())
    mine = {name: getattr(cfg, name) for name in STATISTICS_FIELDS}
    for row in candidates:
        theirs = json.loads(row["config"])
        if any(theirs.get(name, FIELDS[name].default) != value for name, value in mine.items()):
            continue
        versions = {"forget": int(row["forget_version"]), "retain": int(row["retain_version"])}
        if not _has_statistics(spark, cfg, row["run_id"]):
            continue
        new_files: dict[str, list[str]] = {}
        for domain, inp in inputs.items():
            assert inp.version is not None
            if inp.version < versions[domain]:
                return None, f"the {domain} table is at version {inp.version}, before run {row['run_id']}'s"
            files = added_files(spark, inp.source, versions[domain], inp.version, cfg.id_col)
            if isinstance(files, str):
                return None, f"{domain} table: {files}"
            new_files[domain] = files
        return Base(row["run_id"], versions, new_files), ""
    return None, "no earlier succeeded run over the same sources, id, feature column and on_invalid"


def _has_statistics(spark: SparkSession, cfg: JobConfig, run_id: str) -> bool:
    path = io.table_path(cfg.output, io.STATISTICS)
    return io.exists(spark, path) and spark.read.format("delta").load(path).where(
        F.col("run_id") == run_id).limit(1).count() > 0


def _location(spark: SparkSession, source: str) -> str:
    if io._is_path(source):
        return source.rstrip("/")
    return str(io.first_row(spark.sql(f"DESCRIBE DETAIL {source}"))["location"]).rstrip("/")


def added_files(spark: SparkSession, source: str, since: int, until: int, id_col: str) -> list[str] | str:
    """Files of the rows added by commits since+1..until, or why they cannot be known."""
    if until == since:
        return []
    location = _location(spark, source)
    detail = io.first_row(spark.sql(f"DESCRIBE DETAIL delta.`{location}`"))
    if detail["properties"].get("delta.columnMapping.mode", "none") != "none":
        return "column mapping is on"
    if id_col in (detail["partitionColumns"] or []):
        return f"the id column {id_col!r} is a partition column"
    commits = [f"{location}/_delta_log/{v:020d}.json" for v in range(since + 1, until + 1)]
    try:
        lines = [r[0] for r in spark.read.text(commits).collect()]
    except Exception as exc:  # a commit file cleaned up by log retention
        return f"commits {since + 1}..{until} are no longer all in the log ({type(exc).__name__})"
    files = []
    for line in lines:
        action = json.loads(line)
        if "remove" in action and action["remove"].get("dataChange", True):
            return "rows were deleted or rewritten"
        if "metaData" in action or "protocol" in action:
            return "the table's metadata or protocol changed"
        add = action.get("add")
        if add and add.get("dataChange", True):
            if add.get("deletionVector"):
                return "a new file carries a deletion vector"
            path = unquote(add["path"])
            files.append(path if "://" in path or path.startswith("/") else f"{location}/{path}")
    return files


def read_new_rows(spark: SparkSession, table: DataFrame, files: list[str], columns: list[str]) -> DataFrame:
    """The rows of ``files`` with ``table``'s types for ``columns`` (the id and the features)."""
    schema = T.StructType([table.schema[c] for c in columns])
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*files)
