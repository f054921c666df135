"""The options of a selection, one small frozen dataclass per concern.

:func:`distunlearn.select_removal` takes them; the command line and the YAML files
(:mod:`distunlearn.commands.config`, one flat ``key: value`` per option) map onto them, and
take their defaults from here.  Each ``check`` raises :class:`~distunlearn.errors.ConfigError`
naming the value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from distunlearn.core.budgets import DEFAULT_BUDGETS
from distunlearn.core.covariance import COVARIANCE_KINDS
from distunlearn.core.groups import GROUP_BUDGETS, check_cap
from distunlearn.core.scoring import COSINE_CENTERS, COVARIANCE_SOURCES, DEFAULT_METHODS, validate_methods
from distunlearn.core.text import TextSettings
from distunlearn.errors import ConfigError

INVALID_POLICIES = ("fail", "drop")
SELECTIONS = ("topk", "gumbel")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")


def _at_least(name: str, value: float, low: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be at least {low:g}, got {value!r}")


@dataclass(frozen=True)
class Columns:
    """Which columns of the two tables the job reads, and what it does with bad rows.

    ``features``: ``array<float|double>``, an integer array or a Spark ML vector; or ``text``,
    a string column scored through hashed n-grams (then ``features`` is ignored).  ``groups``:
    column(s) present in both tables whose value (or combination) is a row's group.
    """

    id: str = "id"
    features: str = "features"
    text: str = ""
    groups: tuple[str, ...] = ()
    on_invalid: str = "fail"  # rows with NaN or +-inf features: "fail" the run, or "drop" them
    check_retain_ids: bool = True  # forget ids are always checked (they are the output)

    def check(self) -> Columns:
        for name in ("id", "features"):
            if not getattr(self, name):
                raise ConfigError(f"the {name} column name is empty")
        _choice("on_invalid", self.on_invalid, INVALID_POLICIES)
        return self


@dataclass(frozen=True)
class Scoring:
    """The scoring rules and the covariance of the Mahalanobis ones (README, "Methods")."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    covariance: str = "full"
    covariance_source: str = "pooled"
    covariance_rank: int = 64
    ridge: float = 1e-3
    max_condition: float = 1e8
    cosine_center: str = "none"
    seed: int = 0  # of the random method, the Gumbel noise and the text projection

    def check(self) -> Scoring:
        validate_methods(self.methods)
        _choice("covariance", self.covariance, COVARIANCE_KINDS)
        _choice("covariance_source", self.covariance_source, COVARIANCE_SOURCES)
        _choice("cosine_center", self.cosine_center, COSINE_CENTERS)
        _at_least("covariance_rank", self.covariance_rank, 1)
        _at_least("ridge", self.ridge, 0)
        _at_least("max_condition", self.max_condition, 1)
        return self


@dataclass(frozen=True)
class Selection:
    """The budgets (fractions of the forget table and absolute counts, mixed freely) and how a
    set of size k is picked: ``topk`` (exact) or ``gumbel`` (k rows drawn with probability
    proportional to exp(score), DSIR's importance resampling)."""

    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    budget_counts: tuple[int, ...] = ()
    selection: str = "topk"

    def check(self) -> Selection:
        _choice("selection", self.selection, SELECTIONS)
        if not self.budgets and not self.budget_counts:
            raise ConfigError("no budget given; pass --budgets (fractions) or --budget-counts")
        return self


@dataclass(frozen=True)
class Groups:
    """Group-robust removal (README, "Groups"); needs ``Columns.groups``."""

    budget: str = "global"  # or "stratified"
    cap: float = 1.0
    reweight: bool = False

    def check(self) -> Groups:
        _choice("group_budget", self.budget, GROUP_BUDGETS)
        check_cap(self.cap)
        return self


@dataclass(frozen=True)
class Calibration:
    """The calibration of the diagnostics: the tolerated preservation cost (nats) and the
    removal to reach (0: halfway between no removal and full removal)."""

    tolerated_eps: float = 0.1
    target_alpha: float = 0.0

    def check(self) -> Calibration:
        _at_least("tolerated_eps", self.tolerated_eps, 0)
        _at_least("target_alpha", self.target_alpha, 0)
        return self


@dataclass(frozen=True)
class Evaluation:
    """Downstream evaluation (``evaluate``; :mod:`distunlearn.commands.evaluate`).

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

    def check(self) -> Evaluation:
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if round(self.holdout_fraction * 10_000) < 1:  # the split's hash buckets
            raise ConfigError(f"holdout_fraction {self.holdout_fraction} is below 1/10000")
        _at_least("eval_reg_param", self.reg_param, 0)
        _at_least("eval_max_iter", self.max_iter, 1)
        for b in self.budgets:
            if not 0 < b <= 1:
                raise ConfigError(f"eval budget {b} must be in (0, 1]")
        if self.reweight and not self.group_cols:
            raise ConfigError("reweight needs --group-col")
        return self


@dataclass(frozen=True)
class Options:
    """Every option of :func:`distunlearn.select_removal`, grouped by concern."""

    columns: Columns = field(default_factory=Columns)
    scoring: Scoring = field(default_factory=Scoring)
    selection: Selection = field(default_factory=Selection)
    groups: Groups = field(default_factory=Groups)
    text: TextSettings = field(default_factory=TextSettings)
    calibration: Calibration = field(default_factory=Calibration)

    def check(self) -> Options:
        """Check every part and the options that depend on each other; returns self."""
        for part in (self.columns, self.scoring, self.selection, self.groups, self.calibration):
            part.check()
        if self.columns.text:
            self.text.check()
        elif "lr_ngram" in self.scoring.methods:
            raise ConfigError("method lr_ngram scores text: give the text column with --text-col")
        if not self.columns.groups:
            for name, value, default in (("group_budget", self.groups.budget, "global"),
                                         ("group_cap", self.groups.cap, 1.0),
                                         ("reweight", self.groups.reweight, False)):
                if value != default:
                    raise ConfigError(f"{name} needs a group column: give it with --group-col")
        return self

    def replace(self, **parts: object) -> Options:
        """A copy with some parts replaced: ``options.replace(scoring=Scoring(methods=...))``."""
        unknown = sorted(set(parts) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown option group {unknown[0]!r}")
        return dataclasses.replace(self, **parts)  # type: ignore[arg-type]


#: Each option's flat name (the config-file key and the command-line flag, ``--id-col``) and
#: where it lives in :class:`Options`.  The ``runs`` ledger stores a run's options flat.
FLAT: dict[str, tuple[str, str]] = {
    "id_col": ("columns", "id"), "feature_col": ("columns", "features"), "text_col": ("columns", "text"),
    "group_col": ("columns", "groups"), "on_invalid": ("columns", "on_invalid"),
    "check_retain_ids": ("columns", "check_retain_ids"),
    "methods": ("scoring", "methods"), "covariance": ("scoring", "covariance"),
    "covariance_source": ("scoring", "covariance_source"), "covariance_rank": ("scoring", "covariance_rank"),
    "ridge": ("scoring", "ridge"), "max_condition": ("scoring", "max_condition"),
    "cosine_center": ("scoring", "cosine_center"), "seed": ("scoring", "seed"),
    "budgets": ("selection", "budgets"), "budget_counts": ("selection", "budget_counts"),
    "selection": ("selection", "selection"),
    "group_budget": ("groups", "budget"), "group_cap": ("groups", "cap"), "reweight": ("groups", "reweight"),
    "ngram_buckets": ("text", "buckets"), "ngram_order": ("text", "order"), "ngram_hash": ("text", "hash_name"),
    "ngram_smoothing": ("text", "smoothing"), "ngram_length_norm": ("text", "length_norm"),
    "text_dim": ("text", "dim"), "text_embedding_model": ("text", "embedding_model"),
    "tolerated_eps": ("calibration", "tolerated_eps"), "target_alpha": ("calibration", "target_alpha"),
}


def default(name: str) -> object:
    """The default of the flat option ``name``."""
    part, attr = FLAT[name]
    return getattr(getattr(Options(), part), attr)


def to_flat(options: Options) -> dict[str, object]:
    """``options`` as flat ``name: value`` pairs (tuples as lists: JSON-ready)."""
    out: dict[str, object] = {}
    for name, (part, attr) in FLAT.items():
        value = getattr(getattr(options, part), attr)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def from_flat(values: dict[str, object]) -> Options:
    """The options of flat ``name: value`` pairs (other keys are ignored; missing ones keep
    their defaults); lists become tuples.  Not checked: call ``.check()``."""
    parts: dict[str, dict[str, object]] = {}
    for name, value in values.items():
        if name in FLAT:
            part, attr = FLAT[name]
            parts.setdefault(part, {})[attr] = tuple(value) if isinstance(value, list) else value
    base = Options()
    return dataclasses.replace(base, **{p: dataclasses.replace(getattr(base, p), **v) for p, v in parts.items()})
