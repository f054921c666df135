"""Large objects reach the Python workers as files of the session (distunlearn.transforms.payload),
on a classic session too, and large local rows are emitted by a worker instead of travelling
in the plan: the same values either way."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from distunlearn.transforms import payload


def test_an_object_above_the_inline_limit_reaches_the_workers_as_a_file(spark, monkeypatch):
    spark.conf.set(payload.INLINE_LIMIT_CONF, "0")
    try:
        value = {"w": np.arange(12.0).reshape(3, 4)}
        shipped = payload.ship(spark, value, "test")
    finally:
        spark.conf.unset(payload.INLINE_LIMIT_CONF)
    assert shipped.value is None and shipped.artifact and shipped.artifact.endswith(".pkl")

    def read(batches):
        for _ in batches:
            pass
        w = shipped.get()["w"]
        yield pa.RecordBatch.from_pydict({"total": [float(w.sum())], "last": [float(w[-1, -1])]})

    got = spark.range(0, 4, numPartitions=2).mapInArrow(read, "total double, last double").collect()
    assert [(r.total, r.last) for r in got] == [(66.0, 11.0)] * 2  # one row per task, both read the file


def test_large_local_rows_are_emitted_by_a_worker_with_the_same_values(spark, monkeypatch):
    monkeypatch.setattr(payload, "LOCAL_ROWS_LIMIT", 0)
    spark.conf.set(payload.INLINE_LIMIT_CONF, "0")
    when = dt.datetime(2026, 12, 7, 12, 30, tzinfo=dt.timezone.utc)
    m2 = [np.arange(6.0), np.arange(6.0) * -0.5]
    offsets = pa.array(np.array([0, 6, 12], dtype=np.int32))
    table = pa.table({"domain": ["forget", "retain"], "dim": [2, 2],
                      "m2": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(m2))), "at": [when, when]})
    try:
        df = payload.local_frame(spark, table, "domain string, dim int, m2 array<double>, at timestamp")
        rows = sorted(df.collect(), key=lambda r: r.domain)
    finally:
        spark.conf.unset(payload.INLINE_LIMIT_CONF)
    assert [r.domain for r in rows] == ["forget", "retain"] and [r.dim for r in rows] == [2, 2]
    assert [r.m2 for r in rows] == [list(v) for v in m2]
    assert df.schema.simpleString() == "struct<domain:string,dim:int,m2:array<double>,at:timestamp>"
    assert {r.at.replace(tzinfo=None) for r in rows} == {when.replace(tzinfo=None)}  # the session's zone is UTC
