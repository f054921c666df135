"""Cluster mode: a real Spark standalone cluster on 127.0.0.1 (the installed pyspark's own
``spark-class ...deploy.master.Master`` and two ``...deploy.worker.Worker`` JVMs with one
core each, started by ``scripts/localcluster.py`` on free ports), the executors running the
packed virtualenv shipped with ``--archives`` (see that module for why not ``--py-files``).

- ``test_spark_submit_on_the_cluster_matches_local``: the whole pipeline submitted with
  ``spark-submit --master spark://127.0.0.1:PORT --archives env.tar.gz#environment`` writes
  Delta outputs identical (every row and every float bit; timestamps, timings and the master
  in the stored config aside) to an in-process ``local[2]`` run of the same config, and the
  executors really ran the archive's interpreter.
- ``test_worker_killed_mid_job_still_gives_identical_outputs``: the same run through the
  console command (``distunlearn run --master spark://... --python-archive ...``, the other way
  users submit), with one worker and everything it launched SIGKILLed as soon as the driver
  logs the scoring stage: the driver loses that executor, finishes on the remaining worker, and
  the outputs are again identical.

The two share one cluster, started for the module and stopped with every process it started
(by process group) in a finalizer, also when a test fails, then checked that none is left.
The outputs are read back with delta-rs (``deltalake``), not Spark.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import localcluster  # scripts/localcluster.py (dev tooling, not in the wheel)
import numpy as np
import pandas as pd
import pytest

from conftest import ARROW_BATCH, SHUFFLE_PARTITIONS, gaussian_tables, read_delta, subprocess_env
from distunlearn.commands.config import JobConfig
from distunlearn.commands.session import delta_build

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per submitted job; each takes about 1 min here
TABLES = ("statistics", "removal_ranking", "removal_budgets", "diagnostics", "calibration", "runs")
VOLATILE = {"created_at", "started_at", "finished_at", "timings", "config", "config_sha256",
            "claim_token", "claim_pid"}  # the run id's claim: which process wrote it
# Where and how a run executed, not what it computed: left out of the config comparison.
PLACEMENT = {"master", "output", "python_archive", "driver_memory", "spark_conf", "log_level"}
RUN = dict(run_id="c1", methods=("lr_gauss", "maha_mu2", "mu2", "random"), budgets=(0.1, 0.5),
           shuffle_partitions=SHUFFLE_PARTITIONS, arrow_batch_size=ARROW_BATCH)


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory) -> tuple[str, str]:
    """Delta tables of 3 files each: 3000 forget and 6000 retain rows, d = 8."""
    forget, retain, _, _ = gaussian_tables(spark, tmp_path_factory.mktemp("cluster_inputs"), n_forget=3000,
                                           n_retain=6000, dim=8)
    return forget, retain


@pytest.fixture(scope="module")
def reference(spark, inputs, tmp_path_factory) -> Path:
    """The same config run in this process, on the tests' local[2] session."""
    from distunlearn.commands.run import run_pipeline

    out = tmp_path_factory.mktemp("cluster_reference") / "out"
    run_pipeline(spark, JobConfig(forget=inputs[0], retain=inputs[1], output=str(out), **RUN).check())
    return out


@pytest.fixture(scope="module")
def archive() -> Path:
    """The executors' packed virtualenv, as ``make cluster-env`` builds it (rebuilt only when
    the sources change)."""
    return localcluster.pack_environment(ROOT / "dist" / "distunlearn-env.tar.gz")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster for the module's two jobs: the worker-kill test comes last in the file (pytest
    runs a module's tests in order), so the first job has both workers."""
    started = localcluster.start(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="1g")
    try:
        yield started
    finally:
        started.stop()
    assert started.running() == [], "cluster processes left running"


def driver_env() -> dict[str, str]:
    return subprocess_env(SPARK_HOME=str(localcluster.spark_home()), SPARK_LOCAL_IP="127.0.0.1",
                          PYSPARK_DRIVER_PYTHON=sys.executable)


def job_args(inputs: tuple[str, str], output: Path) -> list[str]:
    return ["--forget", inputs[0], "--retain", inputs[1], "--output", str(output), "--run-id", RUN["run_id"],
            "--methods", ",".join(RUN["methods"]), "--budgets", ",".join(map(str, RUN["budgets"])),
            "--shuffle-partitions", str(SHUFFLE_PARTITIONS), "--arrow-batch-size", str(ARROW_BATCH),
            "--log-level", "INFO"]


def assert_same_outputs(got: Path, want: Path) -> None:
    """Every Delta output table equal row for row, floats bit for bit (read with delta-rs)."""
    for name in TABLES:
        a, b = read_delta(got / name), read_delta(want / name)
        assert list(a.columns) == list(b.columns), name
        if name == "runs":
            config_a, config_b = (json.loads(c) for c in (a.at[0, "config"], b.at[0, "config"]))
            assert {k: v for k, v in config_a.items() if k not in PLACEMENT} == \
                   {k: v for k, v in config_b.items() if k not in PLACEMENT}
            assert a.at[0, "status"] == "succeeded"
        keys = [c for c in a.columns if c not in VOLATILE and a[c].map(np.isscalar).all()]
        a, b = (t.sort_values(keys, kind="stable").reset_index(drop=True) for t in (a, b))
        assert len(a) == len(b) > 0, name
        for column in a.columns:
            if column in VOLATILE:
                continue
            for x, y in zip(a[column], b[column], strict=True):
                same = np.array_equal(np.asarray(x), np.asarray(y)) if not np.isscalar(x) else \
                    (x == y or (pd.isna(x) and pd.isna(y)))
                assert same, f"{name}.{column}: {x!r} != {y!r}"


@contextlib.contextmanager
def driver(cmd: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """The job's driver as a process of its own group, killed with all it started on the way out."""
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=driver_env(), cwd=log.parent,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=TIMEOUT)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, "job failed:\n" + "\n".join(text.splitlines()[-40:])
    return text


def wait_for_scoring(proc: subprocess.Popen, log: Path, cluster: localcluster.LocalCluster) -> None:
    """Return once the driver has logged the end of the statistics stage (that pass has run on
    both executors; scoring starts), after checking the executors' Python workers run the
    archive's interpreter, unpacked in their working folders, and not the driver's."""
    deadline = time.monotonic() + TIMEOUT
    done = re.compile(r"^\d\d:\d\d:\d\d statistics +\d+\.\d s", re.MULTILINE)
    while not done.search(log.read_text(errors="replace")):
        assert proc.poll() is None, "job ended before the scoring stage:\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline, "scoring stage not reached"
        time.sleep(0.2)
    assert cluster.alive_workers() == 2
    workers = [c for c in cluster.command_lines() if re.search(r"-m (pyspark|distunlearn)\.daemon", c)]
    assert workers and all(c.startswith("./environment/bin/python ") for c in workers), workers


@pytest.mark.cluster
def test_spark_submit_on_the_cluster_matches_local(cluster, archive, inputs, reference, tmp_path):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    submit = localcluster.spark_home() / "bin" / "spark-submit"
    cmd = [str(submit), "--master", cluster.master_url, "--packages", delta_build().package,
           "--conf", f"spark.jars.ivy={Path(JobConfig().ivy_dir).expanduser()}",
           "--archives", f"{archive}#environment",
           "--conf", "spark.pyspark.python=./environment/bin/python",
           "--conf", f"spark.pyspark.driver.python={sys.executable}",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.default.parallelism=4",
           str(ROOT / "jobs" / "run.py"), *job_args(inputs, out)]
    with driver(cmd, log) as proc:
        wait_for_scoring(proc, log, cluster)
        text = wait(proc, log)
    assert f"master {cluster.master_url}" in text  # the session's own log line: it ran there
    assert_same_outputs(out, reference)


@pytest.mark.cluster
def test_worker_killed_mid_job_still_gives_identical_outputs(cluster, archive, inputs, reference, tmp_path):
    out, log = tmp_path / "out", tmp_path / "driver.log"
    cmd = [sys.executable, "-m", "distunlearn", "run", "--master", cluster.master_url,
           "--python-archive", str(archive), "--spark-conf", "spark.ui.enabled=false",
           "--spark-conf", "spark.default.parallelism=4", *job_args(inputs, out)]
    with driver(cmd, log) as proc:
        wait_for_scoring(proc, log, cluster)
        cluster.kill("worker-1")  # the worker JVM, its executor and that executor's Python workers
        assert proc.poll() is None, "the job had already finished: the kill was not mid-job"
        text = wait(proc, log)
    assert re.search(r"Lost executor \d+", text), "the driver never lost an executor"
    assert cluster.alive_workers() == 1
    assert_same_outputs(out, reference)


def test_cluster_processes_are_found_by_process_group(tmp_path):
    """The bookkeeping ``stop`` relies on, on a process that is not Spark: a group whose
    command line does not look like Spark is never reported (so never signalled)."""
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert localcluster._family(sleeper.pid, localcluster._processes()) == {}
        cluster = localcluster.LocalCluster(tmp_path, "spark://x", "http://x", [{"role": "w", "pid": sleeper.pid}])
        assert cluster.running() == []
        cluster.stop(timeout=0)
        assert sleeper.poll() is None  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_archive_carries_the_executors_dependencies_only():
    """numpy, pyarrow, pandas (what the UDFs import) are packed; pyspark and delta-spark come from
    the cluster's Spark, matplotlib is for the driver's report."""
    names = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in localcluster.packed_requirements()}
    assert {"numpy", "pyarrow", "pandas", "pyyaml", "threadpoolctl"} <= names
    assert not names & {"pyspark", "delta-spark", "matplotlib", "pytest", "deltalake"}


def test_a_taken_port_is_replaced_by_a_free_one():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = localcluster.free_port(port)
        assert other != port and other > 0
    assert localcluster.free_port(other) == other  # free now: kept


def test_missing_python_archive_is_one_line_exit_2_and_nothing_written(tmp_path):
    res = subprocess.run([sys.executable, "-m", "distunlearn", "run", "--forget", "a", "--retain", "b",
                          "--output", str(tmp_path / "o"), "--run-id", "x", "--master", "spark://127.0.0.1:1",
                          "--python-archive", str(tmp_path / "nope.tar.gz")],
                         capture_output=True, text=True, timeout=120, env=driver_env())
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distunlearn: error: python_archive: file ") and "nope.tar.gz" in last, last
    assert not (tmp_path / "o").exists()


def test_down_without_a_cluster_says_so(tmp_path):
    script = str(ROOT / "scripts" / "localcluster.py")
    res = subprocess.run([sys.executable, script, "down", "--state-dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env=driver_env())
    assert res.returncode == 0 and res.stdout.strip() == f"no cluster running from {tmp_path}"
