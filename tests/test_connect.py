"""The job over Spark Connect, against the classic session on the same inputs: identical outputs.

A real Spark Connect server with Delta (scripts/connectserver.py: the installed pyspark's
SparkConnectServer on local[2], 127.0.0.1, a free port) runs for this module and is stopped by
pid at its end, also on failure.  The Connect side is the console command with ``--remote`` in
a subprocess (a process cannot hold a classic and a Connect session: pyspark switches its
functions module for the whole process); the classic side is the same command line run in
this process on the suite's session.  Both sessions have local[2], 4 shuffle partitions,
spark.default.parallelism 4 and 7-row Arrow batches, so the same partitions are merged in the
same order and every number must be equal, not close.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SESSION_ARGS, read_delta, subprocess_env
from distunlearn.commands.cli import main
from golden_cases import CASES, write_inputs

pytestmark = pytest.mark.connect

CONSOLE = str(Path(sys.executable).with_name("distunlearn"))
#: Columns that differ between two runs by nature: wall-clock times and durations.
VOLATILE = {"created_at", "started_at", "finished_at", "seconds", "duration_s", "timings"}
RUN_TABLES = {"removal_ranking": ["method", "id"], "removal_budgets": ["method", "budget", "budget_count", "group"],
              "statistics": ["domain"], "ngram_statistics": ["domain"], "diagnostics": ["method", "k"],
              "calibration": ["method"], "group_diagnostics": ["method", "k", "group"],
              "retain_weights": ["method", "budget", "id"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from connectserver import start

    srv = start(tmp_path_factory.mktemp("connect-server"),
                conf={"spark.default.parallelism": "4", "spark.sql.shuffle.partitions": "4"})
    try:
        yield srv
    finally:
        srv.stop()
        assert not srv.running()


def over_connect(server, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONSOLE, *args, *SESSION_ARGS, "--remote", server.url], capture_output=True, text=True,
                          timeout=900, env=subprocess_env())


def classic(spark, args: list[str]) -> int:
    return main([*args, *SESSION_ARGS], launch=False)


def assert_same_tables(a: Path, b: Path, tables: dict[str, list[str]]) -> list[str]:
    """Every table of ``tables`` present under ``a`` is under ``b`` with equal rows (volatile
    columns aside); returns the names compared."""
    seen = []
    for table, key in tables.items():
        if not (a / table / "_delta_log").is_dir():
            assert not (b / table / "_delta_log").is_dir(), table
            continue
        x, y = read_delta(a / table), read_delta(b / table)
        drop = [c for c in x.columns if c in VOLATILE]
        x = x.drop(columns=drop).sort_values(key).reset_index(drop=True)
        y = y.drop(columns=drop).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=table)
        seen.append(table)
    return seen


def _config(path: Path, forget: str, retain: str, output: Path, options: dict) -> Path:
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    path.write_text(yaml.safe_dump({**data, "forget": forget, "retain": retain, "output": str(output),
                                    "run_id": "c1"}))
    return path


@pytest.mark.parametrize("name", ["features", "groups-stratified-cap", "text", "text-groups"])
def test_run_over_connect_writes_what_the_classic_session_writes(spark, server, tmp_path, name):
    case = next(c for c in CASES if c.name == name)
    forget, retain = write_inputs(tmp_path / "in", case.inputs)
    for side in ("classic", "connect"):
        _config(tmp_path / f"{side}.yaml", forget, retain, tmp_path / side, case.options)
    assert classic(spark, ["run", "--config", str(tmp_path / "classic.yaml")]) == 0
    done = over_connect(server, ["run", "--config", str(tmp_path / "connect.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over Spark Connect at sc://127.0.0.1" in done.stderr
    compared = assert_same_tables(tmp_path / "classic", tmp_path / "connect", RUN_TABLES)
    assert {"removal_ranking", "removal_budgets", "statistics", "diagnostics"} <= set(compared)
    runs = read_delta(tmp_path / "connect" / "runs")
    assert runs.status.tolist()[-1] == "succeeded"


@pytest.fixture(scope="module")
def features_run(spark, server, tmp_path_factory):
    """One run of the features case, written by the classic session (equal to Connect's above)."""
    root = tmp_path_factory.mktemp("connect-run")
    case = next(c for c in CASES if c.name == "features")
    forget, retain = write_inputs(root / "in", case.inputs)
    config = _config(root / "run.yaml", forget, retain, root / "out", case.options)
    assert classic(spark, ["run", "--config", str(config)]) == 0
    return root / "out", forget, retain


def _corpus(path: Path, forget: str, retain: str) -> str:
    """The table to clean, written by delta-rs: every forget and retain id with a payload."""
    from deltalake import write_deltalake

    ids = pd.concat([pd.read_parquet(forget)["id"], pd.read_parquet(retain)["id"]]).to_numpy()
    write_deltalake(str(path), pd.DataFrame({"id": ids, "text": [f"doc {i}" for i in ids]}))
    return str(path)


def test_apply_verify_undo_purge_over_connect_as_on_the_classic_session(spark, server, features_run, tmp_path):
    out, forget, retain = features_run
    tables = {side: _corpus(tmp_path / side, forget, retain) for side in ("classic", "connect")}
    steps = [("verify", [], 3), ("apply", [], 0), ("verify", [], 0), ("undo", [], 0), ("verify", [], 3),
             ("apply", [], 0), ("purge", ["--retention-hours", "0", "--ignore-retention-check"], 0)]
    for command, extra, code in steps:
        base = [command, "--output", str(out), "--run-id", "c1", "--method", "lr_gauss", "--budget", "0.29", *extra]
        assert classic(spark, [*base, "--table", tables["classic"]]) == code, command
        done = over_connect(server, [*base, "--table", tables["connect"]])
        assert done.returncode == code, (command, done.stderr[-2000:])
    from deltalake import DeltaTable

    got = {side: DeltaTable(path).to_pandas().sort_values("id").reset_index(drop=True) for side, path in tables.items()}
    pd.testing.assert_frame_equal(got["classic"], got["connect"])
    everything = set(pd.read_parquet(forget)["id"]) | set(pd.read_parquet(retain)["id"])
    assert 0 < len(got["connect"]) < len(everything)
    ops = {side: [c["operation"] for c in sorted(DeltaTable(p).history(), key=lambda c: c["version"])]
           for side, p in tables.items()}
    assert ops["classic"] == ops["connect"]
    ledger = read_delta(out / "applies").sort_values("at")
    entries = {side: ledger[ledger.table == path][["action", "outcome", "rows_removed", "rows_after"]]
               .reset_index(drop=True) for side, path in tables.items()}
    assert len(entries["connect"]) >= 3  # apply, undo, apply at least
    pd.testing.assert_frame_equal(entries["classic"], entries["connect"])


def test_evaluate_and_report_over_connect(spark, server, features_run, tmp_path):
    out, *_ = features_run
    base = ["--output", str(out), "--run-id", "c1"]
    done = over_connect(server, ["evaluate", *base])
    assert done.returncode == 0, done.stderr[-3000:]
    connect_eval = read_delta(out / "evaluation")
    assert classic(spark, ["evaluate", *base]) == 0  # replaces the run's rows: compare with what Connect wrote
    classic_eval = read_delta(out / "evaluation")
    key = ["method", "budget", "budget_count", "k"]
    got, want = (df.sort_values(key).reset_index(drop=True) for df in (connect_eval, classic_eval))
    # retain_log_loss is a Spark SUM over the held-out rows: its partial sums are added in the
    # order the shuffle delivers them, which moves the last bits between any two runs (classic
    # ones too); everything else, counts and the models' accuracies, is identical.
    np.testing.assert_allclose(got.pop("retain_log_loss"), want.pop("retain_log_loss"), rtol=1e-12)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    html = tmp_path / "report.html"
    done = over_connect(server, ["report", *base, "--html", str(html)])
    assert done.returncode == 0, done.stderr[-3000:]
    page = html.read_text()
    assert "c1" in page and "<img" in page


@pytest.mark.parametrize("remote,message", [
    ("http://127.0.0.1:15002", "--remote 'http://127.0.0.1:15002': a Spark Connect endpoint starts with sc:// "
                                "(for example sc://127.0.0.1:15002)"),
    ("sc://127.0.0.1:1", "no Spark Connect server answers at sc://127.0.0.1:1 (127.0.0.1:1: Connection refused)"),
])
def test_a_bad_endpoint_is_one_line_and_exit_2(tmp_path, remote, message):
    done = subprocess.run([CONSOLE, "run", "--forget", "a", "--retain", "b", "--output", str(tmp_path / "o"),
                           "--run-id", "r", "--remote", remote], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"distunlearn: error: {message}"
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()
