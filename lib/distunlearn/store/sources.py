"""Reading the input tables: a Delta path, a Parquet folder or a catalog table, at a version;
and, for incremental runs, the files a Delta table's commits added since a version.

The forget and retain tables belong to the user: nothing here writes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import types as T

from distunlearn.errors import InputError
from distunlearn.progress import note
from distunlearn.transforms.payload import is_connect

log = logging.getLogger(__name__)


def is_path(source: str) -> bool:
    """A path (it has a separator or a scheme, or exists) rather than a catalog table name."""
    return "/" in source or "\\" in source or "://" in source or Path(source).exists()


def qualify(path: str) -> str:
    """A local path made absolute against this process's working directory; a URI (``s3://``,
    ``file:/``) as it is.  Delta's SQL takes no relative path (``delta.`out/runs``` is looked
    up as a table name), and Spark resolves one against its JVM's directory, not this
    process's: every path the store hands to Spark goes through here, so that writes, reads
    and SQL name the same table.  Over Spark Connect that is the client's directory."""
    if "://" in path or path.startswith("file:"):
        return path
    return os.path.abspath(path)


def first_row(df: DataFrame) -> Row:
    """The first row of a query that always has one (a count, DESCRIBE DETAIL, history(1))."""
    row = df.first()
    if row is None:
        raise RuntimeError("query returned no row")
    return row


#: Error conditions of DESCRIBE HISTORY that mean "no Delta table there" (a missing path, a
#: Parquet folder, a catalog table in another format or none at all).
NOT_DELTA = frozenset({"DELTA_TABLE_ONLY_OPERATION", "DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_NOT_FOUND",
                       "DELTA_PATH_DOES_NOT_EXIST", "PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND"})


def delta_ref(path: str) -> str:
    """How SQL names the Delta table at ``path``."""
    return "delta.`" + qualify(path).replace("`", "``") + "`"


def history(spark: SparkSession, ref: str, limit: int | None = None) -> list[Row] | None:
    """``DESCRIBE HISTORY`` of a Delta table (``ref`` as SQL names it), newest first; None when
    ``ref`` is not a Delta table.  SQL, not delta-spark's DeltaTable: it needs no Python-side
    Delta package and runs the same on Spark Connect, where DeltaTable needs a server plugin."""
    try:
        return spark.sql(f"DESCRIBE HISTORY {ref}" + ("" if limit is None else f" LIMIT {limit}")).collect()
    except AnalysisException as exc:
        if exc.getCondition() in NOT_DELTA:
            return None
        raise


def last_version(spark: SparkSession, ref: str) -> int | None:
    """The version of a Delta table's last commit; None for anything else."""
    rows = history(spark, ref, 1)
    return None if not rows else int(rows[0]["version"])


#: A file of a Delta log that makes its folder a table: a commit (``00000000000000000003.json``)
#: or a checkpoint (classic, multi-part or V2); temporary and ``.crc`` files are not.
_LOG_ENTRY = re.compile(r"\d{20}\.(json|checkpoint(\.\d+\.\d+)?\.parquet|checkpoint\.[\w-]+\.(json|parquet))")


#: A commit file of a Delta log (``00000000000000000003.json``).
_COMMIT = re.compile(r"(\d{20})\.json")


def _local_log(spark: SparkSession, path: str) -> tuple[Path, list[str]] | None:
    """The ``_delta_log`` folder of ``path`` and its file names ([] when it does not exist),
    when this process can answer from it: a local path on a classic session, whose driver reads
    the table's log from the same folder.  None for a remote URI, any path over Spark Connect
    (the server may see another file system), or a folder unreadable here: those are asked of
    Spark."""
    local = local_path(path)
    if local is None or is_connect(spark):
        return None
    log_dir = local / "_delta_log"
    try:
        return log_dir, os.listdir(log_dir)
    except (FileNotFoundError, NotADirectoryError):
        return log_dir, []
    except OSError:
        return None


def _newest_commit(names: list[str]) -> int | None:
    """The version of the newest commit file among a log's ``names``.  Delta keeps the newest
    commit's JSON file (log clean-up removes only files older than a checkpoint), so the
    highest-numbered one is the table's version."""
    return max((int(m.group(1)) for m in map(_COMMIT.fullmatch, names) if m), default=None)


def _holds_table(names: list[str]) -> bool:
    """Whether a log folder with these file names makes a table: a commit or a checkpoint."""
    return any(_LOG_ENTRY.fullmatch(name) for name in names)


def is_delta(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table is at ``path``.  Answered from the local log folder when
    :func:`_local_log` allows: a run asks this about a dozen times, and each DESCRIBE HISTORY
    is a query of 0.1-0.3 s (docs/BENCHMARKS.md, profiling log #16)."""
    found = _local_log(spark, path)
    if found is not None:
        return _holds_table(found[1])
    return last_version(spark, delta_ref(path)) is not None


def last_commit(spark: SparkSession, path: str) -> tuple[int, str]:
    """Version and numOutputRows of the last commit of the Delta table at ``path`` (from its
    log; no data is read): from the newest commit file's ``commitInfo`` when
    :func:`_local_log` allows (profiling log #17), else from DESCRIBE HISTORY, which reads the
    same entry."""
    found = _local_log(spark, path)
    version = None if found is None else _newest_commit(found[1])
    if found is not None and version is not None:
        try:
            text = (found[0] / f"{version:020d}.json").read_text()
            actions = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, ValueError):
            actions = None
        if actions is not None:
            info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            return version, str((info.get("operationMetrics") or {}).get("numOutputRows", "?"))
    rows = history(spark, delta_ref(path), 1)
    if not rows:
        return -1, "?"
    metrics = rows[0]["operationMetrics"] or {}
    return int(rows[0]["version"]), str(metrics.get("numOutputRows", "?"))


def delta_version(spark: SparkSession, source: str) -> int | None:
    """The current version of a Delta table (path or catalog name); None for anything else."""
    if is_path(source):
        found = _local_log(spark, source)
        if found is not None:
            version = _newest_commit(found[1])
            if version is not None or not _holds_table(found[1]):
                return version  # None: a Parquet folder, a missing path
        return last_version(spark, delta_ref(source))
    if not spark.catalog.tableExists(source):
        return None
    return last_version(spark, source)


def read_source(spark: SparkSession, source: str, domain: str, version: int | None = None) -> DataFrame:
    """Read a Delta path, a Parquet folder or a catalog table; InputError if none exists.
    ``version`` pins a Delta table's version (what the run ledger records)."""
    if is_path(source):
        local = local_path(source)
        if local is not None and not local.exists():  # asked before Spark, which logs a stack trace
            raise InputError(f"{domain} table {source!r} not found: no such file or folder")
        if is_delta(spark, source):
            log.debug("%s: Delta table %s%s", domain, source, "" if version is None else f" version {version}")
            note(f"{domain}: Delta" + ("" if version is None else f" v{version}"))
            reader = spark.read.format("delta")
            return (reader if version is None else reader.option("versionAsOf", version)).load(qualify(source))
        check_parquet(source, f"{domain} table")
        try:
            df = spark.read.parquet(qualify(source))
        except Exception as exc:  # AnalysisException; on a remote store also an unreadable file
            raise InputError(f"{domain} table {source!r} not found: not a Delta table or a Parquet "
                             f"folder ({str(exc).strip().splitlines()[0][:160]})") from exc
        log.debug("%s: Parquet folder %s", domain, source)
        note(f"{domain}: Parquet")
        return df
    if spark.catalog.tableExists(source):
        log.debug("%s: catalog table %s%s", domain, source, "" if version is None else f" version {version}")
        note(f"{domain}: table {source}" + ("" if version is None else f" v{version}"))
        return spark.table(source) if version is None else spark.sql(
            f"SELECT * FROM {source} VERSION AS OF {version}")
    raise InputError(f"{domain} table {source!r} not found: not a path and not a catalog table")


def local_path(source: str) -> Path | None:
    """The local file or folder ``source`` names (a path or a ``file:`` URI); None for a remote
    URI (``s3://``, ``abfss://``), which only Spark can look into."""
    if source.startswith("file:"):
        return Path("/" + unquote(source[len("file:"):]).lstrip("/"))
    return None if "://" in source else Path(qualify(source))


def not_delta_folder(path: Path) -> bool:
    """Whether a local ``path`` holds something other than a Delta table (a file, or a non-empty
    folder without ``_delta_log``): a Delta write there would mix a table into the user's files."""
    if not path.exists():
        return False
    return not path.is_dir() or (not (path / "_delta_log").is_dir() and any(path.iterdir()))


def check_can_write(location: str, what: str) -> None:
    """InputError when the local folder ``location`` (or, before it exists, its nearest existing
    parent) refuses a new file: read-only, another user's, or under a file.  A probe file is
    created and removed; nothing stays.  A remote URI is left to the first write."""
    path = local_path(location)
    if path is None:
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".distunlearn-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{what} {location!r} cannot be written: {exc.strerror or exc} in {str(existing)!r}") from exc


#: The first and last four bytes of every Parquet file.
PARQUET_MAGIC = b"PAR1"


def _data_files(folder: Path) -> Iterator[Path]:
    """The files Spark reads under ``folder``: not those whose name starts with ``_`` or ``.``,
    nor any in such a folder."""
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d[0] not in "_.")
        yield from (Path(top) / name for name in sorted(names) if name[0] not in "_.")


def check_parquet(source: str, what: str) -> None:
    """InputError naming ``source`` unless it is a Parquet file or a folder of them, checked
    on the local file system before Spark reads it: Spark would fail inside a task, with a Java
    stack trace on the console, on a text file, a CSV folder or a truncated Parquet file.  Files
    and folders Spark skips (``_SUCCESS``, ``.crc``, ``_delta_log``) are skipped here too.
    Remote URIs are left to Spark (its error becomes the one line)."""
    path = local_path(source)
    if path is None:
        return
    if not path.exists():
        raise InputError(f"{what} {source!r} not found: no such file or folder")
    files = [path] if path.is_file() else list(_data_files(path))
    if not files:
        raise InputError(f"{what} {source!r} is an empty folder: no Delta log and no Parquet files")
    for file in files:
        try:
            with open(file, "rb") as fh:
                head = fh.read(4)
                fh.seek(max(0, file.stat().st_size - 4))
                tail = fh.read(4)
        except OSError as exc:
            raise InputError(f"{what} {source!r}: cannot read {str(file)!r} ({exc.strerror})") from exc
        if head != PARQUET_MAGIC or tail != PARQUET_MAGIC or file.stat().st_size < 12:
            if file == path:
                raise InputError(f"{what} {source!r} is a file that is not Parquet (no PAR1 header and footer); "
                                 "give a Delta table's folder, a Parquet folder or a Parquet file")
            raise InputError(f"{what} {source!r} is not a Delta table or a Parquet folder: its file "
                             f"{str(file.relative_to(path))!r} is not Parquet (no PAR1 header and footer)")


def location(spark: SparkSession, source: str) -> str:
    """The folder of a Delta table given by path or catalog name."""
    if is_path(source):
        return qualify(source).rstrip("/")
    return str(first_row(spark.sql(f"DESCRIBE DETAIL {source}"))["location"]).rstrip("/")


def same_location(spark: SparkSession, a: str, b: str) -> bool:
    """Whether two tables (paths or catalog names) are one folder: ``out/t``, ``./out/t/``,
    ``file:/abs/out/t`` and a catalog table stored there are the same.  A name the catalog does
    not know is a different table."""
    def folder(source: str) -> str:
        try:
            loc = location(spark, source)
        except AnalysisException:
            return "\0" + source  # no such catalog table: equal to nothing else
        local = local_path(loc)
        return loc if local is None else os.path.realpath(local)

    return folder(a) == folder(b)


def added_files(spark: SparkSession, source: str, since: int, until: int, id_col: str) -> list[str] | str:
    """Files of the rows added by the Delta commits since+1..until, or why they cannot be known.

    Read from the table's transaction log (``_delta_log/<version>.json``, the public Delta
    protocol): every ``add`` with ``dataChange = true`` is a file of new rows; ``add``/``remove``
    with ``dataChange = false`` are compactions (same rows); a ``remove`` with ``dataChange =
    true``, a ``metaData`` or a ``protocol`` action means rows may have changed."""
    if until == since:
        return []
    folder = location(spark, source)
    detail = first_row(spark.sql(f"DESCRIBE DETAIL {delta_ref(folder)}"))
    if detail["properties"].get("delta.columnMapping.mode", "none") != "none":
        return "column mapping is on"
    if id_col in (detail["partitionColumns"] or []):
        return f"the id column {id_col!r} is a partition column"
    commits = [f"{folder}/_delta_log/{v:020d}.json" for v in range(since + 1, until + 1)]
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
            files.append(path if "://" in path or path.startswith("/") else f"{folder}/{path}")
    return files


def read_files(spark: SparkSession, table: DataFrame, files: list[str], columns: list[str]) -> DataFrame:
    """The rows of the Parquet ``files`` with ``table``'s types for ``columns``."""
    schema = T.StructType([table.schema[c] for c in columns])
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*files)
