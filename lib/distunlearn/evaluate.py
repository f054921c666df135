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

Groups (``--group-col``; :mod:`distunlearn.groups`)
    Both tables are read with their group column(s) (one string per row, see
    :func:`~distunlearn.prepare.group_column`); a null group value is an InputError.  For every
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
    ``weightCol``): a retain row of group g weighs :func:`distunlearn.groups.sample_weight`
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

Cost: the forget table is joined once with the run's removal-set membership (one column per
method: the array of the k values whose removal set holds the row; the set of budget k is
exactly the rows whose array contains k, whether or not the sets of a method are nested --
with ``--group-budget stratified`` they need not be), unioned with the retain table and
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distunlearn.budgets import budget_label
from distunlearn.errors import ConfigError, InputError

if TYPE_CHECKING:
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.sql import Column, DataFrame, SparkSession

    from distunlearn.config import JobConfig

log = logging.getLogger(__name__)

BASELINE_METHOD = "none"
HALVE_METRIC = "forget_recall"
LOG_LOSS_CLIP = 1e-15
HASH_BUCKETS = 10_000
HOLDOUT_SALT = "holdout"
UNWEIGHTED = "none"
REWEIGHT = "reweight"

#: Output table of the per-group metrics (with ``--group-col``), under ``output``.
EVALUATION_GROUPS = "evaluation_groups"

# columns of the persisted evaluation frame
LABEL = "label"
DOMAIN = "domain"  # 1 forget, 0 retain
HELDOUT = "heldout"
VALID = "valid"
DIM = "dim"
VECTOR = "vector"
GROUP = "group"  # = distunlearn.prepare.GROUP (not imported here: prepare imports pyspark)
NULL_GROUP = "_null_group"  # the first group column that is null in the row, else null
WEIGHT = "_weight"  # the sample weight of a reweighted fit

EVALUATION_SCHEMA = (
    "run_id string, method string, budget double, budget_count long, k long, n_train long, "
    "n_test_forget long, n_test_retain long, forget_recall double, forget_accuracy double, "
    "retain_accuracy double, retain_log_loss double"
)
SUMMARY_SCHEMA = "run_id string, method string, metric string, baseline double, budget_to_halve double"
GROUPS_SCHEMA = (
    "run_id string, method string, budget double, budget_count long, k long, weighting string, group string, "
    "n_train long, n_test_retain long, retain_accuracy double, n_test_forget long, forget_recall double"
)


# ---------------------------------------------------------------------- pure Python
def budget_to_halve(budgets: Sequence[float], values: Sequence[float | None],
                    baseline: float | None) -> float | None:
    """The smallest budget at which ``values`` falls to ``<= baseline / 2``.

    The curve is the point ``(0, baseline)`` followed by ``(budgets[i], values[i])`` in
    increasing budget order; between consecutive points it is linear, so the crossing of
    ``target = baseline / 2`` on the segment (b0, v0) -> (b1, v1) with ``v0 > target >= v1``
    is ``b0 + (v0 - target) / (v0 - v1) * (b1 - b0)``.  The first crossing is returned
    (non-monotone curves), ``0.0`` when the baseline itself is ``<= 0`` (nothing to halve),
    and None when the curve never reaches the target or the baseline is missing.  Points
    whose value is None or NaN are skipped.
    """
    if len(budgets) != len(values):
        raise ValueError(f"budgets and values differ in length ({len(budgets)} vs {len(values)})")
    if baseline is None or math.isnan(baseline):
        return None
    target = baseline / 2
    if baseline <= target:  # baseline <= 0
        return 0.0
    prev_b, prev_v = 0.0, float(baseline)
    for b, v in sorted(((float(b), v) for b, v in zip(budgets, values, strict=True)), key=lambda p: p[0]):
        if v is None or math.isnan(v):
            continue
        if v <= target:  # prev_v > target >= v, so prev_v != v
            return prev_b + (prev_v - target) / (prev_v - v) * (b - prev_b)
        prev_b, prev_v = b, float(v)
    return None


GroupGap = tuple[str | None, float | None, str | None, float | None, float | None]


def group_gap(rows: Sequence[Mapping[str, Any]]) -> GroupGap:
    """``(worst_group, worst, best_group, best, gap)`` of the ``retain_accuracy`` of ``rows``
    (the group rows of one fit and weighting): the lowest and the highest accuracy, the groups
    that have them (ties: the smallest group name) and ``gap = best - worst``.  Rows without a
    group (the all-rows row) or without an accuracy (no held-out retain row) are left out; all
    five are None when no row is left."""
    scored = [(str(r["group"]), float(r["retain_accuracy"])) for r in rows
              if r.get("group") is not None and r.get("retain_accuracy") is not None
              and not math.isnan(r["retain_accuracy"])]
    if not scored:
        return None, None, None, None, None
    worst_group, worst = min(scored, key=lambda p: (p[1], p[0]))
    best_group, best = min(scored, key=lambda p: (-p[1], p[0]))
    return worst_group, worst, best_group, best, best - worst


# ---------------------------------------------------------------------- options and report
@dataclass(frozen=True)
class EvalOptions:
    """Evaluation settings (JobConfig fields of the same names, see :meth:`from_config`).

    ``label_col`` empty = domain mode; ``budgets`` empty = every budget of the run;
    ``group_cols`` empty = no group metrics (``reweight`` needs them).
    """

    label_col: str = ""
    holdout_fraction: float = 0.2
    budgets: tuple[float, ...] = ()
    reg_param: float = 1e-3
    max_iter: int = 100
    group_cols: tuple[str, ...] = ()
    reweight: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> EvalOptions:
        """Read ``label_col``, ``holdout_fraction``, ``eval_budgets``, ``eval_reg_param``,
        ``eval_max_iter``, ``group_col`` and ``reweight`` from ``cfg``; absent fields keep the
        defaults above."""
        d = cls()
        return cls(label_col=getattr(cfg, "label_col", d.label_col),
                   holdout_fraction=getattr(cfg, "holdout_fraction", d.holdout_fraction),
                   budgets=tuple(getattr(cfg, "eval_budgets", d.budgets)),
                   reg_param=getattr(cfg, "eval_reg_param", d.reg_param),
                   max_iter=getattr(cfg, "eval_max_iter", d.max_iter),
                   group_cols=tuple(getattr(cfg, "group_col", d.group_cols)),
                   reweight=bool(getattr(cfg, "reweight", d.reweight)))

    def check(self) -> EvalOptions:
        """ConfigError for values outside their range; returns self."""
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if round(self.holdout_fraction * HASH_BUCKETS) < 1:
            raise ConfigError(f"holdout_fraction {self.holdout_fraction} is below 1/{HASH_BUCKETS}")
        if not self.reg_param >= 0:
            raise ConfigError(f"eval_reg_param must be >= 0, got {self.reg_param}")
        if self.max_iter < 1:
            raise ConfigError(f"eval_max_iter must be at least 1, got {self.max_iter}")
        for b in self.budgets:
            if not 0 < b <= 1:
                raise ConfigError(f"eval budget {b} must be in (0, 1]")
        if self.reweight and not self.group_cols:
            raise ConfigError("reweight needs --group-col")
        return self


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


@dataclass(frozen=True)
class Fit:
    """One (method, budget) to train: the removal set of size ``k`` of the method is removed."""

    method: str
    budget: float
    budget_count: int | None
    k: int


# ---------------------------------------------------------------------- Spark side
def _holdout(seed: int, fraction: float) -> Any:
    """The held-out flag (module docstring): a salted, seeded hash of the id."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.lit(seed), F.lit(HOLDOUT_SALT), F.col("id")),
                  F.lit(HASH_BUCKETS)) < F.lit(round(fraction * HASH_BUCKETS))


def _sources(spark: SparkSession, cfg: JobConfig) -> tuple[str, str]:
    """``cfg.forget``/``cfg.retain``, or when empty the sources the run recorded in ``runs``."""
    from distunlearn import io

    forget, retain = cfg.forget, cfg.retain
    if forget and retain:
        return forget, retain
    path = io.table_path(cfg.output, io.RUNS)
    rows = (spark.read.format("delta").load(path).where(f"run_id = '{cfg.run_id}'")
            .select("forget_source", "retain_source").collect() if io.exists(spark, path) else [])
    if not rows:
        missing = "forget" if not forget else "retain"
        raise ConfigError(f"missing option --{missing}: run {cfg.run_id!r} has no row in {path!r} recording it")
    return forget or rows[0]["forget_source"], retain or rows[0]["retain_source"]


def _read_domain(spark: SparkSession, cfg: JobConfig, source: str, domain: str, label_col: str,
                 group_cols: tuple[str, ...] = ()) -> DataFrame:
    """DataFrame[id, features array, label(, group, _null_group)] of one input table (the id,
    feature and group columns checked and typed by :func:`~distunlearn.prepare.normalize`, the
    label carried along; ``_null_group`` names the first group column that is null in the row)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from distunlearn import io
    from distunlearn.prepare import FEATURES, ID, normalize

    raw = io.read_source(spark, source, domain)
    keep: tuple[str, ...] = ()
    if label_col:
        names = {f.name: f for f in raw.schema.fields}
        if label_col not in names:
            raise InputError(f"{domain} table has no label column {label_col!r} (columns: {', '.join(names)})")
        ltype = names[label_col].dataType
        if not isinstance(ltype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
            raise InputError(f"label column {label_col!r} of the {domain} table must be an integer class, "
                             f"got {ltype.simpleString()}")
        keep = (label_col,)
    table = normalize(raw, cfg.id_col, cfg.feature_col, domain, keep=keep, group_cols=group_cols)
    group: list[str] = []
    if group_cols:  # normalize has checked that every group column exists
        first_null = F.coalesce(*[F.when(F.col(c).isNull(), F.lit(c)) for c in group_cols])
        table = normalize(raw.withColumn(NULL_GROUP, first_null), cfg.id_col, cfg.feature_col, domain,
                          keep=(*keep, NULL_GROUP), group_cols=group_cols)
        group = [GROUP, NULL_GROUP]
    label = F.col(label_col).cast("double") if label_col else F.lit(1.0 if domain == "forget" else 0.0)
    return table.select(ID, FEATURES, label.alias(LABEL), *group)


def _finite(features: Any) -> Any:
    from pyspark.sql import functions as F

    bad = F.exists(features, lambda x: x.isNull() | F.isnan(x) | x.isin(float("inf"), float("-inf")))
    return features.isNotNull() & ~bad


@dataclass
class EvalData:
    """The persisted evaluation frame of a run and what the fits need.

    ``frame`` columns: id, vector (ML vector), label (double, with nominal ML metadata of
    ``num_classes`` values), domain (1 forget, 0 retain), heldout, ``sets_<method>`` (for a
    forget row, the k values whose removal set of the method holds it, null if none; null
    for a retain row) and, with group columns, group (string, never null); only valid rows
    (finite features) are kept.
    """

    frame: DataFrame
    fits: list[Fit]
    methods: tuple[str, ...]
    num_classes: int
    forget_class: int
    n_test_forget: int
    n_test_retain: int
    label_mode: bool
    cached: DataFrame  # the persisted frame ``frame`` filters; unpersisted by release()
    grouped: bool = False

    def removed(self, method: str, k: int) -> Column:
        """True for the rows of R(method, k), the removal set of size k (never null)."""
        from pyspark.sql import functions as F

        if method == BASELINE_METHOD or k == 0:
            return F.lit(False)
        member = F.array_contains(F.col(_sets_col(method)), F.lit(k).cast("long"))
        return (F.col(DOMAIN) == 1) & F.coalesce(member, F.lit(False))

    def train_frame(self, method: str, k: int) -> DataFrame:
        """retain_train ∪ (forget_train \\ R(method, k)); ``method`` ``none`` removes nothing."""
        from pyspark.sql import functions as F

        train = self.frame.where(~F.col(HELDOUT))
        if method == BASELINE_METHOD or k == 0:
            return train
        return train.where(~self.removed(method, k))

    def test_frame(self) -> DataFrame:
        from pyspark.sql import functions as F

        return self.frame.where(F.col(HELDOUT))

    def retain_weights(self, method: str, k: int) -> dict[str, float | None]:
        """Per group of the training rows, :func:`distunlearn.groups.sample_weight` of its
        training retain rows n2_g and its training forget rows removed by R(method, k), r_g
        (one small aggregation of the training rows)."""
        from pyspark.sql import functions as F

        from distunlearn.groups import sample_weight

        if not self.grouped:
            raise ValueError("retain weights need group columns")
        rows = (self.frame.where(~F.col(HELDOUT)).groupBy(GROUP)
                .agg(F.sum((F.col(DOMAIN) == 0).cast("long")).alias("n2"),
                     F.sum(self.removed(method, k).cast("long")).alias("r")).collect())
        weights = {r[GROUP]: sample_weight(int(r["n2"]), int(r["r"])) for r in rows}
        lost = sorted(g for g, w in weights.items() if w is None)
        if lost:
            log.warning("%s k=%d: groups %s lose rows but have no training retain row to re-weight",
                        method, k, ", ".join(map(repr, lost)))
        return weights

    def release(self) -> None:
        self.cached.unpersist()


def weight_column(weights: Mapping[str, float | None]) -> Column:
    """The sample weight of a row: ``weights[group]`` for a retain row (1.0 when the group is
    missing or its weight is None), 1.0 for a forget row."""
    from pyspark.sql import functions as F

    items = sorted((g, float(w)) for g, w in weights.items() if w is not None and w != 1.0)
    if not items:
        return F.lit(1.0)
    table = F.create_map(*[x for g, w in items for x in (F.lit(g), F.lit(w))])
    retain = F.coalesce(F.try_element_at(table, F.col(GROUP)), F.lit(1.0))
    return F.when(F.col(DOMAIN) == 0, retain).otherwise(F.lit(1.0))


def _sets_col(method: str) -> str:
    return f"sets_{method}"


def _plan_fits(spark: SparkSession, cfg: JobConfig, opts: EvalOptions) -> tuple[DataFrame, list[Fit]]:
    """The run's removal_sets rows and the (method, budget) fits, restricted to opts.budgets."""
    from distunlearn import io

    path = io.table_path(cfg.output, io.REMOVAL_SETS)
    if not io.exists(spark, path):
        raise InputError(f"no removal sets for run {cfg.run_id!r}: no Delta table at {path!r}")
    sets = spark.read.format("delta").load(path).where(f"run_id = '{cfg.run_id}'")
    keys = sets.select("method", "budget", "budget_count", "k").distinct().collect()
    if not keys:
        raise InputError(f"no removal sets for run {cfg.run_id!r} in {path!r}")
    fits = sorted((Fit(r["method"], float(r["budget"]), r["budget_count"], int(r["k"])) for r in keys),
                  key=lambda f: (f.method, f.budget, f.k))
    if opts.budgets:
        run_budgets = sorted({f.budget for f in fits})
        for b in opts.budgets:
            if not any(abs(b - rb) < 1e-9 for rb in run_budgets):
                raise InputError(f"eval budget {b:g} is not a budget of run {cfg.run_id!r} "
                                 f"({', '.join(f'{x:g}' for x in run_budgets)})")
        fits = [f for f in fits if any(abs(f.budget - b) < 1e-9 for b in opts.budgets)]
    return sets, fits


def prepare_evaluation(spark: SparkSession, cfg: JobConfig, opts: EvalOptions) -> EvalData:
    """Check everything and build the persisted evaluation frame (InputError/ConfigError on
    bad input; nothing is written).  One pass over the joined data validates it: dimensions,
    non-finite features, null or negative labels, null group values, removal-set ids absent
    from the forget table (against a count of the sets' distinct ids), empty held-out or
    training sets."""
    from pyspark import StorageLevel
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from distunlearn.prepare import FEATURES, ID

    opts.check()
    sets, fits = _plan_fits(spark, cfg, opts)
    methods = tuple(dict.fromkeys(f.method for f in fits))
    forget_src, retain_src = _sources(spark, cfg)
    forget = _read_domain(spark, cfg, forget_src, "forget", opts.label_col, opts.group_cols)
    retain = _read_domain(spark, cfg, retain_src, "retain", opts.label_col, opts.group_cols)
    if forget.schema[ID].dataType != retain.schema[ID].dataType:
        raise InputError(f"id column {cfg.id_col!r} is {forget.schema[ID].dataType.simpleString()} in the forget "
                         f"table and {retain.schema[ID].dataType.simpleString()} in the retain table")

    # One column per method: the k values whose removal set holds the id (the set of budget k
    # is exactly the rows whose array contains k; the sets need not be nested).
    ks = sorted({f.k for f in fits if f.k > 0})
    chosen = sets.where(F.col("method").isin(*methods) & F.col("k").isin(*ks)) if ks else sets.limit(0)
    members = chosen.groupBy(ID).pivot("method", list(methods)).agg(F.collect_set(F.col("k").cast("long")))
    members = members.select(ID, *[F.when(F.size(F.col(m)) > 0, F.col(m)).alias(_sets_col(m)) for m in methods])
    distinct = chosen.groupBy("method").agg(F.countDistinct(ID).alias("n")).collect()
    n_ids = {r["method"]: int(r["n"]) for r in distinct}
    forget = forget.join(members, ID, "left").withColumn(DOMAIN, F.lit(1))
    retain = retain.select("*", *[F.lit(None).cast("array<long>").alias(_sets_col(m)) for m in methods],
                           F.lit(0).alias(DOMAIN))
    group = [GROUP, NULL_GROUP] if opts.group_cols else []
    data = forget.unionByName(retain).select(
        ID, LABEL, DOMAIN, *[_sets_col(m) for m in methods], *group,
        _holdout(cfg.seed, opts.holdout_fraction).alias(HELDOUT),
        _finite(F.col(FEATURES)).alias(VALID),
        F.size(FEATURES).alias(DIM),
        array_to_vector(F.col(FEATURES)).alias(VECTOR))
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _check_data(data, cfg, opts, fits, methods, n_ids)
    except BaseException:
        data.unpersist()
        raise


def _check_data(data: DataFrame, cfg: JobConfig, opts: EvalOptions, fits: list[Fit],
                methods: tuple[str, ...], n_ids: Mapping[str, int]) -> EvalData:
    """The validation pass (one small aggregation of the persisted frame); ``n_ids``: the
    distinct ids of each method's evaluated removal sets."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("n"), F.min(DIM).alias("dmin"), F.max(DIM).alias("dmax"),
            *[F.count(_sets_col(m)).alias(_sets_col(m)) for m in methods]]
    if opts.group_cols:
        aggs += [F.count(NULL_GROUP).alias("null_groups"), F.min(NULL_GROUP).alias(NULL_GROUP)]
    groups = data.groupBy(DOMAIN, HELDOUT, VALID, LABEL).agg(*aggs).collect()
    name = {1: "forget", 0: "retain"}
    if opts.group_cols:
        for d in (1, 0):
            nulls = [g for g in groups if g[DOMAIN] == d and g["null_groups"]]
            if nulls:
                column = min(g[NULL_GROUP] for g in nulls)
                raise InputError(f"group column {column!r} of the {name[d]} table has null values "
                                 f"({sum(g['null_groups'] for g in nulls)} rows with a null group column)")
    invalid = {d: sum(g["n"] for g in groups if g[DOMAIN] == d and not g[VALID]) for d in (1, 0)}
    for d, n_bad in invalid.items():
        if n_bad and cfg.on_invalid != "drop":
            raise InputError(f"feature column {cfg.feature_col!r} of the {name[d]} table has {n_bad} rows with null "
                             "or non-finite values (--on-invalid drop leaves them out)")
        if n_bad:
            log.warning("%s: %d rows with null or non-finite features left out", name[d], n_bad)
    valid = [g for g in groups if g[VALID]]
    dims = {g["dmin"] for g in valid} | {g["dmax"] for g in valid}
    if len(dims) > 1:
        raise InputError(f"feature column {cfg.feature_col!r} has arrays of different lengths "
                         f"({min(dims)} and {max(dims)})")
    if opts.label_col:
        for g in groups:
            if g[LABEL] is None:
                raise InputError(f"label column {opts.label_col!r} of the {name[g[DOMAIN]]} table has null values")
            if g[LABEL] < 0:
                raise InputError(f"label column {opts.label_col!r} of the {name[g[DOMAIN]]} table has negative "
                                 f"label {int(g[LABEL])}")
    for m in methods:
        found = sum(g[_sets_col(m)] for g in groups if g[DOMAIN] == 1)
        if found < n_ids.get(m, 0):
            raise InputError(f"removal sets of run {cfg.run_id!r} (method {m!r}) name {n_ids[m] - found} ids that "
                             "are not in the forget table; evaluate with the tables the run used")
    counts = {(d, h): sum(g["n"] for g in valid if g[DOMAIN] == d and g[HELDOUT] == h)
              for d in (0, 1) for h in (True, False)}
    for d in (1, 0):
        if counts[(d, True)] == 0:
            raise InputError(f"holdout_fraction {opts.holdout_fraction} leaves no held-out {name[d]} row")
    if counts[(0, False)] == 0:
        raise InputError(f"holdout_fraction {opts.holdout_fraction} leaves no retain row to train on")
    if opts.label_col:
        by_label: dict[int, int] = {}
        for g in valid:
            if g[DOMAIN] == 1:
                by_label[int(g[LABEL])] = by_label.get(int(g[LABEL]), 0) + g["n"]
        forget_class = min(by_label, key=lambda lab: (-by_label[lab], lab))
        num_classes = int(max(g[LABEL] for g in valid)) + 1
    else:
        forget_class, num_classes = 1, 2
    meta = {"ml_attr": {"type": "nominal", "num_vals": num_classes, "name": LABEL}}
    frame = data.where(F.col(VALID)).withMetadata(LABEL, meta)
    if opts.group_cols:
        frame = frame.drop(NULL_GROUP)
    log.info("evaluation data: %d forget / %d retain rows held out, %d / %d for training, %d classes",
             counts[(1, True)], counts[(0, True)], counts[(1, False)], counts[(0, False)], num_classes)
    return EvalData(frame, fits, methods, num_classes, forget_class, counts[(1, True)], counts[(0, True)],
                    bool(opts.label_col), data, grouped=bool(opts.group_cols))


@dataclass(frozen=True)
class ConstantModel:
    """The model of a one-class training set: predicts ``label`` with probability 1 among
    ``num_classes`` classes (same output columns as a Spark classification model)."""

    label: int
    num_classes: int

    def transform(self, df: DataFrame) -> DataFrame:
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        onehot = F.array(*[F.lit(1.0 if c == self.label else 0.0) for c in range(self.num_classes)])
        return df.withColumn("probability", array_to_vector(onehot)).withColumn(
            "prediction", F.lit(float(self.label)))


def fit_model(train: DataFrame, opts: EvalOptions, num_classes: int,
              weight_col: str | None = None) -> tuple[LogisticRegressionModel | ConstantModel, dict[int, int]]:
    """The fitted model and the training rows per class (one pass over the cached rows).

    Spark ML logistic regression (L-BFGS, deterministic: it has no seed), family auto:
    binomial for 2 classes, multinomial above, with ``weight_col`` as the row weights when
    given; a :class:`ConstantModel` when the training set holds a single class (see the module
    docstring for why Spark is not asked; weights do not change it).
    """
    from pyspark.ml.classification import LogisticRegression

    counts = {int(r[0]): int(r[1]) for r in train.groupBy(LABEL).count().collect()}
    if not counts:
        raise InputError("no training row left")
    if len(counts) == 1:
        only = next(iter(counts))
        log.info("one class (%d) in the training set: constant model", only)
        return ConstantModel(only, num_classes), counts
    lr = LogisticRegression(featuresCol=VECTOR, labelCol=LABEL, maxIter=opts.max_iter, regParam=opts.reg_param,
                            elasticNetParam=0.0, family="auto")
    if weight_col:
        lr = lr.setWeightCol(weight_col)
    return lr.fit(train), counts


def score_model(model: LogisticRegressionModel | ConstantModel,
                data: EvalData) -> tuple[dict[str, float | int], list[dict[str, Any]]]:
    """The four metrics of the module docstring and, with groups, the group rows (group,
    n_test_retain, retain_accuracy, n_test_forget, forget_recall; the first row, group None,
    over all held-out rows; then one per group in name order): one aggregation over the
    held-out rows, grouped by domain (and group)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    pred = model.transform(data.test_frame())
    p_true = F.try_element_at(vector_to_array(F.col("probability")), (F.col(LABEL) + 1).cast("int"))
    nll = -F.log(F.greatest(F.coalesce(p_true, F.lit(0.0)), F.lit(LOG_LOSS_CLIP)))
    keys = [DOMAIN, GROUP] if data.grouped else [DOMAIN]
    rows = pred.groupBy(*keys).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum((F.col("prediction") == F.lit(float(data.forget_class))).cast("long")).alias("hit"),
        F.sum((F.col("prediction") == F.col(LABEL)).cast("long")).alias("correct"),
        F.sum(nll).alias("nll")).collect()

    def total(domain: int, column: str) -> Any:
        return sum(r[column] for r in rows if r[DOMAIN] == domain)

    n_f, n_r = total(1, "n"), total(0, "n")
    metrics: dict[str, float | int] = {
        "n_test_forget": n_f, "n_test_retain": n_r,
        "forget_recall": total(1, "hit") / n_f, "forget_accuracy": total(1, "correct") / n_f,
        "retain_accuracy": total(0, "correct") / n_r, "retain_log_loss": float(total(0, "nll")) / n_r}
    if not data.grouped:
        return metrics, []
    out = [{"group": None, "n_test_retain": n_r, "retain_accuracy": metrics["retain_accuracy"],
            "n_test_forget": n_f, "forget_recall": metrics["forget_recall"]}]
    for g in sorted({r[GROUP] for r in rows}):
        by = {r[DOMAIN]: r for r in rows if r[GROUP] == g}
        f, r = by.get(1), by.get(0)
        out.append({"group": g, "n_test_retain": r["n"] if r else 0,
                    "retain_accuracy": r["correct"] / r["n"] if r else None,
                    "n_test_forget": f["n"] if f else 0,
                    "forget_recall": f["hit"] / f["n"] if f else None})
    return metrics, out


def run_evaluation(spark: SparkSession, cfg: JobConfig, opts: EvalOptions | None = None) -> EvaluationReport:
    """The ``evaluate`` subcommand: one fit per (method, budget) plus the baseline (and with
    ``reweight`` a weighted fit of each), then the ``evaluation``, ``evaluation_summary`` and,
    with group columns, ``evaluation_groups`` tables of ``cfg.run_id`` (replaced on rerun).

    ``opts`` defaults to :meth:`EvalOptions.from_config`.  Sources default to those the run
    recorded in ``runs`` when ``cfg.forget``/``cfg.retain`` are empty.  Every check happens
    before the first fit; nothing is written unless every fit succeeded.
    """
    cfg.check(required=("output", "run_id"))
    opts = (opts or EvalOptions.from_config(cfg)).check()
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
    write_tables(spark, cfg, report)
    report.timings["write"] = time.monotonic() - t0
    return report


def _reweighted(data: EvalData, fit: Fit, train: DataFrame, model: LogisticRegressionModel | ConstantModel,
                opts: EvalOptions) -> LogisticRegressionModel | ConstantModel | None:
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


def summarize(rows: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Per method: the baseline forget_recall and the budget that halves it."""
    base = next(r[HALVE_METRIC] for r in rows if r["method"] == BASELINE_METHOD)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != BASELINE_METHOD):
        mine = [r for r in rows if r["method"] == method]
        out.append({"run_id": run_id, "method": method, "metric": HALVE_METRIC, "baseline": base,
                    "budget_to_halve": budget_to_halve([r["budget"] for r in mine],
                                                       [r[HALVE_METRIC] for r in mine], base)})
    return out


def write_tables(spark: SparkSession, cfg: JobConfig, report: EvaluationReport) -> None:
    """Replace the run's rows of ``evaluation``, ``evaluation_summary`` and, when the report
    has group rows, ``evaluation_groups`` (the schemas of all checked first)."""
    from distunlearn import io

    tables = [(io.frame_of(spark, report.rows, EVALUATION_SCHEMA), io.table_path(cfg.output, io.EVALUATION)),
              (io.frame_of(spark, report.summary, SUMMARY_SCHEMA), io.table_path(cfg.output, io.EVALUATION_SUMMARY))]
    if report.groups:
        tables.append((io.frame_of(spark, report.groups, GROUPS_SCHEMA), io.table_path(cfg.output, EVALUATION_GROUPS)))
    for df, path in tables:
        io.check_schema(spark, df.schema, path)
    for df, path in tables:
        io.replace_run(df, path, cfg.run_id, partition_by=())
    log.info("evaluation of run %s written: %s", cfg.run_id, json.dumps(report.summary))
