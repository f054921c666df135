"""Job configuration: one frozen dataclass, loaded from YAML, overridden from the command line.

Precedence, lowest first: the defaults below, the YAML file (``--config``), command-line
flags.  Every field is a flag: ``feature_col`` is ``--feature-col``; tuples are
comma-separated (``--methods lr_gauss,mu2``); ``spark_conf`` takes repeated
``--spark-conf KEY=VALUE``.  The help text of each flag is the ``help`` metadata below, so
``--help`` and this file cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distunlearn.budgets import DEFAULT_BUDGETS
from distunlearn.covariance import COVARIANCE_KINDS
from distunlearn.errors import ConfigError
from distunlearn.groups import GROUP_BUDGETS, check_cap
from distunlearn.scoring import COSINE_CENTERS, COVARIANCE_SOURCES, DEFAULT_METHODS, METHODS
from distunlearn.text import NGRAM_HASHES, TextSettings

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INVALID_POLICIES = ("fail", "drop")
APPLY_MODES = ("delete", "copy")
SELECTIONS = ("topk", "gumbel")


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class JobConfig:
    """All settings of a run.  See ``conf/local.yaml`` for an annotated copy of the defaults."""

    # --- inputs and outputs
    forget: str = _f("", "forget table (rows to consider for removal): a Delta path, a Parquet "
                         "folder or a catalog table name", required=True)
    retain: str = _f("", "retain table (rows to keep): a Delta path, a Parquet folder or a "
                         "catalog table name", required=True)
    id_col: str = _f("id", "id column in both tables (long or string); must be unique and non-null "
                           "in the forget table")
    feature_col: str = _f("features", "feature column in both tables: array<float|double> or a "
                                      "Spark ML vector")
    text_col: str = _f("", "text column in both tables (string) to use instead of --feature-col: "
                           "hashed word n-grams for lr_ngram, TF-IDF projected to --text-dim dims for "
                           "the other methods (README, \"Text input\")")
    output: str = _f("", "output folder; the Delta tables removal_sets, statistics and runs are "
                         "created under it", required=True)
    run_id: str = _f("", "identifier of this run ([A-Za-z0-9._-], up to 128 chars); rerunning an "
                         "id replaces its rows", required=True)
    # --- method
    methods: tuple[str, ...] = _f(DEFAULT_METHODS, "scoring methods, comma-separated, from: "
                                  + ", ".join(METHODS), choices=METHODS)
    budgets: tuple[float, ...] = _f(DEFAULT_BUDGETS, "deletion budgets as fractions of the forget "
                                    "set in (0, 1], comma-separated; k = floor(f * n_forget)")
    budget_counts: tuple[int, ...] = _f((), "deletion budgets as absolute row counts, "
                                        "comma-separated (in addition to --budgets)")
    covariance: str = _f("full", "covariance estimate for the Mahalanobis rules; 'full' falls "
                         "back to ledoit_wolf with a warning when n <= d or ill-conditioned",
                         choices=COVARIANCE_KINDS)
    covariance_source: str = _f("pooled", "rows the covariance is estimated from: 'pooled' "
                                "(within-domain, forget and retain) or 'retain'",
                                choices=COVARIANCE_SOURCES)
    covariance_rank: int = _f(64, "rank r for covariance=lowrank: the top r eigenvectors of the "
                              "covariance plus an isotropic rest; r >= d uses full instead")
    ridge: float = _f(1e-3, "ridge for covariance=ridge, relative to the mean variance")
    max_condition: float = _f(1e8, "largest condition number accepted for covariance=full")
    cosine_center: str = _f("none", "centre features before cosine distances: 'none' or "
                            "'pooled_mean'", choices=COSINE_CENTERS)
    selection: str = _f("topk", "how a removal set of size k is picked: 'topk', the k highest scores "
                        "(exact), or 'gumbel', the k highest of score + Gumbel noise seeded by (seed, id): "
                        "k rows sampled without replacement with probability proportional to exp(score) "
                        "(DSIR's importance resampling for lr_ngram)", choices=SELECTIONS)
    ngram_buckets: int = _f(65536, "text: hash buckets of the n-grams (DSIR uses 10000)")
    ngram_order: int = _f(2, "text: longest n-gram (2: unigrams and bigrams)")
    ngram_hash: str = _f("xxhash64", "text: hash of an n-gram to its bucket: 'xxhash64' (Spark's, fast) or "
                         "'sha256' (DSIR's bucket function, for comparisons with DSIR: a whole "
                         "SpamAssassin run took 195 s against 47 s, docs/DSIR.md)", choices=NGRAM_HASHES)
    ngram_smoothing: float = _f(1.0, "text: pseudo-count added to every bucket of both domains before "
                                "lr_ngram's log-ratio (1: Laplace smoothing)")
    ngram_length_norm: bool = _f(False, "text: divide lr_ngram by the document's n-gram count")
    text_dim: int = _f(64, "text: dimensions of the seeded random projection of TF-IDF vectors that the "
                           "Gaussian methods score")
    text_embedding_model: str = _f("", "text: folder of a locally saved sentence-transformers model whose "
                                   "embeddings replace the TF-IDF projection as the Gaussian methods' "
                                   "features (needs the optional sentence-transformers package on driver "
                                   "and workers; nothing is downloaded at run time)")
    group_col: tuple[str, ...] = _f((), "group column(s) in both tables, comma-separated (any type; several "
                                    "columns: their combination is the group): per-group deletion rates, "
                                    "statistics shifts and weights are reported (table group_diagnostics), "
                                    "and --group-budget/--group-cap/--reweight apply (README, \"Groups\")")
    group_budget: str = _f("global", "with --group-col: 'global' ranks all forget rows together; 'stratified' "
                           "gives each group a share of k proportional to its share of the forget set "
                           "(largest-remainder rounding, the total is exactly k) and takes the top of each "
                           "group's own ranking", choices=GROUP_BUDGETS)
    group_cap: float = _f(1.0, "with --group-col: the largest fraction of a group's rows (forget + retain) "
                          "a removal set may delete, in (0, 1]; budgets larger than the cap allows are "
                          "reduced, with a warning (1: no cap)")
    reweight: bool = _f(False, "with --group-col: write the Delta table retain_weights (run_id, method, budget, "
                        "id, group, sample_weight): per budget, retain rows of group g weigh 1 + r_g / n2_g so "
                        "each group keeps its original total weight (kept forget rows stay at 1); one row per "
                        "retain row, method and budget")
    seed: int = _f(0, "seed of the random method (a hash of seed and id; independent of "
                      "partitioning)")
    on_invalid: str = _f("fail", "rows whose features contain NaN or +-inf: 'fail' the run, or "
                         "'drop' them and report the count", choices=INVALID_POLICIES)
    check_retain_ids: bool = _f(True, "also check the retain ids for nulls and duplicates (one "
                                "shuffle of the retain ids; forget ids are always checked)")
    tolerated_eps: float = _f(0.1, "diagnostics: tolerated preservation cost KL(p2 || p) in nats; "
                              "the calibration reports the largest removal reachable within it")
    target_alpha: float = _f(0.0, "diagnostics: removal KL(p1 || p) to reach; the calibration reports "
                             "each method's smallest budget reaching it (0: halfway between no removal "
                             "and full removal)")
    stats_run_id: str = _f("", "score with the statistics stored under this run id instead of "
                               "computing them (score subcommand; empty: this run's own)")
    incremental: bool = _f(True, "when both tables are Delta tables that only gained rows since the last "
                           "succeeded run over the same sources (runs ledger), read only the new rows and "
                           "merge their statistics with that run's; --no-incremental recomputes in full")
    # --- evaluation (evaluate subcommand)
    label_col: str = _f("", "evaluate: integer class column in both tables (e.g. a digit; the forget "
                        "class is the forget table's most frequent label) for a multinomial classifier; "
                        "empty: a forget-vs-retain domain classifier")
    holdout_fraction: float = _f(0.2, "evaluate: fraction of each table held out for the metrics and "
                                 "never trained on, in (0, 1); chosen by a seeded hash of the id")
    eval_budgets: tuple[float, ...] = _f((), "evaluate: budgets of the run to evaluate, comma-separated "
                                         "(empty: every budget of the run)")
    eval_reg_param: float = _f(1e-3, "evaluate: L2 regularisation (regParam) of the logistic regression")
    eval_max_iter: int = _f(100, "evaluate: maximum L-BFGS iterations of the logistic regression")
    # --- apply, verify, undo, purge (nightly cleaning of a source table)
    table: str = _f("", "apply/verify/undo/purge: the table to clean (a Delta path or catalog table; "
                        "copy mode also reads Parquet); its id column is --id-col")
    method: str = _f("", "apply/verify/undo: the method of the removal set", choices=METHODS)
    budget: float = _f(0.0, "apply/verify/undo: the budget of the removal set, as stored in "
                            "removal_sets.budget (a fraction; for a --budget-counts budget, k / n_forget)")
    mode: str = _f("delete", "apply: 'delete' rows in place (MERGE ... WHEN MATCHED THEN DELETE) or "
                             "'copy' the table without them to --target", choices=APPLY_MODES)
    target: str = _f("", "apply --mode copy: path of the cleaned copy (a Delta table, replaced "
                         "by each apply)")
    enable_deletion_vectors: bool = _f(False, "apply: turn on deletion vectors on the table first "
                                       "(a protocol upgrade: readers without table features, e.g. "
                                       "older Delta clients, can no longer read it)")
    as_of: int = _f(-1, "verify: table version to check (-1: the latest)")
    force: bool = _f(False, "undo: restore even when other commits changed the table after the "
                            "apply (they are reverted too)")
    retention_hours: float = _f(168.0, "purge: VACUUM retention in hours; files a reader or an undo "
                                "could still need are kept this long")
    ignore_retention_check: bool = _f(False, "purge: allow a retention below Delta's safety minimum "
                                      "(delta.deletedFileRetentionDuration, 7 days by default); "
                                      "makes undo impossible and can break running readers")
    # --- report (report subcommand)
    html: str = _f("", "report: path of the HTML page to write (default: <output>/report-<run_id>.html)")
    report_sample_rows: int = _f(5000, "report: rows sampled from each table for the score histograms")
    # --- Spark
    master: str = _f("local[2]", "Spark master URL; ignored under spark-submit, which sets it")
    shuffle_partitions: int = _f(8, "spark.sql.shuffle.partitions")
    arrow_batch_size: int = _f(10000, "rows per Arrow batch handed to the numpy kernels "
                                      "(spark.sql.execution.arrow.maxRecordsPerBatch)")
    driver_memory: str = _f("2g", "spark.driver.memory (local mode: the whole job's memory)")
    ivy_dir: str = _f("~/.cache/distunlearn/ivy", "Ivy cache the Delta jars are fetched into "
                      "from Maven Central on first use")
    delta_jars: str = _f("", "comma-separated local Delta jar files to use instead of fetching "
                             "(air-gapped machines)")
    python_archive: str = _f("", "packed virtualenv for the executors (make cluster-env builds "
                                 "dist/distunlearn-env.tar.gz): shipped as spark.archives and "
                                 "used as their interpreter; empty: executors run the driver's "
                                 "interpreter path, which must exist on every worker; ignored "
                                 "under spark-submit (use --archives)")
    spark_conf: dict[str, str] = _f({}, "extra Spark settings, KEY=VALUE (repeatable)")
    log_level: str = _f("INFO", "log level of the job's own messages",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def text_settings(self) -> TextSettings:
        """The featurizer and n-gram options, checked (ConfigError)."""
        return TextSettings(self.ngram_buckets, self.ngram_order, self.ngram_hash, self.ngram_smoothing,
                            self.ngram_length_norm, self.text_dim, self.seed, self.text_embedding_model).check()

    def check(self, required: tuple[str, ...] = ("forget", "retain", "output", "run_id")) -> JobConfig:
        """Raise ConfigError for missing or malformed values; return self for chaining."""
        for name in required:
            if not getattr(self, name):
                raise ConfigError(f"missing required option --{name.replace('_', '-')} "
                                  f"(or '{name}:' in the config file)")
        for name in ("run_id", "stats_run_id"):
            value = getattr(self, name)
            if value and not RUN_ID_PATTERN.match(value):
                raise ConfigError(f"{name} {value!r} must match {RUN_ID_PATTERN.pattern}")
        for name in ("covariance_rank", "shuffle_partitions", "arrow_batch_size", "report_sample_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("ridge", "tolerated_eps", "target_alpha", "retention_hours"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.text_col:
            self.text_settings()
        elif "lr_ngram" in self.methods:
            raise ConfigError("method lr_ngram scores text: give the text column with --text-col")
        check_cap(self.group_cap)
        if not self.group_col:
            for name, value, default in (("group_budget", self.group_budget, "global"),
                                         ("group_cap", self.group_cap, 1.0), ("reweight", self.reweight, False)):
                if value != default:
                    raise ConfigError(f"{name} needs a group column: give it with --group-col")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        for f in dataclasses.fields(self):
            choices: tuple[str, ...] = f.metadata.get("choices", ())
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            label = f.name[:-1] if isinstance(value, tuple) else f.name  # "methods" -> "method"
            for v in values if choices else ():
                if v not in choices and v != "":  # "" : not given (method, outside apply)
                    raise ConfigError(f"unknown {label} {v!r}; choose from {', '.join(choices)}")
        return self


# ---------------------------------------------------------------------- parsing values
def _parse(f: dataclasses.Field[Any], raw: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    name = f.name
    kind = f.type if isinstance(f.type, str) else str(f.type)
    try:
        if kind.startswith("tuple"):
            items = raw.split(",") if isinstance(raw, str) else list(raw or [])
            items = [i.strip() if isinstance(i, str) else i for i in items]
            items = [i for i in items if i != ""]
            if "float" in kind:
                return tuple(float(i) for i in items)
            if "int" in kind:
                out = []
                for i in items:
                    v = float(i)
                    if v != int(v):
                        raise ValueError(i)
                    out.append(int(v))
                return tuple(out)
            return tuple(str(i) for i in items)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "yes", "1", "on"):
                return True
            if str(raw).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool) or float(raw) != int(float(raw)):
                raise ValueError(raw)
            return int(float(raw))
        if kind == "float":
            return float(raw)
        if kind.startswith("dict"):
            if isinstance(raw, dict):
                return {str(k): str(v) for k, v in raw.items()}
            out_d = {}
            for item in raw:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise ValueError(item)
                out_d[key.strip()] = value.strip()
            return out_d
        return "" if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {name}: {raw!r} ({kind} expected)") from exc


FIELDS = {f.name: f for f in dataclasses.fields(JobConfig)}


def from_stored(values: dict[str, Any]) -> JobConfig:
    """The config a run recorded (``runs.config``, JSON of ``dataclasses.asdict``); keys this
    version does not know are ignored, so older runs stay readable."""
    return JobConfig(**{k: _parse(FIELDS[k], v) for k, v in values.items() if k in FIELDS})


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of config fields; unknown keys are errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of option: value")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} in config file {str(p)!r}")
    return {k: _parse(FIELDS[k], v) for k, v in data.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (defaults suppressed so only given flags override)."""
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (flags override it)")
    groups = {
        "forget": parser.add_argument_group("inputs and outputs"),
        "methods": parser.add_argument_group("method"),
        "master": parser.add_argument_group("Spark"),
    }
    group = groups["forget"]
    for f in dataclasses.fields(JobConfig):
        group = groups.get(f.name, group)
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata["help"] + ("" if f.metadata.get("required") else f" (default: {shown!s})")
        help_text = help_text.replace("%", "%%")
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif f.type.startswith("dict"):
            group.add_argument(flag, dest=f.name, action="append", metavar="KEY=VALUE",
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, metavar=f.name.upper(),
                               default=argparse.SUPPRESS, help=help_text)


def from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> JobConfig:
    """Defaults, then ``--config`` file, then ``base`` overrides, then flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update(base or {})
    for name, f in FIELDS.items():
        if name in vars(args):
            parsed = _parse(f, getattr(args, name))
            if name == "spark_conf":
                parsed = {**values.get("spark_conf", {}), **parsed}
            values[name] = parsed
    return JobConfig(**values)
