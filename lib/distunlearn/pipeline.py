"""The job: statistics, then scoring and selection, then the output tables.

``run`` = ``stats`` + ``score``.  Every check on the input (tables, columns, ids, features,
dimensions, budgets) happens before the first write, so bad input leaves the output
folder as it was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn import grouping, incremental, io
from distunlearn.aggregate import DomainStats, compute_stats, removal_bucket_stats
from distunlearn.batches import InputCounts, check_dims
from distunlearn.budgets import Budget, budget_label, resolve_budgets
from distunlearn.config import JobConfig
from distunlearn.diagnostics import Diagnostics, GroupPoint, diagnose
from distunlearn.errors import InputError
from distunlearn.grouping import GroupContext
from distunlearn.incremental import Input
from distunlearn.prepare import check_ids, normalize
from distunlearn.score import score_forget
from distunlearn.scoring import ScoringModel, validate_methods
from distunlearn.select import select_removal_sets, sort_partitions
from distunlearn.stats import GaussianStats
from distunlearn.text import (
    TOKENIZER,
    NgramStats,
    TextModel,
    compute_ngram_stats,
    normalize_text,
    with_features,
)

log = logging.getLogger(__name__)

_STATS_SCHEMA = (
    "run_id string, domain string, n long, dim int, mean array<double>, m2 array<double>, "
    "t3 array<double>, q4 double, rows long, dropped_nonfinite long, source string, "
    "created_at timestamp"
)
_NGRAM_STATS_SCHEMA = (
    "run_id string, domain string, buckets int, ngram_order int, ngram_hash string, tokenizer string, "
    "n_docs long, n_grams long, counts array<long>, doc_freq array<long>, source string, created_at timestamp"
)
_DIAGNOSTICS_SCHEMA = (
    "run_id string, method string, budget double, budget_count long, k long, kappa double, alpha double, "
    "eps double, frontier_eps double, frontier_gap double, unlearned double"
)
_CALIBRATION_SCHEMA = (
    "run_id string, method string, kappa double, tolerated_eps double, alpha_max double, target_alpha double, "
    "budget_for_target double"
)
_RUNS_SCHEMA = (
    "run_id string, status string, started_at timestamp, finished_at timestamp, config string, "
    "forget_source string, retain_source string, stats_run_id string, n_forget long, "
    "n_retain long, dim int, covariance string, shrinkage double, timings map<string,double>, "
    "summary array<struct<method:string, budget:double, budget_count:long, k:long, "
    "threshold:double>>, forget_version long, retain_version long, statistics_mode string, "
    "base_run_id string, statistics_note string, stats_sha256 string, config_sha256 string, "
    "outputs map<string,long>, error string"
)


@dataclass
class RunReport:
    """What a run did: sizes, the covariance used, timings, and per method and budget k and
    the score threshold (the k-th highest score)."""

    run_id: str
    n_forget: int = 0
    n_retain: int = 0
    dim: int = 0
    covariance: str = ""
    shrinkage: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    summary: list[dict[str, object]] = field(default_factory=list)
    diagnostics: Diagnostics | None = None
    groups: list[GroupPoint] = field(default_factory=list)  # with --group-col: per method, k > 0, group
    # --- the run ledger (runs table)
    inputs: dict[str, Input] = field(default_factory=dict)
    statistics_mode: str = ""  # "full" or "incremental"
    base_run_id: str | None = None  # incremental: the run whose statistics were merged
    statistics_note: str = ""  # full: why not incremental; incremental: rows added
    stats_sha256: str | None = None
    outputs: dict[str, int] = field(default_factory=dict)  # table -> Delta version written

    def table(self) -> str:
        """The summary as aligned text: one line per budget, k, then the score threshold (the
        k-th highest score) of each method."""
        methods = list(dict.fromkeys(str(r["method"]) for r in self.summary))
        lines = [f"run {self.run_id}: n_forget={self.n_forget} n_retain={self.n_retain} d={self.dim} "
                 f"covariance={self.covariance} (shrinkage {self.shrinkage:.3g})",
                 "score threshold (k-th highest score) per method:",
                 f"{'budget':>8} {'k':>10} " + " ".join(f"{m:>12}" for m in methods)]
        for label, k, thresholds in self._budget_rows():
            values = " ".join(f"{'-' if thresholds[m] is None else format(thresholds[m], '.5g'):>12}"
                              for m in methods)
            lines.append(f"{label:>8} {k:>10} {values}")
        if self.diagnostics is not None:
            lines.extend(self._diagnostics_lines(methods))
        if self.groups:
            lines.extend(self._group_lines(methods))
        lines.append("timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in self.timings.items()))
        return "\n".join(lines)

    def _budget_rows(self) -> list[tuple[str, int, dict[str, object]]]:
        """One entry per budget, in output order: its label, k, and each method's threshold."""
        rows: dict[tuple[object, object], tuple[str, int, dict[str, object]]] = {}
        for r in self.summary:
            key = (r["budget"], r["budget_count"])
            if key not in rows:
                rows[key] = (budget_label(r["budget"], r["budget_count"]),  # type: ignore[arg-type]
                             int(r["k"]), {})  # type: ignore[call-overload]
            rows[key][2][str(r["method"])] = r["threshold"]
        return list(rows.values())

    def _group_lines(self, methods: list[str]) -> list[str]:
        """Per budget and method: the group with the highest deletion rate r_g / N_g and its rate,
        and the largest per-group KL shift (all groups: table group_diagnostics)."""
        by: dict[tuple[str, int], list[GroupPoint]] = {}
        for p in self.groups:
            by.setdefault((p.method, p.k), []).append(p)
        lines = ["groups: highest deletion rate r_g/N_g (group) and largest KL(before_g || after_g) per method "
                 "(every group: table group_diagnostics):",
                 f"{'budget':>8} {'k':>10} " + " ".join(f"{m:>26}" for m in methods)]
        for label, k, _ in self._budget_rows():
            cells = []
            for m in methods:
                pts = by.get((m, k), [])
                if not pts:
                    cells.append(f"{'-':>26}")
                    continue
                worst = max(pts, key=lambda p: (p.deletion_rate or 0.0, p.group))
                shift = max((p.kl_shift for p in pts if p.kl_shift is not None), default=float("nan"))
                cells.append(f"{format(worst.deletion_rate or 0.0, '.3f') + ' (' + worst.group[:8] + ')':>17} "
                             f"{shift:>8.4f}")
            lines.append(f"{label:>8} {k:>10} " + " ".join(cells))
        return lines

    def _diagnostics_lines(self, methods: list[str]) -> list[str]:
        d = self.diagnostics
        assert d is not None
        lines = [f"removal alpha = KL(p1||p) / preservation eps = KL(p2||p), nats (kappa = KL(p1||p2) = "
                 f"{d.kappa:.4g}; no removal: alpha {d.baseline.alpha:.4g}, eps {d.baseline.eps:.4g}):",
                 f"{'budget':>8} {'k':>10} " + " ".join(f"{m:>17}" for m in methods)]
        for label, k, _ in self._budget_rows():
            cells = " ".join(f"{d.points[(m, k)].alpha:>8.4f}/{d.points[(m, k)].eps:<8.4f}" for m in methods)
            lines.append(f"{label:>8} {k:>10} {cells}")
        reach = ", ".join(f"{m} {'-' if b is None else format(b, 'g')}" for m, b in d.budget_for_target.items())
        lines.append(f"calibration: tolerating eps = {d.tolerated_eps:g} nats, the frontier reaches alpha = "
                     f"{d.alpha_max:.4g}; smallest budget reaching alpha >= {d.target_alpha:.4g}: {reach}")
        return lines


class _Stage:
    """Context manager that logs a stage and records its wall time in ``timings``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        log.info("stage %s ...", self.name)
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.monotonic() - self.start
        if exc[0] is None:
            log.info("stage %s done in %.1f s", self.name, self.timings[self.name])


def normalized(spark: SparkSession, cfg: JobConfig, source: str, domain: str,
               version: int | None = None) -> DataFrame:
    """One input table as DataFrame[id, features], or DataFrame[id, grams] for text input; with
    ``--group-col``, a ``group`` column too."""
    raw = io.read_source(spark, source, domain, version)
    if cfg.text_col:
        return normalize_text(raw, cfg.id_col, cfg.text_col, domain, cfg.text_settings(), cfg.group_col)
    return normalize(raw, cfg.id_col, cfg.feature_col, domain, group_cols=cfg.group_col)


def read_inputs(spark: SparkSession, cfg: JobConfig, report: RunReport) -> tuple[DataFrame, DataFrame]:
    """Both tables as DataFrame[id, features] (text: [id, grams]), with id checks (InputError on
    failure).  Delta tables are read at their current version, recorded in ``report.inputs``."""
    frames = []
    for domain, source in (("forget", cfg.forget), ("retain", cfg.retain)):
        version = io.delta_version(spark, source)
        report.inputs[domain] = Input(domain, source, version)
        frames.append(normalized(spark, cfg, source, domain, version))
    forget, retain = frames
    check_ids(forget, cfg.id_col, "forget")
    if cfg.check_retain_ids:
        check_ids(retain, cfg.id_col, "retain")
    return forget, retain


def text_statistics(spark: SparkSession, forget: DataFrame, retain: DataFrame,
                    cfg: JobConfig) -> tuple[DataFrame, DataFrame, TextModel]:
    """Text input: the n-gram statistics of both tables (one pass each), and both tables as
    DataFrame[id, features, grams] with the TF-IDF projection those statistics define."""
    settings = cfg.text_settings()
    text = TextModel(compute_ngram_stats(forget, "forget", cfg.text_col, settings.buckets),
                     compute_ngram_stats(retain, "retain", cfg.text_col, settings.buckets), settings)
    return (*featurize(spark, text, forget, retain), text)  # type: ignore[return-value]


def featurize(spark: SparkSession, text: TextModel, *frames: DataFrame) -> list[DataFrame]:
    """DataFrame[id, grams] -> DataFrame[id, features, grams] (one broadcast of the IDF weights)."""
    projection = spark.sparkContext.broadcast(text.projection())
    return [with_features(df, projection) for df in frames]


def compute_statistics(spark: SparkSession, forget: DataFrame, retain: DataFrame, cfg: JobConfig,
                       report: RunReport, text: TextModel | None = None) -> tuple[DomainStats, DomainStats]:
    """The statistics of both tables: merged from the last run's and the new rows' when the
    inputs only gained rows (:mod:`distunlearn.incremental`), else one distributed pass over
    each table.  Raises InputError for unusable features."""
    if cfg.text_col:  # the projection's IDF weights change with every added document
        base, reason = None, "text input: the TF-IDF features depend on every document"
    else:
        base, reason = incremental.find_base(spark, cfg, report.inputs) if report.inputs else (None, "")
    if base is None:
        if reason:
            log.info("statistics: full pass (%s)", reason)
        report.statistics_mode, report.statistics_note = "full", reason
        f = compute_stats(forget, "forget", cfg.feature_col, cfg.on_invalid)
        r = compute_stats(retain, "retain", cfg.feature_col, cfg.on_invalid)
    else:
        stored = load_domain_stats(spark, cfg, base.run_id)  # one read of the base run's rows
        f, r = (_incremental_stats(spark, cfg, base, report.inputs[d], stored[d]) for d in ("forget", "retain"))
        report.statistics_mode, report.base_run_id = "incremental", base.run_id
        report.statistics_note = ", ".join(f"{d}: {len(files)} new files" for d, files in base.new_files.items())
    check_dims(f.stats.dim, r.stats.dim, cfg.feature_col)
    if r.stats.n < 2:
        raise InputError(f"the retain table has {r.stats.n} usable row; at least 2 are needed "
                         "for a covariance")
    report.stats_sha256 = stats_digest(f.stats, r.stats, text)
    return f, r


def _incremental_stats(spark: SparkSession, cfg: JobConfig, base: incremental.Base, inp: Input,
                       stored: DomainStats) -> DomainStats:
    """The base run's statistics of one input merged with those of the rows added since."""
    domain = inp.domain
    files = base.new_files[domain]
    log.info("statistics of %s: run %s's (version %d, %d rows) + %d new files", domain, base.run_id,
             base.versions[domain], stored.counts.rows, len(files))
    if not files:
        return stored
    raw = io.read_source(spark, inp.source, domain, inp.version)  # the table's types for the new files
    new = normalize(incremental.read_new_rows(spark, raw, files, [cfg.id_col, cfg.feature_col]), cfg.id_col,
                    cfg.feature_col, domain)
    added = compute_stats(new, domain, cfg.feature_col, cfg.on_invalid)
    check_dims(stored.stats.dim, added.stats.dim, cfg.feature_col)
    return DomainStats(stored.stats.merge(added.stats), stored.counts.merge(added.counts))



def stats_digest(forget: GaussianStats, retain: GaussianStats, text: TextModel | None = None) -> str:
    """sha256 of both domains' statistics (float64 bytes, then the n-gram counts of text input):
    names them in apply's commits."""
    h = hashlib.sha256()
    for s in (forget, retain):
        h.update(s.to_flat().tobytes())
    for n in (text.forget, text.retain) if text else ():
        h.update(n.counts.tobytes() + n.doc_freq.tobytes())
    return h.hexdigest()


def config_digest(cfg: JobConfig) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()


def write_statistics(spark: SparkSession, cfg: JobConfig, forget: DomainStats, retain: DomainStats) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for domain, ds, source in (("forget", forget, cfg.forget), ("retain", retain, cfg.retain)):
        s = ds.stats
        rows.append((cfg.run_id, domain, s.n, s.dim, s.mean.tolist(), s.m2.ravel().tolist(),
                     s.t3.tolist(), float(s.q4), ds.counts.rows, ds.counts.nonfinite, source, now))
    df = spark.createDataFrame(rows, _STATS_SCHEMA)
    return io.replace_run(df, io.table_path(cfg.output, io.STATISTICS), cfg.run_id)


def write_ngram_statistics(spark: SparkSession, cfg: JobConfig, text: TextModel) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    st = text.settings
    rows = [(cfg.run_id, domain, st.buckets, st.order, st.hash_name, TOKENIZER, n.n_docs, n.n_grams,
             n.counts.tolist(), n.doc_freq.tolist(), source, now)
            for domain, n, source in (("forget", text.forget, cfg.forget), ("retain", text.retain, cfg.retain))]
    df = spark.createDataFrame(rows, _NGRAM_STATS_SCHEMA)
    return io.replace_run(df, io.table_path(cfg.output, io.NGRAM_STATISTICS), cfg.run_id)


def load_text_model(spark: SparkSession, cfg: JobConfig, run_id: str) -> TextModel:
    """The n-gram statistics stored for ``run_id`` with ``cfg``'s text settings (InputError if
    absent or computed with another featurizer)."""
    settings = cfg.text_settings()
    path = io.table_path(cfg.output, io.NGRAM_STATISTICS)
    rows = {r["domain"]: r for r in io.read_run(spark, path, run_id).collect()}
    stats = {}
    for domain in ("forget", "retain"):
        if domain not in rows:
            raise InputError(f"no {domain} n-gram statistics stored for run {run_id!r} under {cfg.output!r}")
        row = rows[domain]
        stored = (row["buckets"], row["ngram_order"], row["ngram_hash"], row["tokenizer"])
        wanted = (settings.buckets, settings.order, settings.hash_name, TOKENIZER)
        if stored != wanted:
            raise InputError(f"run {run_id!r} stored n-gram statistics with buckets, order, hash, tokenizer = "
                             f"{stored}; this run has {wanted}")
        stats[domain] = NgramStats(int(row["n_docs"]), np.asarray(row["counts"], np.int64),
                                   np.asarray(row["doc_freq"], np.int64))
    return TextModel(stats["forget"], stats["retain"], settings)


def load_domain_stats(spark: SparkSession, cfg: JobConfig, run_id: str) -> dict[str, DomainStats]:
    """The forget and retain statistics stored for ``run_id``, with their row counts
    (InputError if absent)."""
    rows = {r["domain"]: r for r in io.read_run(spark, io.table_path(cfg.output, io.STATISTICS), run_id).collect()}
    missing = [d for d in ("forget", "retain") if d not in rows]
    if missing:
        raise InputError(f"no {missing[0]} statistics stored for run {run_id!r} under {cfg.output!r}")
    out = {}
    for domain, row in rows.items():
        stats = GaussianStats.from_dict(row.asDict())
        counts = InputCounts(rows=int(row["rows"]), nonfinite=int(row["dropped_nonfinite"]), min_len=stats.dim,
                             max_len=stats.dim)
        out[domain] = DomainStats(stats, counts)
    return out


def load_statistics(spark: SparkSession, cfg: JobConfig, run_id: str) -> tuple[GaussianStats, GaussianStats]:
    """The forget and retain statistics stored for ``run_id`` (InputError if absent)."""
    stored = load_domain_stats(spark, cfg, run_id)
    return stored["forget"].stats, stored["retain"].stats


@dataclass(frozen=True)
class Plan:
    """Everything scoring needs, checked: methods, budgets with their k, the model."""

    methods: tuple[str, ...]
    budgets: list[Budget]
    model: ScoringModel


def build_model(cfg: JobConfig, f_stats: GaussianStats, r_stats: GaussianStats,
                text: TextModel | None = None) -> ScoringModel:
    """The scoring model of a run: its statistics with its covariance and cosine options, and
    lr_ngram's weights for text input."""
    model = ScoringModel.build(f_stats, r_stats, cfg.covariance_source, cfg.covariance, cfg.ridge,
                               cfg.max_condition, cfg.cosine_center, cfg.covariance_rank)
    return dataclasses.replace(model, ngram=text.ngram_model()) if text else model


def make_plan(cfg: JobConfig, f_stats: GaussianStats, r_stats: GaussianStats, report: RunReport,
              text: TextModel | None = None) -> Plan:
    """Validate methods and budgets against n_forget and build the scoring model (raises
    ConfigError/InputError before anything is written)."""
    methods = validate_methods(cfg.methods)
    budgets = resolve_budgets(cfg.budgets, cfg.budget_counts, f_stats.n)
    for b in budgets:
        if b.k == 0:
            log.warning("budget %s selects no row (floor(%g x %d) = 0)", b.label, b.budget, f_stats.n)
    model = build_model(cfg, f_stats, r_stats, text)
    report.n_forget, report.n_retain, report.dim = f_stats.n, r_stats.n, f_stats.dim
    report.covariance, report.shrinkage = model.covariance.kind, model.covariance.shrinkage
    return Plan(methods, budgets, model)


def removal_sets_schema(id_type: T.DataType, groups: bool = False) -> T.StructType:
    """Schema of the removal_sets table for a forget table whose id has ``id_type`` (runs with
    ``--group-col`` add the row's ``group``)."""
    return T.StructType([
        T.StructField("run_id", T.StringType(), False), T.StructField("method", T.StringType(), False),
        T.StructField("budget", T.DoubleType()), T.StructField("budget_count", T.LongType()),
        T.StructField("k", T.LongType()), T.StructField("rank", T.LongType()),
        T.StructField("id", id_type), T.StructField("score", T.DoubleType()),
        *([T.StructField("group", T.StringType())] if groups else []),
    ])


def check_outputs(spark: SparkSession, cfg: JobConfig, forget: DataFrame) -> None:
    """Before the first write: the existing removal_sets table must accept this run's id type."""
    schema = removal_sets_schema(forget.schema["id"].dataType, bool(cfg.group_col))
    io.check_schema(spark, schema, io.table_path(cfg.output, io.REMOVAL_SETS))


def score_and_write(spark: SparkSession, cfg: JobConfig, forget: DataFrame, plan: Plan, f_stats: GaussianStats,
                    r_stats: GaussianStats, report: RunReport, groups: GroupContext | None = None,
                    retain: DataFrame | None = None) -> None:
    """Score, select and write the run's removal_sets rows (after :func:`check_outputs`), then
    the diagnostics of every removal set (one more pass over the forget table); with groups,
    the group tables too (``retain``: for the weights, with ``--reweight``)."""
    path = io.table_path(cfg.output, io.REMOVAL_SETS)
    model = spark.sparkContext.broadcast(plan.model)  # once: scoring and the diagnostics pass
    with _Stage(report.timings, "score_select"):
        scores, wide = score_forget(forget, model, plan.methods, cfg.seed, cfg.selection)
        partitions = sort_partitions(f_stats.n, len(plan.methods), cfg.shuffle_partitions)
        if groups is None:
            selection = select_removal_sets(scores, plan.budgets, f_stats.n, partitions)
        else:
            selection = grouping.select(groups, scores, plan.budgets, f_stats.n, partitions)
    try:
        group_col = ["group"] if groups is not None else []
        out = selection.rows.withColumn("run_id", F.lit(cfg.run_id)).select(
            "run_id", "method", "budget", "budget_count", "k", "rank", "id", "score", *group_col)
        with _Stage(report.timings, "write_removal_sets"):
            report.outputs[io.REMOVAL_SETS] = io.replace_run(out, path, cfg.run_id, partition_by=("run_id", "method"),
                                                             merge_schema=groups is not None)
        if groups is not None:
            with _Stage(report.timings, "diagnostics"):
                report.diagnostics, report.groups = grouping.diagnose_groups(
                    groups, forget, model, plan.methods, cfg.seed, cfg.selection, selection, plan.budgets, f_stats,
                    r_stats, cfg.tolerated_eps, cfg.target_alpha)
                report.outputs.update(write_diagnostics(spark, cfg, plan, report.diagnostics))
                report.outputs.update(grouping.write_tables(spark, cfg, groups, report.groups, plan.budgets,
                                                            retain if cfg.reweight else None))
        else:
            with _Stage(report.timings, "diagnostics"):
                ks = sorted({b.k for b in plan.budgets if b.k > 0})
                bounds = {m: [selection.boundaries[(m, k)] for k in ks] for m in plan.methods}
                buckets = removal_bucket_stats(forget, model, plan.methods, cfg.seed, bounds, f_stats.dim,
                                               cfg.selection)
                report.diagnostics = diagnose(f_stats, r_stats, buckets, ks,
                                              [(b.budget, b.k) for b in plan.budgets], cfg.tolerated_eps,
                                              cfg.target_alpha)
                report.outputs.update(write_diagnostics(spark, cfg, plan, report.diagnostics))
    finally:
        selection.release()
        wide.unpersist()
        model.unpersist()
    report.summary = [{"method": m, "budget": b.budget, "budget_count": b.count, "k": b.k,
                       "threshold": selection.threshold(m, b.k)} for m in plan.methods for b in plan.budgets]


def write_diagnostics(spark: SparkSession, cfg: JobConfig, plan: Plan, diag: Diagnostics) -> dict[str, int]:
    """The diagnostics table (one row per method and budget, and a no-removal row with method
    "none") and the calibration table (one row per method); returns their versions."""
    base = diag.baseline
    rows: list[tuple[object, ...]] = [(cfg.run_id, "none", 0.0, None, 0, diag.kappa, base.alpha, base.eps,
                                       base.frontier_eps, base.frontier_gap, 0.0)]
    for m in plan.methods:
        for b in plan.budgets:
            p = diag.points[(m, b.k)]
            rows.append((cfg.run_id, m, b.budget, b.count, b.k, diag.kappa, p.alpha, p.eps, p.frontier_eps,
                         p.frontier_gap, p.unlearned))
    versions = {io.DIAGNOSTICS: io.replace_run(spark.createDataFrame(rows, _DIAGNOSTICS_SCHEMA),
                                               io.table_path(cfg.output, io.DIAGNOSTICS), cfg.run_id)}
    calibration = [(cfg.run_id, m, diag.kappa, diag.tolerated_eps, diag.alpha_max, diag.target_alpha,
                    diag.budget_for_target[m]) for m in plan.methods]
    versions[io.CALIBRATION] = io.replace_run(spark.createDataFrame(calibration, _CALIBRATION_SCHEMA),
                                              io.table_path(cfg.output, io.CALIBRATION), cfg.run_id)
    return versions


def write_run_row(spark: SparkSession, cfg: JobConfig, report: RunReport, started: dt.datetime,
                  status: str, error: str | None = None) -> None:
    """The run's row of the ledger: "running" before its first write, then "succeeded" (or
    "failed" with the error) after its last.  A row left "running" is a run that died."""
    f_in, r_in = report.inputs.get("forget"), report.inputs.get("retain")
    row = (cfg.run_id, status, started, dt.datetime.now(dt.timezone.utc),
           json.dumps(dataclasses.asdict(cfg), sort_keys=True), cfg.forget, cfg.retain,
           cfg.stats_run_id or cfg.run_id, report.n_forget, report.n_retain, report.dim,
           report.covariance, float(report.shrinkage), dict(report.timings),
           [(r["method"], r["budget"], r["budget_count"], r["k"], r["threshold"]) for r in report.summary],
           f_in.version if f_in else None, r_in.version if r_in else None, report.statistics_mode or None,
           report.base_run_id, report.statistics_note or None, report.stats_sha256, config_digest(cfg),
           dict(report.outputs), error)
    io.replace_run(spark.createDataFrame([row], _RUNS_SCHEMA), io.table_path(cfg.output, io.RUNS),
                   cfg.run_id, partition_by=(), merge_schema=True)


def _ledgered(spark: SparkSession, cfg: JobConfig, report: RunReport, started: dt.datetime,
              writes: Callable[[], None]) -> None:
    """Run ``writes`` between a "running" and a "succeeded" ledger row ("failed" on error)."""
    write_run_row(spark, cfg, report, started, "running")
    try:
        writes()
    except Exception as exc:
        try:
            write_run_row(spark, cfg, report, started, "failed", f"{type(exc).__name__}: {exc}"[:1000])
        except Exception:  # the ledger write itself failed: keep the original error
            log.exception("could not record the failure of run %s in the ledger", cfg.run_id)
        raise
    write_run_row(spark, cfg, report, started, "succeeded")


def _with_groups(cfg: JobConfig, plan: Plan, forget: DataFrame, retain: DataFrame | None,
                 report: RunReport) -> tuple[Plan, GroupContext | None]:
    """With ``--group-col``: the groups' statistics (a pass over each table; InputError for a
    null group) and the budgets reduced to what ``--group-cap`` allows."""
    if not cfg.group_col:
        return plan, None
    assert retain is not None
    with _Stage(report.timings, "group_statistics"):
        groups = grouping.group_context(cfg, forget, retain, report.dim)
    return dataclasses.replace(plan, budgets=groups.budgets(plan.budgets)), groups


def run_stats(spark: SparkSession, cfg: JobConfig) -> RunReport:
    """Compute and persist the statistics of both tables (the ``stats`` subcommand)."""
    cfg.check()
    report = RunReport(cfg.run_id)
    with _Stage(report.timings, "read_check"):
        forget, retain = read_inputs(spark, cfg, report)
    with _Stage(report.timings, "statistics"):
        forget, retain, text = _text_statistics(spark, forget, retain, cfg)
        f, r = compute_statistics(spark, forget, retain, cfg, report, text)
    report.n_forget, report.n_retain, report.dim = f.stats.n, r.stats.n, f.stats.dim
    check_outputs(spark, cfg, forget)  # a later score of this run must be able to write
    with _Stage(report.timings, "write_statistics"):
        write_statistics(spark, cfg, f, r)
        if text:
            write_ngram_statistics(spark, cfg, text)
    return report


def _text_statistics(spark: SparkSession, forget: DataFrame, retain: DataFrame,
                     cfg: JobConfig) -> tuple[DataFrame, DataFrame, TextModel | None]:
    if not cfg.text_col:
        return forget, retain, None
    return text_statistics(spark, forget, retain, cfg)


def run_score(spark: SparkSession, cfg: JobConfig) -> RunReport:
    """Score and select with stored statistics (the ``score`` subcommand)."""
    cfg.check()
    started = dt.datetime.now(dt.timezone.utc)
    report = RunReport(cfg.run_id)
    stats_run = cfg.stats_run_id or cfg.run_id
    f_stats, r_stats = load_statistics(spark, cfg, stats_run)
    text = load_text_model(spark, cfg, stats_run) if cfg.text_col else None
    report.stats_sha256 = stats_digest(f_stats, r_stats, text)
    plan = make_plan(cfg, f_stats, r_stats, report, text)
    with _Stage(report.timings, "read_check"):
        forget = normalized(spark, cfg, cfg.forget, "forget")
        check_ids(forget, cfg.id_col, "forget")
        retain = normalized(spark, cfg, cfg.retain, "retain") if cfg.group_col else None
        if text:
            forget, *rest = featurize(spark, text, forget, *([retain] if retain is not None else []))
            retain = rest[0] if rest else None
    plan, groups = _with_groups(cfg, plan, forget, retain, report)
    check_outputs(spark, cfg, forget)
    _ledgered(spark, cfg, report, started,
              lambda: score_and_write(spark, cfg, forget, plan, f_stats, r_stats, report, groups, retain))
    return report


def run_pipeline(spark: SparkSession, cfg: JobConfig) -> RunReport:
    """The whole job (the ``run`` subcommand): statistics, scoring, selection, outputs."""
    cfg.check()
    started = dt.datetime.now(dt.timezone.utc)
    report = RunReport(cfg.run_id)
    with _Stage(report.timings, "read_check"):
        forget, retain = read_inputs(spark, cfg, report)
    with _Stage(report.timings, "statistics"):
        forget, retain, text = _text_statistics(spark, forget, retain, cfg)
        f, r = compute_statistics(spark, forget, retain, cfg, report, text)
    plan = make_plan(cfg, f.stats, r.stats, report, text)
    plan, groups = _with_groups(cfg, plan, forget, retain, report)
    check_outputs(spark, cfg, forget)  # last check before the first write

    def writes() -> None:
        with _Stage(report.timings, "write_statistics"):
            report.outputs[io.STATISTICS] = write_statistics(spark, cfg, f, r)
            if text:
                report.outputs[io.NGRAM_STATISTICS] = write_ngram_statistics(spark, cfg, text)
        score_and_write(spark, cfg, forget, plan, f.stats, r.stats, report, groups, retain)

    _ledgered(spark, cfg, report, started, writes)
    return report
