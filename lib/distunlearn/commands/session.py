"""SparkSession with Delta Lake, the project's interpreter and one BLAS thread per worker.

Versions: pyspark 4.0.1 with delta-spark 4.0.1 (Delta 4.0.x is built for Spark 4.0.x, Scala
2.13; see the README).  The Delta jars are resolved by Spark's own Ivy from Maven Central on
first use and cached under ``ivy_dir``; ``delta_jars`` points at local copies instead.

Two ways in:

* the console command ``distunlearn`` launches its own JVM: this module sets the master,
  the jars, the interpreter and the worker environment;
* ``spark-submit jobs/<name>.py`` has already launched the JVM with the user's
  ``--master``/``--packages``: only session-level settings are applied, and a missing Delta
  jar becomes a one-line error that says which ``--packages`` to add.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from distunlearn.commands.config import JobConfig
from distunlearn.errors import EnvironmentSetupError

log = logging.getLogger(__name__)

DELTA_VERSION = "4.0.1"
SCALA_VERSION = "2.13"
DELTA_PACKAGE = f"io.delta:delta-spark_{SCALA_VERSION}:{DELTA_VERSION}"

#: Directory the executors unpack ``python_archive`` into (the ``#name`` of spark.archives).
EXECUTOR_ENV_DIR = "environment"

#: Environment of every Python worker.  OpenBLAS with its default thread count inside
#: Spark's workers oversubscribes the cores (measured: ~10x slower X^T X at d=384).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def session_settings(cfg: JobConfig, launch: bool) -> dict[str, str]:
    """Spark settings for a run.  ``launch`` adds the JVM-launch ones (master, jars)."""
    conf = {
        "spark.app.name": f"distunlearn:{cfg.run_id or 'session'}",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_size),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        # Delta 4.0.1 + Spark 4.0.1: DML on tables with deletion vectors can fail with
        # FIELD_NOT_FOUND `row_index` in _metadata (after a RESTORE, or on delta-rs tables);
        # Delta's own row-index column works (tests/test_apply.py covers it).
        "spark.databricks.delta.deletionVectors.useMetadataRowIndex": "false",
    }
    for key, value in WORKER_ENV.items():
        conf[f"spark.executorEnv.{key}"] = value
    if launch:
        conf["spark.master"] = cfg.master
        conf["spark.driver.memory"] = cfg.driver_memory
        conf["spark.pyspark.python"] = sys.executable
        conf["spark.pyspark.driver.python"] = sys.executable
        if cfg.python_archive:
            # The executors unpack the archive into their working directory as ./environment
            # and run its interpreter; the driver keeps this one (README, "Running on a cluster").
            archive = Path(cfg.python_archive).expanduser().resolve()
            if not archive.is_file():
                raise EnvironmentSetupError(f"python_archive: file {str(archive)!r} not found "
                                            "(make cluster-env builds dist/distunlearn-env.tar.gz)")
            conf["spark.archives"] = f"{archive}#{EXECUTOR_ENV_DIR}"
            conf["spark.pyspark.python"] = f"./{EXECUTOR_ENV_DIR}/bin/python"
        if cfg.delta_jars:
            jars = [str(Path(j).expanduser().resolve()) for j in cfg.delta_jars.split(",") if j]
            missing = [j for j in jars if not Path(j).is_file()]
            if missing:
                raise EnvironmentSetupError(f"delta_jars: file {missing[0]!r} not found")
            conf["spark.jars"] = ",".join(jars)
        else:
            conf["spark.jars.packages"] = DELTA_PACKAGE
            conf["spark.jars.ivy"] = str(Path(cfg.ivy_dir).expanduser())
    conf.update(cfg.spark_conf)
    return conf


def get_session(cfg: JobConfig, launch: bool = True):  # -> SparkSession (lazy import)
    """Create (or, under spark-submit, join) the SparkSession for ``cfg``.

    Raises EnvironmentSetupError with a one-line reason when the JVM cannot start (no Java,
    Delta jars not downloadable) or the Delta classes are not on the classpath.
    """
    from pyspark.sql import SparkSession

    conf = session_settings(cfg, launch)
    if launch:
        # The JVM reads these when it starts the Python workers (local mode) and passes them
        # to executors; PYSPARK_PYTHON is what pyspark itself uses for the worker interpreter.
        # pyspark takes the workers' interpreter from this variable (SparkContext.pythonExec),
        # not from spark.pyspark.python: with python_archive it is the archive's.
        os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
        for key, value in WORKER_ENV.items():
            os.environ[key] = value
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # pyspark raises PySparkRuntimeError(JAVA_GATEWAY_EXITED)
        where = conf.get("spark.jars") or f"{DELTA_PACKAGE} from Maven Central into {conf.get('spark.jars.ivy')}"
        raise EnvironmentSetupError(
            f"could not start Spark with Delta Lake ({type(exc).__name__}); the JVM needs Java 17 "
            f"and the Delta jars ({where}): check network access to Maven Central or pass "
            f"--delta-jars with local copies; Spark's own messages are above"
        ) from exc
    from py4j.java_gateway import JavaClass

    # py4j answers a JavaClass for a loadable class and a JavaPackage placeholder otherwise;
    # it looks through Spark's class loader, which holds the --packages/--jars classes.
    jvm = spark.sparkContext._jvm  # py4j is the only way to ask the JVM
    if jvm is None or not isinstance(jvm.io.delta.tables.DeltaTable, JavaClass):
        raise EnvironmentSetupError(
            "Delta Lake classes are not on the classpath: launch with "
            f"spark-submit --packages {DELTA_PACKAGE} (or --jars with local Delta jars)"
        )
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s, master %s, Delta %s, python %s", spark.version, spark.sparkContext.master,
             DELTA_VERSION, sys.executable)
    return spark
