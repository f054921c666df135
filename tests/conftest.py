"""One Spark session for the whole test run: local[2], Delta on, UI off, 4 shuffle partitions
(more than one, so merge and ranking bugs across partitions show) and tiny Arrow batches (7
rows) so every UDF sees many batches per partition."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from distunlearn.commands.config import JobConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # localcluster: dev tooling
# Every JVM the suite starts (this session, CLI and fault drivers, the Connect server, the
# cluster's driver) reads tests/spark-conf/: Delta Lake's test settings and Spark's logs at WARN.
os.environ["SPARK_CONF_DIR"] = str(Path(__file__).resolve().parent / "spark-conf")

ARROW_BATCH = 7
SHUFFLE_PARTITIONS = 4
#: The command-line flags of the session's settings: an in-process ``main(..., launch=False)``
#: joins the session and applies its config's settings to it, as under spark-submit, so a test
#: that leaves them out changes the batches of every later test (see ``_session_untouched``).
SESSION_ARGS = ["--shuffle-partitions", str(SHUFFLE_PARTITIONS), "--arrow-batch-size", str(ARROW_BATCH)]
SESSION_SETTINGS = {"spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH)}


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from distunlearn.commands.session import get_session

    warehouse = str(tmp_path_factory.mktemp("warehouse"))
    cfg = JobConfig(shuffle_partitions=SHUFFLE_PARTITIONS, arrow_batch_size=ARROW_BATCH, driver_memory="2g",
                    spark_conf={"spark.ui.enabled": "false", "spark.default.parallelism": "4",
                                "spark.sql.warehouse.dir": warehouse})
    session = get_session(cfg, launch=True)
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _session_untouched(request):
    """Fail the test that leaves the shared session with other shuffle partitions or Arrow
    batches than the suite's (it happened: later golden runs then saw 10 000-row batches)."""
    yield
    if "spark" not in request.fixturenames:
        return
    conf = request.getfixturevalue("spark").conf
    changed = {k: conf.get(k) for k, v in SESSION_SETTINGS.items() if conf.get(k) != v}
    assert not changed, f"the test changed the shared session's settings: {changed}; pass SESSION_ARGS"


@pytest.fixture(scope="session")
def golden_run(spark, tmp_path_factory):
    """``golden_run(name)``: the classic run of the golden case ``name`` (tests/golden_cases.py),
    as (config, RunReport), made once per session on this session's tables.  Shared by the
    modules that only read its outputs: test_golden compares them with the previous code's
    stored outputs, test_connect with a run of the same case over Spark Connect."""
    from distunlearn.commands.run import run_pipeline
    from golden_cases import CASES, write_inputs

    root = tmp_path_factory.mktemp("golden-runs")
    inputs: dict[str, tuple[str, str]] = {}
    done: dict[str, tuple[JobConfig, Any]] = {}

    def get(name: str) -> tuple[JobConfig, Any]:
        if name not in done:
            case = next(c for c in CASES if c.name == name)
            if case.inputs not in inputs:
                inputs[case.inputs] = write_inputs(root / "inputs", case.inputs)
            forget, retain = inputs[case.inputs]
            cfg = make_config(root / name, forget, retain, run_id="golden", **case.options)
            done[name] = (cfg, run_pipeline(spark, cfg))
        return done[name]

    return get


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout's lib/ first on PYTHONPATH (drivers started
    as subprocesses run this tree's code, installed or not), plus ``extra``."""
    lib = str(Path(__file__).resolve().parents[1] / "lib")
    path = os.pathsep.join(p for p in (lib, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def frame(ids: Any, features: Any, id_name: str = "id", feature_name: str = "features") -> pd.DataFrame:
    """A pandas frame of ids and feature rows (lists or numpy rows; None for a null array)."""
    return pd.DataFrame({id_name: list(ids), feature_name: [None if f is None else list(f) for f in features]})


def write_table(spark, pdf: pd.DataFrame, path: Path, schema: str, fmt: str = "delta",
                partitions: int = 3) -> str:
    """Write ``pdf`` with Spark as a Delta table (or Parquet folder) of ``partitions`` files."""
    df = spark.createDataFrame(pdf, schema).repartition(partitions)
    df.write.format(fmt).mode("overwrite").save(str(path))
    return str(path)


def gaussian_tables(spark, root: Path, n_forget: int = 120, n_retain: int = 300, dim: int = 4, shift: float = 1.0,
                    seed: int = 7, dtype: str = "double") -> tuple[str, str, np.ndarray, np.ndarray]:
    """Forget ~ N(0, A A^T), retain ~ N(shift * 1, A A^T) with a random mixing A (so the
    covariance is not the identity); ids 0..n_forget-1 and 10_000.. for retain."""
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))
    xf = rng.standard_normal((n_forget, dim)) @ mix.T
    xr = rng.standard_normal((n_retain, dim)) @ mix.T + shift
    if dtype == "float":
        xf, xr = xf.astype(np.float32), xr.astype(np.float32)
    schema = f"id long, features array<{dtype}>"
    f = write_table(spark, frame(range(n_forget), xf), root / "forget", schema)
    r = write_table(spark, frame(range(10_000, 10_000 + n_retain), xr), root / "retain", schema)
    return f, r, xf.astype(np.float64), xr.astype(np.float64)


def make_config(root: Path, forget: str, retain: str, **overrides: Any) -> JobConfig:
    base = JobConfig(forget=forget, retain=retain, output=str(root / "out"), run_id="t1",
                     shuffle_partitions=SHUFFLE_PARTITIONS, arrow_batch_size=ARROW_BATCH)
    return dataclasses.replace(base, **overrides).check()


def read_delta(path: str | Path) -> pd.DataFrame:
    """Read a Delta table with delta-rs (the ``deltalake`` package), not with Spark."""
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pandas()


def read_sets(output: str | Path) -> pd.DataFrame:
    """Every recorded removal set under ``output``, one row per (run_id, method, budget, id):
    the output contract's rule applied with pandas to the tables read with delta-rs: a set is
    the removal_ranking rows with group_rank <= the group's quota in removal_budgets (null
    groups match null groups).  Columns: run_id, method, budget, budget_count, k, rank, id,
    score, group, group_rank."""
    ranking, budgets = read_delta(Path(output) / "removal_ranking"), read_delta(Path(output) / "removal_budgets")
    budgets = budgets.assign(_g=budgets["group"].fillna("\0"))
    ranking = ranking.assign(_g=ranking["group"].fillna("\0"))
    joined = ranking.merge(budgets[["run_id", "method", "_g", "budget", "budget_count", "k", "quota"]],
                           on=["run_id", "method", "_g"])
    sets = joined[joined.group_rank <= joined.quota].drop(columns=["_g", "quota"])
    columns = ["run_id", "method", "budget", "budget_count", "k", "rank", "id", "score", "group", "group_rank"]
    return sets[columns].reset_index(drop=True)
