"""The output folder: every read and write of the Delta tables under ``--output``.

:class:`Store` writes a run (:meth:`Store.write_run`: the ledger row, statistics, the
ranking, the budgets, diagnostics, calibration, group tables) and is the one reader of its
removal sets (:meth:`Store.removal_set`, :meth:`Store.members`) for apply, verify, undo,
export, evaluate, report and the benchmark.  Table names and schemas:
:mod:`distunlearn.store.tables`.

Write order within a run: ``runs`` (status "running": the run's claim on its run id,
:mod:`distunlearn.store.ledger`), statistics, ngram_statistics, removal_ranking,
removal_budgets, diagnostics, calibration, group_diagnostics, retain_weights, ``runs``
("succeeded" with the version written of each table, or "failed" with the error, only over
the run's own claim).  Every write replaces the run's rows of one table in one Delta commit.
A reader takes a succeeded run's ``removal_budgets`` as of the version its ledger row names
and the ranking as of the version each budgets row names, so it never sees a half-written
run, nor a mix of two writes of one run id; and while a run writes, no other run writes its
run id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from distunlearn.core.batches import InputCounts
from distunlearn.core.budgets import budget_label
from distunlearn.core.stats import DomainStats, GaussianStats, Statistics
from distunlearn.core.text import TOKENIZER, NgramStats, TextModel
from distunlearn.errors import CheckFailed, ConfigError, ConflictError, InputError
from distunlearn.options import Options, from_flat, to_flat
from distunlearn.progress import Stage, note
from distunlearn.store import ledger, tables
from distunlearn.store.delta import WRITE_ATTEMPTS, append, check_schema, frame_of, replace_run
from distunlearn.store.sources import check_can_write, is_delta, local_path, not_delta_folder, qualify
from distunlearn.store.tables import Table

if TYPE_CHECKING:
    from distunlearn.engine import Result

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class RunRecord:
    """What the ledger records of a run besides its results: how it was asked for and what it
    read.  ``config``: the flat options (and, from the command line, every other option)."""

    config: dict[str, Any] = field(default_factory=dict)
    forget_source: str | None = None
    retain_source: str | None = None
    forget_version: int | None = None
    retain_version: int | None = None
    statistics_mode: str = "full"  # or "incremental"
    base_run_id: str | None = None  # incremental: the run whose statistics were merged
    statistics_note: str = ""  # full: why not incremental; incremental: what was new
    stats_run_id: str | None = None  # the run whose statistics were used (score --stats-run-id)
    started_at: dt.datetime = field(default_factory=_now)

    def config_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RemovalSet:
    """One removal set of a succeeded run, as the store reads it.

    ``rows``: DataFrame[id, score, rank, group, group_rank] (the ranking rows of the set);
    ``budget``: the recorded budget of the set (for a ``--k`` that no budget recorded, k /
    n_forget)."""

    run_id: str
    method: str
    budget: float
    k: int
    rows: DataFrame
    stats_sha256: str | None
    config_sha256: str | None

    @property
    def ids(self) -> DataFrame:
        return self.rows.select("id")


class Store:
    """The Delta tables of one output folder (a path or URI)."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        if not root:
            raise ConfigError("no output folder given (--output)")
        self.spark, self.root = spark, root

    # ------------------------------------------------------------------ basics
    def path(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        root = qualify(self.root)
        return str(Path(root) / name) if "://" not in root else f"{root.rstrip('/')}/{name}"

    def exists(self, table: Table | str) -> bool:
        return is_delta(self.spark, self.path(table))

    def check_folder(self) -> None:
        """InputError when the output folder cannot be this job's: a file; a folder where one of
        the output tables' names is something other than a Delta table (a Parquet folder, a
        file), which a write would turn into a Delta table around the user's files; a folder
        written by distunlearn 0.1 (output contract 1).  The first two are checked on the local
        file system (a remote URI's tables are checked by Spark as they are read).  A folder
        that already holds one of the job's Delta tables is the job's: a run killed in a table's
        first write leaves data files without a log there, and the rerun must go through."""
        root = local_path(self.root)
        if root is not None and root.exists():
            if not root.is_dir():
                raise InputError(f"output {self.root!r} is a file; --output names the folder of the output tables")
            names = (*(t.name for t in tables.ALL), tables.CONTRACT_1_TABLE)
            ours = any((root / name / "_delta_log").is_dir() for name in names)
            for name in names if not ours else ():
                if not_delta_folder(root / name):
                    raise InputError(f"output folder {self.root!r} holds {name!r}, which is not a Delta table; "
                                     f"the job writes its {name} table there: use another --output")
        if self.exists(tables.CONTRACT_1_TABLE):
            raise InputError(f"output folder {self.root!r} holds a {tables.CONTRACT_1_TABLE} table: it was written by "
                             "distunlearn 0.1 (output contract 1), and this version writes and reads removal_ranking "
                             "and removal_budgets; use a new --output (rerun the runs you need there)")

    def check_can_write(self) -> None:
        """InputError when the output folder refuses new files (checked before a command's
        work, so that it does not fail at its first write)."""
        check_can_write(self.root, "output folder")

    def _frame(self, table: Table, rows: list[dict[str, Any]], id_type: str = "bigint") -> DataFrame:
        return frame_of(self.spark, rows, table.ddl(id_type), table.columns)

    def _replace(self, table: Table, df: DataFrame, run_id: str) -> int:
        return replace_run(df, self.path(table), run_id, partition_by=table.partition_by,
                           compression=table.compression)

    def read(self, table: Table, run_id: str, version: int | None = None) -> DataFrame:
        """The rows of ``run_id`` in ``table`` (at ``version``); InputError if the table is missing."""
        if not self.exists(table):
            raise InputError(f"no Delta table at {self.path(table)!r}; run the job first")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path(table)).where(F.col("run_id") == run_id)

    def rows(self, table: Table, run_id: str) -> list[dict[str, Any]]:
        """The run's rows of ``table`` as dicts: as of the version the run's ledger row names
        for it when it names one, else the latest; [] when the table does not exist."""
        if not self.exists(table):
            return []
        run = self.run(run_id)
        version = ((run or {}).get("outputs") or {}).get(table.name)
        return [r.asDict() for r in self.read(table, run_id, version).collect()]

    # ------------------------------------------------------------------ the ledger
    def run(self, run_id: str) -> dict[str, Any] | None:
        """The run's ledger row, or None."""
        if not self.exists(tables.RUNS):
            return None
        found = self.read(tables.RUNS, run_id).collect()
        return found[0].asDict() if found else None

    def runs(self) -> DataFrame | None:
        """Every ledger row (None before the first run)."""
        if not self.exists(tables.RUNS):
            return None
        return self.spark.read.format("delta").load(self.path(tables.RUNS))

    def succeeded(self, run_id: str) -> dict[str, Any]:
        """The ledger row of a succeeded run (InputError otherwise)."""
        self.check_folder()
        run = self.run(run_id)
        if run is None or run["status"] != "succeeded":
            state = run["status"] if run else "no row"
            raise InputError(f"run {run_id!r} under {self.root!r} is not a succeeded run ({state} in runs)")
        return run

    def options(self, run: dict[str, Any]) -> Options:
        """The options a run recorded."""
        return from_flat(json.loads(run["config"] or "{}"))

    def _ledger_row(self, run_id: str, status: str, record: RunRecord, token: str, result: Result | None = None,
                    outputs: dict[str, int] | None = None, error: str | None = None) -> DataFrame:
        """The run's row of the ledger, carrying its claim ``token``."""
        r = result
        est = r.model.covariance if r else None
        row = {"run_id": run_id, "status": status, "started_at": record.started_at, "finished_at": _now(),
               "config": json.dumps(record.config, sort_keys=True), "forget_source": record.forget_source,
               "retain_source": record.retain_source, "stats_run_id": record.stats_run_id or run_id,
               "n_forget": r.n_forget if r else 0, "n_retain": r.n_retain if r else 0, "dim": r.dim if r else 0,
               "covariance": est.kind if est else "", "shrinkage": float(est.shrinkage) if est else 0.0,
               "timings": dict(r.timings if r else {}),
               "summary": [(s["method"], s["budget"], s["budget_count"], s["k"], s["threshold"])
                           for s in (r.summary() if r else [])],
               "forget_version": record.forget_version, "retain_version": record.retain_version,
               "statistics_mode": record.statistics_mode or None, "base_run_id": record.base_run_id,
               "statistics_note": record.statistics_note or None,
               "stats_sha256": r.statistics.digest() if r else None, "config_sha256": record.config_sha256(),
               "outputs": dict(outputs or {}), "error": error, "contract": tables.CONTRACT,
               "claim_token": token, "claim_host": ledger.HOST, "claim_pid": os.getpid()}
        return self._frame(tables.RUNS, [row])

    def check_free(self, run_id: str, takeover: bool = False, started: dt.datetime | None = None) -> None:
        """Before a command that writes ``run_id`` does its work: InputError when the output
        folder refuses new files, ConflictError when a live run holds ``run_id``
        (:mod:`distunlearn.store.ledger`; the claim checks again as it writes)."""
        self.check_can_write()
        ledger.check_free(self.run(run_id), run_id, takeover, started or _now())

    def claim(self, run_id: str, record: RunRecord, result: Result | None = None, takeover: bool = False) -> str:
        """Write the run's "running" ledger row unless a live run holds ``run_id``
        (ConflictError); returns the claim's token, which the run's last ledger write needs."""
        path = self.path(tables.RUNS)
        ledger.prepare(self.spark, path, self._frame(tables.RUNS, []))
        token = ledger.new_token()
        row = self._ledger_row(run_id, "running", record, token, result)
        for _ in range(WRITE_ATTEMPTS):
            held = self.run(run_id)
            ledger.check_free(held, run_id, takeover, record.started_at)
            prior = held["claim_token"] if held and held["status"] == "running" else None
            if ledger.merge(self.spark, path, row, ledger.CLAIM, insert=True, prior=prior):
                ledger.holding(token, True)
                note(f"runs: claimed {run_id!r}")
                return token
            # another run's row landed between the read and the MERGE: read it again
        raise ConflictError(f"run id {run_id!r}: other runs claimed it {WRITE_ATTEMPTS} times while this one "
                            "tried; nothing of this run was written, run again")

    def finish(self, run_id: str, status: str, record: RunRecord, token: str, result: Result | None = None,
               outputs: dict[str, int] | None = None, error: str | None = None) -> None:
        """The run's last ledger write ("succeeded" or "failed"), only over its own claim."""
        row = self._ledger_row(run_id, status, record, token, result, outputs, error)
        try:
            if not ledger.merge(self.spark, self.path(tables.RUNS), row, ledger.OWNED, insert=False):
                raise ConflictError(f"run {run_id!r} lost its claim on the run id to another run while it wrote "
                                    f"(see --takeover); it is not recorded as {status}, the other run's row stands")
        finally:
            ledger.holding(token, False)

    # ------------------------------------------------------------------ writing a run
    def check_writable(self, id_type: str, groups: bool = False) -> None:
        """Before the first write: the folder is not contract 1, and its existing tables accept
        this run's id type."""
        self.check_folder()
        check_schema(self.spark, self._frame(tables.REMOVAL_RANKING, [], id_type).schema,
                     self.path(tables.REMOVAL_RANKING))
        if groups:
            check_schema(self.spark, self._frame(tables.RETAIN_WEIGHTS, [], id_type).schema,
                         self.path(tables.RETAIN_WEIGHTS))

    def write_run(self, run_id: str, result: Result, record: RunRecord, takeover: bool = False) -> dict[str, int]:
        """Write every output of ``result`` as run ``run_id`` (module docstring: the order),
        between a "running" and a "succeeded" ledger row ("failed" on error).  The "running"
        row claims the run id: ConflictError, before anything is written, while another run
        writes it (``takeover``: also claim a row another host left; :mod:`.ledger`)."""
        if not record.config:
            record = dataclasses.replace(record, config=to_flat(result.options))
        id_type = result.ranking.schema["id"].dataType.simpleString()
        self.check_writable(id_type, bool(result.options.columns.groups))
        timings = result.timings
        token = self.claim(run_id, record, result, takeover)
        versions: dict[str, int] = {}
        try:
            if record.stats_run_id in (None, run_id):  # score --stats-run-id keeps the other run's
                with Stage(timings, "write_statistics"):
                    versions.update(self.write_statistics(run_id, result.statistics, record))
            with Stage(timings, "write_ranking"):
                versions[tables.REMOVAL_RANKING.name] = self.write_ranking(run_id, result.ranking)
                versions[tables.REMOVAL_BUDGETS.name] = self.write_budgets(
                    run_id, result.budget_rows(), versions[tables.REMOVAL_RANKING.name])
            with Stage(timings, "write_diagnostics"):
                versions.update(self.write_diagnostics(run_id, result))
                if result.plan.grouped:
                    versions.update(self.write_groups(run_id, result, id_type))
        except BaseException as exc:  # an interrupt too: a notebook cell stopped mid-write
            try:
                self.finish(run_id, "failed", record, token, result, versions, f"{type(exc).__name__}: {exc}"[:1000])
            except Exception:  # the ledger write itself failed: keep the original error
                log.exception("could not record the failure of run %s in the ledger", run_id)
            raise
        self.finish(run_id, "succeeded", record, token, result, versions)
        return versions

    def write_statistics(self, run_id: str, statistics: Statistics, record: RunRecord) -> dict[str, int]:
        """The ``statistics`` rows (and ``ngram_statistics`` for text input) of the run."""
        self.check_folder()
        now = _now()
        rows = []
        for domain, ds, source in (("forget", statistics.forget, record.forget_source),
                                   ("retain", statistics.retain, record.retain_source)):
            s = ds.stats
            rows.append({"run_id": run_id, "domain": domain, "n": s.n, "dim": s.dim, "mean": s.mean, "m2": s.m2.ravel(),
                         "t3": s.t3, "q4": float(s.q4),
                         "rows": ds.counts.rows, "dropped_nonfinite": ds.counts.nonfinite, "source": source,
                         "created_at": now})
        versions = {tables.STATISTICS.name: self._replace(tables.STATISTICS, self._frame(tables.STATISTICS, rows),
                                                          run_id)}
        text = statistics.text
        if text is not None:
            st = text.settings
            ngram = [{"run_id": run_id, "domain": domain, "buckets": st.buckets, "ngram_order": st.order,
                      "ngram_hash": st.hash_name, "tokenizer": TOKENIZER, "n_docs": n.n_docs, "n_grams": n.n_grams,
                      "counts": n.counts, "doc_freq": n.doc_freq, "source": source,
                      "created_at": now}
                     for domain, n, source in (("forget", text.forget, record.forget_source),
                                               ("retain", text.retain, record.retain_source))]
            versions[tables.NGRAM_STATISTICS.name] = self._replace(
                tables.NGRAM_STATISTICS, self._frame(tables.NGRAM_STATISTICS, ngram), run_id)
        return versions

    def write_ranking(self, run_id: str, ranking: DataFrame) -> int:
        out = ranking.select(F.lit(run_id).alias("run_id"), *tables.REMOVAL_RANKING.columns[1:])
        return self._replace(tables.REMOVAL_RANKING, out, run_id)

    def write_budgets(self, run_id: str, rows: list[dict[str, Any]], ranking_version: int) -> int:
        rows = [{**r, "run_id": run_id, "ranking_version": ranking_version} for r in rows]
        return self._replace(tables.REMOVAL_BUDGETS, self._frame(tables.REMOVAL_BUDGETS, rows), run_id)

    def write_diagnostics(self, run_id: str, result: Result) -> dict[str, int]:
        """The diagnostics table (one row per method and budget, and a no-removal row with
        method "none") and the calibration table (one row per method)."""
        diag = result.diagnostics
        base = diag.baseline
        rows = [{"run_id": run_id, "method": "none", "budget": 0.0, "budget_count": None, "k": 0,
                 "kappa": diag.kappa, "alpha": base.alpha, "eps": base.eps, "frontier_eps": base.frontier_eps,
                 "frontier_gap": base.frontier_gap, "unlearned": 0.0}]
        for s in result.sets:
            p = diag.points[(s.method, s.budget.k)]
            rows.append({"run_id": run_id, "method": s.method, "budget": s.budget.budget,
                         "budget_count": s.budget.count, "k": s.budget.k, "kappa": diag.kappa, "alpha": p.alpha,
                         "eps": p.eps, "frontier_eps": p.frontier_eps, "frontier_gap": p.frontier_gap,
                         "unlearned": p.unlearned})
        calibration = [{"run_id": run_id, "method": m, "kappa": diag.kappa, "tolerated_eps": diag.tolerated_eps,
                        "alpha_max": diag.alpha_max, "target_alpha": diag.target_alpha,
                        "budget_for_target": diag.budget_for_target[m]} for m in result.methods]
        return {tables.DIAGNOSTICS.name: self._replace(tables.DIAGNOSTICS, self._frame(tables.DIAGNOSTICS, rows),
                                                       run_id),
                tables.CALIBRATION.name: self._replace(tables.CALIBRATION,
                                                       self._frame(tables.CALIBRATION, calibration), run_id)}

    def write_groups(self, run_id: str, result: Result, id_type: str) -> dict[str, int]:
        """``group_diagnostics`` and, with reweighting, ``retain_weights``."""
        rows = [{**r, "run_id": run_id} for r in result.group_rows()]
        versions = {tables.GROUP_DIAGNOSTICS.name: self._replace(
            tables.GROUP_DIAGNOSTICS, self._frame(tables.GROUP_DIAGNOSTICS, rows), run_id)}
        weights = result.retain_weights()
        if weights is not None:
            out = weights.select(F.lit(run_id).alias("run_id"), *tables.RETAIN_WEIGHTS.columns[1:])
            versions[tables.RETAIN_WEIGHTS.name] = self._replace(tables.RETAIN_WEIGHTS, out, run_id)
        return versions

    # ------------------------------------------------------------------ stored statistics
    def has_statistics(self, run_id: str) -> bool:
        return self.exists(tables.STATISTICS) and self.read(tables.STATISTICS, run_id).limit(1).count() > 0

    def load_statistics(self, run_id: str, options: Options) -> Statistics:
        """The statistics stored for ``run_id`` (InputError if absent), and for text input its
        n-gram statistics, which must have been computed with ``options``' featurizer."""
        self.check_folder()
        stored = self.read(tables.STATISTICS, run_id)
        found = {r["domain"]: r for r in stored.drop("m2").collect()}
        missing = [d for d in ("forget", "retain") if d not in found]
        if missing:
            raise InputError(f"no {missing[0]} statistics stored for run {run_id!r} under {self.root!r}")
        m2 = _read_in_pieces(stored, "domain", "m2")
        domains = {}
        for domain, row in found.items():
            stats = GaussianStats.from_dict({**row.asDict(), "m2": m2[domain]})
            counts = InputCounts(rows=int(row["rows"]), nonfinite=int(row["dropped_nonfinite"]), min_len=stats.dim,
                                 max_len=stats.dim)
            domains[domain] = DomainStats(stats, counts)
        text = self._load_text_model(run_id, options) if options.columns.text else None
        return Statistics(domains["forget"], domains["retain"], text)

    def _load_text_model(self, run_id: str, options: Options) -> TextModel:
        settings = options.text
        found = {r["domain"]: r for r in self.read(tables.NGRAM_STATISTICS, run_id).collect()}
        stats = {}
        for domain in ("forget", "retain"):
            if domain not in found:
                raise InputError(f"no {domain} n-gram statistics stored for run {run_id!r} under {self.root!r}")
            row = found[domain]
            stored = (row["buckets"], row["ngram_order"], row["ngram_hash"], row["tokenizer"])
            wanted = (settings.buckets, settings.order, settings.hash_name, TOKENIZER)
            if stored != wanted:
                raise InputError(f"run {run_id!r} stored n-gram statistics with buckets, order, hash, tokenizer = "
                                 f"{stored}; this run has {wanted}")
            stats[domain] = NgramStats(int(row["n_docs"]), np.asarray(row["counts"], np.int64),
                                       np.asarray(row["doc_freq"], np.int64))
        return TextModel(stats["forget"], stats["retain"], settings, options.scoring.seed)

    # ------------------------------------------------------------------ reading removal sets
    def budgets(self, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A succeeded run's ledger row and its ``removal_budgets`` rows, as of the version the
        ledger row names."""
        run = self.succeeded(run_id)
        version = (run["outputs"] or {}).get(tables.REMOVAL_BUDGETS.name)
        if version is None:
            raise InputError(f"run {run_id!r} under {self.root!r} recorded no removal_budgets version")
        return run, [r.asDict() for r in self.read(tables.REMOVAL_BUDGETS, run_id, version).collect()]

    def _ranking(self, run_id: str, rows: list[dict[str, Any]]) -> DataFrame:
        versions = {r["ranking_version"] for r in rows}
        if len(versions) != 1:
            raise CheckFailed(f"the removal_budgets rows of run {run_id!r} name ranking versions {sorted(versions)}")
        return self.read(tables.REMOVAL_RANKING, run_id, versions.pop())

    def removal_set(self, run_id: str, method: str, budget: float | None = None, k: int | None = None) -> RemovalSet:
        """The removal set of (run, method) for a recorded ``budget``, or of size ``k`` (any k
        up to the largest budget's of a run with global budgets; a recorded one with
        stratified budgets).  Checked: the run succeeded and the set has k rows."""
        if (budget is None) == (k is None):
            raise ConfigError("give the removal set's --budget or its --k (one of them)")
        run, rows = self.budgets(run_id)
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            methods = sorted({r["method"] for r in rows})
            raise InputError(f"run {run_id!r} has no removal set for method {method!r}; its methods: "
                             f"{', '.join(methods) or 'none'}")
        recorded = sorted({(r["k"], r["budget"], r["budget_count"]) for r in mine})
        shown = ", ".join(f"{budget_label(b, c)} (k={kk})" for kk, b, c in recorded)
        if budget is not None:
            chosen = [r for r in mine if r["budget"] == float(budget)]
            if not chosen:
                raise InputError(f"run {run_id!r} recorded no budget {budget!r} for method {method!r}; it recorded "
                                 f"{shown} (budgets of the same k are recorded once; any k: --k)")
            k = int(chosen[0]["k"])
        else:
            chosen = [r for r in mine if r["k"] == k]
        assert k is not None
        ranking = self._ranking(run_id, rows).where(F.col("method") == method)
        if chosen:
            quotas = self.spark.createDataFrame([(r["group"], int(r["quota"])) for r in chosen],
                                                "_g string, _quota bigint")
            members = (ranking.join(F.broadcast(quotas), F.col("group").eqNullSafe(F.col("_g")))
                       .where(F.col("group_rank") <= F.col("_quota")))
            label = float(chosen[0]["budget"])
        else:
            largest = max(kk for kk, _, _ in recorded)
            if self.options(run).groups.budget == "stratified":
                raise InputError(f"run {run_id!r} has stratified budgets: its sets exist for the recorded k only "
                                 f"({shown}); --k {k} is not one of them")
            if not 0 < k <= largest:
                raise InputError(f"--k {k} is outside 1..{largest}: run {run_id!r} stored the ranking of method "
                                 f"{method!r} up to its largest budget's k = {largest}")
            members = ranking.where(F.col("rank") <= k)
            label = k / int(run["n_forget"])
        members = members.select("id", "score", "rank", "group", "group_rank")
        n = members.count()
        if n != k:
            raise CheckFailed(f"removal set {method} k={k} of run {run_id!r} has {n} rows: the removal_ranking "
                              "table is damaged")
        return RemovalSet(run_id, method, label, k, members, run.get("stats_sha256"), run.get("config_sha256"))

    def members(self, run_id: str) -> tuple[list[dict[str, Any]], DataFrame]:
        """Every recorded set of a succeeded run: its budgets rows (one per method, budget and
        group) and DataFrame[method, k, id, score, rank, group, group_rank] with one row per
        (set, id)."""
        _, rows = self.budgets(run_id)
        quotas = self.spark.createDataFrame([(r["method"], r["group"], int(r["k"]), int(r["quota"])) for r in rows],
                                            "_m string, _g string, k bigint, _quota bigint")
        ranking = self._ranking(run_id, rows)
        joined = ranking.join(F.broadcast(quotas), (F.col("method") == F.col("_m"))
                              & F.col("group").eqNullSafe(F.col("_g")))
        return rows, joined.where(F.col("group_rank") <= F.col("_quota")).select(
            "method", "k", "id", "score", "rank", "group", "group_rank")

    # ------------------------------------------------------------------ other tables
    def append_apply(self, row: dict[str, Any]) -> None:
        """One row of the ``applies`` log (apply, verify, undo)."""
        append(self._frame(tables.APPLIES, [{**row, "at": _now()}]), self.path(tables.APPLIES))

    def write_evaluation(self, run_id: str, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
                         groups: list[dict[str, Any]]) -> None:
        """Replace the run's rows of ``evaluation``, ``evaluation_summary`` and, with group rows,
        ``evaluation_groups`` (the schemas of all checked first)."""
        self.check_folder()
        parts = [(tables.EVALUATION, rows), (tables.EVALUATION_SUMMARY, summary)]
        if groups:
            parts.append((tables.EVALUATION_GROUPS, groups))
        frames = [(t, self._frame(t, r)) for t, r in parts]
        for t, df in frames:
            check_schema(self.spark, df.schema, self.path(t))
        for t, df in frames:
            self._replace(t, df, run_id)


#: Elements of a stored array read back per row (8 MB of doubles): a d x d scatter (134 MB
#: at d = 4096) in one collected row would not fit one Spark Connect message (128 MB).
READ_PIECE = 2**20


def _read_in_pieces(df: DataFrame, key: str, column: str) -> dict[Any, np.ndarray]:
    """``df[column]`` (an array of doubles) per value of ``df[key]``, read as rows of at most
    :data:`READ_PIECE` elements through Arrow and joined in order on the driver."""
    n = READ_PIECE
    pieces = F.expr(f"transform(sequence(0, greatest(cast(ceil(size(`{column}`) / {n}) as int) - 1, 0)), "
                    f"i -> slice(`{column}`, i * {n} + 1, {n}))")
    table = df.select(key, F.posexplode(pieces).alias("_piece", "_values")).toArrow()
    parts: dict[Any, list[tuple[int, np.ndarray]]] = {}
    for k, i, values in zip(table.column(key).to_pylist(), table.column("_piece").to_pylist(),
                            table.column("_values"), strict=True):
        parts.setdefault(k, []).append((i, values.values.to_numpy(zero_copy_only=False)))
    return {k: np.concatenate([v for _, v in sorted(found, key=lambda p: p[0])]) for k, found in parts.items()}
