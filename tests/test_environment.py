"""The Python workers run the project's interpreter with one BLAS thread (measured here:
OpenBLAS with its default threads inside Spark's workers is up to 10x slower)."""

from __future__ import annotations

import sys

import pyarrow as pa


def test_workers_use_project_interpreter_and_one_blas_thread(spark):
    # Defined inside the test so cloudpickle ships it by value (tests/ is not importable on workers).
    def _probe(batches):
        import os
        import sys

        import numpy  # noqa: F401  - loads OpenBLAS so threadpoolctl can see it
        from threadpoolctl import threadpool_info

        for _ in batches:
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            yield pa.RecordBatch.from_pylist([{
                "exe": sys.executable,
                "blas_libraries": len(blas),
                "max_threads": max(blas) if blas else -1,
                "openblas_env": os.environ.get("OPENBLAS_NUM_THREADS", ""),
            }])

    df = spark.range(0, 40, numPartitions=4)
    rows = df.mapInArrow(_probe, "exe string, blas_libraries long, max_threads long, openblas_env string").collect()
    assert rows, "no worker answered"
    for row in rows:
        assert row.exe == sys.executable
        assert row.blas_libraries >= 1
        assert row.max_threads == 1
        assert row.openblas_env == "1"
