"""Incremental nightly runs and the run ledger: after rows were only appended, a run merges
the last run's statistics with the new rows' and must equal a full recompute; after a
delete it recomputes in full and says why.  References: a full recompute (Spark) and numpy
on the raw arrays; tables read back with delta-rs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from conftest import frame, gaussian_tables, make_config, read_delta, read_sets
from distunlearn.commands.run import run_pipeline

RUN = dict(methods=("lr_gauss", "mu2", "random"), budgets=(0.1, 0.5))


def append(spark, path: str, ids, x: np.ndarray, dtype: str = "double") -> None:
    (spark.createDataFrame(frame(ids, x), f"id long, features array<{dtype}>").repartition(2)
     .write.format("delta").mode("append").save(path))


def run_row(output: str, run_id: str) -> dict:
    runs = read_delta(f"{output}/runs")
    return runs[runs.run_id == run_id].iloc[0].to_dict()


def sets_of(output: str, run_id: str) -> pd.DataFrame:
    sets = read_sets(output)
    return (sets[sets.run_id == run_id].drop(columns="run_id")
            .sort_values(["method", "budget", "rank"]).reset_index(drop=True))


def stats_of(output: str, run_id: str) -> dict[str, pd.Series]:
    stats = read_delta(f"{output}/statistics")
    return {d: stats[(stats.run_id == run_id) & (stats.domain == d)].iloc[0] for d in ("forget", "retain")}


def test_appended_rows_are_merged_and_equal_a_full_recompute(spark, tmp_path):
    from deltalake import write_deltalake

    f, r, xf, xr = gaussian_tables(spark, tmp_path, n_forget=120, n_retain=300, dim=4)
    cfg = make_config(tmp_path, f, r, run_id="night1", **RUN)
    run_pipeline(spark, cfg)
    first = run_row(cfg.output, "night1")
    assert (first["statistics_mode"], first["statistics_note"]) == ("full", "no earlier run in the ledger")
    assert (first["forget_version"], first["retain_version"]) == (0, 0)

    # Night 2: new rows in both tables, from two different writers, and a compaction.
    rng = np.random.default_rng(3)
    xf2, xr2 = rng.standard_normal((30, 4)), rng.standard_normal((50, 4)) + 1.0
    write_deltalake(f, pd.DataFrame({"id": np.arange(500, 530), "features": list(xf2)}), mode="append")
    append(spark, r, range(20_000, 20_050), xr2)
    spark.sql(f"OPTIMIZE delta.`{r}`")
    report = run_pipeline(spark, dataclasses.replace(cfg, run_id="night2"))
    second = run_row(cfg.output, "night2")
    assert (second["statistics_mode"], second["base_run_id"]) == ("incremental", "night1")
    assert (second["forget_version"], second["retain_version"]) == (1, 2)
    assert report.n_forget == 150 and report.n_retain == 350

    # The reference: a full recompute of the same inputs.
    full = dataclasses.replace(cfg, run_id="full2", incremental=False)
    run_pipeline(spark, full)
    assert run_row(cfg.output, "full2")["statistics_note"] == "--no-incremental"
    inc, ref = stats_of(cfg.output, "night2"), stats_of(cfg.output, "full2")
    all_f, all_r = np.vstack([xf, xf2]), np.vstack([xr, xr2])
    for d, x in (("forget", all_f), ("retain", all_r)):
        assert inc[d]["n"] == ref[d]["n"] == len(x) and inc[d]["rows"] == len(x)
        np.testing.assert_allclose(inc[d]["mean"], ref[d]["mean"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(inc[d]["m2"], ref[d]["m2"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(inc[d]["mean"], x.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(inc[d]["m2"]).reshape(4, 4), (x - x.mean(0)).T @ (x - x.mean(0)),
                                   rtol=1e-10)
    a, b = sets_of(cfg.output, "night2"), sets_of(cfg.output, "full2")
    pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-9, atol=1e-12)
    assert set(a[a.budget == 0.5]["id"]) & set(range(500, 530))  # the new rows are scored

    # Night 3: nothing new since the latest succeeded run (full2): its statistics are reused
    # as they are, with no new file to read (checked on the planning step, without a run).
    from distunlearn.commands import incremental
    from distunlearn.store.output import RunRecord, Store

    record = RunRecord(forget_version=1, retain_version=2)
    base, reason = incremental.find_base(spark, dataclasses.replace(cfg, run_id="night3"), Store(spark, cfg.output),
                                         record)
    assert base is not None and reason == ""
    assert (base.run_id, base.new_files) == ("full2", {"forget": [], "retain": []})


def test_deleted_rows_force_a_full_recompute_and_the_ledger_records_the_run(spark, tmp_path):
    f, r, xf, xr = gaussian_tables(spark, tmp_path, n_forget=80, n_retain=200, dim=3)
    # The forget table as a catalog table (sources may be paths or names).
    spark.read.format("delta").load(f).write.format("delta").saveAsTable("forget_catalog")
    cfg = make_config(tmp_path, "forget_catalog", r, run_id="a", **RUN)
    try:
        run_pipeline(spark, cfg)
        spark.sql(f"DELETE FROM delta.`{r}` WHERE id >= 10150")
        report = run_pipeline(spark, dataclasses.replace(cfg, run_id="b"))
    finally:
        spark.sql("DROP TABLE IF EXISTS forget_catalog")
    row = run_row(cfg.output, "b")
    assert (row["statistics_mode"], row["statistics_note"]) == ("full", "retain table: rows were deleted or rewritten")
    assert report.n_retain == 150
    np.testing.assert_allclose(stats_of(cfg.output, "b")["retain"]["mean"], xr[:150].mean(0), rtol=1e-12)
    # The ledger row of a run: status, versions, hashes, and the versions of the tables written.
    assert row["status"] == "succeeded" and row["error"] is None
    assert (row["forget_version"], row["retain_version"]) == (0, 1)
    assert len(row["stats_sha256"]) == 64 and len(row["config_sha256"]) == 64
    outputs = dict(row["outputs"])
    assert set(outputs) == {"statistics", "removal_ranking", "removal_budgets", "diagnostics", "calibration"}
    from deltalake import DeltaTable as RsTable

    for table, version in outputs.items():
        assert version <= RsTable(f"{cfg.output}/{table}").version(), table


def test_a_failed_run_is_recorded_as_failed(spark, tmp_path, monkeypatch):
    from distunlearn.store.output import Store

    f, r, *_ = gaussian_tables(spark, tmp_path, n_forget=40, n_retain=80, dim=3)
    cfg = make_config(tmp_path, f, r, run_id="boom", **RUN)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Store, "write_diagnostics", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        run_pipeline(spark, cfg)
    row = run_row(cfg.output, "boom")
    assert row["status"] == "failed" and row["error"] == "RuntimeError: disk full"
