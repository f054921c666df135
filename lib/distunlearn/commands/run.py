"""The ``run``, ``stats`` and ``score`` commands: read the sources, call the engine, write.

``run`` = the statistics (incremental when the inputs only gained rows since an earlier run,
:mod:`distunlearn.commands.incremental`) + :func:`distunlearn.engine.select_removal` +
:meth:`distunlearn.engine.Result.write`.  ``stats`` stores the statistics only; ``score``
selects with stored ones.  Every check on the input happens before the first write, so bad
input leaves the output folder as it was.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from distunlearn import engine
from distunlearn.commands import incremental
from distunlearn.commands.config import JobConfig
from distunlearn.core.budgets import budget_label
from distunlearn.core.diagnostics import Diagnostics, GroupPoint, best_methods
from distunlearn.core.stats import Statistics
from distunlearn.progress import Stage, note
from distunlearn.store.output import RunRecord, Store
from distunlearn.store.sources import delta_version, read_source

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did: sizes, the covariance used, timings, and per method and budget k and
    the score threshold (the lowest score in the set)."""

    run_id: str
    n_forget: int = 0
    n_retain: int = 0
    dim: int = 0
    covariance: str = ""
    shrinkage: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: Diagnostics | None = None
    groups: list[GroupPoint] = field(default_factory=list)  # with --group-col: per method, k > 0, group
    statistics_mode: str = ""  # "full" or "incremental"
    base_run_id: str | None = None
    statistics_note: str = ""
    stats_sha256: str | None = None
    outputs: dict[str, int] = field(default_factory=dict)  # table -> Delta version written

    @classmethod
    def of(cls, run_id: str, result: engine.Result, record: RunRecord, outputs: dict[str, int]) -> RunReport:
        est = result.model.covariance
        return cls(run_id, result.n_forget, result.n_retain, result.dim, est.kind, est.shrinkage,
                   dict(result.timings), result.summary(), result.diagnostics, list(result.group_points),
                   record.statistics_mode, record.base_run_id, record.statistics_note, result.statistics.digest(),
                   outputs)

    def table(self) -> str:
        """The summary as aligned text: one line per budget, k, then the score threshold of each
        method; the diagnostics; with groups the most affected group."""
        methods = list(dict.fromkeys(str(r["method"]) for r in self.summary))
        lines = [f"run {self.run_id}: n_forget={self.n_forget} n_retain={self.n_retain} d={self.dim} "
                 f"covariance={self.covariance} (shrinkage {self.shrinkage:.3g})",
                 "score threshold (lowest score in the set) per method:",
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

    def short(self, rows: int = 4) -> str:
        """A few budgets (``rows``, evenly spread, the largest included) with k and each method's
        alpha / eps, the calibration line and the best method; :meth:`table` and the HTML
        report have every budget."""
        every = self._budget_rows()
        if self.diagnostics is None or not every:
            return self.table()
        methods = list(dict.fromkeys(str(r["method"]) for r in self.summary))
        picked = sorted({round(i * (len(every) - 1) / max(rows - 1, 1)) for i in range(rows)})
        lines = [f"run {self.run_id}: {self.n_forget} forget and {self.n_retain} retain rows, d = {self.dim}",
                 *self._diagnostics_lines(methods, [every[i] for i in picked])]
        found = best_methods(self.diagnostics.budget_for_target)
        if found is None:
            lines.append("best here: none (no method reaches the target removal within these budgets)")
        else:
            lines.append(f"best here: {' and '.join(found[0])} (the target removal at budget {found[1]:g})")
        return "\n".join(lines)

    def _budget_rows(self) -> list[tuple[str, int, dict[str, Any]]]:
        """One entry per budget, in output order: its label, k, and each method's threshold."""
        rows: dict[tuple[Any, Any], tuple[str, int, dict[str, Any]]] = {}
        for r in self.summary:
            key = (r["budget"], r["budget_count"])
            if key not in rows:
                rows[key] = (budget_label(r["budget"], r["budget_count"]), int(r["k"]), {})
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

    def _diagnostics_lines(self, methods: list[str],
                           budget_rows: list[tuple[str, int, dict[str, Any]]] | None = None) -> list[str]:
        """alpha / eps per method at ``budget_rows`` (default: every budget), then the calibration."""
        d = self.diagnostics
        assert d is not None
        lines = [f"removal alpha = KL(p1||p) / preservation eps = KL(p2||p), nats (kappa = KL(p1||p2) = "
                 f"{d.kappa:.4g}; no removal: alpha {d.baseline.alpha:.4g}, eps {d.baseline.eps:.4g}):",
                 f"{'budget':>8} {'k':>10} " + " ".join(f"{m:>17}" for m in methods)]
        for label, k, _ in self._budget_rows() if budget_rows is None else budget_rows:
            cells = " ".join(f"{d.points[(m, k)].alpha:>8.4f}/{d.points[(m, k)].eps:<8.4f}" for m in methods)
            lines.append(f"{label:>8} {k:>10} {cells}")
        reach = ", ".join(f"{m} {'-' if b is None else format(b, 'g')}" for m, b in d.budget_for_target.items())
        lines.append(f"calibration: tolerating eps = {d.tolerated_eps:g} nats, the frontier reaches alpha = "
                     f"{d.alpha_max:.4g}; smallest budget reaching alpha >= {d.target_alpha:.4g}: {reach}")
        return lines


def _record(cfg: JobConfig, **values: Any) -> RunRecord:
    return RunRecord(config=dataclasses.asdict(cfg), forget_source=cfg.forget, retain_source=cfg.retain, **values)


def _inputs(spark: SparkSession, cfg: JobConfig, record: RunRecord) -> tuple[DataFrame, DataFrame]:
    """Both tables, prepared and checked; Delta tables are read at their current version,
    which ``record`` keeps for the ledger."""
    options = cfg.options()
    frames = []
    for domain, source in (("forget", cfg.forget), ("retain", cfg.retain)):
        version = delta_version(spark, source)
        setattr(record, f"{domain}_version", version)
        raw = read_source(spark, source, domain, version)
        frames.append(engine.prepare(raw, domain, options, check=domain == "forget" or cfg.check_retain_ids))
    return frames[0], frames[1]


def _base(spark: SparkSession, cfg: JobConfig, store: Store, record: RunRecord) -> incremental.Base | None:
    """The earlier run whose statistics this run can extend with the new rows' only, or None
    (the engine computes them in full; ``record`` says why)."""
    if cfg.text_col:  # the projection's IDF weights change with every added document
        record.statistics_note = "text input: the TF-IDF features depend on every document"
        log.debug("statistics: full pass (%s)", record.statistics_note)
        return None
    base, reason = incremental.find_base(spark, cfg, store, record)
    if base is None:
        if reason:
            log.debug("statistics: full pass (%s)", reason)
        record.statistics_note = reason
    return base


def _merged(spark: SparkSession, cfg: JobConfig, store: Store, base: incremental.Base,
            record: RunRecord) -> Statistics:
    """The statistics merged from ``base``'s and the new rows'."""
    merged = incremental.merged_statistics(spark, cfg, store, base, record)
    record.statistics_mode, record.base_run_id = "incremental", base.run_id
    record.statistics_note = ", ".join(f"{d}: {len(files)} new files" for d, files in base.new_files.items())
    note(f"incremental from run {base.run_id}: {record.statistics_note}")
    return merged


def run_pipeline(spark: SparkSession, cfg: JobConfig) -> RunReport:
    """The whole job (the ``run`` subcommand): statistics, scoring, selection, outputs."""
    cfg.check()
    store = Store(spark, cfg.output)
    store.check_folder()
    record = _record(cfg)
    store.check_free(cfg.run_id, cfg.takeover, record.started_at)  # and again as the run claims it
    timings: dict[str, float] = {}
    with Stage(timings, "read_check"):
        forget, retain = _inputs(spark, cfg, record)
    with Stage(timings, "incremental_check"):
        base = _base(spark, cfg, store, record)
    statistics = None
    if base is not None:  # else the engine computes them in its own "statistics" stage
        with Stage(timings, "statistics"):
            statistics = _merged(spark, cfg, store, base, record)
    result = engine.select_removal(spark, forget, retain, cfg.options(), statistics=statistics, prepared=True,
                                   timings=timings)
    with result:
        outputs = result.write(cfg.output, cfg.run_id, record, cfg.takeover)
        return RunReport.of(cfg.run_id, result, record, outputs)


def run_stats(spark: SparkSession, cfg: JobConfig) -> RunReport:
    """Compute and store the statistics of both tables (the ``stats`` subcommand)."""
    cfg.check()
    store = Store(spark, cfg.output)
    store.check_folder()
    options = cfg.options()
    record = _record(cfg)
    store.check_free(cfg.run_id, cfg.takeover, record.started_at)  # its statistics are a running run's
    report = RunReport(cfg.run_id)
    with Stage(report.timings, "read_check"):
        forget, retain = _inputs(spark, cfg, record)
    with Stage(report.timings, "statistics"):
        text = engine.text_model(forget, retain, options) if cfg.text_col else None
        if text:
            forget, retain = engine.featurize(text, forget, retain)
        statistics = engine.compute_statistics(forget, retain, options, text)
    report.n_forget, report.n_retain = statistics.forget.stats.n, statistics.retain.stats.n
    report.dim = statistics.forget.stats.dim
    store.check_writable(forget.schema["id"].dataType.simpleString())  # a later score must be able to write
    with Stage(report.timings, "write_statistics"):
        report.outputs = store.write_statistics(cfg.run_id, statistics, record)
    return report


def run_score(spark: SparkSession, cfg: JobConfig) -> RunReport:
    """Score and select with stored statistics (the ``score`` subcommand)."""
    cfg.check()
    store = Store(spark, cfg.output)
    options = cfg.options()
    stats_run = cfg.stats_run_id or cfg.run_id
    statistics = store.load_statistics(stats_run, options)
    record = _record(cfg, stats_run_id=stats_run, statistics_note=f"statistics of run {stats_run}")
    store.check_free(cfg.run_id, cfg.takeover, record.started_at)  # and again as the run claims it
    forget = read_source(spark, cfg.forget, "forget")
    retain = read_source(spark, cfg.retain, "retain")
    result = engine.select_removal(spark, forget, retain, options, statistics=statistics)
    with result:
        outputs = result.write(cfg.output, cfg.run_id, record, cfg.takeover)
        return RunReport.of(cfg.run_id, result, record, outputs)
