"""Whether a path holds a Delta table, answered from the local ``_delta_log`` on a classic
session (store/sources.py ``is_delta``), against Delta's own answer (DESCRIBE HISTORY)."""

from __future__ import annotations

import pandas as pd

from distunlearn.store.sources import delta_ref, is_delta, last_version


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
