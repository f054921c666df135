"""Downstream evaluation on Spark, its models: a logistic regression per removal set (or the
constant model of a one-class training set) and its metrics on the held-out rows.  The
definitions are in :mod:`distunlearn.commands.evaluate`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from distunlearn.errors import InputError
from distunlearn.options import Evaluation
from distunlearn.transforms.evaluation import DOMAIN, LABEL, VECTOR, EvalData
from distunlearn.transforms.prepare import GROUP

log = logging.getLogger(__name__)

LOG_LOSS_CLIP = 1e-15


@dataclass(frozen=True)
class ConstantModel:
    """The model of a one-class training set: predicts ``label`` with probability 1 among
    ``num_classes`` classes (same output columns as a Spark classification model)."""

    label: int
    num_classes: int

    def transform(self, df: DataFrame) -> DataFrame:
        onehot = F.array(*[F.lit(1.0 if c == self.label else 0.0) for c in range(self.num_classes)])
        return df.withColumn("probability", array_to_vector(onehot)).withColumn(
            "prediction", F.lit(float(self.label)))


def fit_model(train: DataFrame, opts: Evaluation, num_classes: int,
              weight_col: str | None = None) -> tuple[LogisticRegressionModel | ConstantModel, dict[int, int]]:
    """The fitted model and the training rows per class (one pass over the cached rows).

    Spark ML logistic regression (L-BFGS, deterministic: it has no seed), family auto:
    binomial for 2 classes, multinomial above, with ``weight_col`` as the row weights when
    given; a :class:`ConstantModel` when the training set holds a single class (see
    :mod:`distunlearn.commands.evaluate`
    docstring for why Spark is not asked; weights do not change it).
    """
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
