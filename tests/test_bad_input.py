"""Bad input, end to end: every case fails with a one-line DistUnlearnError (InputError or
ConfigError) naming the offending column, value or table, and nothing is written under
``--output`` (the folder is not even created; an output of earlier runs keeps its tables).

The good tables are tiny (10 forget rows, 30 retain rows, d=3) and shared by the module;
each bad table is built inline with an explicit schema.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import ARROW_BATCH, frame, gaussian_tables, make_config, read_delta, read_sets, write_table
from distunlearn.commands.config import JobConfig
from distunlearn.commands.run import run_pipeline
from distunlearn.errors import ConfigError, DistUnlearnError, InputError

SCHEMA = "id long, features array<double>"
FAST = {"methods": ("mu2", "random"), "budgets": (0.5,)}  # enough for the runs that succeed


@dataclasses.dataclass(frozen=True)
class Good:
    forget: str  # ids 0..9, d=3
    retain: str  # ids 10_000..10_029, d=3
    xf: np.ndarray
    xr: np.ndarray


@pytest.fixture(scope="module")
def good(spark, tmp_path_factory) -> Good:
    root = tmp_path_factory.mktemp("good")
    f, r, xf, xr = gaussian_tables(spark, root, n_forget=10, n_retain=30, dim=3)
    return Good(f, r, xf, xr)


def rows(x, ids=None) -> list[tuple[object, list[float] | None]]:
    """(id, features) tuples; ids default to 0..n-1."""
    ids = range(len(x)) if ids is None else ids
    return [(i, None if v is None else [None if a is None else float(a) for a in v])
            for i, v in zip(ids, x, strict=True)]


def table(spark, tmp_path: Path, name: str, data: list, schema: str = SCHEMA, fmt: str = "parquet",
          partitions: int = 2) -> str:
    """Write (id, features) tuples as a Parquet folder (faster than Delta; the good tables
    are Delta) of ``partitions`` files."""
    return write_table(spark, data, tmp_path / name, schema, fmt=fmt, partitions=partitions)


def config(tmp_path: Path, forget: str, retain: str, **overrides) -> JobConfig:
    return make_config(tmp_path, forget, retain, **{**FAST, **overrides})


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and msg == msg.strip(), repr(msg)
    return msg


def fails(spark, cfg: JobConfig, error: type[DistUnlearnError] = InputError) -> str:
    """Run the job expecting ``error``; check the message is one line and the output folder
    was not created.  Returns the message."""
    with pytest.raises(error) as info:
        run_pipeline(spark, cfg)
    assert type(info.value) is error
    assert not Path(cfg.output).exists(), f"the failed run created {cfg.output}"
    return one_line(info.value)


# --------------------------------------------------------------------------- 1. tables
def test_missing_forget_path(spark, good, tmp_path):
    missing = str(tmp_path / "no" / "such" / "forget")
    msg = fails(spark, config(tmp_path, missing, good.retain))
    assert "forget" in msg and repr(missing) in msg and "not found" in msg


def test_missing_retain_catalog_table(spark, good, tmp_path):
    msg = fails(spark, config(tmp_path, good.forget, "no_such_db_table"))
    assert "retain table 'no_such_db_table' not found" in msg


# --------------------------------------------------------------------------- 2. columns
@pytest.mark.parametrize("option", ["id_col", "feature_col"])
def test_missing_column(spark, good, tmp_path, option):
    msg = fails(spark, config(tmp_path, good.forget, good.retain, **{option: "no_such_col"}))
    assert "'no_such_col'" in msg and "forget" in msg
    assert "id, features" in msg  # the columns the table does have


# --------------------------------------------------------------------------- 3. ids
def test_duplicate_forget_id_is_named(spark, good, tmp_path):
    data = rows(good.xf) + rows(good.xf[:1], ids=[4])  # id 4 twice
    f = table(spark, tmp_path, "f", data)
    msg = fails(spark, config(tmp_path, f, good.retain))
    assert "duplicate id 4 (2 rows)" in msg and "'id'" in msg and "forget" in msg


def test_null_forget_id(spark, good, tmp_path):
    f = table(spark, tmp_path, "f", rows(good.xf, ids=[0, 1, 2, None, 4, 5, 6, 7, 8, 9]))
    msg = fails(spark, config(tmp_path, f, good.retain))
    assert "'id'" in msg and "forget" in msg and "null" in msg


@pytest.fixture
def retain_with_duplicate(spark, good, tmp_path) -> str:
    ids = list(range(10_000, 10_030))
    ids[17] = 10_005
    return table(spark, tmp_path, "r", rows(good.xr, ids=ids), partitions=3)


def test_duplicate_retain_id_is_named(spark, good, tmp_path, retain_with_duplicate):
    msg = fails(spark, config(tmp_path, good.forget, retain_with_duplicate, check_retain_ids=True))
    assert "duplicate id 10005 (2 rows)" in msg and "retain" in msg


def test_duplicate_retain_id_accepted_without_the_check(spark, good, tmp_path, retain_with_duplicate):
    cfg = config(tmp_path, good.forget, retain_with_duplicate, check_retain_ids=False)
    report = run_pipeline(spark, cfg)
    assert report.n_retain == 30 and report.n_forget == 10
    assert len(read_sets(cfg.output)) == 2 * 5


# --------------------------------------------------------------------------- 4. types
@pytest.mark.parametrize("schema, value, named", [
    ("id long, features string", "1,2,3", ["'features'", "got string"]),
    ("id long, features array<string>", ["1", "2", "3"], ["'features'", "got array<string>"]),
    ("id double, features array<double>", [1.0, 2.0, 3.0], ["'id'", "got double"]),
], ids=["string_features", "array_of_string_features", "double_id"])
def test_wrong_column_type(spark, good, tmp_path, schema, value, named):
    first = 0.5 if schema.startswith("id double") else 0
    f = table(spark, tmp_path, "f", [(first + i, value) for i in range(5)], schema=schema)
    msg = fails(spark, config(tmp_path, f, good.retain))
    assert "forget" in msg and all(n in msg for n in named), msg


# --------------------------------------------------------------------------- 5. feature values
def test_null_feature_array(spark, good, tmp_path):
    x = [*good.xf[:3], None, *good.xf[4:]]
    f = table(spark, tmp_path, "f", rows(x))
    msg = fails(spark, config(tmp_path, f, good.retain))
    assert "'features'" in msg and "forget" in msg and "1 null arrays" in msg


def test_null_element_inside_an_array(spark, good, tmp_path):
    x = [list(v) for v in good.xf]
    x[6][1] = None
    f = table(spark, tmp_path, "f", rows(x))
    msg = fails(spark, config(tmp_path, f, good.retain))
    assert "'features'" in msg and "forget" in msg and "null elements" in msg


def _partition_lengths(spark, path: str) -> list[list[int]]:
    """The array lengths stored in each partition of the Parquet folder, sorted."""
    df = spark.read.parquet(path).select(F.spark_partition_id().alias("p"), F.size("features").alias("d"))
    out: dict[int, set[int]] = {}
    for r in df.collect():
        out.setdefault(r["p"], set()).add(r["d"])
    return sorted(sorted(v) for v in out.values())


B = ARROW_BATCH  # rows per Arrow batch in the test session


@pytest.mark.parametrize("files, partitions", [
    ([[3, 4, 3, 4, 3, 4]], [[3, 4]]),                     # lengths 3 and 4 in one Arrow batch
    ([[3] * B + [4] * B], [[3, 4]]),                      # one batch of each, same partition
    ([[3, 4] * 3 + [3] + [4] * B], [[3, 4]]),             # a ragged batch, then a batch of 4s
    ([[3] * 6, [4] * 6], [[3], [4]]),                     # one Parquet file (partition) of each
], ids=["one_batch", "batches_of_one_partition", "ragged_batch_then_uniform", "partitions"])
def test_ragged_arrays(spark, good, tmp_path, files, partitions):
    """Arrays of lengths 3 and 4 in one forget table, however they fall into batches and
    partitions (each list of ``files`` is written, in order, as one Parquet file)."""
    path, rng, start = str(tmp_path / "f"), np.random.default_rng(5), 0
    for lengths in files:
        data = rows([rng.standard_normal(d) for d in lengths], ids=range(start, start + len(lengths)))
        spark.createDataFrame(data, SCHEMA).coalesce(1).write.mode("append").parquet(path)
        start += len(lengths)
    assert _partition_lengths(spark, path) == partitions  # the layout the case is about
    msg = fails(spark, config(tmp_path, path, good.retain))
    assert "'features'" in msg and "forget" in msg and "different lengths (3 to 4)" in msg


# --------------------------------------------------------------------------- 6. dimensions
def test_dimension_mismatch(spark, good, tmp_path):
    xr4 = np.random.default_rng(2).standard_normal((30, 4))
    r = table(spark, tmp_path, "r", rows(xr4, ids=range(10_000, 10_030)))
    msg = fails(spark, config(tmp_path, good.forget, r))
    assert "'features'" in msg and "dimension 3 in the forget table but 4 in the retain table" in msg


# --------------------------------------------------------------------------- 7. NaN and inf
BAD_IDS = (3, 7)


@pytest.fixture
def forget_with_nonfinite(spark, good, tmp_path) -> str:
    x = [list(v) for v in good.xf]
    x[3][0] = float("nan")
    x[7][2] = float("-inf")
    return table(spark, tmp_path, "f", rows(x), fmt="delta")


def test_nonfinite_fails_by_default(spark, good, tmp_path, forget_with_nonfinite):
    msg = fails(spark, config(tmp_path, forget_with_nonfinite, good.retain, on_invalid="fail"))
    assert "NaN" in msg and "'features'" in msg and "forget" in msg and "2 rows" in msg


def test_nonfinite_rows_dropped(spark, good, tmp_path, forget_with_nonfinite):
    cfg = config(tmp_path, forget_with_nonfinite, good.retain, on_invalid="drop",
                 methods=("mu2", "lr_gauss", "random"), budgets=(0.5, 1.0))
    report = run_pipeline(spark, cfg)
    assert report.n_forget == 8
    sets = read_sets(cfg.output)
    assert not set(sets["id"]) & set(BAD_IDS)
    for (method, budget), group in sets.groupby(["method", "budget"]):
        k = {0.5: 4, 1.0: 8}[budget]  # k = floor(budget * n1) with n1 = 8 valid rows
        assert (group["k"] == k).all() and sorted(group["rank"]) == list(range(1, k + 1)), (method, budget)
    assert set(sets[sets.budget == 1.0]["id"]) == set(range(10)) - set(BAD_IDS)
    stats = read_delta(f"{cfg.output}/statistics").set_index("domain")
    assert stats.loc["forget", "dropped_nonfinite"] == 2
    assert stats.loc["forget", "rows"] == 10 and stats.loc["forget", "n"] == 8
    assert stats.loc["retain", "dropped_nonfinite"] == 0


# --------------------------------------------------------------------------- 8. sizes
def test_empty_forget(spark, good, tmp_path):
    f = table(spark, tmp_path, "f", [], fmt="delta")  # Delta keeps the schema of no rows
    msg = fails(spark, config(tmp_path, f, good.retain))
    assert "forget table has no usable rows (0 rows" in msg


def test_empty_retain(spark, good, tmp_path):
    r = table(spark, tmp_path, "r", [], fmt="delta")
    msg = fails(spark, config(tmp_path, good.forget, r))
    assert "retain table has no usable rows (0 rows" in msg


def test_retain_with_one_row(spark, good, tmp_path):
    r = table(spark, tmp_path, "r", rows(good.xr[:1], ids=[10_000]), partitions=1)
    msg = fails(spark, config(tmp_path, good.forget, r))
    assert "retain" in msg and "1 usable row" in msg and "at least 2" in msg


# --------------------------------------------------------------------------- 9. methods and budgets
def test_unknown_method_rejected_by_check(good, tmp_path):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, good.forget, good.retain, methods=("mu2", "mahalanobis"))
    assert "'mahalanobis'" in one_line(info.value)


@pytest.mark.parametrize("option, value, message", [
    ("ridge", math.inf, "ridge must be a finite number, got inf"),
    ("retention_hours", math.inf, "retention_hours must be a finite number >= 0, got inf"),
    ("retention_hours", -1.0, "retention_hours must be a finite number >= 0, got -1.0"),
    ("max_condition", math.nan, "max_condition must be a finite number, got nan"),
])
def test_non_finite_or_out_of_range_numbers_rejected_by_check(good, tmp_path, option, value, message):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, good.forget, good.retain, **{option: value})
    assert one_line(info.value) == message


def test_unknown_method_rejected_by_run_pipeline(spark, good, tmp_path):
    """A config that skipped check() still fails before anything is written."""
    cfg = dataclasses.replace(config(tmp_path, good.forget, good.retain), methods=("mu2", "mahalanobis"))
    msg = fails(spark, cfg, ConfigError)
    assert "unknown method 'mahalanobis'" in msg


@pytest.mark.parametrize("budget", [0, 1.5, -0.1, float("nan")])
def test_budget_outside_unit_interval(spark, good, tmp_path, budget):
    msg = fails(spark, config(tmp_path, good.forget, good.retain, budgets=(0.5, budget)), ConfigError)
    assert f"budget {float(budget)!r} is outside (0, 1]" in msg


def test_budget_count_above_n1(spark, good, tmp_path):
    msg = fails(spark, config(tmp_path, good.forget, good.retain, budget_counts=(3, 11)), ConfigError)
    assert "budget count 11" in msg and "n1 = 10" in msg


# --------------------------------------------------------------------------- 10. run id
@pytest.mark.parametrize("run_id", ["a b", "x'; drop", "-lead", "é", "x" * 129])
def test_bad_run_id(good, tmp_path, run_id):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, good.forget, good.retain, run_id=run_id)
    assert f"run_id {run_id!r}" in one_line(info.value)


# --------------------------------------------------------------------------- 11. id type vs output
def _snapshot(output: str) -> dict[str, tuple[int, int]]:
    """(Delta version, row count) of each output table, read with delta-rs."""
    from deltalake import DeltaTable

    return {name: (DeltaTable(f"{output}/{name}").version(), len(read_delta(f"{output}/{name}")))
            for name in ("removal_ranking", "removal_budgets", "statistics", "runs")}


@pytest.fixture(scope="module")
def id_type_clash(spark, good, tmp_path_factory):
    """Run s1 with string ids, then run s2 (long ids) into the same output: the error and the
    tables before and after it."""
    root = tmp_path_factory.mktemp("clash")
    fs = write_table(spark, frame([f"s{i}" for i in range(10)], good.xf), root / "fs",
                     "id string, features array<double>")
    first = config(root, fs, good.retain, run_id="s1")
    run_pipeline(spark, first)
    before = _snapshot(first.output)
    with pytest.raises(DistUnlearnError) as info:
        run_pipeline(spark, dataclasses.replace(first, forget=good.forget, run_id="s2"))
    return first.output, info.value, before, _snapshot(first.output)


def test_id_type_clash_names_the_column_and_keeps_the_ranking(id_type_clash):
    output, exc, before, after = id_type_clash
    assert type(exc) is InputError
    msg = one_line(exc)
    assert "column 'id'" in msg and "string" in msg and "bigint" in msg and "removal_ranking" in msg
    assert after["removal_ranking"] == before["removal_ranking"] and after["runs"] == before["runs"]
    assert set(read_sets(output)["run_id"]) == {"s1"}
    assert set(read_delta(f"{output}/runs")["run_id"]) == {"s1"}


def test_id_type_clash_writes_nothing(id_type_clash):
    output, _, before, after = id_type_clash
    assert after == before
    assert set(read_delta(f"{output}/statistics")["run_id"]) == {"s1"}
