"""The job with ``--group-col``: per-group statistics, group-aware selection, per-group
diagnostics and the ``group_diagnostics`` and ``retain_weights`` tables (Spark side).

The definitions (deletion rate, cap, stratified budgets, weights) are in
:mod:`distunlearn.groups`; this module runs them:

1. one pass over each table computes the Gaussian statistics of every group (its row count
   among them), failing on a null group before anything is written;
2. the budgets are reduced to what the caps allow and, for ``stratified``, apportioned to the
   groups;
3. selection: without a binding cap and with ``global`` budgets, the ordinary global ranking
   (:func:`distunlearn.select.select_removal_sets`); otherwise a ranking within each (method,
   group) first (:func:`distunlearn.select.select_group_sets`);
4. the diagnostics pass scores the forget rows again and sums their statistics per (method,
   group, bucket), where a row's bucket is set by its group's boundaries (every set's part in a
   group is a prefix of the group's ranking), so for each (method, budget) both the kept rows
   overall (alpha, eps, as without groups) and each group's removed and kept rows follow by
   merging buckets;
5. the tables: ``group_diagnostics`` (one row per method, budget and group) and, with
   ``--reweight``, ``retain_weights`` (one row per retain row, method and budget).

Cost over a run without groups: a pass over each table for the group statistics, the
per-group KL divergences on the driver (methods x budgets x groups Cholesky factorisations of
d x d), and in the group-ranked modes one or two more sorts of the scores.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from distunlearn import io
from distunlearn.aggregate import Bounds, bucket_stats, group_stats
from distunlearn.budgets import Budget
from distunlearn.diagnostics import Diagnostics, GroupPoint, diagnose_kept, group_point
from distunlearn.groups import GroupCounts, apportion, capacities, describe, effective_k
from distunlearn.prepare import GROUP, ID
from distunlearn.scoring import ScoringModel
from distunlearn.select import Selection, group_boundaries, group_removed, select_group_sets, select_removal_sets
from distunlearn.stats import GaussianStats

log = logging.getLogger(__name__)

GROUP_DIAGNOSTICS = "group_diagnostics"
RETAIN_WEIGHTS = "retain_weights"

_GROUP_DIAGNOSTICS_SCHEMA = (
    "run_id string, method string, budget double, budget_count long, k long, group string, n_forget long, "
    "n_retain long, capacity long, removed long, deletion_rate double, forget_removed_share double, "
    "kl_shift double, sample_weight double"
)
_WEIGHTS_SCHEMA = "method string, budget double, _g string, sample_weight double"


@dataclass(frozen=True)
class GroupContext:
    """The groups of a run: their statistics in both tables and the selection options."""

    cols: tuple[str, ...]
    mode: str  # "global" or "stratified"
    cap: float
    forget: dict[str, GaussianStats]
    retain: dict[str, GaussianStats]
    dim: int

    @property
    def groups(self) -> list[str]:
        return sorted(set(self.forget) | set(self.retain))

    def stats(self, domain: str, g: str) -> GaussianStats:
        table = self.forget if domain == "forget" else self.retain
        return table.get(g) or GaussianStats.empty(self.dim)

    @property
    def counts(self) -> dict[str, GroupCounts]:
        return {g: GroupCounts(self.stats("forget", g).n, self.stats("retain", g).n) for g in self.groups}

    @property
    def capacities(self) -> dict[str, int]:
        counts = self.counts
        return capacities({g: c.n_forget for g, c in counts.items()}, {g: c.n_retain for g, c in counts.items()},
                          self.cap)

    @property
    def ranked_by_group(self) -> bool:
        """Whether selection ranks within groups: stratified budgets, or a cap that binds."""
        caps = self.capacities
        return self.mode == "stratified" or any(caps[g] < c.n_forget for g, c in self.counts.items())

    def budgets(self, budgets: list[Budget]) -> list[Budget]:
        """The budgets with k reduced to what the caps allow (a warning per reduced budget)."""
        caps = self.capacities
        out = []
        for b in budgets:
            k = effective_k(b.k, caps)
            if k < b.k:
                log.warning("budget %s: k = %d exceeds what --group-cap %g allows; its set holds the %d rows the "
                            "cap allows", b.label, b.k, self.cap, k)
            out.append(dataclasses.replace(b, k=k))
        return out

    def quotas(self, budgets: list[Budget]) -> dict[int, dict[str, int]]:
        """Stratified: per k, each group's share (largest remainder, capped)."""
        weights = {g: c.n_forget for g, c in self.counts.items()}
        caps = self.capacities
        return {b.k: apportion(b.k, weights, caps) for b in budgets}


def group_context(cfg: object, forget: DataFrame, retain: DataFrame, dim: int) -> GroupContext:
    """Statistics of every group of both tables (InputError for a null group)."""
    cols: tuple[str, ...] = cfg.group_col  # type: ignore[attr-defined]
    ctx = GroupContext(cols, cfg.group_budget, cfg.group_cap,  # type: ignore[attr-defined]
                       group_stats(forget, "forget", cols, dim), group_stats(retain, "retain", cols, dim), dim)
    log.info("groups of %s: %s", "+".join(cols), describe(ctx.counts))
    return ctx


def select(ctx: GroupContext, scores: DataFrame, budgets: list[Budget], n: int, partitions: int) -> Selection:
    """The removal sets (module docstring, step 3); ``budgets`` already reduced by the caps."""
    if not ctx.ranked_by_group:
        return select_removal_sets(scores, budgets, n, partitions)
    quotas = ctx.quotas(budgets) if ctx.mode == "stratified" else {}
    return select_group_sets(scores, budgets, ctx.mode, quotas, ctx.capacities, partitions)


def diagnose_groups(ctx: GroupContext, forget: DataFrame, model: Broadcast[ScoringModel], methods: tuple[str, ...],
                    seed: int, selection_mode: str, selection: Selection, budgets: list[Budget],
                    f_stats: GaussianStats, r_stats: GaussianStats, tolerated_eps: float,
                    target_alpha: float) -> tuple[Diagnostics, list[GroupPoint]]:
    """The run's diagnostics and one :class:`GroupPoint` per method, positive k and group."""
    removed = group_removed(selection.rows)
    ks = sorted({b.k for b in budgets if b.k > 0})
    bounds: dict[str, Bounds]
    if ctx.ranked_by_group:
        per_group = group_boundaries(selection.rows, removed)
        bounds = {m: {g: b for g, b in per_group.get(m, {}).items()} for m in methods}
        sizes = {(m, g): sorted({q for (mm, _, gg), q in removed.items() if mm == m and gg == g and q > 0})
                 for m in methods for g in ctx.groups}
        for (m, g), lengths in sizes.items():
            if len(bounds[m].get(g, [])) != len(lengths):
                raise ValueError(f"{m}, group {g!r}: {len(bounds[m].get(g, []))} boundaries for sizes {lengths}")

        def cut(m: str, k: int, g: str) -> int:
            q = removed.get((m, k, g), 0)
            return sizes[(m, g)].index(q) + 1 if q else 0
    else:
        bounds = {m: {None: [selection.boundaries[(m, k)] for k in ks]} for m in methods}

        def cut(m: str, k: int, g: str) -> int:
            return ks.index(k) + 1

    stats = bucket_stats(forget, model, methods, seed, bounds, ctx.dim, selection_mode)
    by_group: dict[tuple[str, str], list[tuple[int, GaussianStats]]] = {}
    for (m, row_group, j), s in stats.items():
        by_group.setdefault((m, str(row_group)), []).append((j, s))
    empty = GaussianStats.empty(ctx.dim)
    kept: dict[tuple[str, int], GaussianStats] = {}
    points: list[GroupPoint] = []
    for m in methods:
        for k in ks:
            total = empty
            for g in ctx.groups:
                c = cut(m, k, g)
                kept_g = _merge([s for j, s in by_group.get((m, g), []) if j >= c], ctx.dim)
                total = total.merge(kept_g)
                points.append(group_point(m, k, g, ctx.stats("forget", g), ctx.stats("retain", g), kept_g))
                if points[-1].removed != removed.get((m, k, g), 0):
                    raise ValueError(f"{m}, k = {k}, group {g!r}: the diagnostics pass finds {points[-1].removed} "
                                     f"removed rows, the selection {removed.get((m, k, g), 0)}")
            kept[(m, k)] = total
    diagnostics = diagnose_kept(f_stats, r_stats, kept, [(b.budget, b.k) for b in budgets], tolerated_eps,
                                target_alpha)
    return diagnostics, points


def _merge(parts: list[GaussianStats], dim: int) -> GaussianStats:
    out = GaussianStats.empty(dim)
    for p in parts:
        out = out.merge(p)
    return out


def write_tables(spark: SparkSession, cfg: object, ctx: GroupContext, points: list[GroupPoint],
                 budgets: list[Budget], retain: DataFrame | None) -> dict[str, int]:
    """``group_diagnostics`` (one row per method, budget and group; k = 0 budgets have a row
    per group with nothing removed) and, when ``retain`` is given (``--reweight``),
    ``retain_weights``; returns their Delta versions."""
    run_id: str = cfg.run_id  # type: ignore[attr-defined]
    output: str = cfg.output  # type: ignore[attr-defined]
    caps = ctx.capacities
    by_key = {(p.method, p.k, p.group): p for p in points}
    methods = list(dict.fromkeys(p.method for p in points)) or list(cfg.methods)  # type: ignore[attr-defined]
    rows = []
    for m in methods:
        for b in budgets:
            for g in ctx.groups:
                p = by_key.get((m, b.k, g)) or group_point(m, 0, g, ctx.stats("forget", g), ctx.stats("retain", g),
                                                          ctx.stats("forget", g))
                rows.append({**dataclasses.asdict(p), "run_id": run_id, "budget": b.budget, "budget_count": b.count,
                             "k": b.k, "capacity": caps[g]})
    versions = {GROUP_DIAGNOSTICS: io.replace_run(io.frame_of(spark, rows, _GROUP_DIAGNOSTICS_SCHEMA),
                                                  io.table_path(output, GROUP_DIAGNOSTICS), run_id)}
    if retain is not None:
        versions[RETAIN_WEIGHTS] = write_weights(spark, run_id, output, rows, retain)
    return versions


def write_weights(spark: SparkSession, run_id: str, output: str, rows: list[dict[str, Any]],
                  retain: DataFrame) -> int:
    """retain_weights: every retain row joined (broadcast) with its group's weight per method
    and budget (``rows``: those of group_diagnostics).  Partitioned by (run_id, method)."""
    for r in rows:
        if r["n_retain"] == 0 and r["removed"]:
            log.warning("group %r loses %d rows (%s, budget %g) and has no retain row to carry its weight",
                        r["group"], r["removed"], r["method"], r["budget"])
    weights = [{**r, "_g": r["group"]} for r in rows if r["n_retain"]]  # groups with retain rows
    table = io.frame_of(spark, weights, _WEIGHTS_SCHEMA)
    out = (retain.select(ID, GROUP).join(F.broadcast(table), F.col(GROUP) == F.col("_g"))
           .select(F.lit(run_id).alias("run_id"), "method", "budget", ID, GROUP, "sample_weight"))
    return io.replace_run(out, io.table_path(output, RETAIN_WEIGHTS), run_id, partition_by=("run_id", "method"))
