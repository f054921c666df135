"""The Delta operations on the tables the nightly cleaning acts on (the user's ``--table`` and
``--target``): read at a version, history, MERGE ... DELETE, a cleaned copy, RESTORE, REORG
and VACUUM.  Why and when each runs (idempotency, conservation) is
:mod:`distunlearn.commands.cleaning`.

Every commit carries ``userMetadata`` (JSON; :data:`TOOL` marks this tool's), set through the
session settings for the SQL commands, and as a writer option for the copy.  Every
operation is SQL (no delta-spark DeltaTable), so it runs the same on Spark Connect.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from distunlearn.errors import InputError
from distunlearn.identifiers import quote
from distunlearn.store.sources import delta_ref, first_row, history, is_delta, is_path, qualify

log = logging.getLogger(__name__)

TOOL = "distunlearn"
TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set SQL settings for one block, then restore what was there."""
    before: dict[str, str | None] = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, old in before.items():
            if old is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, old)


@dataclass(frozen=True)
class Table:
    """A Delta table to clean: a name for messages, how SQL names it, and its session."""

    name: str
    sql: str
    spark: SparkSession

    def _history(self, limit: int | None = None) -> list[Any]:
        rows = history(self.spark, self.sql, limit)
        if rows is None:
            raise InputError(f"{self.name!r} is no longer a Delta table")
        return rows

    def version(self) -> int:
        return int(self._history(1)[0]["version"])

    def read(self, version: int | None = None) -> DataFrame:
        if self.sql.startswith("delta.`"):
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            return reader.load(qualify(self.name))
        suffix = "" if version is None else f" VERSION AS OF {version}"
        return self.spark.sql(f"SELECT * FROM {self.sql}{suffix}")

    def history(self) -> list[dict[str, Any]]:
        """Commits, oldest first, with ``userMetadata`` parsed when it is this tool's JSON."""
        out = []
        for r in self._history():
            meta = None
            try:
                parsed = json.loads(r["userMetadata"]) if r["userMetadata"] else None
                meta = parsed if isinstance(parsed, dict) and parsed.get("tool") == TOOL else None
            except ValueError:
                pass
            out.append({"version": int(r["version"]), "operation": r["operation"],
                        "metrics": dict(r["operationMetrics"] or {}), "meta": meta})
        return sorted(out, key=lambda c: c["version"])

    # ------------------------------------------------------------------ operations
    def enable_deletion_vectors(self) -> None:
        self.spark.sql(f"ALTER TABLE {self.sql} SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)")

    def merge_delete(self, ids: DataFrame, id_col: str, settings: dict[str, str]) -> None:
        """``MERGE INTO table USING ids ON id WHEN MATCHED THEN DELETE``, one commit, with the
        session ``settings`` (txnAppId/txnVersion, userMetadata)."""
        view = f"distunlearn_ids_{uuid.uuid4().hex}"  # a temp view: SQL MERGE needs a name for ``ids``
        ids.createOrReplaceTempView(view)
        try:
            with session_conf(self.spark, settings):
                self.spark.sql(f"MERGE INTO {self.sql} AS t USING {view} AS r ON t.{quote(id_col)} = r.id "
                               "WHEN MATCHED THEN DELETE")
        finally:
            self.spark.catalog.dropTempView(view)

    def restore(self, version: int, metadata: str) -> None:
        with session_conf(self.spark, {USER_METADATA: metadata}):
            self.spark.sql(f"RESTORE TABLE {self.sql} TO VERSION AS OF {int(version)}")

    def reorg_purge(self, metadata: str) -> None:
        """``REORG TABLE ... APPLY (PURGE)``: rewrite the files carrying deletion vectors."""
        with session_conf(self.spark, {USER_METADATA: metadata}):
            self.spark.sql(f"REORG TABLE {self.sql} APPLY (PURGE)")

    def vacuum(self, retention_hours: float, check_retention: bool = True, dry_run: bool = False) -> None:
        """``VACUUM``; ``dry_run``: only Delta's checks and the listing, no commit, nothing deleted."""
        settings = {} if check_retention else {"spark.databricks.delta.retentionDurationCheck.enabled": "false"}
        with session_conf(self.spark, settings):
            self.spark.sql(f"VACUUM {self.sql} RETAIN {retention_hours:g} HOURS" + (" DRY RUN" if dry_run else ""))


def open_delta(spark: SparkSession, source: str, what: str = "table") -> Table:
    """The Delta table at a path or catalog name (InputError otherwise)."""
    if is_path(source):
        if not is_delta(spark, source):
            raise InputError(f"{what} {source!r} is not a Delta table (apply --mode delete, undo and purge "
                             "need one; --mode copy also reads Parquet)")
        return Table(source, delta_ref(source), spark)
    try:
        found = history(spark, source, 1)
    except AnalysisException as exc:  # not a table name SQL can parse
        raise InputError(f"{what} {source!r} is not a Delta table in the catalog "
                         f"({str(exc).splitlines()[0][:160]})") from exc
    if found is None:
        raise InputError(f"{what} {source!r} is not a Delta table in the catalog")
    return Table(source, source, spark)


def partition_columns(spark: SparkSession, source: str) -> list[str]:
    """The partition columns of a Delta table ([] for anything else)."""
    if is_path(source) and not is_delta(spark, source):
        return []
    try:
        ref = delta_ref(source) if is_path(source) else source
        return list(first_row(spark.sql(f"DESCRIBE DETAIL {ref}"))["partitionColumns"])
    except AnalysisException:
        return []


def write_copy(df: DataFrame, target: str, partition_by: list[str], app_id: str, txn_version: int,
               metadata: str) -> None:
    """Replace ``target`` with ``df`` in one commit, with Delta's idempotent-write pair."""
    writer = (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
              .option("txnAppId", app_id).option("txnVersion", txn_version).option("userMetadata", metadata))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(qualify(target))


def write_export(df: DataFrame, target: str, fmt: str) -> None:
    """Write an exported removal set: a new Delta table or Parquet folder, or the replacement of
    a Delta table an earlier export wrote (InputError for anything else at ``target``)."""
    from pathlib import Path

    exists = Path(target).exists() if "://" not in target else is_delta(df.sparkSession, target)
    if exists and not (fmt == "delta" and is_delta(df.sparkSession, target)):
        raise InputError(f"export target {target!r} exists and is not a Delta table; give a new folder")
    writer = df.write.format(fmt).mode("overwrite")
    if fmt == "delta":
        writer = writer.option("overwriteSchema", "true")
    writer.save(qualify(target))


def write_table(df: DataFrame, path: str) -> None:
    """Replace the Delta table at ``path`` with ``df`` (the demo's input tables)."""
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(qualify(path))
