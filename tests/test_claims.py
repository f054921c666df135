"""A run owns its run id while it writes (issue 20, defect 2): the claim in the ``runs``
ledger (``distunlearn.store.ledger``), on real Delta tables, read back with delta-rs.

The ledger rows other runs left (a live run on this host, a dead process, another host, a
ledger of the version before claims) are written as those runs would have written them; the
race itself is two threads running the same run id on one session.  The command line's
refusal is a case of test_hostile.py.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading

import pandas as pd
import pytest
from pyspark.sql import functions as F

from conftest import gaussian_tables, make_config, read_delta
from distunlearn.commands.run import run_pipeline
from distunlearn.errors import ConflictError
from distunlearn.store import ledger, tables
from distunlearn.store.delta import replace_run
from distunlearn.store.output import RunRecord, Store

EARLIER = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def runs_version(root) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(root / "runs")).version()


def ledger_row(root, run_id: str) -> dict:
    rows = read_delta(root / "runs")
    found = rows[rows.run_id == run_id]
    assert len(found) == 1, rows
    return found.iloc[0].to_dict()


def left_behind(spark, root, run_id: str, status: str = "running", **claim) -> None:
    """The ledger row another run left: ``claim`` overrides claim_token/claim_host/claim_pid."""
    store = Store(spark, str(root))
    ledger.prepare(spark, store.path(tables.RUNS), store._frame(tables.RUNS, []))
    row = store._ledger_row(run_id, status, RunRecord(started_at=EARLIER), claim.pop("claim_token", "other"))
    for name, value in claim.items():
        row = row.withColumn(name, F.lit(value).cast(row.schema[name].dataType))
    row = row.withColumn("finished_at", F.lit(EARLIER))
    replace_run(row, store.path(tables.RUNS), run_id, partition_by=())


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_live_claim_refuses_a_second_writer_until_it_ends(spark, tmp_path):
    store = Store(spark, str(tmp_path))
    token = store.claim("x", RunRecord())
    assert ledger_row(tmp_path, "x")["claim_token"] == token
    before = runs_version(tmp_path)
    with pytest.raises(ConflictError, match=rf"run id 'x' is being written by another run \(pid {os.getpid()} "):
        store.claim("x", RunRecord())
    with pytest.raises(ConflictError, match="is being written by another run"):
        store.check_free("x")
    assert runs_version(tmp_path) == before and ledger_row(tmp_path, "x")["claim_token"] == token

    store.finish("x", "succeeded", RunRecord(), token, outputs={"removal_budgets": 3})
    row = ledger_row(tmp_path, "x")
    assert (row["status"], row["claim_token"], row["outputs"]) == ("succeeded", token, [("removal_budgets", 3)])
    again = store.claim("x", RunRecord())  # a rerun of a finished run id
    assert again != token and ledger_row(tmp_path, "x")["status"] == "running"
    store.finish("x", "failed", RunRecord(), again, error="boom")
    assert ledger_row(tmp_path, "x")["status"] == "failed"


@pytest.mark.parametrize("claim", [
    pytest.param({"claim_host": ledger.HOST, "claim_pid": "dead"}, id="this host, process gone"),
    pytest.param({"claim_host": ledger.HOST, "claim_pid": os.getpid()}, id="this process, run ended unrecorded"),
    pytest.param({"claim_token": None}, id="no token: a ledger before claims"),
])
def test_a_running_row_of_a_dead_run_is_claimed(spark, tmp_path, claim):
    claim = {k: (dead_pid() if v == "dead" else v) for k, v in claim.items()}
    left_behind(spark, tmp_path, "x", **claim)
    token = Store(spark, str(tmp_path)).claim("x", RunRecord())
    row = ledger_row(tmp_path, "x")
    assert (row["claim_token"], row["claim_host"], row["claim_pid"]) == (token, ledger.HOST, os.getpid())


def test_another_hosts_running_row_needs_takeover_and_only_an_older_one(spark, tmp_path):
    left_behind(spark, tmp_path, "x", claim_host="elsewhere", claim_pid=1)
    store = Store(spark, str(tmp_path))
    with pytest.raises(ConflictError, match="host 'elsewhere'.*if that run died, rerun with --takeover"):
        store.claim("x", RunRecord())
    # --takeover claims only a row written before this run started: not one a run wrote since
    with pytest.raises(ConflictError, match="host 'elsewhere'"):
        store.claim("x", RunRecord(started_at=EARLIER - dt.timedelta(days=1)), takeover=True)
    assert ledger_row(tmp_path, "x")["claim_token"] == "other"
    token = store.claim("x", RunRecord(), takeover=True)
    assert ledger_row(tmp_path, "x")["claim_token"] == token


def test_a_run_that_lost_its_claim_records_nothing(spark, tmp_path):
    store = Store(spark, str(tmp_path))
    token = store.claim("x", RunRecord())
    left_behind(spark, tmp_path, "x", claim_token="new-owner", claim_host="elsewhere", claim_pid=1)
    with pytest.raises(ConflictError, match="lost its claim on the run id to another run"):
        store.finish("x", "succeeded", RunRecord(), token)
    row = ledger_row(tmp_path, "x")
    assert (row["status"], row["claim_token"]) == ("running", "new-owner")


def test_a_ledger_of_the_version_before_claims_gains_the_claim_columns(spark, tmp_path):
    from deltalake import write_deltalake

    old = pd.DataFrame({"run_id": ["a", "x"], "status": ["succeeded", "running"], "contract": [2, 2]})
    write_deltalake(str(tmp_path / "runs"), old)
    token = Store(spark, str(tmp_path)).claim("x", RunRecord())
    rows = read_delta(tmp_path / "runs").set_index("run_id")
    assert {"claim_token", "claim_host", "claim_pid"} <= set(rows.columns)
    assert rows.loc["x", "claim_token"] == token and rows.loc["a", "status"] == "succeeded"
    assert pd.isna(rows.loc["a", "claim_token"])


def test_two_runs_of_one_run_id_at_once_never_show_a_foreign_succeeded_row(spark, tmp_path):
    """Two threads run the same run id on one session, one at budget 0.5 (k = 30), the other
    at 0.25 (k = 15).  Either they overlap, and the second to claim is refused with nothing
    written, or one ends before the other claims (a rerun).  In both cases every version of
    ``runs`` that says "succeeded" names removal_budgets rows of that run's own k, and no
    version shows a running claim replaced by another run's row."""
    from deltalake import DeltaTable

    forget, retain, *_ = gaussian_tables(spark, tmp_path, n_forget=60, n_retain=120, dim=3)
    configs = [make_config(tmp_path, forget, retain, run_id="same", methods=("mu2",), budgets=(b,))
               for b in (0.5, 0.25)]
    outcomes: dict[int, object] = {}
    start = threading.Barrier(2)

    def go(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = run_pipeline(spark, configs[i])
        except ConflictError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    errors = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert len(outcomes) == 2 and len(errors) <= 1, outcomes
    for exc in errors:
        assert "run id 'same' is being written by another run" in str(exc)
    print(f"same run id at once: {len(errors)} refused")

    runs = DeltaTable(str(tmp_path / "out" / "runs"))
    seen: list[tuple[str, str]] = []  # (claim token, status) of each version that changed the row
    for version in range(runs.version() + 1):
        runs.load_as_version(version)
        rows = runs.to_pandas()
        row = rows[rows.run_id == "same"]
        if row.empty:
            continue
        token, status = row.claim_token.iloc[0], row.status.iloc[0]
        if seen and seen[-1][1] == "running":
            assert token == seen[-1][0], f"version {version}: {status} row of {token} over the claim of {seen[-1][0]}"
        seen.append((token, status))
        if status == "succeeded":
            k = [s["k"] for s in row.summary.iloc[0]]
            budgets = DeltaTable(str(tmp_path / "out" / "removal_budgets"))
            budgets.load_as_version(int(dict(row.outputs.iloc[0])["removal_budgets"]))
            named = budgets.to_pandas()
            assert list(named[named.run_id == "same"].k) == k, f"version {version}"
    assert [s for _, s in seen].count("succeeded") == 2 - len(errors), seen
