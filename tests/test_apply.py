"""apply / verify / undo / purge on real Delta tables written by another client (delta-rs,
the ``deltalake`` package), read back with delta-rs.  References: the removal set read from
``removal_sets`` with delta-rs, and set arithmetic on the ids written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import SESSION_ARGS, gaussian_tables, make_config, read_delta, read_sets
from distunlearn.commands import cleaning as apply
from distunlearn.commands.cli import main
from distunlearn.commands.config import JobConfig
from distunlearn.commands.run import run_pipeline
from distunlearn.errors import ConfigError, InputError

N_FORGET, N_RETAIN = 120, 300


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):
    """One succeeded run (two methods, two budgets) over small Gaussian tables."""
    root = tmp_path_factory.mktemp("apply")
    f, r, *_ = gaussian_tables(spark, root, n_forget=N_FORGET, n_retain=N_RETAIN, dim=4)
    cfg = make_config(root, f, r, methods=("lr_gauss", "random"), budgets=(0.1, 0.25), run_id="night1")
    run_pipeline(spark, cfg)
    return cfg, read_sets(Path(cfg.output))


def corpus(path: Path) -> str:
    """The table to clean: every forget and retain id with a payload, written by delta-rs."""
    from deltalake import write_deltalake

    ids = np.concatenate([np.arange(N_FORGET), np.arange(10_000, 10_000 + N_RETAIN)])
    write_deltalake(str(path), pd.DataFrame({"id": ids, "text": [f"doc {i}" for i in ids]}))
    return str(path)


def removal_ids(sets: pd.DataFrame, method: str, budget: float) -> set[int]:
    return set(sets[(sets.method == method) & (sets.budget == budget)]["id"])


def cleaning(cfg: JobConfig, table: str, method: str = "lr_gauss", budget: float = 0.1, **kw: object) -> JobConfig:
    return dataclasses.replace(cfg, table=table, method=method, budget=budget, **kw)


def history(path: str) -> list[dict]:
    from deltalake import DeltaTable

    return sorted(DeltaTable(path).history(), key=lambda c: c["version"])


@pytest.mark.second_line
def test_apply_deletes_exactly_the_set_once(spark, run, tmp_path):
    cfg, sets = run
    src = corpus(tmp_path / "corpus")
    c = cleaning(cfg, src)
    out = apply.apply_removal(spark, c)
    gone = removal_ids(sets, "lr_gauss", 0.1)
    assert len(gone) == 12
    left = set(read_delta(src)["id"])
    assert left == (set(range(N_FORGET)) | set(range(10_000, 10_000 + N_RETAIN))) - gone
    assert (out.outcome, out.rows_before, out.rows_removed, out.rows_after) == ("committed", 420, 12, 408)
    commit = history(src)[-1]
    assert commit["operation"] == "MERGE" and commit["version"] == out.table_version == 1
    meta = json.loads(commit["userMetadata"])
    assert (meta["action"], meta["run_id"], meta["method"], meta["budget"], meta["k"]) == (
        "apply", "night1", "lr_gauss", 0.1, 12)
    assert len(meta["stats_sha256"]) == 64 and len(meta["config_sha256"]) == 64
    # A retry: nothing written, same counts reported.
    again = apply.apply_removal(spark, c)
    assert (again.outcome, again.table_version, again.rows_removed) == ("already_applied", 1, 12)
    assert len(history(src)) == 2 and len(read_delta(src)) == 408
    log = read_delta(Path(cfg.output) / "applies")
    assert sorted(log["outcome"]) == ["already_applied", "committed"]
    # Another budget of the same run is another key: it applies on top (the 25 % set contains
    # the 10 % one, so 30 - 12 rows more go).
    more = apply.apply_removal(spark, cleaning(cfg, src, budget=0.25))
    assert (more.rows_before, more.rows_removed, more.rows_after) == (408, 18, 390)


def test_delta_drops_a_retry_that_races_past_the_history_check(spark, run, tmp_path, monkeypatch):
    """Second layer: the history check is bypassed once (as when two retries read the history
    before either commits); Delta's txnAppId/txnVersion still keeps the second MERGE out."""
    cfg, sets = run
    src = corpus(tmp_path / "corpus")
    c = cleaning(cfg, src, method="random")
    first = apply.apply_removal(spark, c)
    real = apply._current_apply
    calls = {"n": 0}

    def blind_once(events):
        calls["n"] += 1
        return None if calls["n"] == 1 else real(events)

    monkeypatch.setattr(apply, "_current_apply", blind_once)
    second = apply.apply_removal(spark, c)
    assert calls["n"] >= 2
    assert second.table_version == first.table_version  # no new commit: Delta dropped the MERGE
    assert [h["operation"] for h in history(src)] == ["WRITE", "MERGE"]
    assert len(read_delta(src)) == 420 - len(removal_ids(sets, "random", 0.1))


@pytest.mark.second_line
def test_deletion_vectors_verify_undo_apply_again_then_purge(spark, run, tmp_path):
    """The whole life of a removal on a table with deletion vectors.  With them on, delta-rs
    1.x can no longer read the table (why they are opt-in): rows are read back with Spark,
    the history and the files with delta-rs and pyarrow."""
    cfg, sets = run
    src = corpus(tmp_path / "corpus")
    c = cleaning(cfg, src, enable_deletion_vectors=True)
    gone = removal_ids(sets, "lr_gauss", 0.1)

    def ids() -> set[int]:
        return {r[0] for r in spark.read.format("delta").load(src).select("id").collect()}

    def ids_in_files() -> set[int]:
        data = [f for f in Path(src).rglob("*.parquet") if "_delta_log" not in f.parts]  # not checkpoints
        return {int(i) for f in data for i in pq.read_table(f, columns=["id"])["id"]}

    everything = ids()
    applied = apply.apply_removal(spark, c)
    assert ids() == everything - gone
    assert int(history(src)[-1]["operationMetrics"]["numTargetDeletionVectorsAdded"]) >= 1
    assert gone <= ids_in_files()  # deletion vectors: the rows are still in the files
    ok = apply.verify_removal(spark, c)
    assert ok.readable == 0 and "time travel to version 1 still reads 12" in ok.note
    undone = apply.undo_removal(spark, c)
    assert undone.outcome == "committed" and ids() == everything
    assert (undone.rows_before, undone.rows_after) == (408, 420)
    assert apply.undo_removal(spark, c).outcome == "already_undone"
    assert apply.verify_removal(spark, c).readable == 12
    # verify as of the applied version still finds none
    assert apply.verify_removal(spark, dataclasses.replace(c, as_of=applied.table_version)).readable == 0
    again = apply.apply_removal(spark, c)
    assert again.outcome == "committed" and again.table_version > undone.table_version
    assert ids() == everything - gone
    actions = [json.loads(h["userMetadata"])["action"] for h in history(src) if h.get("userMetadata")]
    assert actions == ["apply", "undo", "apply"]

    # Purge: refused below the retention minimum unless overridden; then no file holds the rows.
    versions = len(history(src))
    with pytest.raises(ConfigError, match="below the table's delta.deletedFileRetentionDuration"):
        apply.purge(spark, dataclasses.replace(c, retention_hours=0))
    assert len(history(src)) == versions  # refused before its REORG: no commit
    apply.purge(spark, dataclasses.replace(c, retention_hours=0, ignore_retention_check=True))
    assert ids_in_files() == everything - gone
    assert apply.verify_removal(spark, c).note.endswith("the rows are purged")
    with pytest.raises(InputError, match="cannot undo: data files .* were removed by VACUUM"):
        apply.undo_removal(spark, c)


def test_undo_refuses_when_the_table_changed_after_the_apply(spark, run, tmp_path):
    from deltalake import write_deltalake

    cfg, _ = run
    src = corpus(tmp_path / "corpus")
    c = cleaning(cfg, src)
    apply.apply_removal(spark, c)
    write_deltalake(src, pd.DataFrame({"id": [99_999], "text": ["late"]}), mode="append")
    with pytest.raises(InputError, match=r"changed after the apply at version 1: version 2 \(WRITE\)"):
        apply.undo_removal(spark, c)
    assert len(read_delta(src)) == 409
    apply.undo_removal(spark, dataclasses.replace(c, force=True))
    assert len(read_delta(src)) == 420  # the late row is reverted too: that is what --force says


def test_copy_mode_leaves_the_source_and_writes_the_cleaned_copy(spark, run, tmp_path):
    cfg, sets = run
    src = corpus(tmp_path / "corpus")
    c = cleaning(cfg, src, budget=0.25, mode="copy", target=str(tmp_path / "clean"))
    out = apply.apply_removal(spark, c)
    gone = removal_ids(sets, "lr_gauss", 0.25)
    assert set(read_delta(c.target)["id"]) == set(read_delta(src)["id"]) - gone
    assert len(read_delta(src)) == 420
    assert (out.rows_before, out.rows_removed, out.rows_after) == (420, 30, 390)
    assert apply.apply_removal(spark, c).outcome == "already_applied"
    assert apply.verify_removal(spark, c).readable == 0
    with pytest.raises(ConfigError, match="undo is for --mode delete"):
        apply.undo_removal(spark, c)
    # A target that is the table itself, however it is spelled, would overwrite the source.
    for same in (src, src + "/", f"{tmp_path}/./corpus", "file://" + src):
        with pytest.raises(ConfigError, match="is the table itself"):
            apply.apply_removal(spark, dataclasses.replace(c, target=same))
    assert len(read_delta(src)) == 420 and len(history(src)) == 1


def test_catalog_table_with_int_ids(spark, run, tmp_path):
    """A catalog table, int ids, in a column whose name holds a backtick and a dot (MERGE's
    condition is SQL: the name must be quoted there)."""
    cfg, sets = run
    pdf = read_delta(corpus(tmp_path / "corpus"))
    pdf = pdf.astype({"id": "int32"}).rename(columns={"id": "doc`s.id"})
    spark.createDataFrame(pdf).write.format("delta").saveAsTable("corpus_int")
    try:
        out = apply.apply_removal(spark, cleaning(cfg, "corpus_int", id_col="doc`s.id"))
        assert out.rows_removed == 12
        pdf = pdf.rename(columns={"doc`s.id": "id"})
        left = set(spark.table("corpus_int").toPandas()["doc`s.id"])
        assert left == set(pdf["id"]) - removal_ids(sets, "lr_gauss", 0.1)
        stored = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:")) / "corpus_int"
        with pytest.raises(ConfigError, match="is the table itself"):  # a name and its folder
            apply.apply_removal(spark, cleaning(cfg, "corpus_int", id_col="doc`s.id", mode="copy",
                                                target=str(stored)))
    finally:
        spark.sql("DROP TABLE IF EXISTS corpus_int")


def test_bad_requests_are_one_line_errors_and_change_nothing(spark, run, tmp_path):
    cfg, _ = run
    src = corpus(tmp_path / "corpus")
    with pytest.raises(InputError, match=r"run 'night1' recorded no budget 0.3 for method 'lr_gauss'; it recorded "
                                         r"0.1 \(k=12\), 0.25 \(k=30\)"):
        apply.apply_removal(spark, cleaning(cfg, src, budget=0.3))
    with pytest.raises(InputError, match="not a succeeded run"):
        apply.apply_removal(spark, cleaning(dataclasses.replace(cfg, run_id="nope"), src))
    strings = tmp_path / "strings"
    spark.createDataFrame([("a", "x")], "id string, text string").write.format("delta").save(str(strings))
    with pytest.raises(InputError, match="id column 'id' of table .* is string, the removal sets store bigint"):
        apply.apply_removal(spark, cleaning(cfg, str(strings)))
    with pytest.raises(InputError, match="has no id column 'doc'"):
        apply.apply_removal(spark, cleaning(cfg, src, id_col="doc"))
    spark.createDataFrame([(1, "x")], "id long, text string").write.parquet(str(tmp_path / "pq"))
    with pytest.raises(InputError, match="is not a Delta table"):
        apply.apply_removal(spark, cleaning(cfg, str(tmp_path / "pq")))
    with pytest.raises(InputError, match="has no apply of"):
        apply.undo_removal(spark, cleaning(cfg, src))
    assert len(history(src)) == 1


def test_cli_exit_codes(spark, run, tmp_path, capsys):
    """verify exits 3 while the ids are readable and 0 after apply (spark-submit path: the
    running session is joined, not stopped)."""
    cfg, _ = run
    src = corpus(tmp_path / "corpus")
    args = [*SESSION_ARGS,  # the test session's settings
            "--output", cfg.output, "--run-id", cfg.run_id, "--method", "lr_gauss", "--budget", "0.1",
            "--table", src]
    assert main(["verify", *args], launch=False) == 3
    assert "12 of the removed ids are readable" in capsys.readouterr().err
    assert main(["apply", *args], launch=False) == 0
    assert "apply committed" in capsys.readouterr().out
    assert main(["verify", *args], launch=False) == 0
    assert main(["apply", *args[:-2]], launch=False) == 2
    assert "missing required option --table" in capsys.readouterr().err
