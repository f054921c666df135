"""The Python workers run the project's interpreter with one BLAS thread (measured here:
OpenBLAS with its default threads inside Spark's workers is up to 10x slower)."""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest


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


@pytest.mark.second_line
def test_the_session_runs_the_delta_build_of_its_spark_line(spark):
    """Each Spark line gets the Delta jars built for it (Delta 4.0.1 for Spark 4.0, the
    Spark-named artifacts of Delta 4.4 for 4.1 and 4.2): checked on the running session."""
    import pyspark

    from distunlearn.commands.session import delta_build

    assert spark.version == pyspark.__version__
    line = ".".join(spark.version.split(".")[:2])
    want = {"4.0": "io.delta:delta-spark_2.13:4.0.1", "4.2": "io.delta:delta-spark_4.2_2.13:4.4.0"}[line]
    assert want == delta_build().package
    # The jars on the session's classpath: resolved by Ivy (spark.jars.packages) on the first
    # start, the recorded files of that resolution (spark.jars) on later ones; either way
    # spark.jars lists the files.
    build = delta_build()
    jars = [j.rsplit("/", 1)[-1] for j in spark.sparkContext.getConf().get("spark.jars").split(",")]
    assert f"io.delta_{build.artifact}-{build.version}.jar" in jars, jars
    assert f"io.delta_delta-storage-{build.version}.jar" in jars, jars


def test_delta_builds_by_spark_line_and_unsupported_lines():
    from distunlearn.commands.session import delta_build
    from distunlearn.errors import EnvironmentSetupError

    assert delta_build("4.0.1").jar_files == ("delta-spark_2.13-4.0.1.jar", "delta-storage-4.0.1.jar")
    assert delta_build("4.1.3").package == "io.delta:delta-spark_4.1_2.13:4.4.0"
    assert delta_build("4.2.1").jar_files == ("delta-spark_4.2_2.13-4.4.0.jar", "delta-storage-4.4.0.jar")
    with pytest.raises(EnvironmentSetupError, match=r"^Spark 3\.5\.6 is not a line this job runs on \(4\.0, 4\.1, "):
        delta_build("3.5.6")


def test_a_refused_setting_warns_for_the_jobs_own_and_stops_for_the_users(spark, caplog):
    """A managed session may refuse settings (Databricks serverless allows a few; a static one
    is refused everywhere): the job's tuning settings are then a warning, what the user asked
    for with --spark-conf an error naming it."""
    from distunlearn.commands.session import apply_settings
    from distunlearn.errors import EnvironmentSetupError

    before = spark.conf.get("spark.sql.extensions")
    apply_settings(spark, {"spark.sql.extensions": "x"}, required=False)
    assert "the session refuses spark.sql.extensions=x (" in caplog.text and "CANNOT_MODIFY_CONFIG" in caplog.text
    with pytest.raises(EnvironmentSetupError, match=r"^the session refuses --spark-conf spark\.sql\.extensions=x: "):
        apply_settings(spark, {"spark.sql.extensions": "x"}, required=True)
    assert spark.conf.get("spark.sql.extensions") == before
