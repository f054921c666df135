"""Whether a path holds a Delta table, its version and its last commit's row count, answered
from the local ``_delta_log`` on a classic session (store/sources.py), against Delta's own
answers (DESCRIBE HISTORY)."""

from __future__ import annotations

import pandas as pd

from distunlearn.store.sources import delta_ref, delta_version, history, is_delta, last_commit, last_version


def test_the_log_folder_answer_is_deltas_answer(spark, tmp_path):
    df = spark.createDataFrame(pd.DataFrame({"id": [1, 2, 3]}))
    df.write.format("delta").save(str(tmp_path / "table"))
    df.write.format("delta").mode("append").save(str(tmp_path / "table"))
    df.write.parquet(str(tmp_path / "parquet"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "log-without-commit" / "_delta_log").mkdir(parents=True)  # a first commit that never landed
    (tmp_path / "log-without-commit" / "_delta_log" / ".00000000000000000000.json.tmp").write_text("{}")
    cases = ["table", "parquet", "empty", "file", "missing", "log-without-commit"]
    found = {name: is_delta(spark, str(tmp_path / name)) for name in cases}
    assert found == {name: last_version(spark, delta_ref(str(tmp_path / name))) is not None for name in cases}
    assert found == {"table": True, "parquet": False, "empty": False, "file": False, "missing": False,
                     "log-without-commit": False}
    assert is_delta(spark, f"file:{tmp_path / 'table'}") and not is_delta(spark, f"file:{tmp_path / 'parquet'}")


def test_the_log_answers_of_version_and_rows_are_deltas_answers(spark, tmp_path):
    """After each kind of commit a run makes (create, append, replaceWhere overwrite, MERGE,
    DELETE, an empty write), the version and numOutputRows read from the newest commit file
    equal DESCRIBE HISTORY's, and so does delta_version; also next to a checkpoint file (the
    last write makes one: checkpointInterval 2)."""
    path = str(tmp_path / "t")
    rows = lambda ids, run: spark.createDataFrame(pd.DataFrame({"id": ids, "run_id": run}))  # noqa: E731
    writes = [
        lambda: rows([1, 2, 3], "a").write.format("delta").save(path),
        lambda: rows([4, 5], "b").write.format("delta").mode("append").save(path),
        lambda: rows([6, 7, 8, 9], "a").write.format("delta").mode("overwrite")
        .option("replaceWhere", "run_id = 'a'").save(path),
        lambda: spark.sql(f"MERGE INTO {delta_ref(path)} t USING (SELECT 10L AS id, 'c' AS run_id) s "
                          "ON t.id = s.id WHEN NOT MATCHED THEN INSERT *"),
        lambda: spark.sql(f"DELETE FROM {delta_ref(path)} WHERE id = 4"),
        lambda: spark.createDataFrame([], "id long, run_id string").write.format("delta").mode("append").save(path),
        lambda: spark.sql(f"ALTER TABLE {delta_ref(path)} SET TBLPROPERTIES "
                          "('delta.checkpointInterval' = '2')"),
        lambda: rows([11], "d").write.format("delta").mode("append").save(path),
    ]
    seen = []
    for write in writes:
        write()
        (want,) = history(spark, delta_ref(path), 1)
        metrics = want["operationMetrics"] or {}
        expected = (int(want["version"]), str(metrics.get("numOutputRows", "?")))
        assert last_commit(spark, path) == expected
        assert delta_version(spark, path) == expected[0]
        seen.append(expected)
    assert [v for v, _ in seen] == [0, 1, 2, 3, 4, 4, 5, 6]  # an empty append commits nothing
    assert {n for _, n in seen} >= {"3", "2", "4", "1"}  # the writes' row counts, not "?" throughout
    assert (tmp_path / "t" / "_delta_log" / f"{6:020d}.checkpoint.parquet").is_file()
    assert last_commit(spark, str(tmp_path / "missing")) == (-1, "?")
    spark.createDataFrame(pd.DataFrame({"id": [1]})).write.parquet(str(tmp_path / "parquet"))
    for other in ("missing", "parquet"):
        assert delta_version(spark, str(tmp_path / other)) is None
        assert last_version(spark, delta_ref(str(tmp_path / other))) is None
