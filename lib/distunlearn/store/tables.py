"""Every table the job writes under ``--output``: its name, schema and partitioning.

Output contract 2 (distunlearn 0.2; the README's "Output tables" is the user-facing copy):

``removal_ranking`` (run_id, method)
    one row per (method, id) that some removal set of the run holds: the forget row's score,
    ``rank`` (1 = removed first; among the rows its group's cap allows) and, per group, its
    ``group_rank``.  Without groups, group is null and group_rank = rank.
``removal_budgets`` (run_id)
    per method and budget one row, or one per group with groups: k, the group's ``quota``
    (its share of the set) and ``threshold`` (the score of its last row), and
    ``ranking_version``, the removal_ranking version the row describes.

A removal set is the ranking rows with ``group_rank <= quota`` in each group (without groups:
``rank <= k``), for global, stratified and capped sets alike.  Budgets that resolve to the
same k are one set, recorded once.  Readers take the ranking as of ``ranking_version``, so a
rerun of the run id being written never mixes into what they read.

Contract 1 (distunlearn 0.1) wrote ``removal_sets`` instead, one row per budget a row
belonged to; a folder holding it is refused with one line (:func:`distunlearn.store.output.Store.check_folder`).
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT = 2
CONTRACT_1_TABLE = "removal_sets"


@dataclass(frozen=True)
class Table:
    """One output table: its folder name under the output, DDL schema and partition columns.
    ``{id}`` in the schema stands for the forget table's id type (bigint or string).
    ``compression``: the Parquet codec of its files when not Spark's default."""

    name: str
    schema: str
    partition_by: tuple[str, ...] = ("run_id",)
    compression: str | None = None

    def ddl(self, id_type: str = "bigint") -> str:
        return self.schema.format(id=id_type)

    @property
    def columns(self) -> list[str]:
        """The column names in schema order (commas inside ``<...>`` do not separate columns)."""
        names, depth, start = [], 0, 0
        for i, ch in enumerate(self.schema + ","):
            depth += (ch == "<") - (ch == ">")
            if ch == "," and depth == 0:
                names.append(self.schema[start:i].split()[0])
                start = i + 1
        return names


#: The columns that name one removal set of one run (a method's budget and its size).
SET_KEY = "run_id string, method string, budget double, budget_count bigint, k bigint"

STATISTICS = Table("statistics", (
    "run_id string, domain string, n bigint, dim int, mean array<double>, m2 array<double>, t3 array<double>, "
    "q4 double, rows bigint, dropped_nonfinite bigint, source string, created_at timestamp"),
    # Float64 sums do not compress (snappy saved nothing on them), and compressing the d x d
    # scatter's one Parquet page (a row is one page: 134 MB at d = 4096) ran the default 2 GB
    # heap out of memory (docs/BENCHMARKS.md, profiling log #12).
    compression="uncompressed")
NGRAM_STATISTICS = Table("ngram_statistics", (
    "run_id string, domain string, buckets int, ngram_order int, ngram_hash string, tokenizer string, "
    "n_docs bigint, n_grams bigint, counts array<bigint>, doc_freq array<bigint>, source string, "
    "created_at timestamp"))
REMOVAL_RANKING = Table("removal_ranking", (
    "run_id string, method string, id {id}, score double, rank bigint, group string, group_rank bigint"),
    ("run_id", "method"))
REMOVAL_BUDGETS = Table("removal_budgets", SET_KEY + ", group string, quota bigint, threshold double, "
                        "ranking_version bigint")
DIAGNOSTICS = Table("diagnostics", SET_KEY + ", kappa double, alpha double, eps double, frontier_eps double, "
                    "frontier_gap double, unlearned double")
CALIBRATION = Table("calibration", (
    "run_id string, method string, kappa double, tolerated_eps double, alpha_max double, target_alpha double, "
    "budget_for_target double"))
GROUP_DIAGNOSTICS = Table("group_diagnostics", SET_KEY + ", group string, n_forget bigint, n_retain bigint, "
                          "capacity bigint, removed bigint, deletion_rate double, forget_removed_share double, "
                          "kl_shift double, sample_weight double")
RETAIN_WEIGHTS = Table("retain_weights", (
    "run_id string, method string, budget double, id {id}, group string, sample_weight double"),
    ("run_id", "method"))
EVALUATION = Table("evaluation", SET_KEY + ", n_train bigint, n_test_forget bigint, n_test_retain bigint, "
                   "forget_recall double, forget_accuracy double, retain_accuracy double, "
                   "retain_log_loss double", ())
EVALUATION_SUMMARY = Table("evaluation_summary", (
    "run_id string, method string, metric string, baseline double, budget_to_halve double"), ())
EVALUATION_GROUPS = Table("evaluation_groups", SET_KEY + ", weighting string, group string, n_train bigint, "
                          "n_test_retain bigint, retain_accuracy double, n_test_forget bigint, "
                          "forget_recall double", ())
RUNS = Table("runs", (
    "run_id string, status string, started_at timestamp, finished_at timestamp, config string, "
    "forget_source string, retain_source string, stats_run_id string, n_forget bigint, "
    "n_retain bigint, dim int, covariance string, shrinkage double, timings map<string,double>, "
    "summary array<struct<method:string, budget:double, budget_count:bigint, k:bigint, threshold:double>>, "
    "forget_version bigint, retain_version bigint, statistics_mode string, base_run_id string, "
    "statistics_note string, stats_sha256 string, config_sha256 string, outputs map<string,bigint>, "
    "error string, contract int, claim_token string, claim_host string, claim_pid bigint"), ())
APPLIES = Table("applies", (
    "run_id string, method string, budget double, k bigint, action string, outcome string, "
    "table string, target string, mode string, table_version bigint, rows_before bigint, "
    "rows_removed bigint, rows_after bigint, readable bigint, at timestamp"), ())

ALL = (STATISTICS, NGRAM_STATISTICS, REMOVAL_RANKING, REMOVAL_BUDGETS, DIAGNOSTICS, CALIBRATION, GROUP_DIAGNOSTICS,
       RETAIN_WEIGHTS, EVALUATION, EVALUATION_SUMMARY, EVALUATION_GROUPS, RUNS, APPLIES)
