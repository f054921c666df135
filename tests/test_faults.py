"""Faults during a run: real Spark, real Delta, real SIGKILLs, no mocks of Spark or Delta.
Every Spark driver here is a separate process (tests/fault_job.py or ``python -m
distunlearn``); the Delta outputs are read back with delta-rs (``deltalake``), and the removal
sets are compared with a numpy top-k computed from the raw input arrays.

- ``test_python_worker_killed_while_scoring_gives_the_undisturbed_outputs``: a Python worker
  SIGKILLs itself in the middle of the scoring UDF (after it has handed at least one scored
  batch to Spark), once.  Spark retries the task (master local[2,4]) and the run succeeds
  with removal sets, statistics and diagnostics equal to an undisturbed run's: the rows the
  dead worker had already produced are neither lost nor counted twice.
- ``test_driver_killed_between_writes_then_rerun_leaves_consistent_tables``: the driver is
  SIGKILLed after removal_ranking and removal_budgets have been written and before
  diagnostics, calibration and the final runs row.  The killed run is not marked
  "succeeded"; rerunning the same run id completes it without duplicate rows, with exactly k
  rows per (method, budget) equal to the numpy top-k, and a "succeeded" runs row.  And at
  every version of removal_budgets (what any reader could have opened at any time), every set
  it records, read from removal_ranking as of the version the row names, has exactly k rows,
  and every version of removal_ranking holds each (run, method, id) once: no reader ever sees
  a half-written budget or a mix of two writes.
- ``test_two_runs_writing_the_same_new_output_at_once``: two ``distunlearn run`` processes
  with different run ids start together on an output folder that does not exist yet (the
  first creation of every table is the race).  Per the spec either both succeed, or one
  fails with a one-line "distunlearn: error: ... conflict ..." message and the other succeeds;
  in both cases no row is lost or mixed up: every succeeded run has exactly its k rows per
  (method, budget) under its own run id, equal to the other run's and to the numpy top-k,
  and a failed run is not marked "succeeded" (or left no removal sets).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import read_delta, read_sets, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
JOB = [sys.executable, str(ROOT / "tests" / "fault_job.py")]
CLI = [sys.executable, "-m", "distunlearn"]
ENV = subprocess_env(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
TIMEOUT = 300  # seconds per driver process; each normally takes 20-60 s

# The settings of tests/fault_job.py (test 3 passes the same ones on the command line).
METHODS = ("lr_gauss", "maha_mu2", "mu2")
BUDGETS = (0.1, 0.5)
N_FORGET, N_RETAIN, DIM = 200, 400, 4
K = {0.1: 20, 0.5: 100}  # floor(budget * n_forget)
SET_KEY = ["run_id", "method", "budget"]
SET_ORDER = ["run_id", "method", "budget", "rank"]


# ------------------------------------------------------------------ inputs and reference
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[str, str, np.ndarray, np.ndarray]:
    """Forget ~ N(0, A A^T), retain ~ N(1, A A^T), as Parquet folders of 3 files each, written
    with pyarrow (no Spark in this process); ids 0..199 and 10_000.."""
    root = tmp_path_factory.mktemp("fault_inputs")
    rng = np.random.default_rng(2024)
    mix = np.eye(DIM) + 0.3 * rng.standard_normal((DIM, DIM))
    xf = rng.standard_normal((N_FORGET, DIM)) @ mix.T
    xr = rng.standard_normal((N_RETAIN, DIM)) @ mix.T + 1.0
    paths = []
    for name, x, first in (("forget", xf, 0), ("retain", xr, 10_000)):
        folder = root / name
        folder.mkdir()
        for part, rows in enumerate(np.array_split(np.arange(len(x)), 3)):
            table = pa.table({"id": pa.array(rows + first, pa.int64()),
                              "features": pa.array([x[i].tolist() for i in rows], pa.list_(pa.float64()))})
            pq.write_table(table, folder / f"part-{part:05d}.parquet")
        paths.append(str(folder))
    return paths[0], paths[1], xf, xr


def reference_sets(xf: np.ndarray, xr: np.ndarray) -> dict[tuple[str, float], list[int]]:
    """Top-k ids per (method, budget) from the paper's formulas in plain numpy (explicit
    inverse of the pooled within-domain covariance; score descending, ties by id)."""
    mu1, mu2 = xf.mean(0), xr.mean(0)
    sigma = ((xf - mu1).T @ (xf - mu1) + (xr - mu2).T @ (xr - mu2)) / (len(xf) + len(xr))
    inv = np.linalg.inv(sigma)

    def maha2(mu: np.ndarray) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", xf - mu, inv, xf - mu)

    scores = {"mu2": np.linalg.norm(xf - mu2, axis=1), "maha_mu2": np.sqrt(maha2(mu2)),
              "lr_gauss": 0.5 * (maha2(mu2) - maha2(mu1))}
    ids = np.arange(len(xf))
    out = {}
    for method in METHODS:
        order = np.lexsort((ids, -scores[method]))
        for budget, k in K.items():
            out[(method, budget)] = ids[order[:k]].tolist()
    return out


def check_run_sets(sets: pd.DataFrame, run_id: str, reference: dict[tuple[str, float], list[int]]) -> None:
    """The run's removal sets: no duplicate, exactly k rows with ranks 1..k per (method,
    budget), the numpy top-k in rank order."""
    mine = sets[sets.run_id == run_id]
    assert not mine.duplicated(["run_id", "method", "budget", "id"]).any(), run_id
    assert sorted(set(zip(mine.method, mine.budget, strict=True))) == sorted(reference), run_id
    for (method, budget), want in reference.items():
        got = mine[(mine.method == method) & (mine.budget == budget)].sort_values("rank")
        assert got["rank"].tolist() == list(range(1, K[budget] + 1)), (run_id, method, budget)
        assert set(got["k"]) == {K[budget]}, (run_id, method, budget)
        assert got["id"].tolist() == want, (run_id, method, budget)


def assert_complete_budgets(sets: pd.DataFrame, version: object) -> None:
    """Every (run_id, method, budget) present has exactly k rows, none twice."""
    for (run_id, method, budget), size in sets.groupby(SET_KEY).size().items():
        assert size == K[budget], (version, run_id, method, budget, size)
    assert not sets.duplicated(["run_id", "method", "budget", "id"]).any(), version


def assert_every_version_complete(output: Path) -> int:
    """At every version of removal_budgets (each snapshot a reader could have opened), every
    recorded set read from removal_ranking as of the version its row names is complete
    (:func:`assert_complete_budgets`); every version of removal_ranking holds each (run_id,
    method, id) once with ranks 1..n.  Returns the latest removal_budgets version."""
    from deltalake import DeltaTable

    budgets_path, ranking_path = output / "removal_budgets", output / "removal_ranking"
    for version in range(DeltaTable(str(ranking_path)).version() + 1):
        ranking = DeltaTable(str(ranking_path), version=version).to_pandas()
        assert not ranking.duplicated(["run_id", "method", "id"]).any(), version
        for key, part in ranking.groupby(["run_id", "method"]):
            assert sorted(part["rank"]) == list(range(1, len(part) + 1)), (version, key)
    latest = DeltaTable(str(budgets_path)).version()
    for version in range(latest + 1):
        budgets = DeltaTable(str(budgets_path), version=version).to_pandas()
        sets = []
        for ranking_version, rows in budgets.groupby("ranking_version"):
            ranking = DeltaTable(str(ranking_path), version=int(ranking_version)).to_pandas()
            for b in rows.itertuples():
                mine = ranking[(ranking.run_id == b.run_id) & (ranking.method == b.method)
                               & (ranking.group_rank <= b.quota)]
                sets.append(mine.assign(budget=b.budget))
        assert_complete_budgets(pd.concat(sets) if sets else pd.DataFrame(columns=[*SET_KEY, "id"]), version)
    return latest


def runs_status(output: Path, run_id: str) -> list[str]:
    """Statuses of ``run_id`` in the runs table ([] if the table or the row is missing)."""
    if not (output / "runs" / "_delta_log").is_dir():
        return []
    runs = read_delta(output / "runs")
    return runs[runs.run_id == run_id]["status"].tolist()


# ------------------------------------------------------------------ processes
def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a driver in its own process group (its JVM and Python workers join the group),
    stderr to ``log`` and stdout next to it.  Files, not pipes: a JVM left behind would keep
    a pipe open."""
    with open(log, "wb") as err, open(log.with_suffix(".out"), "wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=out, stderr=err, start_new_session=True)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the process group of ``proc`` (the driver we started, its JVM
    and its workers), by the group id of that one process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def run_to_end(args: list[str], log: Path, timeout: int = TIMEOUT) -> int:
    proc = spawn(args, log)
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop_group(proc)


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def log_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if line.strip()] or [""]


# ------------------------------------------------------------------ 1. worker killed
def test_python_worker_killed_while_scoring_gives_the_undisturbed_outputs(inputs, tmp_path):
    forget, retain, xf, xr = inputs
    out, marker, log = tmp_path / "out", tmp_path / "worker-killed", tmp_path / "job.log"
    rc = run_to_end([*JOB, "worker-kill", forget, retain, str(out), "w1", str(marker)], log)
    assert rc == 0, tail(log)
    assert marker.is_file(), "no Python worker was killed: " + tail(log)
    assert "Python worker exited unexpectedly" in log.read_text(errors="replace"), tail(log)
    a, b = out / "a", out / "b"

    sets_a = read_sets(a).sort_values(SET_ORDER).reset_index(drop=True)
    sets_b = read_sets(b).sort_values(SET_ORDER).reset_index(drop=True)
    check_run_sets(sets_a, "w1", reference_sets(xf, xr))
    assert len(sets_b) == len(sets_a) == len(METHODS) * sum(K.values())
    pd.testing.assert_frame_equal(sets_b[sets_a.columns], sets_a, check_exact=True)

    stats_a = read_delta(a / "statistics").set_index("domain").sort_index()
    stats_b = read_delta(b / "statistics").set_index("domain").sort_index()
    assert stats_a.index.tolist() == stats_b.index.tolist() == ["forget", "retain"]
    for domain in ("forget", "retain"):
        assert stats_b.loc[domain, "n"] == stats_a.loc[domain, "n"]
        for col in ("mean", "m2"):
            np.testing.assert_array_equal(np.asarray(stats_b.loc[domain, col]), np.asarray(stats_a.loc[domain, col]))
    np.testing.assert_allclose(np.asarray(stats_a.loc["forget", "mean"]), xf.mean(0), rtol=1e-12, atol=1e-12)

    diag_a = read_delta(a / "diagnostics").sort_values(["method", "budget"]).reset_index(drop=True)
    diag_b = read_delta(b / "diagnostics").sort_values(["method", "budget"]).reset_index(drop=True)
    assert len(diag_a) == 1 + len(METHODS) * len(BUDGETS)
    pd.testing.assert_frame_equal(diag_b[diag_a.columns], diag_a, check_exact=True)
    assert runs_status(b, "w1") == ["succeeded"]


# ------------------------------------------------------------------ 2. driver killed
def test_driver_killed_between_writes_then_rerun_leaves_consistent_tables(spark, inputs, tmp_path):
    forget, retain, xf, xr = inputs
    out = tmp_path / "out"
    rc = run_to_end([*JOB, "driver-kill", forget, retain, str(out), "d1"], tmp_path / "killed.log")
    assert rc == -signal.SIGKILL, tail(tmp_path / "killed.log")
    # Killed after the ranking and the budgets, before diagnostics: the run is not marked complete.
    assert len(read_sets(out)) == len(METHODS) * sum(K.values())
    assert not (out / "diagnostics" / "_delta_log").is_dir()
    assert runs_status(out, "d1") in ([], ["running"])  # no row yet, or the ledger's "running"

    # The rerun: same run id and settings, in this process's Spark session (a new driver).
    from distunlearn.commands.run import run_pipeline
    from fault_job import job_config

    run_pipeline(spark, dataclasses.replace(job_config(forget, retain, str(out), "d1"), master="local[2]"))
    sets = read_sets(out)
    assert set(sets.run_id) == {"d1"}
    check_run_sets(sets, "d1", reference_sets(xf, xr))
    assert runs_status(out, "d1") == ["succeeded"]
    diag = read_delta(out / "diagnostics")
    assert not diag.duplicated(["run_id", "method", "budget"]).any()
    assert len(diag) == 1 + len(METHODS) * len(BUDGETS)

    # Every version a reader could have opened: each budget present is complete.
    assert assert_every_version_complete(out) >= 1  # the killed run's commit, the rerun's


# ------------------------------------------------------------------ 3. concurrent runs
def test_two_runs_writing_the_same_new_output_at_once(inputs, tmp_path):
    forget, retain, xf, xr = inputs
    out = tmp_path / "out"  # not created: the first creation of each table is the race
    run_ids = ("c1", "c2")
    logs = {r: tmp_path / f"{r}.log" for r in run_ids}
    procs = {}
    try:
        for run_id in run_ids:
            procs[run_id] = spawn([*CLI, "run", "--forget", forget, "--retain", retain, "--output", str(out),
                                   "--run-id", run_id, "--methods", ",".join(METHODS),
                                   "--budgets", ",".join(map(str, BUDGETS)), "--shuffle-partitions", "3",
                                   "--log-level", "WARNING", "--spark-conf", "spark.ui.enabled=false"],
                                  logs[run_id])
        codes = {run_id: proc.wait(timeout=TIMEOUT) for run_id, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop_group(proc)

    succeeded = [r for r in run_ids if codes[r] == 0]
    failed = [r for r in run_ids if codes[r] != 0]
    print(f"concurrent runs: exit codes {codes}")
    assert succeeded, "neither concurrent run succeeded:\n" + "\n".join(tail(logs[r]) for r in run_ids)

    # Nothing lost or mixed up (checked first, so that a message failure below means the
    # tables themselves were right).
    sets = read_sets(out)
    assert set(sets.run_id) <= set(run_ids)
    assert_every_version_complete(out)
    stats = read_delta(out / "statistics")
    reference = reference_sets(xf, xr)
    for run_id in succeeded:
        check_run_sets(sets, run_id, reference)
        assert runs_status(out, run_id) == ["succeeded"], run_id
        assert sorted(stats[stats.run_id == run_id]["domain"]) == ["forget", "retain"], run_id
    if len(succeeded) == 2:
        cols = ["method", "budget", "rank", "id", "score"]
        one, two = (sets[sets.run_id == r].sort_values(cols[:3]).reset_index(drop=True)[cols] for r in run_ids)
        pd.testing.assert_frame_equal(one, two, check_exact=True)
    for run_id in failed:
        assert "succeeded" not in runs_status(out, run_id) or not (sets.run_id == run_id).any(), run_id

    # The loser of a conflict says so in one line.
    for run_id in failed:
        lines = log_lines(logs[run_id])
        last = lines[-1]
        cause = " / ".join([line for line in lines if re.match(r"^(: )?[\w.$]+(Exception|Error)\b", line)][:2])
        assert last.startswith("distunlearn: error:") and re.search(r"conflict|concurrent", last, re.I), (
            f"run {run_id} exited {codes[run_id]} (the other run succeeded and the tables are consistent) "
            f"without a one-line conflict message on stderr; last line: {last[:200]!r}; "
            f"exception: {cause[:500]!r}")
