"""The command line's and the YAML files' options: one flat frozen dataclass, loaded from YAML,
overridden from the command line, and mapped onto the library's option objects.

Precedence, lowest first: the defaults, the YAML file (``--config``), command-line flags.
Every field is a flag: ``feature_col`` is ``--feature-col``; tuples are comma-separated
(``--methods lr_gauss,mu2``); ``spark_conf`` takes repeated ``--spark-conf KEY=VALUE``.
The help text of each flag is the ``help`` metadata below, so ``--help`` and this file cannot
drift apart.  The selection's options take their defaults from
:mod:`distunlearn.options` (:func:`~distunlearn.options.default`) and become its objects
through :meth:`JobConfig.options`; the others (sources, outputs, cleaning, evaluation,
report, Spark) are the commands' own.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distunlearn import options as opts
from distunlearn.core.covariance import COVARIANCE_KINDS
from distunlearn.core.groups import GROUP_BUDGETS
from distunlearn.core.scoring import COSINE_CENTERS, COVARIANCE_SOURCES, METHODS
from distunlearn.core.text import NGRAM_HASHES
from distunlearn.errors import ConfigError
from distunlearn.options import INVALID_POLICIES, SELECTIONS, Evaluation, Options

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
APPLY_MODES = ("delete", "copy")
EXPORT_FORMATS = ("delta", "parquet")


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def _opt(help: str, **meta: Any) -> Any:
    """A selection option: its default is filled in from :mod:`distunlearn.options`."""
    return field(default=None, metadata={"help": help, "option": True, **meta})


def _option_defaults(cls: type) -> type:
    """Give every :func:`_opt` field the default of the option of its name in
    :mod:`distunlearn.options` (one source for both); runs before ``@dataclass`` reads them."""
    for name, value in vars(cls).items():
        if isinstance(value, dataclasses.Field) and value.metadata.get("option"):
            value.default = opts.default(name)
    return cls


@dataclass(frozen=True)
@_option_defaults
class JobConfig:
    """All settings of a run.  See ``conf/local.yaml`` for an annotated copy of the defaults."""

    # --- inputs and outputs
    forget: str = _f("", "forget table (rows to consider for removal): a Delta path, a Parquet "
                         "folder or a catalog table name", required=True)
    retain: str = _f("", "retain table (rows to keep): a Delta path, a Parquet folder or a "
                         "catalog table name", required=True)
    id_col: str = _opt("id column in both tables (long or string); must be unique and non-null "
                       "in the forget table")
    feature_col: str = _opt("feature column in both tables: array<float|double> or a Spark ML vector")
    text_col: str = _opt("text column in both tables (string) to use instead of --feature-col: "
                         "hashed word n-grams for lr_ngram, TF-IDF projected to --text-dim dims for "
                         "the other methods (README, \"Text input\")")
    output: str = _f("", "output folder; the Delta tables removal_ranking, removal_budgets, statistics, "
                         "diagnostics and runs are created under it", required=True)
    run_id: str = _f("", "identifier of this run ([A-Za-z0-9._-], up to 128 chars); rerunning an "
                         "id replaces its rows", required=True)
    # --- method
    methods: tuple[str, ...] = _opt("scoring methods, comma-separated, from: "
                                    + ", ".join(METHODS), choices=METHODS)
    budgets: tuple[float, ...] = _opt("deletion budgets as fractions of the forget "
                                      "set in (0, 1], comma-separated; k = floor(f * n_forget)")
    budget_counts: tuple[int, ...] = _opt("deletion budgets as absolute row counts, "
                                          "comma-separated (in addition to --budgets)")
    covariance: str = _opt("covariance estimate for the Mahalanobis rules; 'full' falls "
                           "back to ledoit_wolf with a warning when n <= d or ill-conditioned",
                           choices=COVARIANCE_KINDS)
    covariance_source: str = _opt("rows the covariance is estimated from: 'pooled' "
                                  "(within-domain, forget and retain) or 'retain'",
                                  choices=COVARIANCE_SOURCES)
    covariance_rank: int = _opt("rank r for covariance=lowrank: the top r eigenvectors of the "
                                "covariance plus an isotropic rest; r >= d uses full instead")
    ridge: float = _opt("ridge for covariance=ridge, relative to the mean variance")
    max_condition: float = _opt("largest condition number accepted for covariance=full")
    cosine_center: str = _opt("centre features before cosine distances: 'none' or "
                              "'pooled_mean'", choices=COSINE_CENTERS)
    selection: str = _opt("how a removal set of size k is picked: 'topk', the k highest scores "
                          "(exact), or 'gumbel', the k highest of score + Gumbel noise seeded by (seed, id): "
                          "k rows sampled without replacement with probability proportional to exp(score) "
                          "(DSIR's importance resampling for lr_ngram)", choices=SELECTIONS)
    ngram_buckets: int = _opt("text: hash buckets of the n-grams (DSIR uses 10000)")
    ngram_order: int = _opt("text: longest n-gram (2: unigrams and bigrams)")
    ngram_hash: str = _opt("text: hash of an n-gram to its bucket: 'xxhash64' (Spark's, fast) or "
                           "'sha256' (DSIR's bucket function, for comparisons with DSIR: a whole "
                           "SpamAssassin run took 195 s against 47 s, docs/DSIR.md)", choices=NGRAM_HASHES)
    ngram_smoothing: float = _opt("text: pseudo-count added to every bucket of both domains before "
                                  "lr_ngram's log-ratio (1: Laplace smoothing)")
    ngram_length_norm: bool = _opt("text: divide lr_ngram by the document's n-gram count")
    text_dim: int = _opt("text: dimensions of the seeded random projection of TF-IDF vectors that the "
                         "Gaussian methods score")
    text_embedding_model: str = _opt("text: folder of a locally saved sentence-transformers model whose "
                                     "embeddings replace the TF-IDF projection as the Gaussian methods' "
                                     "features (needs the optional sentence-transformers package on driver "
                                     "and workers; nothing is downloaded at run time)")
    group_col: tuple[str, ...] = _opt("group column(s) in both tables, comma-separated (any type; several "
                                      "columns: their combination is the group): per-group deletion rates, "
                                      "statistics shifts and weights are reported (table group_diagnostics), "
                                      "and --group-budget/--group-cap/--reweight apply (README, \"Groups\")")
    group_budget: str = _opt("with --group-col: 'global' ranks all forget rows together; 'stratified' "
                             "gives each group a share of k proportional to its share of the forget set "
                             "(largest-remainder rounding, the total is exactly k) and takes the top of each "
                             "group's own ranking", choices=GROUP_BUDGETS)
    group_cap: float = _opt("with --group-col: the largest fraction of a group's rows (forget + retain) "
                            "a removal set may delete, in (0, 1]; budgets larger than the cap allows are "
                            "reduced, with a warning (1: no cap)")
    reweight: bool = _opt("with --group-col: write the Delta table retain_weights (run_id, method, budget, "
                          "id, group, sample_weight): per budget, retain rows of group g weigh 1 + r_g / n2_g so "
                          "each group keeps its original total weight (kept forget rows stay at 1); one row per "
                          "retain row, method and budget")
    seed: int = _opt("seed of the random method (a hash of seed and id; independent of partitioning)")
    on_invalid: str = _opt("rows whose features contain NaN or +-inf: 'fail' the run, or "
                           "'drop' them and report the count", choices=INVALID_POLICIES)
    check_retain_ids: bool = _opt("also check the retain ids for nulls and duplicates (one "
                                  "shuffle of the retain ids; forget ids are always checked)")
    tolerated_eps: float = _opt("diagnostics: tolerated preservation cost KL(p2 || p) in nats; "
                                "the calibration reports the largest removal reachable within it")
    target_alpha: float = _opt("diagnostics: removal KL(p1 || p) to reach; the calibration reports "
                               "each method's smallest budget reaching it (0: halfway between no removal "
                               "and full removal)")
    stats_run_id: str = _f("", "score with the statistics stored under this run id instead of "
                               "computing them (score subcommand; empty: this run's own)")
    takeover: bool = _f(False, "run/score/stats: write a run id whose 'running' row in the runs ledger "
                        "was left by a run on another machine that died (a run on this machine is "
                        "checked without it; a live run's id is refused either way)")
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
    method: str = _f("", "apply/verify/undo/export: the method of the removal set", choices=METHODS)
    budget: float = _f(0.0, "apply/verify/undo/export: the budget of the removal set, as recorded in "
                            "removal_budgets.budget (a fraction; for a --budget-counts budget, k / n_forget)")
    k: int = _f(0, "apply/verify/undo/export: the removal set of this size instead of --budget: any k up to "
                   "the run's largest (global budgets; the ranking is stored), or a recorded one (stratified)")
    mode: str = _f("delete", "apply: 'delete' rows in place (MERGE ... WHEN MATCHED THEN DELETE) or "
                             "'copy' the table without them to --target", choices=APPLY_MODES)
    target: str = _f("", "apply --mode copy: path of the cleaned copy (a Delta table, replaced by each apply); "
                         "export: the folder to write the removal set to")
    export_format: str = _f("delta", "export: 'delta' (a new table, or one an earlier export wrote, replaced) "
                                     "or 'parquet' (a new folder)", choices=EXPORT_FORMATS)
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
    remote: str = _f("", "Spark Connect endpoint, sc://HOST:PORT (Databricks serverless, standard "
                         "access mode, any Connect server): run there instead of launching Spark; "
                         "empty: $SPARK_REMOTE when set")
    shuffle_partitions: int = _f(8, "spark.sql.shuffle.partitions")
    arrow_batch_size: int = _f(10000, "rows per Arrow batch handed to the numpy kernels "
                                      "(spark.sql.execution.arrow.maxRecordsPerBatch); at large d the "
                                      "passes over the features lower it, and the Parquet reader's "
                                      "batch, to (heap per task slot) / 256 / d rows: 1024 at d = 4096 "
                                      "with the default 2g")
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
    log_level: str = _f("INFO", "log level of the job's own messages (INFO: one line per stage)",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    verbose: bool = _f(False, "the job's DEBUG details (sources, each table written, each pass) and "
                              "Spark's own INFO logs; without it Spark logs warnings only")

    def options(self) -> Options:
        """The selection's options (:class:`distunlearn.options.Options`), not yet checked."""
        return opts.from_flat({name: getattr(self, name) for name in opts.FLAT})

    def evaluation(self) -> Evaluation:
        """The ``evaluate`` command's options, not yet checked."""
        return Evaluation(self.label_col, self.holdout_fraction, self.eval_budgets, self.eval_reg_param,
                          self.eval_max_iter, self.group_col, self.reweight)

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
        for f in dataclasses.fields(self):
            choices: tuple[str, ...] = f.metadata.get("choices", ())
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            label = f.name[:-1] if isinstance(value, tuple) else f.name  # "methods" -> "method"
            for v in values if choices else ():
                if v not in choices and v != "":  # "" : not given (method, outside apply)
                    raise ConfigError(f"unknown {label} {v!r}; choose from {', '.join(choices)}")
        for name in ("shuffle_partitions", "arrow_batch_size", "report_sample_rows"):
            if not 1 <= getattr(self, name) <= INT_MAX:  # Spark takes them as Java ints
                raise ConfigError(f"{name} must be in [1, {INT_MAX}], got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be at least 0, got {self.seed}")
        if self.as_of < -1:
            raise ConfigError(f"as_of must be a table version (>= 0) or -1 (the latest), got {self.as_of}")
        if not 0 <= self.retention_hours < math.inf:
            raise ConfigError(f"retention_hours must be a finite number >= 0, got {self.retention_hours}")
        if self.k < 0:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        self.options().check()
        return self


#: The largest Java int and long: Spark settings and seeds beyond them cannot be passed on.
INT_MAX, LONG_MAX = 2**31 - 1, 2**63 - 1


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
            if isinstance(raw, bool) or float(raw) != int(float(raw)) or abs(float(raw)) > LONG_MAX:
                raise ValueError(raw)  # and beyond a Java long, which Spark would have to take
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
        if isinstance(raw, list | dict):
            raise ValueError(raw)
        return "" if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {name}: {raw!r} ({kind} expected)") from exc


FIELDS = {f.name: f for f in dataclasses.fields(JobConfig)}


def _as_typed(node: yaml.Node | None) -> Any:
    """A YAML document as Python with every scalar the text the user typed (or None for an
    empty or null one).  YAML's own types would change values silently: ``run_id: 0123`` is the
    octal integer 83 and ``run_id: no`` is False; :func:`_parse` converts the text to each
    field's type instead, and refuses what does not convert."""
    if node is None:
        return None
    if isinstance(node, yaml.MappingNode):
        return {_as_typed(k): _as_typed(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_as_typed(v) for v in node.value]
    return None if node.tag == "tag:yaml.org,2002:null" else node.value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of config fields; unknown keys are errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = _as_typed(yaml.compose(p.read_text())) or {}
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
