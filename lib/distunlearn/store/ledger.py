"""Writes of the ``runs`` ledger, and the claim a run holds on its run id while it writes.

One run at a time writes a run id's rows.  A run claims its id with its first ledger write:
the "running" row carries a token (``claim_token``, with the host and process id of the driver
that wrote it).  Every ledger write is a conditional MERGE on ``run_id``:

- the claim inserts the row when the run id has none, and replaces a row only when no live run
  holds it (a status other than "running", or the "running" row it found dead);
- the last write ("succeeded" or "failed") replaces the row only while it still carries the
  run's token, so a run that lost its claim records nothing over the new owner's row.

Delta's optimistic concurrency makes each check and its write one step: of two runs that claim
an id at once, one MERGE commits, the other's conflicts, is evaluated again on the new version,
finds the winner's row and writes nothing; that run is then refused with ConflictError before
it wrote any other table.

A "running" row is known dead when it was written on this host by a process that no longer
exists, or by this process for a run that ended without recording its end (a notebook cell
interrupted between two writes), or without a token (by a version before claims).  A row
written on another host cannot be checked from here: ``--takeover`` claims it when it was
written before this run started.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from distunlearn.errors import ConflictError
from distunlearn.identifiers import quote
from distunlearn.store.delta import append, retrying
from distunlearn.store.sources import delta_ref, is_delta

HOST = socket.gethostname()
_writing: set[str] = set()  # the tokens of this process's runs between their claim and their end

#: The claim's condition: the row is not a live run's (the caller found it free or dead, and
#: ``s._prior`` is the token it found on a "running" row).
CLAIM = "t.status <> 'running' OR t.claim_token <=> s._prior"
#: The last write's condition: the row still carries this run's token.
OWNED = "t.claim_token <=> s.claim_token"


def new_token() -> str:
    return uuid.uuid4().hex


def holding(token: str, held: bool) -> None:
    """Record that this process's run with ``token`` holds (or no longer holds) its claim."""
    (_writing.add if held else _writing.discard)(token)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, TypeError, ValueError):  # another user's process, or no pid
        return True
    return True


def _dead(row: dict[str, Any], takeover: bool, started: dt.datetime) -> bool:
    token = row.get("claim_token")
    if not token:
        return True
    if row.get("claim_host") != HOST:
        written = row.get("finished_at")  # a "running" row's write time: its claim's
        if written is not None and written.tzinfo is None:  # Spark returns the session's local time
            written = written.astimezone(dt.timezone.utc)
        return takeover and (written is None or written < started)
    if row.get("claim_pid") == os.getpid():
        return token not in _writing
    return not _alive(row.get("claim_pid"))


def check_free(row: dict[str, Any] | None, run_id: str, takeover: bool, started: dt.datetime) -> None:
    """ConflictError when ``row`` (the run id's ledger row, or None) is a live run's claim."""
    if row is None or row["status"] != "running" or _dead(row, takeover, started):
        return
    who = f"pid {row.get('claim_pid')} on host {row.get('claim_host')!r} since {row.get('finished_at')}"
    if row.get("claim_host") == HOST:
        hint = "wait for it to end, or use another --run-id"
    else:
        hint = "if that run died, rerun with --takeover; else wait for it, or use another --run-id"
    raise ConflictError(f"run id {run_id!r} is being written by another run ({who}); {hint}")


def prepare(spark: SparkSession, path: str, empty: DataFrame) -> None:
    """Create the ledger table at ``path`` with ``empty``'s schema, or add the columns this
    version writes to an older ledger (the claim's), so that MERGE finds every column."""

    def ready() -> None:
        if not is_delta(spark, path):
            append(empty, path)
            return
        have = set(spark.read.format("delta").load(path).columns)
        missing = [f for f in empty.schema.fields if f.name not in have]
        if missing:
            spark.sql(f"ALTER TABLE {delta_ref(path)} ADD COLUMNS ("
                      + ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in missing) + ")")

    retrying(ready, f"preparing the ledger {path!r}")


def merge(spark: SparkSession, path: str, row: DataFrame, condition: str, insert: bool,
          prior: str | None = None) -> bool:
    """MERGE the one-row ``row`` into the ledger at ``path`` on run_id: replace the run's row
    when ``condition`` holds (``t``: the ledger row, ``s``: the new row, ``s._prior``: ``prior``),
    insert it when the run has no row and ``insert``.  True when the row was written."""
    columns = row.columns
    view = f"distunlearn_ledger_{uuid.uuid4().hex}"
    row.withColumn("_prior", F.lit(prior).cast("string")).createOrReplaceTempView(view)
    names = ", ".join(quote(c) for c in columns)
    sql = (f"MERGE INTO {delta_ref(path)} AS t USING {view} AS s ON t.run_id = s.run_id "
           f"WHEN MATCHED AND ({condition}) THEN UPDATE SET "
           + ", ".join(f"t.{quote(c)} = s.{quote(c)}" for c in columns))
    if insert:
        sql += f" WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({', '.join(f's.{quote(c)}' for c in columns)})"
    try:
        result = retrying(lambda: spark.sql(sql).collect(), f"writing the ledger {path!r}")
    finally:
        spark.catalog.dropTempView(view)
    return int(result[0]["num_affected_rows"]) > 0
