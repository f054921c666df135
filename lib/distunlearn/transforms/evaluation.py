"""Downstream evaluation on Spark, its data: the held-out split and the persisted evaluation
frame of a run's tables and removal sets (DataFrame in, DataFrame out, no I/O).  The fits
and their metrics are :mod:`distunlearn.transforms.fitting`.

The definitions (split, labels, metrics, the one-class case, groups, reweighting) are in
:mod:`distunlearn.commands.evaluate`, which runs them for a stored run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.ml.functions import array_to_vector
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.core.evaluation import BASELINE_METHOD
from distunlearn.core.groups import sample_weight
from distunlearn.errors import InputError
from distunlearn.options import Columns, Evaluation
from distunlearn.transforms.prepare import FEATURES, GROUP, ID, column, normalize

log = logging.getLogger(__name__)

HASH_BUCKETS = 10_000
HOLDOUT_SALT = "holdout"

# columns of the persisted evaluation frame
LABEL = "label"
DOMAIN = "domain"  # 1 forget, 0 retain
HELDOUT = "heldout"
VALID = "valid"
DIM = "dim"
VECTOR = "vector"
NULL_GROUP = "_null_group"  # the first group column that is null in the row, else null
WEIGHT = "_weight"  # the sample weight of a reweighted fit


@dataclass(frozen=True)
class Fit:
    """One (method, budget) to train: the removal set of size ``k`` of the method is removed."""

    method: str
    budget: float
    budget_count: int | None
    k: int


def holdout(seed: int, fraction: float) -> Any:
    """The held-out flag (module docstring): a salted, seeded hash of the id."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(HOLDOUT_SALT), F.col("id")),
                  F.lit(HASH_BUCKETS)) < F.lit(round(fraction * HASH_BUCKETS))


def read_domain(raw: DataFrame, domain: str, columns: Columns, label_col: str,
                group_cols: tuple[str, ...] = ()) -> DataFrame:
    """DataFrame[id, features array, label(, group, _null_group)] of one input table (the id,
    feature and group columns checked and typed by :func:`~distunlearn.transforms.prepare.normalize`, the
    label carried along; ``_null_group`` names the first group column that is null in the row)."""
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
    table = normalize(raw, columns.id, columns.features, domain, keep=keep, group_cols=group_cols)
    group: list[str] = []
    if group_cols:  # normalize has checked that every group column exists
        first_null = F.coalesce(*[F.when(column(c).isNull(), F.lit(c)) for c in group_cols])
        table = normalize(raw.withColumn(NULL_GROUP, first_null), columns.id, columns.features, domain,
                          keep=(*keep, NULL_GROUP), group_cols=group_cols)
        group = [GROUP, NULL_GROUP]
    label = column(label_col).cast("double") if label_col else F.lit(1.0 if domain == "forget" else 0.0)
    return table.select(ID, FEATURES, label.alias(LABEL), *group)


def _finite(features: Any) -> Any:
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
        if method == BASELINE_METHOD or k == 0:
            return F.lit(False)
        member = F.array_contains(F.col(_sets_col(method)), F.lit(k).cast("long"))
        return (F.col(DOMAIN) == 1) & F.coalesce(member, F.lit(False))

    def train_frame(self, method: str, k: int) -> DataFrame:
        """retain_train ∪ (forget_train \\ R(method, k)); ``method`` ``none`` removes nothing."""
        train = self.frame.where(~F.col(HELDOUT))
        if method == BASELINE_METHOD or k == 0:
            return train
        return train.where(~self.removed(method, k))

    def test_frame(self) -> DataFrame:
        return self.frame.where(F.col(HELDOUT))

    def retain_weights(self, method: str, k: int) -> dict[str, float | None]:
        """Per group of the training rows, :func:`distunlearn.core.groups.sample_weight` of its
        training retain rows n2_g and its training forget rows removed by R(method, k), r_g
        (one small aggregation of the training rows)."""
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
    items = sorted((g, float(w)) for g, w in weights.items() if w is not None and w != 1.0)
    if not items:
        return F.lit(1.0)
    table = F.create_map(*[x for g, w in items for x in (F.lit(g), F.lit(w))])
    retain = F.coalesce(F.try_element_at(table, F.col(GROUP)), F.lit(1.0))
    return F.when(F.col(DOMAIN) == 0, retain).otherwise(F.lit(1.0))


def _sets_col(method: str) -> str:
    return f"sets_{method}"


def evaluation_data(forget_raw: DataFrame, retain_raw: DataFrame, members: DataFrame, fits: list[Fit],
                    opts: Evaluation, columns: Columns, seed: int, run_id: str) -> EvalData:
    """Check everything and build the persisted evaluation frame from the two input tables and
    the run's set memberships (DataFrame[method, k, id]; InputError on bad input, nothing is
    written).  One pass over the joined data validates it: dimensions,
    non-finite features, null or negative labels, null group values, removal-set ids absent
    from the forget table (against a count of the sets' distinct ids), empty held-out or
    training sets."""
    opts.check()
    methods = tuple(dict.fromkeys(f.method for f in fits))
    forget = read_domain(forget_raw, "forget", columns, opts.label_col, opts.group_cols)
    retain = read_domain(retain_raw, "retain", columns, opts.label_col, opts.group_cols)
    if forget.schema[ID].dataType != retain.schema[ID].dataType:
        raise InputError(f"id column {columns.id!r} is {forget.schema[ID].dataType.simpleString()} in the forget "
                         f"table and {retain.schema[ID].dataType.simpleString()} in the retain table")

    # One column per method: the k values whose removal set holds the id (the set of budget k
    # is exactly the rows whose array contains k; the sets need not be nested).
    ks = sorted({f.k for f in fits if f.k > 0})
    chosen = members.where(F.col("method").isin(*methods) & F.col("k").isin(*ks)) if ks else members.limit(0)
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
        holdout(seed, opts.holdout_fraction).alias(HELDOUT),
        _finite(F.col(FEATURES)).alias(VALID),
        F.size(FEATURES).alias(DIM),
        array_to_vector(F.col(FEATURES)).alias(VECTOR))
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _check_data(data, opts, columns, run_id, fits, methods, n_ids)
    except BaseException:
        data.unpersist()
        raise


def _check_data(data: DataFrame, opts: Evaluation, columns: Columns, run_id: str, fits: list[Fit],
                methods: tuple[str, ...], n_ids: Mapping[str, int]) -> EvalData:
    """The validation pass (one small aggregation of the persisted frame); ``n_ids``: the
    distinct ids of each method's evaluated removal sets."""
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
        if n_bad and columns.on_invalid != "drop":
            raise InputError(f"feature column {columns.features!r} of the {name[d]} table has {n_bad} rows with null "
                             "or non-finite values (--on-invalid drop leaves them out)")
        if n_bad:
            log.warning("%s: %d rows with null or non-finite features left out", name[d], n_bad)
    valid = [g for g in groups if g[VALID]]
    dims = {g["dmin"] for g in valid} | {g["dmax"] for g in valid}
    if len(dims) > 1:
        raise InputError(f"feature column {columns.features!r} has arrays of different lengths "
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
            raise InputError(f"removal sets of run {run_id!r} (method {m!r}) name {n_ids[m] - found} ids that "
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


