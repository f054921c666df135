"""Downstream evaluation: does a removal set make a model forget the unwanted domain?

For one run id and each (method, budget) of its removal sets, a classifier is trained on the
edited data ``retain_train ∪ (forget_train \\ R)`` and measured on held-out rows of both
domains; a baseline with no removal (method ``none``, budget 0, k 0) is trained too.

Held-out split (both domains, the same rule)
    ``heldout = pmod(xxhash64(seed, 'holdout', id), 10000) < round(holdout_fraction * 10000)``
    in Spark SQL.  It depends only on the seed and the id (not on partitioning), and a
    held-out row is never trained on, whether or not it is in a removal set.  The constant
    ``'holdout'`` salts the hash: the ``random`` method ranks rows by ``xxhash64(seed, id)``,
    and an unsalted split would be a function of the very number that decides the removal
    order.

Labels
    * domain mode (no ``label_col``): a binary domain classifier, forget = 1, retain = 0;
      the forget class is 1.
    * label mode (``label_col`` in both tables, a non-negative integer class such as a
      digit): a multinomial classifier over ``K = max label + 1`` classes (declared in the
      label column's ML metadata, so every model has K probabilities even when a class has
      no training row left); the forget class is the most frequent label of the forget
      table (ties: the smallest).

Metrics, on the valid held-out rows of one fit (``p`` = predicted class, ``y`` = label):
    forget_recall    = mean over held-out forget rows of [p == forget class]
    forget_accuracy  = mean over held-out forget rows of [p == y]   (domain mode: = recall)
    retain_accuracy  = mean over held-out retain rows of [p == y]   (domain mode: p == 0)
    retain_log_loss  = mean over held-out retain rows of -ln max(P(y | x), 1e-15)

A training set with one class left (domain mode at budget 1.0: no forget row left) is not
given to Spark: its LogisticRegression (4.0.1), with the label metadata declaring 2 classes
and every label 0, returns a binomial model with intercept +inf that predicts class 1 for
every row (measured: forget_recall 1.0, retain_accuracy 0.0).  :func:`fit_model` instead
returns a :class:`ConstantModel` that predicts the only class with probability 1, which is
the maximum-likelihood model of such data.

Groups (``--group-col``; :mod:`distunlearn.core.groups`)
    Both tables are read with their group column(s) (one string per row, see
    :func:`~distunlearn.transforms.prepare.group_column`); a null group value is an InputError.  For every
    fit the held-out rows are scored per group, in the same aggregation as the metrics above
    (grouped by domain and group; the all-rows values are summed from the same rows):
    n_test_retain, retain_accuracy (mean of [p == y] over the group's held-out retain rows),
    n_test_forget and forget_recall (mean of [p == forget class] over its held-out forget
    rows); a metric is null when the group has no such held-out row.  Only groups with a
    held-out row appear (the held-out rows are the same for every fit).  The report
    (:meth:`EvaluationReport.table`) shows per fit and weighting the worst and the best
    group's retain_accuracy and the gap between them (:func:`group_gap`).

Reweighting (``--reweight``, needs ``--group-col``; their REWEIGHT)
    Every fit but the baseline is trained a second time with per-row weights (Spark's
    ``weightCol``): a retain row of group g weighs :func:`distunlearn.core.groups.sample_weight`
    ``(n2_g, r_g) = (n2_g + r_g) / n2_g``, where n2_g is the group's *training* (not held-out)
    retain rows and r_g its training forget rows the fit's removal set takes (held-out rows
    of the set are never trained on, so they do not count); kept forget rows weigh 1.  The
    counts come from one small aggregation of the training rows per fit.  When every weight
    is 1 (the baseline, nothing removed; a set that takes no training row) or the training set
    holds one class (the :class:`ConstantModel` ignores weights), the weighted fit would be
    the unweighted one and its rows are copied instead of refitted.  Weighted fits are
    reported in ``evaluation_groups`` only (weighting "reweight"); ``evaluation`` and
    ``evaluation_summary`` hold the unweighted fits.

Budget to halve (per method, metric forget_recall): :func:`budget_to_halve`, the first
budget where the metric falls to half the baseline, interpolated linearly.

Cost: the forget table is joined once with the run's removal-set membership (read through
the store, :meth:`distunlearn.store.output.Store.members`; one column per method: the array
of the k values whose removal set holds the row; the set of budget k is exactly the rows
whose array contains k, whether or not the sets of a method are nested -- with
``--group-budget stratified`` they need not be), unioned with the retain table and
persisted; every fit is a filter of that frame (no further join or shuffle), and no training
row is collected to the driver.  One more small aggregation over the removal sets counts
their distinct ids per method (the check that every id is in the forget table).  Number of
fits: 1 + methods x budgets, and with ``--reweight`` up to methods x budgets more.

Output tables under ``output`` (Delta, unpartitioned, rerunning a run id replaces its rows):

``evaluation``
    run_id, method, budget, budget_count, k, n_train, n_test_forget, n_test_retain,
    forget_recall, forget_accuracy, retain_accuracy, retain_log_loss
``evaluation_summary``
    run_id, method, metric ("forget_recall"), baseline, budget_to_halve (null: never reached)
``evaluation_groups`` (only with ``--group-col``)
    run_id, method, budget, budget_count, k, weighting ("none" or "reweight"), group (NULL:
    all held-out rows), n_train, n_test_retain, retain_accuracy, n_test_forget, forget_recall;
    per fit and weighting one row per group plus the all-rows row.  The baseline's
    "reweight" rows repeat its "none" rows (nothing removed: every weight is 1).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml.classification import LogisticRegressionModel
from pyspark.sql import DataFrame, SparkSession

from distunlearn.commands.config import JobConfig
from distunlearn.core.budgets import budget_label
from distunlearn.core.evaluation import BASELINE_METHOD, HALVE_METRIC, REWEIGHT, UNWEIGHTED, group_gap, summarize
from distunlearn.errors import ConfigError, InputError
from distunlearn.options import Evaluation
from distunlearn.store.output import Store
from distunlearn.store.sources import read_source
from distunlearn.transforms.evaluation import WEIGHT, EvalData, Fit, evaluation_data, weight_column
from distunlearn.transforms.fitting import ConstantModel, fit_model, score_model

log = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """Rows of the ``evaluation``, ``evaluation_summary`` and (with groups)
    ``evaluation_groups`` tables of one run."""

    run_id: str
    mode: str = "domain"
    forget_class: int = 1
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # empty without group columns
    timings: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """Per method one line per budget (forget_recall, retain_accuracy), then the budget
        that halves forget_recall; with group rows, per fit and weighting the worst and best
        group's retain_accuracy and the gap (:func:`group_gap`)."""
        lines = [f"run {self.run_id}: {self.mode} mode, forget class {self.forget_class}"]
        base = next((r for r in self.rows if r["method"] == BASELINE_METHOD), None)
        if base is not None:
            lines.append(f"baseline (no removal): forget_recall={_fmt(base['forget_recall'])} "
                         f"retain_accuracy={_fmt(base['retain_accuracy'])} n_train={base['n_train']}")
        halve = {s["method"]: s["budget_to_halve"] for s in self.summary}
        for method in dict.fromkeys(r["method"] for r in self.rows if r["method"] != BASELINE_METHOD):
            lines.append(f"{method}:")
            lines.append(f"  {'budget':>8} {'k':>8} {'forget_recall':>14} {'retain_accuracy':>16}")
            for r in sorted((r for r in self.rows if r["method"] == method), key=lambda r: r["budget"]):
                label = budget_label(r["budget"], r["budget_count"])
                lines.append(f"  {label:>8} {r['k']:>8} {_fmt(r['forget_recall']):>14} "
                             f"{_fmt(r['retain_accuracy']):>16}")
            h = halve.get(method)
            lines.append(f"  budget to halve {HALVE_METRIC}: {'not reached' if h is None else format(h, '.3f')}")
        if self.groups:
            lines.extend(self._group_lines())
        if self.timings:
            lines.append("timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in self.timings.items()))
        return "\n".join(lines)

    def _group_lines(self) -> list[str]:
        by_fit: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in self.groups:
            by_fit.setdefault((r["method"], r["budget"], r["budget_count"], r["k"], r["weighting"]), []).append(r)
        lines = ["groups: held-out retain_accuracy of the worst and the best group, gap = best - worst",
                 f"  {'method':<12} {'budget':>8} {'weighting':>9} {'worst':>22} {'best':>22} {'gap':>8}"]
        for (method, budget, count, _, weighting), rows in by_fit.items():
            worst_group, worst, best_group, best, gap = group_gap(rows)
            label = budget_label(budget, count)
            lines.append(f"  {method:<12} {label:>8} {weighting:>9} {_named(worst_group, worst):>22} "
                         f"{_named(best_group, best):>22} {_fmt(gap):>8}")
        return lines


def _fmt(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4f}"


def _named(group: str | None, value: float | None) -> str:
    if group is None:
        return "-"
    shown = group if len(group) <= 14 else group[:13] + "~"
    return f"{shown} {_fmt(value)}"


def _fits(rows: list[dict[str, Any]], opts: Evaluation, run_id: str) -> list[Fit]:
    """The (method, budget) fits of a run's budgets rows, restricted to ``opts.budgets``."""
    fits = sorted({Fit(r["method"], float(r["budget"]), r["budget_count"], int(r["k"])) for r in rows},
                  key=lambda f: (f.method, f.budget, f.k))
    if opts.budgets:
        run_budgets = sorted({f.budget for f in fits})
        for b in opts.budgets:
            if not any(abs(b - rb) < 1e-9 for rb in run_budgets):
                raise InputError(f"eval budget {b:g} is not a budget of run {run_id!r} "
                                 f"({', '.join(f'{x:g}' for x in run_budgets)})")
        fits = [f for f in fits if any(abs(f.budget - b) < 1e-9 for b in opts.budgets)]
    return fits


def prepare_evaluation(spark: SparkSession, cfg: JobConfig, opts: Evaluation) -> EvalData:
    """The evaluation frame of run ``cfg.run_id``: its sources (those the run recorded when
    ``cfg.forget``/``cfg.retain`` are empty) and its removal sets, checked
    (:func:`distunlearn.transforms.evaluation.evaluation_data`)."""
    store = Store(spark, cfg.output)
    run = store.run(cfg.run_id)
    forget, retain = cfg.forget, cfg.retain
    if not (forget and retain):
        if run is None:
            missing = "forget" if not forget else "retain"
            raise ConfigError(f"missing option --{missing}: run {cfg.run_id!r} has no row in "
                              f"{store.path('runs')!r} recording it")
        forget, retain = forget or run["forget_source"], retain or run["retain_source"]
    rows, members = store.members(cfg.run_id)
    fits = _fits(rows, opts, cfg.run_id)
    return evaluation_data(read_source(spark, forget, "forget"), read_source(spark, retain, "retain"), members, fits,
                           opts, cfg.options().columns, cfg.seed, cfg.run_id)


def run_evaluation(spark: SparkSession, cfg: JobConfig, opts: Evaluation | None = None) -> EvaluationReport:
    """The ``evaluate`` subcommand: one fit per (method, budget) plus the baseline (and with
    ``reweight`` a weighted fit of each), then the ``evaluation``, ``evaluation_summary`` and,
    with group columns, ``evaluation_groups`` tables of ``cfg.run_id`` (replaced on rerun).

    ``opts`` defaults to :meth:`JobConfig.evaluation`.  Sources default to those the run
    recorded in ``runs`` when ``cfg.forget``/``cfg.retain`` are empty.  Every check happens
    before the first fit; nothing is written unless every fit succeeded.
    """
    cfg.check(required=("output", "run_id"))
    opts = (opts or cfg.evaluation()).check()
    report = EvaluationReport(cfg.run_id)
    start = time.monotonic()
    data = prepare_evaluation(spark, cfg, opts)
    report.timings["prepare"] = time.monotonic() - start
    report.mode = "label" if data.label_mode else "domain"
    report.forget_class = data.forget_class
    try:
        fits = [Fit(BASELINE_METHOD, 0.0, None, 0), *data.fits]
        fit_start = time.monotonic()
        for i, fit in enumerate(fits, 1):
            t0 = time.monotonic()
            train = data.train_frame(fit.method, fit.k)
            model, counts = fit_model(train, opts, data.num_classes)
            n_train = sum(counts.values())
            metrics, group_rows = score_model(model, data)
            key = {"run_id": cfg.run_id, "method": fit.method, "budget": fit.budget,
                   "budget_count": fit.budget_count, "k": fit.k, "n_train": n_train}
            report.rows.append({**key, **metrics})
            report.groups.extend({**key, "weighting": UNWEIGHTED, **g} for g in group_rows)
            log.info("fit %d/%d %s budget %g (k=%d): %d training rows, forget_recall %.4f, retain_accuracy "
                     "%.4f in %.1f s", i, len(fits), fit.method, fit.budget, fit.k, n_train,
                     metrics["forget_recall"], metrics["retain_accuracy"], time.monotonic() - t0)
            if opts.reweight:
                t0 = time.monotonic()
                weighted = _reweighted(data, fit, train, model, opts)
                rows = group_rows if weighted is None else score_model(weighted, data)[1]
                report.groups.extend({**key, "weighting": REWEIGHT, **g} for g in rows)
                same = " (weights change nothing: the unweighted fit)" if weighted is None else ""
                log.info("fit %d/%d %s budget %g (k=%d) reweighted: retain_accuracy %.4f%s in %.1f s", i, len(fits),
                         fit.method, fit.budget, fit.k, rows[0]["retain_accuracy"], same, time.monotonic() - t0)
        report.timings["fits"] = time.monotonic() - fit_start
    finally:
        data.release()
    report.summary = summarize(report.rows, cfg.run_id)
    t0 = time.monotonic()
    Store(spark, cfg.output).write_evaluation(cfg.run_id, report.rows, report.summary, report.groups)
    log.info("evaluation of run %s written: %s", cfg.run_id, json.dumps(report.summary))
    report.timings["write"] = time.monotonic() - t0
    return report


def _reweighted(data: EvalData, fit: Fit, train: DataFrame, model: LogisticRegressionModel | ConstantModel,
                opts: Evaluation) -> LogisticRegressionModel | ConstantModel | None:
    """The weighted refit of ``fit`` (module docstring, "Reweighting"), or None when it would
    equal the unweighted ``model`` (baseline, every weight 1, or one class left)."""
    if fit.method == BASELINE_METHOD or fit.k == 0 or isinstance(model, ConstantModel):
        return None
    weights = data.retain_weights(fit.method, fit.k)
    if all(w is None or w == 1.0 for w in weights.values()):
        return None
    log.info("%s k=%d: retain weights %s", fit.method, fit.k,
             json.dumps({g: w for g, w in sorted(weights.items()) if w is not None and w != 1.0})[:400])
    weighted, _ = fit_model(train.withColumn(WEIGHT, weight_column(weights)), opts, data.num_classes, WEIGHT)
    return weighted
