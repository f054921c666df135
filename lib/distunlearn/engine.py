"""The selection, from two DataFrames to its results, writing nothing (the library API).

:func:`select_removal` is the one entry point: statistics of both tables, the scoring
model, one pass that scores every forget row for every method, one ranking for every budget
and group mode, and the diagnostics of every removal set.  It returns a :class:`Result`
that holds the ranking as a DataFrame and everything else as values; ``result.write(output,
run_id)`` writes the Delta tables (that is what the ``run`` command does), and
``result.release()`` (or leaving a ``with`` block) drops what the selection persisted.

Every check of the input (tables, columns, ids, features, dimensions, methods, budgets,
groups, covariance) happens here, before anything can be written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from distunlearn.core.batches import check_dims
from distunlearn.core.budgets import Budget, one_per_size, resolve_budgets
from distunlearn.core.covariance import CovarianceSpec
from distunlearn.core.diagnostics import Diagnostics, GroupPoint, diagnose_kept, group_point
from distunlearn.core.groups import GroupPlan, describe
from distunlearn.core.scoring import ScoringModel
from distunlearn.core.stats import DomainStats, GaussianStats, Statistics
from distunlearn.core.text import TextModel
from distunlearn.errors import InputError
from distunlearn.options import Options
from distunlearn.progress import Stage
from distunlearn.transforms.prepare import FEATURES, GROUP, ID, check_ids, normalize
from distunlearn.transforms.rank import GROUP_RANK, RANK, BudgetSet, Ranking, rank_scores, sort_partitions
from distunlearn.transforms.score import METHOD, SCORE, score_forget
from distunlearn.transforms.sizing import batches_for
from distunlearn.transforms.statistics import bucket_stats, check_groups, domain_stats, ngram_stats
from distunlearn.transforms.text import normalize_text, with_features

if TYPE_CHECKING:
    from distunlearn.store.output import RunRecord

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- statistics
def prepare(df: DataFrame, domain: str, options: Options, check: bool = True) -> DataFrame:
    """One input table as DataFrame[id, features] (text: [id, grams]) with a ``group``
    column when the options have group columns; ``check``: the ids are unique and non-null
    (InputError otherwise)."""
    cols = options.columns
    if cols.text:
        out = normalize_text(df, cols.id, cols.text, domain, options.text, cols.groups)
    else:
        out = normalize(df, cols.id, cols.features, domain, group_cols=cols.groups)
    if check:
        check_ids(out, cols.id, domain)
    return out


def featurize(text: TextModel, *frames: DataFrame) -> list[DataFrame]:
    """Text input: DataFrame[id, grams] -> DataFrame[id, features, grams] with the run's
    TF-IDF projection (or sentence embeddings)."""
    featurizer = text.projection()
    return [with_features(df, featurizer) for df in frames]


def text_model(forget: DataFrame, retain: DataFrame, options: Options) -> TextModel:
    """The n-gram statistics of both prepared text tables (a pass over each)."""
    settings = options.text
    return TextModel(ngram_stats(forget, "forget", options.columns.text, settings.buckets),
                     ngram_stats(retain, "retain", options.columns.text, settings.buckets), settings,
                     options.scoring.seed)


def compute_statistics(forget: DataFrame, retain: DataFrame, options: Options,
                       text: TextModel | None = None) -> Statistics:
    """The Gaussian statistics of both prepared tables (features, or text already featurized
    with ``text``), with the checks that need them: dimensions, enough retain rows, groups."""
    cols = options.columns
    f = domain_stats(forget, "forget", cols.features, cols.on_invalid)
    r = domain_stats(retain, "retain", cols.features, cols.on_invalid)
    check_statistics(f, r, options)
    return Statistics(f, r, text)


def check_statistics(forget: DomainStats, retain: DomainStats, options: Options) -> None:
    """InputError for statistics no selection can use: different dimensions, fewer than two
    retain rows, null groups."""
    check_dims(forget.stats.dim, retain.stats.dim, options.columns.features)
    if retain.stats.n < 2:
        raise InputError(f"the retain table has {retain.stats.n} usable row; at least 2 are needed "
                         "for a covariance")
    if options.columns.groups:
        check_groups(forget, "forget", options.columns.groups)
        check_groups(retain, "retain", options.columns.groups)


def build_model(options: Options, forget: GaussianStats, retain: GaussianStats,
                text: TextModel | None = None) -> ScoringModel:
    """The scoring model: the statistics with the covariance and cosine options, and
    lr_ngram's weights for text input."""
    s = options.scoring
    spec = CovarianceSpec(s.covariance, s.ridge, s.max_condition, s.covariance_rank)
    model = ScoringModel.build(forget, retain, s.covariance_source, spec, s.cosine_center)
    return dataclasses.replace(model, ngram=text.ngram_model()) if text else model


# ---------------------------------------------------------------------- the result
@dataclass
class Result:
    """What :func:`select_removal` found.  Nothing of it is written until :meth:`write`.

    ``ranking``: DataFrame[method, id, score, rank, group, group_rank], one row per (method,
    id) that some removal set holds (the ``removal_ranking`` table without run_id).
    ``sets``: per method and budget the set's size k and, per group, its quota and threshold
    (the ``removal_budgets`` table).  A set is the ranking rows with ``group_rank <= quota``
    in each group; without groups, ``rank <= k``.
    """

    options: Options
    methods: tuple[str, ...]
    budgets: list[Budget]  # one per set size k, ascending
    statistics: Statistics
    model: ScoringModel
    plan: GroupPlan
    ranking_result: Ranking
    diagnostics: Diagnostics
    group_points: list[GroupPoint]  # with groups: per method, budget with k > 0 and group
    forget: DataFrame  # the prepared tables (the retain one carries the groups for the weights)
    retain: DataFrame
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ranking(self) -> DataFrame:
        return self.ranking_result.rows

    @property
    def sets(self) -> list[BudgetSet]:
        return self.ranking_result.sets

    @property
    def n_forget(self) -> int:
        return self.statistics.forget.stats.n

    @property
    def n_retain(self) -> int:
        return self.statistics.retain.stats.n

    @property
    def dim(self) -> int:
        return self.statistics.forget.stats.dim

    def summary(self) -> list[dict[str, Any]]:
        """Per method and budget: k and the score threshold (the lowest score in the set)."""
        return [{"method": s.method, "budget": s.budget.budget, "budget_count": s.budget.count, "k": s.budget.k,
                 "threshold": s.threshold} for s in self.sets]

    def budget_rows(self) -> list[dict[str, Any]]:
        """The rows of ``removal_budgets`` (without run_id and ranking_version)."""
        return [{"method": s.method, "budget": s.budget.budget, "budget_count": s.budget.count, "k": s.budget.k,
                 "group": g, "quota": q, "threshold": s.thresholds[g]}
                for s in self.sets for g, q in s.quotas.items()]

    def removal_set(self, method: str, k: int) -> DataFrame:
        """DataFrame[id, score, rank, group, group_rank] of the set of size ``k`` (a budget's)."""
        found = [s for s in self.sets if s.method == method and s.budget.k == k]
        if not found:
            raise InputError(f"no removal set of method {method!r} with k = {k}; the sets have k = "
                             f"{', '.join(str(b.k) for b in self.budgets)}")
        quota = F.create_map(*[x for g, q in found[0].quotas.items() if g is not None
                               for x in (F.lit(g), F.lit(q))]) if self.plan.grouped else None
        rows = self.ranking.where(F.col(METHOD) == method)
        limit = F.col(RANK) <= k if quota is None else F.col(GROUP_RANK) <= F.coalesce(
            F.element_at(quota, F.col(GROUP)), F.lit(0))
        return rows.where(limit).select(ID, SCORE, RANK, GROUP, GROUP_RANK)

    def retain_weights(self) -> DataFrame | None:
        """With ``Groups.reweight``: DataFrame[method, budget, id, group, sample_weight], one
        row per retain row, method and budget (w_g of :mod:`distunlearn.core.groups`)."""
        if not self.options.groups.reweight:
            return None
        rows = []
        for p in self.group_rows():
            if p["n_retain"] == 0:
                if p["removed"]:
                    log.warning("group %r loses %d rows (%s, budget %g) and has no retain row to carry its weight",
                                p["group"], p["removed"], p["method"], p["budget"])
                continue
            rows.append((p["method"], p["budget"], p["group"], p["sample_weight"]))
        table = self.retain.sparkSession.createDataFrame(
            rows, "method string, budget double, _g string, sample_weight double")
        return (self.retain.select(ID, GROUP).join(F.broadcast(table), F.col(GROUP) == F.col("_g"))
                .select("method", "budget", ID, GROUP, "sample_weight"))

    def group_rows(self) -> list[dict[str, Any]]:
        """The rows of ``group_diagnostics`` (without run_id): per method, budget and group."""
        if not self.plan.grouped:
            return []
        caps = self.plan.capacities
        by_key: dict[tuple[str, int, str | None], GroupPoint] = {(p.method, p.k, p.group): p
                                                                for p in self.group_points}
        rows = []
        for s in self.sets:
            for g in self.plan.groups:
                f_g, r_g = self.group_stats("forget", g), self.group_stats("retain", g)
                p = by_key.get((s.method, s.budget.k, g)) or group_point(s.method, 0, str(g), f_g, r_g, f_g)
                rows.append({**dataclasses.asdict(p), "budget": s.budget.budget, "budget_count": s.budget.count,
                             "k": s.budget.k, "capacity": caps[g]})
        return rows

    def group_stats(self, domain: str, group: str | None) -> GaussianStats:
        stats = self.statistics.forget if domain == "forget" else self.statistics.retain
        return stats.groups.get(group) or GaussianStats.empty(self.dim)  # type: ignore[arg-type]

    def write(self, output: str, run_id: str, record: RunRecord | None = None,
              takeover: bool = False) -> dict[str, int]:
        """Write the run's Delta tables under ``output`` (the ``run`` command's outputs: the
        ledger row, statistics, removal_ranking, removal_budgets, diagnostics, calibration, and
        with groups group_diagnostics and retain_weights); returns table -> Delta version.
        ConflictError, with nothing written, while another run writes ``run_id``; ``takeover``
        claims a run id whose "running" row another machine left (:mod:`distunlearn.store.ledger`)."""
        from distunlearn.store.output import RunRecord, Store

        return Store(self.forget.sparkSession, output).write_run(run_id, self, record or RunRecord(), takeover)

    def release(self) -> None:
        """Drop the persisted scores and ranking (the result's DataFrames become recomputable
        only from the inputs)."""
        self.ranking_result.release()

    def __enter__(self) -> Result:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------- the selection
def _frame(spark: SparkSession, source: DataFrame | str, domain: str) -> DataFrame:
    if isinstance(source, str):
        from distunlearn.store.sources import read_source

        return read_source(spark, source, domain)
    return source


def select_removal(spark: SparkSession, forget: DataFrame | str, retain: DataFrame | str,
                   options: Options | None = None, *, statistics: Statistics | None = None,
                   prepared: bool = False, timings: dict[str, float] | None = None, **parts: Any) -> Result:
    """Find the removal sets of every method and budget (module docstring).

    ``forget``, ``retain``: DataFrames, or table names / paths (Delta, Parquet).  ``options``:
    :class:`~distunlearn.options.Options`, or its parts as keywords (``scoring=Scoring(...)``).
    ``statistics``: use these (stored, or merged incrementally) instead of computing them.
    ``prepared``: the tables are already the output of :func:`prepare` (ids checked).
    Raises :class:`~distunlearn.errors.DistUnlearnError` subclasses for bad input.
    """
    opts = (options or Options()).replace(**parts).check()
    timings = {} if timings is None else timings
    f_df, r_df = _frame(spark, forget, "forget"), _frame(spark, retain, "retain")
    if not prepared:
        with Stage(timings, "read_check"):
            f_df = prepare(f_df, "forget", opts)
            r_df = prepare(r_df, "retain", opts, check=opts.columns.check_retain_ids and statistics is None)
            if statistics is not None and not opts.columns.text:
                _check_against(f_df, statistics.forget.stats, opts)
    dim = None if opts.columns.text else statistics.forget.stats.dim if statistics is not None else _feature_dim(f_df)
    with batches_for(spark, dim) if dim else contextlib.nullcontext():
        return _select(spark, f_df, r_df, opts, statistics, timings)


def _feature_dim(df: DataFrame) -> int | None:
    """The length of the first row's features (one small job; None for an empty table): the
    batch sizes of the passes depend on it (:func:`~distunlearn.transforms.sizing.batches_for`)."""
    rows = df.select(F.size(FEATURES)).limit(1).collect()
    return int(rows[0][0]) if rows and rows[0][0] is not None and rows[0][0] > 0 else None


def _select(spark: SparkSession, f_df: DataFrame, r_df: DataFrame, opts: Options, statistics: Statistics | None,
            timings: dict[str, float]) -> Result:
    """:func:`select_removal` after the tables are read and checked."""
    if statistics is None:
        with Stage(timings, "statistics"):
            text = text_model(f_df, r_df, opts) if opts.columns.text else None
            if text:
                f_df, r_df = featurize(text, f_df, r_df)
            statistics = compute_statistics(f_df, r_df, opts, text)
    else:
        if opts.columns.text:
            if statistics.text is None:
                raise InputError("text input needs the n-gram statistics of the run (none were given)")
            f_df, r_df = featurize(statistics.text, f_df, r_df)
        if opts.columns.groups and not statistics.forget.groups:  # stored statistics keep no groups
            with Stage(timings, "group_statistics"):
                statistics = _with_group_stats(statistics, f_df, r_df, opts)
    f_stats, r_stats = statistics.forget.stats, statistics.retain.stats
    methods = opts.scoring.methods
    budgets = resolve_budgets(opts.selection.budgets, opts.selection.budget_counts, f_stats.n)
    for b in budgets:
        if b.k == 0:
            log.warning("budget %s selects no row (floor(%g x %d) = 0)", b.label, b.budget, f_stats.n)
    model = build_model(opts, f_stats, r_stats, statistics.text)
    plan = _group_plan(statistics, opts)
    budgets = _one_set_per_size(plan, budgets, opts)

    with Stage(timings, "score_select"):
        scores, wide = score_forget(f_df, model, methods, opts.scoring.seed, opts.selection.selection)
        try:
            partitions = sort_partitions(f_stats.n, len(methods), _shuffle_partitions(spark))
            ranking = rank_scores(scores, methods, budgets, plan, f_stats.n, partitions)
        except BaseException:
            wide.unpersist()
            raise
    ranking = dataclasses.replace(ranking, persisted=(*ranking.persisted, wide))
    try:
        with Stage(timings, "diagnostics"):
            diagnostics, points = _diagnose(f_df, model, opts, statistics, plan, budgets, ranking, _cores(spark))
    except BaseException:
        ranking.release()
        raise
    return Result(opts, methods, budgets, statistics, model, plan, ranking, diagnostics, points, f_df, r_df, timings)


def _check_against(forget: DataFrame, stored: GaussianStats, opts: Options) -> None:
    """The forget table against statistics computed before (``score --stats-run-id``): the
    checks the statistics pass makes (null, ragged, non-finite features; one pass over the
    table), then its usable rows and dimension must be those the statistics describe, else the
    scores and the budgets' k would mix two tables."""
    column = opts.columns.features
    fresh = domain_stats(forget, "forget", column, opts.columns.on_invalid).stats
    if fresh.dim != stored.dim:
        raise InputError(f"feature column {column!r} of the forget table has dimension {fresh.dim}, the stored "
                         f"statistics {stored.dim}: score the table the statistics were computed on")
    if fresh.n != stored.n:
        raise InputError(f"the forget table has {fresh.n} usable rows, the stored statistics were computed on "
                         f"{stored.n}: it changed since; compute the statistics again (stats or run)")


def _with_group_stats(statistics: Statistics, forget: DataFrame, retain: DataFrame, options: Options) -> Statistics:
    """Stored statistics with the groups' statistics of the tables (a pass over each)."""
    cols = options.columns
    f = domain_stats(forget, "forget", cols.features, cols.on_invalid)
    r = domain_stats(retain, "retain", cols.features, cols.on_invalid)
    check_statistics(f, r, options)
    return dataclasses.replace(statistics, forget=dataclasses.replace(statistics.forget, groups=f.groups),
                               retain=dataclasses.replace(statistics.retain, groups=r.groups))


def _group_plan(statistics: Statistics, options: Options) -> GroupPlan:
    if not options.columns.groups:
        return GroupPlan.single(statistics.forget.stats.n, statistics.retain.stats.n)
    g = options.groups
    plan = GroupPlan(g.budget, g.cap, {k: s.n for k, s in statistics.forget.groups.items()},
                     {k: s.n for k, s in statistics.retain.groups.items()})
    log.info("groups of %s: %s", "+".join(options.columns.groups), describe(plan.counts()))  # type: ignore[arg-type]
    return plan


def _one_set_per_size(plan: GroupPlan, budgets: list[Budget], options: Options) -> list[Budget]:
    """The budgets with k reduced to what the caps allow (a warning per reduced budget), one
    per resulting size k: budgets of the same k are one set, recorded once."""
    out = []
    for b in budgets:
        k = plan.effective_k(b.k)
        if k < b.k:
            log.warning("budget %s: k = %d exceeds what --group-cap %g allows; its set holds the %d rows the "
                        "cap allows", b.label, b.k, plan.cap, k)
        out.append(dataclasses.replace(b, k=k))
    kept, merged = one_per_size(out)
    for dropped, same in merged:
        log.warning("budget %s resolves to the same removal set as budget %s (k = %d): one set, recorded once "
                    "as budget %s", dropped.label, same.label, same.k, same.label)
    return kept


def _shuffle_partitions(spark: SparkSession) -> int:
    return int(spark.conf.get("spark.sql.shuffle.partitions") or 200)


def _cores(spark: SparkSession) -> int:
    """Task slots, from the configuration only (a Spark Connect session has no SparkContext
    to ask): spark.default.parallelism when set, else the N of local[N], else executors x
    cores, else the shuffle partitions.  Only sizes the removal-set statistics pass."""
    conf = spark.conf
    if conf.get("spark.default.parallelism", None):
        return int(conf.get("spark.default.parallelism"))  # type: ignore[arg-type]
    master = conf.get("spark.master", None) or ""
    local = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master)
    if local:
        return 1 if local[1] is None else (os.cpu_count() or 1) if local[1] == "*" else int(local[1])
    executors, cores = conf.get("spark.executor.instances", None), conf.get("spark.executor.cores", None)
    if executors and cores:
        return int(executors) * int(cores)
    return _shuffle_partitions(spark)


def _diagnose(forget: DataFrame, model: ScoringModel, options: Options, statistics: Statistics, plan: GroupPlan,
              budgets: list[Budget], ranking: Ranking, cores: int) -> tuple[Diagnostics, list[GroupPoint]]:
    """The diagnostics of every set, and with groups one :class:`GroupPoint` per method,
    positive k and group.  One pass over the forget table puts each row's statistics in the
    bucket of the smallest part of its group's sets holding it (every part is a prefix of the
    group's ranking); a set's kept forget rows are then merges of buckets.

    The buckets come one at a time, each method's last first, and the kept rows of a set are
    a suffix merge of them: without groups the driver holds one running merge and one bucket
    (a d x d matrix each: 134 MB at d = 4096), with groups one per group and cut of a method."""
    f_stats, r_stats = statistics.forget.stats, statistics.retain.stats
    dim = f_stats.dim
    methods = options.scoring.methods
    quota = {(s.method, s.budget.k): s.quotas for s in ranking.sets}
    # per method and group: the distinct positive part sizes (the cuts of the group's ranking)
    sizes = {(m, g): sorted({quota[(m, b.k)][g] for b in budgets if quota[(m, b.k)][g] > 0})
             for m in methods for g in plan.groups}
    wanted = [(m, g, j) for m in methods for g in plan.groups for j in reversed(range(len(sizes[(m, g)]) + 1))]
    buckets = bucket_stats(forget, model, methods, options.scoring.seed, ranking.bounds, dim, wanted,
                           options.selection.selection, cores)
    empty = GaussianStats.empty(dim)
    points: list[GroupPoint] = []

    def suffixes(m: str, g: str | None) -> Iterator[tuple[int, GaussianStats]]:
        """(c, kept_from[c]) for c from the last cut down to 0: the rows of buckets c, c + 1, ..."""
        running = None
        for j in reversed(range(len(sizes[(m, g)]) + 1)):
            key, part = next(buckets)
            assert key == (m, g, j), (key, (m, g, j))
            part = part if part is not None else empty
            running = part if running is None else running.merge(part)
            yield j, running

    def kept_sets() -> Iterator[tuple[tuple[str, int], GaussianStats]]:
        """((method, k), the forget rows the set keeps) for every positive k."""
        for m in methods:
            positive = list(dict.fromkeys(b.k for b in budgets if b.k > 0))
            if not plan.grouped:  # one group: each set is one suffix, taken as it is reached
                (g,) = plan.groups
                cut = {k: sizes[(m, g)].index(q) + 1 if (q := quota[(m, k)][g]) else 0 for k in positive}
                for c, kept_c in suffixes(m, g):
                    for k in positive:
                        if cut[k] == c:
                            yield (m, k), empty.merge(kept_c)
                continue
            cuts = {g: dict(suffixes(m, g)) for g in plan.groups}
            for k in positive:
                total = empty
                for g in plan.groups:
                    q = quota[(m, k)][g]
                    kept_g = cuts[g][sizes[(m, g)].index(q) + 1 if q else 0]
                    total = total.merge(kept_g)
                    p = group_point(m, k, str(g), statistics.forget.groups.get(g, empty),  # type: ignore[arg-type]
                                    statistics.retain.groups.get(g, empty), kept_g)  # type: ignore[arg-type]
                    if p.removed != q:
                        raise ValueError(f"{m}, k = {k}, group {g!r}: the diagnostics pass finds {p.removed} "
                                         f"removed rows, the selection {q}")
                    points.append(p)
                yield (m, k), total

    d = options.calibration
    return diagnose_kept(f_stats, r_stats, kept_sets(), [(b.budget, b.k) for b in budgets], d.tolerated_eps,
                         d.target_alpha), points
