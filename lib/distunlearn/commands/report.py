"""One self-contained HTML page per run: the evidence for choosing a budget.

Figures (matplotlib, embedded as base64 PNG, so the file can be mailed or archived alone):

1. score histograms, forget vs retain, per method -- scored on a seeded sample of each table
   (``--report-sample-rows`` rows at most) with the run's own statistics and options;
2. removal alpha = KL(p1||p) and preservation eps = KL(p2||p) against the budget, per method,
   with kappa and the no-removal values marked (from the ``diagnostics`` table);
3. the (alpha, eps) plane: every method's points and the shared-covariance frontier
   eps*(alpha) = (sqrt(alpha) - sqrt(kappa))_+^2, with the tolerated eps;
4. when ``distunlearn evaluate`` has run: forget recall and retain accuracy against the budget,
   and the budget-to-halve table.

Missing inputs (no evaluation yet) leave their section out with a sentence saying how to get
it; a run id without a ``runs`` row is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from distunlearn import engine
from distunlearn.commands.config import JobConfig
from distunlearn.errors import InputError
from distunlearn.options import Options
from distunlearn.report.page import ReportData, render
from distunlearn.store import tables
from distunlearn.store.output import Store
from distunlearn.store.sources import read_source
from distunlearn.transforms.score import METHOD, SCORE, score_forget

log = logging.getLogger(__name__)


def _sample_scores(spark: SparkSession, store: Store, run: dict[str, Any], options: Options,
                   rows: int) -> dict[str, dict[str, np.ndarray]]:
    """Scores of a seeded sample of each table, with the model the run used."""
    stats_run = run["stats_run_id"] or run["run_id"]
    statistics = store.load_statistics(stats_run, options)
    f_stats, r_stats = statistics.forget.stats, statistics.retain.stats
    model = engine.build_model(options, f_stats, r_stats, statistics.text)
    methods, seed = options.scoring.methods, options.scoring.seed
    out: dict[str, dict[str, np.ndarray]] = {}
    for domain, source, n in (("forget", run["forget_source"], f_stats.n), ("retain", run["retain_source"], r_stats.n)):
        df = engine.prepare(read_source(spark, source, domain), domain, options, check=False)
        if n > rows:
            df = df.sample(fraction=min(1.0, 1.2 * rows / n), seed=seed).limit(rows)
        if statistics.text:
            (df,) = engine.featurize(statistics.text, df)
        scores, wide = score_forget(df, model, methods, seed, options.selection.selection)
        try:
            collected = scores.select(METHOD, SCORE).collect()
        finally:
            wide.unpersist()
        out[domain] = {m: np.array([r[SCORE] for r in collected if r[METHOD] == m]) for m in methods}
    return out


def collect(spark: SparkSession, cfg: JobConfig, sample_rows: int = 5000) -> ReportData:
    """Read the run's tables under ``cfg.output`` (as of the versions its ledger row names)
    and score a sample for the histograms."""
    store = Store(spark, cfg.output)
    store.check_folder()
    run = store.run(cfg.run_id)
    if run is None:
        raise InputError(f"run {cfg.run_id!r} has no row in {store.path(tables.RUNS)!r}; "
                         "run `distunlearn run` first")
    options = store.options(run)
    data = ReportData(cfg.run_id, run, diagnostics=store.rows(tables.DIAGNOSTICS, cfg.run_id),
                      calibration=store.rows(tables.CALIBRATION, cfg.run_id),
                      evaluation=store.rows(tables.EVALUATION, cfg.run_id),
                      evaluation_summary=store.rows(tables.EVALUATION_SUMMARY, cfg.run_id),
                      groups=store.rows(tables.GROUP_DIAGNOSTICS, cfg.run_id),
                      evaluation_groups=store.rows(tables.EVALUATION_GROUPS, cfg.run_id))
    data.scores = _sample_scores(spark, store, run, options, sample_rows)
    return data


def write_report(spark: SparkSession, cfg: JobConfig, html_path: str, sample_rows: int = 5000) -> Path:
    """Collect, render and write the page; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    page = render(collect(spark, cfg, sample_rows))
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    log.info("report of run %s: %s (%d kB)", cfg.run_id, path, len(page) // 1024)
    return path
