"""Nightly cleaning: apply one removal set to a source table, verify it, undo it, purge it.

A removal set is one (run_id, method, budget or ``--k``) of a succeeded run, read through the
store (:meth:`distunlearn.store.output.Store.removal_set`).  Four operations act on the table
being cleaned (``--table``), through :mod:`distunlearn.store.lake`; ``export`` writes a set's
rows to a folder of its own:

``apply --mode delete``
    ``MERGE INTO table USING removal_set ON id WHEN MATCHED THEN DELETE``: one Delta commit.
    With deletion vectors on (``--enable-deletion-vectors``, or already on), the rows are
    only marked deleted and ``purge`` removes them physically later.
``apply --mode copy --target DST``
    the table without the removal set, written to DST (replaced by each apply).
``verify``
    counts the removed ids that a reader of the table (at a version) can still read.
``undo``
    ``RESTORE`` to the version before the apply.
``purge``
    ``REORG TABLE ... APPLY (PURGE)`` (rewrites files carrying deletion vectors), then
    ``VACUUM`` with Delta's retention check.
``export --target DST``
    the set's rows (id, score, rank, group, group_rank) as a Delta table or Parquet folder.

Idempotency, in two layers.  Every commit carries ``userMetadata`` (JSON: the tool, the
action, the key ``distunlearn-apply/<run>/<method>/k=<k>``, the budget, k, and hashes of the run's
statistics and config), so the table's own history says which removal sets are applied.
(1) Before writing, apply reads that history: when the key's last event is an apply, it
does nothing and reports that commit.  (2) The write itself sets Delta's idempotent-write
pair ``txnAppId`` = key and ``txnVersion`` = 1 + the version of the key's last undo (0 if
none): Delta drops a second commit with the same pair, so two retries racing past the
history check still delete once, and an apply after an undo gets a higher txnVersion and
goes through.

Conservation is checked on every commit from Delta's own numbers: rows before (the version
the commit replaced), rows removed (the MERGE's ``numTargetRowsDeleted``), rows after;
``before == after + removed`` or the command fails.

Every apply, undo and verify is also appended to the ``applies`` table under ``--output``
(the operator's log; the table history stays the source of truth).

Upstream note: Delta 4.0.1 on Spark 4.0.1 fails DML on tables with deletion vectors with
``FIELD_NOT_FOUND row_index`` (no such field in ``_metadata``) in some states (seen after a
RESTORE, and on tables created by delta-rs).  The session turns off
``spark.databricks.delta.deletionVectors.useMetadataRowIndex`` (see ``commands/session.py``), which
makes Delta compute row indexes itself; tests cover apply, undo and apply again with
deletion vectors on a delta-rs table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.commands.config import JobConfig
from distunlearn.errors import CheckFailed, ConfigError, ConflictError, InputError
from distunlearn.identifiers import quote
from distunlearn.store import lake
from distunlearn.store.delta import delta_conflict
from distunlearn.store.lake import TOOL, TXN_APP_ID, TXN_VERSION, USER_METADATA, Table, open_delta
from distunlearn.store.output import RemovalSet, Store
from distunlearn.store.sources import (
    check_can_write,
    is_delta,
    local_path,
    not_delta_folder,
    read_source,
    same_location,
)

log = logging.getLogger(__name__)

#: Operations that rewrite files without changing rows: an undo may restore across them.
ROW_PRESERVING = frozenset({"OPTIMIZE", "REORG", "VACUUM START", "VACUUM END"})


def key(rs: RemovalSet) -> str:
    """The removal set's name in the table history: sets of the same size are the same set."""
    return f"{TOOL}-apply/{rs.run_id}/{rs.method}/k={rs.k}"


def metadata(rs: RemovalSet, action: str, **extra: Any) -> str:
    return json.dumps({"tool": TOOL, "action": action, "key": key(rs), "run_id": rs.run_id, "method": rs.method,
                       "budget": rs.budget, "k": rs.k, "stats_sha256": rs.stats_sha256,
                       "config_sha256": rs.config_sha256, **extra}, sort_keys=True)


@dataclass
class Outcome:
    """What one operation did (printed by the CLI, appended to ``applies``)."""

    action: str
    outcome: str  # committed, already_applied, already_undone, verified, readable, exported
    table: str
    table_version: int
    rows_before: int | None = None
    rows_removed: int | None = None
    rows_after: int | None = None
    readable: int | None = None
    note: str = ""

    def line(self) -> str:
        counts = ""
        if self.rows_removed is not None:
            counts = f"; rows before {self.rows_before} = after {self.rows_after} + removed {self.rows_removed}"
        elif self.rows_before is not None:
            counts = f"; rows {self.rows_before} -> {self.rows_after}"
        if self.readable is not None:
            counts += f"; removed ids readable: {self.readable}"
        where = f" at version {self.table_version}" if self.table_version >= 0 else ""
        return f"{self.action} {self.outcome}: {self.table}{where}{counts}" + (f" ({self.note})" if self.note else "")


# ----------------------------------------------------------------------------- inputs
def load_removal_set(spark: SparkSession, cfg: JobConfig, logged: bool = True) -> RemovalSet:
    """The removal set the options name: ``--budget`` or ``--k`` of (run, method).  ``logged``:
    the command records itself in the output's ``applies`` table, so the folder must take
    writes (checked first: apply must not change the table and then fail to log it)."""
    if bool(cfg.budget) == bool(cfg.k):
        raise ConfigError("give the removal set's --budget or its --k (one of them)")
    store = Store(spark, cfg.output)
    if logged:
        store.check_can_write()
    return store.removal_set(cfg.run_id, cfg.method, budget=cfg.budget or None, k=cfg.k or None)


def _id_column(df: DataFrame, cfg: JobConfig, what: str, rs: RemovalSet) -> str:
    """The table's id column, checked against the removal set's id type (long or string)."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if cfg.id_col not in fields:
        raise InputError(f"{what} has no id column {cfg.id_col!r} (columns: {', '.join(fields)}); pass --id-col")
    stored = rs.rows.schema["id"].dataType
    mine = fields[cfg.id_col]
    integral = (T.LongType, T.IntegerType, T.ShortType, T.ByteType)
    if not ((isinstance(mine, T.StringType) and isinstance(stored, T.StringType))
            or (isinstance(mine, integral) and isinstance(stored, integral))):
        raise InputError(f"id column {cfg.id_col!r} of {what} is {mine.simpleString()}, the removal sets store "
                         f"{stored.simpleString()} ids")
    return cfg.id_col


def _events(table: Table, name: str) -> list[dict[str, Any]]:
    return [c for c in table.history() if c["meta"] and c["meta"].get("key") == name]


def _last_action(events: list[dict[str, Any]], actions: tuple[str, ...]) -> dict[str, Any] | None:
    hits = [e for e in events if e["meta"].get("action") in actions]
    return hits[-1] if hits else None


def _current_apply(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The commit of the key's apply when that is its last event (not undone), else None."""
    last = _last_action(events, ("apply", "undo"))
    return last if last is not None and last["meta"]["action"] == "apply" else None


def _txn_version(events: list[dict[str, Any]]) -> int:
    """1 + the version of the key's last undo: constant across retries, larger after an undo."""
    undo = _last_action(events, ("undo",))
    return 1 + (undo["version"] if undo else 0)


# ----------------------------------------------------------------------------- apply
def apply_removal(spark: SparkSession, cfg: JobConfig) -> Outcome:
    """Apply the removal set (``cfg.mode``); idempotent; checks conservation."""
    if cfg.mode == "copy" and not cfg.target:
        raise ConfigError("apply --mode copy needs --target (the path of the cleaned copy)")
    if cfg.mode == "copy" and same_location(spark, cfg.table, cfg.target):
        raise ConfigError(f"apply --mode copy: --target {cfg.target!r} is the table itself; copy mode writes "
                          "the cleaned rows elsewhere and leaves the table alone (--mode delete removes "
                          "them in place)")
    rs = load_removal_set(spark, cfg)
    outcome = _apply_copy(spark, cfg, rs) if cfg.mode == "copy" else _apply_delete(spark, cfg, rs)
    log.info("%s", outcome.line())
    record(spark, cfg, rs, outcome)
    return outcome


def _conservation(before: int, removed: int, after: int, where: str) -> None:
    if before != after + removed:
        raise CheckFailed(f"conservation broken on {where}: rows before {before} != after {after} + "
                          f"removed {removed}")
    log.info("conservation on %s: rows before %d = after %d + removed %d", where, before, after, removed)


def _apply_delete(spark: SparkSession, cfg: JobConfig, rs: RemovalSet) -> Outcome:
    table = open_delta(spark, cfg.table)
    id_col = _id_column(table.read(), cfg, f"table {cfg.table!r}", rs)
    name = key(rs)
    events = _events(table, name)
    done = _current_apply(events)
    if done is None:
        if cfg.enable_deletion_vectors:
            table.enable_deletion_vectors()
        settings = {TXN_APP_ID: name, TXN_VERSION: str(_txn_version(events)),
                    USER_METADATA: metadata(rs, "apply", mode="delete")}
        log.info("applying %s (k = %d) to %s with MERGE ... DELETE", name, rs.k, table.name)
        outcome = "committed"
        try:
            table.merge_delete(rs.ids, id_col, settings)
        except Exception as exc:
            if delta_conflict(exc) is None:
                raise
            log.warning("apply of %s met a concurrent commit (%s); reading the table history",
                        name, type(exc).__name__)
            if not _current_apply(_events(table, name)):
                raise ConflictError(f"apply of {name} to {table.name!r} conflicted with a concurrent commit "
                                    "and did not land; run it again") from exc
            outcome = "already_applied"  # the concurrent commit was this removal set's
        fresh = _current_apply(_events(table, name))
        if fresh is None:  # Delta dropped the commit (txn pair seen) yet no apply is in the history
            raise CheckFailed(f"apply of {name} to {table.name!r} left no commit: Delta reports "
                              f"transaction {settings[TXN_VERSION]} as done but the history has no apply")
        commit = fresh
    else:
        commit, outcome = done, "already_applied"
    version = commit["version"]
    removed = int(commit["metrics"].get("numTargetRowsDeleted", 0))
    before, after = table.read(version - 1).count(), table.read(version).count()
    _conservation(before, removed, after, f"{table.name} version {version}")
    if removed != rs.k:
        log.warning("%d of the %d ids of %s were in %s (the others were not there)", removed, rs.k, name,
                    table.name)
    return Outcome("apply", outcome, table.name, version, before, removed, after,
                   note="" if outcome == "committed" else "applied before; nothing written")


def _apply_copy(spark: SparkSession, cfg: JobConfig, rs: RemovalSet) -> Outcome:
    source = read_source(spark, cfg.table, "table")
    id_col = _id_column(source, cfg, f"table {cfg.table!r}", rs)
    name = key(rs)
    local = local_path(cfg.target)
    if local is not None and not_delta_folder(local):
        raise InputError(f"target {cfg.target!r} exists and is not a Delta table; copy mode writes the cleaned "
                         "table there: give a new folder or an earlier copy's")
    check_can_write(cfg.target, "target")
    existing = open_delta(spark, cfg.target, "target") if is_delta(spark, cfg.target) else None
    events = _events(existing, name) if existing else []
    done = _last_action(events, ("apply",))
    if done is None:
        cleaned = _match(source, id_col, rs.ids, "left_anti")
        before = source.count()
        removed = _match(source, id_col, rs.ids, "left_semi").count()
        log.info("writing %s without %s (k = %d) to %s", cfg.table, name, rs.k, cfg.target)
        lake.write_copy(cleaned, cfg.target, lake.partition_columns(spark, cfg.table), name, _txn_version(events),
                        metadata(rs, "apply", mode="copy", source=cfg.table, rows_before=before,
                                 rows_removed=removed))
        done = _last_action(_events(open_delta(spark, cfg.target, "target"), name), ("apply",))
        assert done is not None, "the copy's commit carries the key"
        outcome = "committed"
    else:
        outcome = "already_applied"
    meta = done["meta"]
    after = open_delta(spark, cfg.target, "target").read(done["version"]).count()
    _conservation(int(meta["rows_before"]), int(meta["rows_removed"]), after, f"{cfg.target} version {done['version']}")
    return Outcome("apply", outcome, cfg.target, done["version"], int(meta["rows_before"]),
                   int(meta["rows_removed"]), after, note=f"copy of {cfg.table}")


# ----------------------------------------------------------------------------- verify
def verify_removal(spark: SparkSession, cfg: JobConfig) -> Outcome:
    """Count the removal set's ids readable in the table (copy mode: the target) at ``as_of``."""
    rs = load_removal_set(spark, cfg)
    where = cfg.target if cfg.mode == "copy" else cfg.table
    if not where:
        raise ConfigError("verify --mode copy needs --target")
    table = open_delta(spark, where)
    version = table.version() if cfg.as_of < 0 else cfg.as_of
    try:
        df = table.read(version)
    except AnalysisException as exc:
        raise InputError(f"{where!r} has no readable version {version} ({str(exc).splitlines()[0][:160]})") from exc
    id_col = _id_column(df, cfg, f"table {where!r}", rs)
    try:
        readable = _match(df, id_col, rs.ids, "left_semi").count()
    except Exception as exc:  # the version's log entry is there, its data files are not
        if not _files_missing(exc):
            raise
        raise InputError(f"{where!r} version {version} cannot be read: its data files were removed (VACUUM); "
                         "verify a version within the table's retention") from exc
    out = Outcome("verify", "verified" if readable == 0 else "readable", where, version, readable=readable)
    applied = _last_action(_events(table, key(rs)), ("apply", "undo"))
    if applied is not None and applied["meta"]["action"] == "apply" and cfg.mode == "delete":
        out.note = _time_travel_note(spark, table, applied["version"] - 1, rs, id_col)
    log.info("%s", out.line())
    record(spark, cfg, rs, out)
    return out


def _files_missing(exc: BaseException) -> bool:
    """Whether a read failed because data files of the version are gone (Spark's
    FAILED_READ_FILE.FILE_NOT_EXIST, a java.io.FileNotFoundException underneath)."""
    text = str(exc)
    return "FILE_NOT_EXIST" in text or "FileNotFoundException" in text


def _match(table: DataFrame, id_col: str, ids: DataFrame, how: str) -> DataFrame:
    """``table`` semi- or anti-joined with a removal set's ``ids`` on ``table[id_col]``.  The
    condition names columns, not ``df[...]`` references: Spark Connect cannot resolve a
    DataFrame's column reference inside a join of two plans that share a source."""
    removed = ids.select(F.col("id").alias("__removed_id"))
    return table.join(removed, F.col(quote(id_col)) == F.col("__removed_id"), how)


def _time_travel_note(spark: SparkSession, table: Table, before: int, rs: RemovalSet, id_col: str) -> str:
    """Whether the rows can still be read by time travel to the version before the apply."""
    try:
        old = table.read(before)
        n = _match(old, id_col, rs.ids, "left_semi").count()
    except Exception as exc:  # files vacuumed, or the log entry expired
        return f"version {before} is no longer readable ({type(exc).__name__}): the rows are purged"
    return (f"time travel to version {before} still reads {n} of them until purge and VACUUM remove "
            "the old files")


# ----------------------------------------------------------------------------- undo
def undo_removal(spark: SparkSession, cfg: JobConfig) -> Outcome:
    """RESTORE the table to the version before the key's last apply."""
    if cfg.mode == "copy":
        raise ConfigError("undo is for --mode delete: a copy left the source table untouched; "
                          "drop or overwrite the target instead")
    rs = load_removal_set(spark, cfg)
    table = open_delta(spark, cfg.table)
    name = key(rs)
    history = table.history()
    last = _last_action([c for c in history if c["meta"] and c["meta"].get("key") == name], ("apply", "undo"))
    if last is None:
        raise InputError(f"{table.name!r} has no apply of {name} in its history (nothing to undo)")
    if last["meta"]["action"] == "undo":
        out = Outcome("undo", "already_undone", table.name, last["version"], note="undone before; nothing written")
    else:
        applied = last["version"]
        later = [c for c in history if c["version"] > applied and c["operation"] not in ROW_PRESERVING]
        if later and not cfg.force:
            c = later[0]
            raise InputError(f"{table.name!r} changed after the apply at version {applied}: version "
                             f"{c['version']} ({c['operation']}); restoring version {applied - 1} would revert "
                             "it too (pass --force to restore anyway)")
        log.info("restoring %s to version %d (before the apply of %s)", table.name, applied - 1, name)
        try:
            table.restore(applied - 1, metadata(rs, "undo", restored_version=applied - 1))
        except Exception as exc:
            text = str(exc)
            if "DELTA_CANNOT_RESTORE" in text or "FileNotFound" in text or "missing" in text.lower():
                raise InputError(f"cannot undo: data files of {table.name!r} version {applied - 1} were "
                                 f"removed by VACUUM ({text.splitlines()[0][:160]})") from exc
            raise
        done = _last_action(_events(table, name), ("undo",))
        assert done is not None
        out = Outcome("undo", "committed", table.name, done["version"])
    before = table.read(out.table_version - 1).count()
    after = table.read(out.table_version).count()
    out.rows_before, out.rows_after = before, after
    log.info("%s", out.line())
    record(spark, cfg, rs, out)
    return out


# ----------------------------------------------------------------------------- purge
def purge(spark: SparkSession, cfg: JobConfig) -> Outcome:
    """Physically remove deleted rows: REORG ... APPLY (PURGE), then VACUUM."""
    table = open_delta(spark, cfg.table)
    check = not cfg.ignore_retention_check
    # Delta's retention check first, with a dry run that writes nothing: a refused purge must
    # leave the table as it was, and the REORG below is a commit.
    _vacuum(table, cfg, check, dry_run=True)
    table.reorg_purge(json.dumps({"tool": TOOL, "action": "purge", "retention_hours": cfg.retention_hours}))
    _vacuum(table, cfg, check, dry_run=False)
    end = [c for c in table.history() if c["operation"] == "VACUUM END"]
    deleted = end[-1]["metrics"].get("numDeletedFiles", "?") if end else "?"
    out = Outcome("purge", "committed", table.name, table.version(),
                  note=f"{deleted} files deleted, retention {cfg.retention_hours:g} h")
    log.info("%s", out.line())
    return out


def _vacuum(table: Table, cfg: JobConfig, check: bool, dry_run: bool) -> None:
    try:
        table.vacuum(cfg.retention_hours, check_retention=check, dry_run=dry_run)
    except Exception as exc:
        if "retentionDurationCheck" in str(exc) or "DELTA_VACUUM_RETENTION" in str(exc):
            raise ConfigError(f"VACUUM retention {cfg.retention_hours:g} h is below the table's "
                              "delta.deletedFileRetentionDuration; readers and undo may still need those "
                              "files (pass --ignore-retention-check to override)") from exc
        raise


# ----------------------------------------------------------------------------- export
def export_removal_set(spark: SparkSession, cfg: JobConfig) -> Outcome:
    """Write the removal set's rows (id, score, rank, group, group_rank) to ``cfg.target``."""
    if not cfg.target:
        raise ConfigError("export needs --target (the folder to write the removal set to)")
    rs = load_removal_set(spark, cfg, logged=False)
    check_can_write(cfg.target, "target")
    lake.write_export(rs.rows, cfg.target, cfg.export_format)
    out = Outcome("export", "exported", cfg.target, -1, rows_after=rs.k,
                  note=f"{rs.k} rows of {rs.method} k={rs.k} of run {rs.run_id}, {cfg.export_format}")
    log.info("%s", out.line())
    return out


# ----------------------------------------------------------------------------- ledger
def record(spark: SparkSession, cfg: JobConfig, rs: RemovalSet, out: Outcome) -> None:
    """Append one row to the ``applies`` table under ``--output``."""
    Store(spark, cfg.output).append_apply({
        "run_id": rs.run_id, "method": rs.method, "budget": rs.budget, "k": rs.k, "action": out.action,
        "outcome": out.outcome, "table": cfg.table, "target": cfg.target or None, "mode": cfg.mode,
        "table_version": out.table_version, "rows_before": out.rows_before, "rows_removed": out.rows_removed,
        "rows_after": out.rows_after, "readable": out.readable})
