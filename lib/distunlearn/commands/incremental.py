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

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from distunlearn.commands.config import FIELDS, JobConfig
from distunlearn.core.stats import DomainStats, Statistics
from distunlearn.engine import check_statistics
from distunlearn.errors import InputError
from distunlearn.store.output import RunRecord, Store
from distunlearn.store.sources import added_files, read_files, read_source
from distunlearn.transforms.prepare import normalize
from distunlearn.transforms.statistics import domain_stats

log = logging.getLogger(__name__)

#: Config fields the statistics depend on: a base run must agree on all of them (a run that
#: recorded no value, from before a field existed, had the field's default).  ``text_col``
#: keeps a feature run from merging the projected features of a text run.
STATISTICS_FIELDS = ("id_col", "feature_col", "on_invalid", "text_col")


@dataclass(frozen=True)
class Base:
    """The run whose statistics are reused, and the files of new rows per domain."""

    run_id: str
    versions: dict[str, int]
    new_files: dict[str, list[str]]


def find_base(spark: SparkSession, cfg: JobConfig, store: Store, record: RunRecord) -> tuple[Base | None, str]:
    """The base run and the new files, or None and the reason for a full recompute
    (``record``: the input versions this run read)."""
    if not cfg.incremental:
        return None, "--no-incremental"
    versions_now = {"forget": record.forget_version, "retain": record.retain_version}
    sources = {"forget": cfg.forget, "retain": cfg.retain}
    plain = [d for d, v in versions_now.items() if v is None]
    if plain:
        return None, f"the {plain[0]} table is not a Delta table"
    runs = store.runs()
    if runs is None:
        return None, "no earlier run in the ledger"
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
        if not store.has_statistics(row["run_id"]):
            continue
        new_files: dict[str, list[str]] = {}
        for domain, now in versions_now.items():
            assert now is not None
            if now < versions[domain]:
                return None, f"the {domain} table is at version {now}, before run {row['run_id']}'s"
            files = added_files(spark, sources[domain], versions[domain], now, cfg.id_col)
            if isinstance(files, str):
                return None, f"{domain} table: {files}"
            new_files[domain] = files
        return Base(row["run_id"], versions, new_files), ""
    return None, "no earlier succeeded run over the same sources, id, feature column and on_invalid"


def merged_statistics(spark: SparkSession, cfg: JobConfig, store: Store, base: Base, record: RunRecord) -> Statistics:
    """The base run's statistics of each input merged with those of the rows added since."""
    options = cfg.options()
    stored = store.load_statistics(base.run_id, options)
    out = {}
    for domain, kept in (("forget", stored.forget), ("retain", stored.retain)):
        files = base.new_files[domain]
        log.debug("statistics of %s: run %s's (version %d, %d rows) + %d new files", domain, base.run_id,
                  base.versions[domain], kept.counts.rows, len(files))
        if not files:
            out[domain] = kept
            continue
        source = cfg.forget if domain == "forget" else cfg.retain
        raw = read_source(spark, source, domain, getattr(record, f"{domain}_version"))  # the table's types
        new = normalize(read_files(spark, raw, files, [cfg.id_col, cfg.feature_col]), cfg.id_col, cfg.feature_col,
                        domain)
        added = domain_stats(new, domain, cfg.feature_col, cfg.on_invalid)
        if added.stats.dim != kept.stats.dim:
            raise InputError(f"feature column {cfg.feature_col!r} of the {domain} table has dimension "
                             f"{added.stats.dim} in the rows added since run {base.run_id!r} (version "
                             f"{base.versions[domain]}) but {kept.stats.dim} in the rows before")
        out[domain] = DomainStats(kept.stats.merge(added.stats), kept.counts.merge(added.counts))
    check_statistics(out["forget"], out["retain"], options)
    return Statistics(out["forget"], out["retain"])
