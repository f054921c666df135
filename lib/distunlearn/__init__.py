"""distunlearn: distributional unlearning by selective data removal, on Spark and Delta Lake.

The library API (README, "In a notebook")::

    from distunlearn import select_removal, Columns, Selection
    result = select_removal(spark, forget_df, retain_df, columns=Columns(id="doc_id", features="emb"),
                            selection=Selection(budgets=(0.05, 0.1)))
    result.ranking                                # DataFrame: method, id, score, rank, group, group_rank
    result.removal_set("lr_gauss", k=result.budgets[0].k)
    result.write("/lake/unlearning", run_id="nightly-1")   # what `distunlearn run` writes
    result.release()

    read_removal_set(spark, "/lake/unlearning", "nightly-1", "lr_gauss", budget=0.05)

Layers (the data path is visible from the folder names):

1. ``core``: pure numpy, no pyspark (statistics, covariance, scoring rules, ranks, budgets,
   groups, diagnostics, the n-gram model, evaluation metrics);
2. ``transforms``: Spark DataFrame -> DataFrame (input checks, text featurizer, statistics
   passes, scoring, ranking, the evaluation's fits), no I/O;
3. ``store``: every Delta read and write (inputs, the output tables, the tables cleaned);
4. ``engine`` (the selection as one call) and ``commands`` (the ``distunlearn`` console
   command and the thin ``jobs/*.py`` spark-submit entry points), ``report`` (the HTML page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

from distunlearn.core.text import TextSettings  # noqa: E402
from distunlearn.options import Calibration, Columns, Evaluation, Groups, Options, Scoring, Selection  # noqa: E402

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from distunlearn.engine import Result
    from distunlearn.store.output import RemovalSet

__all__ = ["Calibration", "Columns", "Evaluation", "Groups", "Options", "Scoring", "Selection", "TextSettings",
           "read_removal_set", "select_removal"]


def select_removal(spark: SparkSession, forget: Any, retain: Any, options: Options | None = None,
                   **parts: Any) -> Result:
    """The removal sets of every method and budget: :func:`distunlearn.engine.select_removal`."""
    from distunlearn.engine import select_removal as run

    return run(spark, forget, retain, options, **parts)


def read_removal_set(spark: SparkSession, output: str, run_id: str, method: str, budget: float | None = None,
                     k: int | None = None) -> RemovalSet:
    """One stored removal set (``.rows``: DataFrame[id, score, rank, group, group_rank]) of a
    succeeded run: :meth:`distunlearn.store.output.Store.removal_set`."""
    from distunlearn.store.output import Store

    return Store(spark, output).removal_set(run_id, method, budget=budget, k=k)
