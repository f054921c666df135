"""SparkSession with Delta Lake, the project's interpreter and one BLAS thread per worker.

Versions: the Delta build must match the Spark line (:data:`DELTA_BUILDS`; README,
"Versions"): the console command fetches the one for the installed pyspark.  The Delta jars
are resolved by Spark's own Ivy from Maven Central on first use and cached under ``ivy_dir``;
``delta_jars`` points at local copies instead.

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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from distunlearn import daemon
from distunlearn.commands.config import JobConfig
from distunlearn.errors import EnvironmentSetupError
from distunlearn.transforms.payload import is_connect

log = logging.getLogger(__name__)

#: The Delta Lake build for each Spark line the job runs on: (Maven artifact, version).  Delta
#: 4.0.x is built for Spark 4.0.x; Delta 4.4.0 for Spark 4.0.1, 4.1.0 and 4.2.0, and since
#: Delta 4.1 an artifact's name carries its Spark line.  4.0 is the default install and 4.2
#: the second line ``make test`` runs (README, "Versions"); 4.1's jars resolve from Maven
#: Central, but no test runs on it.  Scala 2.13 throughout (Spark 4 has no other).
DELTA_BUILDS: dict[str, tuple[str, str]] = {
    "4.0": ("delta-spark_2.13", "4.0.1"),
    "4.1": ("delta-spark_4.1_2.13", "4.4.0"),
    "4.2": ("delta-spark_4.2_2.13", "4.4.0"),
}


@dataclass(frozen=True)
class DeltaBuild:
    """The Delta Lake jars for one Spark version."""

    spark_version: str
    artifact: str
    version: str

    @property
    def package(self) -> str:
        """The Maven coordinate (``--packages``, ``spark.jars.packages``)."""
        return f"io.delta:{self.artifact}:{self.version}"

    @property
    def jar_files(self) -> tuple[str, str]:
        """The two jar files ``--delta-jars`` takes (the third dependency, antlr4-runtime,
        ships with pyspark)."""
        return f"{self.artifact}-{self.version}.jar", f"delta-storage-{self.version}.jar"


def _pyspark_version() -> str:
    import pyspark  # not at the top: the console's --help needs no Spark

    return pyspark.__version__


def delta_build(spark_version: str | None = None) -> DeltaBuild:
    """The Delta build for ``spark_version`` (default: the installed pyspark's).
    EnvironmentSetupError for a Spark line no Delta build is listed for."""
    spark_version = spark_version or _pyspark_version()
    line = ".".join(spark_version.split(".")[:2])
    if line not in DELTA_BUILDS:
        raise EnvironmentSetupError(
            f"Spark {spark_version} is not a line this job runs on ({', '.join(DELTA_BUILDS)}): install "
            "'distunlearn[spark]' (pyspark 4.0.1) or 'distunlearn[spark42]' (pyspark 4.2.1)")
    artifact, version = DELTA_BUILDS[line]
    return DeltaBuild(spark_version, artifact, version)

#: Directory the executors unpack ``python_archive`` into (the ``#name`` of spark.archives).
EXECUTOR_ENV_DIR = "environment"

#: Environment of every Python worker.  OpenBLAS with its default thread count inside
#: Spark's workers oversubscribes the cores (measured: ~10x slower X^T X at d=384).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def daemon_settings() -> dict[str, str]:
    """The Python worker daemon of a session or server this job launches: distunlearn's on
    Spark < 4.2, which skips a per-task cost there (:mod:`distunlearn.daemon`); pyspark's
    (no setting) on later lines.  The executors' Python must hold distunlearn, as for its UDFs."""
    return {"spark.python.daemon.module": "distunlearn.daemon"} if daemon.needed(_pyspark_version()) else {}


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
        conf.update(daemon_settings())
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
            build = delta_build()
            cached = cached_jars(cfg.ivy_dir, build)
            if cached:  # resolved before: no Ivy resolution (and no report of it on the console)
                conf["spark.jars"] = ",".join(cached)
            else:
                conf["spark.jars.packages"] = build.package
                conf["spark.jars.ivy"] = str(Path(cfg.ivy_dir).expanduser())
    # Spark's progress bar of running stages, on a terminal only (a log file would fill with it).
    conf["spark.ui.showConsoleProgress"] = "true" if launch and sys.stderr.isatty() else "false"
    conf.update(cfg.spark_conf)
    if launch and not cfg.verbose and not _user_log4j_config() and QUIET_LOG4J.is_file():
        # Spark's logs at WARN from the start, without the banner of its default profile
        # (--verbose: Spark's own configuration and INFO logs).
        user = conf.get("spark.driver.extraJavaOptions", "")
        conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()} {user}".strip()
    return conf


#: The console command's log4j2 configuration: Spark at WARN, a few startup warnings that say
#: nothing to a user of this job at ERROR.
QUIET_LOG4J = Path(__file__).with_name("log4j2-quiet.properties")


def _user_log4j_config() -> bool:
    """Whether the user's Spark configuration directory brings its own log4j2 file."""
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        str(Path(os.environ["SPARK_HOME"]) / "conf") if os.environ.get("SPARK_HOME") else "")
    return bool(conf_dir) and (Path(conf_dir) / "log4j2.properties").is_file()


def _manifest(ivy_dir: str, build: DeltaBuild) -> Path:
    return Path(ivy_dir).expanduser() / "distunlearn" / f"{build.artifact}-{build.version}.jars"


def cached_jars(ivy_dir: str, build: DeltaBuild) -> list[str]:
    """The jar files an earlier launch resolved for ``build`` (listed by :func:`remember_jars`),
    when every one is still in the cache; else [] (resolve with Ivy again)."""
    manifest = _manifest(ivy_dir, build)
    if not manifest.is_file():
        return []
    jars = [line for line in manifest.read_text().splitlines() if line]
    return jars if jars and all(Path(j).is_file() for j in jars) else []


def remember_jars(spark, ivy_dir: str) -> None:
    """After Ivy resolved the Delta package: list the jar files it put on the classpath, so the
    next launch passes them as spark.jars and skips the resolution."""
    resolved = spark.sparkContext.getConf().get("spark.jars", "")
    jars = [unquote(urlparse(j).path) if j.startswith("file:") else j for j in resolved.split(",") if j]
    ivy_jars = Path(ivy_dir).expanduser() / "jars"  # the resolution's files, not jars the user added
    jars = [j for j in jars if Path(j).parent == ivy_jars]
    if not jars or not all(Path(j).is_file() for j in jars):
        return
    manifest = _manifest(ivy_dir, delta_build(spark.version))
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(jars) + "\n")
        tmp.replace(manifest)  # atomic: a concurrent launch reads the old list or the new one
    except OSError as exc:  # a read-only cache: resolve again next time
        log.debug("could not record the resolved Delta jars in %s: %s", manifest, exc)


def get_session(cfg: JobConfig, launch: bool = True):  # -> SparkSession (lazy import)
    """Create (or, under spark-submit, join) the SparkSession for ``cfg``.

    Raises EnvironmentSetupError with a one-line reason when the JVM cannot start (no Java,
    Delta jars not downloadable) or the Delta classes are not on the classpath.
    """
    from pyspark.sql import SparkSession

    remote = cfg.remote or os.environ.get("SPARK_REMOTE", "")
    if remote:
        return connect_session(cfg, remote)
    if not launch:
        active = SparkSession.getActiveSession()
        if active is not None and is_connect(active):
            # A job or notebook on a platform whose sessions are Spark Connect ones (Databricks
            # serverless and standard access mode) already holds one: join it as it is.
            return _configure_connect(active, cfg, "the active Spark Connect session")
    conf = session_settings(cfg, launch)
    if launch:
        # The JVM reads these when it starts the Python workers (local mode) and passes them
        # to executors; PYSPARK_PYTHON is what pyspark itself uses for the worker interpreter.
        # pyspark takes the workers' interpreter from this variable (SparkContext.pythonExec),
        # not from spark.pyspark.python: with python_archive it is the archive's.
        os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
        for key, value in WORKER_ENV.items():
            os.environ[key] = value
        if cfg.master.startswith("local") and "SPARK_LOCAL_IP" not in os.environ:
            # A local master needs no network address (and Spark warns about the loopback one).
            os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # pyspark raises PySparkRuntimeError(JAVA_GATEWAY_EXITED)
        raise EnvironmentSetupError(
            f"could not start Spark with Delta Lake ({type(exc).__name__}); the JVM needs Java 17 "
            f"and the Delta jars ({_delta_source(conf)}): check network access to Maven Central or pass "
            f"--delta-jars with local copies; Spark's own messages are above"
        ) from exc
    if is_connect(spark):  # the builder returned the platform's Connect session (no SparkContext)
        return _configure_connect(spark, cfg, "the platform's Spark Connect session")
    check_delta(spark, f"launch with spark-submit --packages {_package_hint(spark.version)} (or --jars with "
                       "local Delta jars)")
    # A classic session: the JVM this process launched or joined.
    spark.sparkContext.setLogLevel("INFO" if cfg.verbose else "WARN")
    if launch and "spark.jars.packages" in conf:
        remember_jars(spark, cfg.ivy_dir)
    log.info("Spark %s, master %s, Delta %s, python %s", spark.version, spark.conf.get("spark.master"),
             _delta_source(conf), sys.executable)
    return spark


def _delta_source(conf: dict[str, str]) -> str:
    """Where the session's Delta jars come from, for messages."""
    if "spark.jars" in conf:
        jars = conf["spark.jars"].split(",")
        return f"{Path(jars[0]).name} and {len(jars) - 1} more jars in {Path(jars[0]).parent}"
    if "spark.jars.packages" in conf:
        return f"{conf['spark.jars.packages']} from Maven Central into {conf['spark.jars.ivy']}"
    return "from spark-submit's --packages or --jars"


#: Settings a Spark Connect client may set on its session (SQL settings); the rest of
#: :func:`session_settings` (extensions, catalog, executor environment) belong to the server.
_CONNECT_SETTINGS = ("spark.sql.shuffle.partitions", "spark.sql.execution.arrow.maxRecordsPerBatch",
                     "spark.sql.session.timeZone", "spark.databricks.delta.deletionVectors.useMetadataRowIndex")


def connect_session(cfg: JobConfig, remote: str):  # -> pyspark.sql.connect SparkSession
    """A Spark Connect session on ``remote`` (sc://HOST:PORT[/;params]) with the run's SQL
    settings.  The server brings Delta (its --packages and the two Delta session settings)
    and one BLAS thread per Python worker (its spark.executorEnv.*); README, "Spark Connect"."""
    if not remote.startswith("sc://"):
        raise EnvironmentSetupError(f"--remote {remote!r}: a Spark Connect endpoint starts with sc:// "
                                    "(for example sc://127.0.0.1:15002)")
    from pyspark.sql import SparkSession

    _reachable(remote)
    try:
        import pyspark.sql.connect.session  # noqa: F401
    except ImportError as exc:  # grpcio and friends: pyspark's [connect] extra
        raise EnvironmentSetupError(f"Spark Connect needs pyspark's connect extra ({exc}); "
                                    "pip install 'distunlearn[spark]' or 'pyspark[connect]'") from exc
    try:
        # pyspark's own builder, not pyspark.sql.connect's: it also switches pyspark.sql.functions
        # to their Connect versions (SPARK_CONNECT_MODE_ENABLED), which F.col and friends check.
        spark = SparkSession.builder.remote(remote).getOrCreate()
        spark.version  # noqa: B018  - the first round trip: fails here when the server is not Spark Connect
    except Exception as exc:  # grpc errors: SparkConnectGrpcException, connection refused
        raise EnvironmentSetupError(f"could not use the Spark Connect server at {remote}: {_first_line(exc)}") from exc
    return _configure_connect(spark, cfg, f"Spark Connect at {remote}")


def _configure_connect(spark, cfg: JobConfig, where: str):
    """The run's SQL settings on a Connect session, and the Delta check."""
    settings = session_settings(cfg, launch=False)
    apply_settings(spark, {key: settings[key] for key in _CONNECT_SETTINGS}, required=False)
    apply_settings(spark, cfg.spark_conf, required=True)
    check_delta(spark, "start the Connect server with the Delta package and the two Delta session "
                       "settings (README, \"Spark Connect\")")
    log.info("Spark %s over %s, python %s", spark.version, where, sys.executable)
    return spark


def apply_settings(spark, settings: dict[str, str], required: bool) -> None:
    """``spark.conf.set`` each setting.  A managed platform may refuse some (Databricks
    serverless allows only a few; a static setting is refused everywhere): the job's own
    (``required=False``: shuffle partitions, Arrow batch size, time zone) are tuning, so a
    refusal is a warning and the server's value stays; one the user gave (``--spark-conf``)
    is an EnvironmentSetupError naming it."""
    from pyspark.errors import PySparkException

    for key, value in settings.items():
        try:
            spark.conf.set(key, value)
        except PySparkException as exc:
            if required:
                raise EnvironmentSetupError(f"the session refuses --spark-conf {key}={value}: {_first_line(exc)}") \
                    from exc
            log.warning("the session refuses %s=%s (%s); keeping its value", key, value, _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _reachable(remote: str, timeout: float = 10.0) -> None:
    """EnvironmentSetupError unless something accepts TCP connections at the endpoint: the
    Connect client itself retries a refused connection for minutes before it gives up."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse("http://" + remote[len("sc://"):].split("/", 1)[0])
    host, port = parsed.hostname or "", parsed.port or 15002  # 15002: Spark Connect's default port
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise EnvironmentSetupError(f"no Spark Connect server answers at {remote} ({host}:{port}: "
                                    f"{exc.strerror or type(exc).__name__})") from exc


def _package_hint(spark_version: str) -> str:
    """The --packages coordinate to suggest for a session of ``spark_version``."""
    try:
        return delta_build(spark_version).package
    except EnvironmentSetupError:
        return "<the Delta build for Spark " + spark_version + ">"


def check_delta(spark, hint: str) -> None:
    """EnvironmentSetupError unless the session runs Delta's SQL: DESCRIBE HISTORY of a path
    that holds no table answers "not a Delta table" with Delta, a parse or data-source error
    without it.  SQL, so the same check works on a classic and a Connect session."""
    from pyspark.errors import PySparkException

    probe = "/nonexistent/distunlearn-delta-probe"
    try:
        spark.sql(f"DESCRIBE HISTORY delta.`{probe}`").collect()
    except PySparkException as exc:
        if str(exc.getCondition() or "").startswith("DELTA_"):
            return
        first = str(exc).strip().splitlines()[0][:160]
        raise EnvironmentSetupError(f"Delta Lake is not available in this Spark session ({first}): {hint}") from exc
    raise EnvironmentSetupError(f"Delta Lake probe answered for {probe!r}; expected no table there")
