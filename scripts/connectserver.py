"""A Spark Connect server with Delta Lake on 127.0.0.1, for the tests and for trying ``--remote``.

    python scripts/connectserver.py up   [--port 15002 --state-dir .connect]
    python scripts/connectserver.py status | down

``make connect-up`` / ``make connect-down`` call these; ``tests/test_connect.py`` uses the same
functions.  The server is the installed pyspark's own (``spark-connect_2.13`` ships in its
jars): ``spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer
spark-internal`` on ``local[2]`` with the Delta package and the two Delta session settings,
bound to 127.0.0.1 on a free port.  Its Python workers run this interpreter (so they import
this checkout's ``distunlearn``, numpy and pyarrow) with one BLAS thread each, as the job's own
sessions do.  ``up`` returns once the log says the server listens; the pid is kept in
``<state-dir>/connect.json`` and ``down`` stops that process's family (the JVM and its Python
workers), also when the caller failed half-way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from localcluster import _family, _processes, _signal, free_port, spark_home

from distunlearn.commands.session import WORKER_ENV, daemon_settings, delta_build
from distunlearn.errors import EnvironmentSetupError

log = logging.getLogger(__name__)

STATE_FILE = "connect.json"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


@dataclasses.dataclass
class ConnectServer:
    """A running Spark Connect server: its URL, pid and log."""

    state_dir: Path
    url: str
    pid: int
    log: str

    def save(self) -> None:
        data = {"url": self.url, "pid": self.pid, "log": self.log}
        (self.state_dir / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ConnectServer | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(state_dir, data["url"], int(data["pid"]), data["log"])

    def running(self) -> bool:
        return bool(_family(self.pid, _processes()))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's family, SIGKILL after ``timeout``; clears the state file."""
        _signal(_family(self.pid, _processes()), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal(_family(self.pid, _processes()), signal.SIGKILL)
        child = _children.pop(self.pid, None)
        if child is not None:
            child.wait(timeout=10)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)


_children: dict[int, subprocess.Popen] = {}


def server_command(port: int, ivy_dir: str, delta_jars: str = "", conf: dict[str, str] | None = None) -> list[str]:
    """The spark-submit command line of a local Connect server with Delta on ``port``."""
    settings = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.pyspark.python": sys.executable,
        "spark.ui.enabled": "false",
        "spark.driver.memory": "2g",
        "spark.jars.ivy": str(Path(ivy_dir).expanduser()),
        **{f"spark.executorEnv.{k}": v for k, v in WORKER_ENV.items()},
        **daemon_settings(),
        **(conf or {}),
    }
    jars = ["--jars", delta_jars] if delta_jars else ["--packages", delta_build().package]
    flags = [arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")]
    return [str(spark_home() / "bin" / "spark-submit"), "--master", "local[2]", "--class", SERVER_CLASS,
            *jars, *flags, "spark-internal"]


def start(state_dir: Path, port: int = 0, ivy_dir: str = "~/.cache/distunlearn/ivy", delta_jars: str = "",
          conf: dict[str, str] | None = None, timeout: float = 180.0) -> ConnectServer:
    """Start a server on 127.0.0.1 (``port`` if free, else one the OS picks); return once it
    listens.  EnvironmentSetupError, naming the log, when it exits or is not up in time (what
    it started is stopped first)."""
    state_dir = state_dir.resolve()
    old = ConnectServer.load(state_dir)
    if old is not None and old.running():
        raise EnvironmentSetupError(f"a Connect server from {state_dir} is already running at {old.url} "
                                    "(stop it first: make connect-down)")
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port(port)
    logfile = state_dir / "logs" / "connect-server.log"
    # spark-submit finds its home from the bin/ it runs from; the venv's bin/ first on PATH
    # gives it this interpreter's pyspark.
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           **WORKER_ENV}
    env.pop("SPARK_REMOTE", None)
    with open(logfile, "wb") as out:
        child = subprocess.Popen(server_command(port, ivy_dir, delta_jars, conf), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _children[child.pid] = child
    server = ConnectServer(state_dir, f"sc://127.0.0.1:{port}", child.pid, str(logfile))
    server.save()
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):  # not its "server started" log line: that is INFO, maybe filtered
            if child.poll() is not None:
                raise EnvironmentSetupError(f"the Spark Connect server exited with status {child.returncode} "
                                            f"while starting; see {logfile}")
            if time.monotonic() > deadline:
                raise EnvironmentSetupError(f"the Spark Connect server did not start within {timeout:.0f} s; "
                                            f"see {logfile}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    log.info("Spark Connect server up: %s (log %s)", server.url, logfile)
    return server


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` (the gRPC server binds
    once it is ready to serve)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/connectserver.py",
        description="Start/stop a Spark Connect server with Delta Lake on 127.0.0.1 "
                    "(README, 'Spark Connect').")
    parser.add_argument("command", choices=("up", "down", "status"),
                        help="up: start the server and print its sc:// URL; down: stop it; status: print the URL")
    parser.add_argument("--state-dir", default=".connect", help="pid and log (default: %(default)s)")
    parser.add_argument("--port", type=int, default=15002,
                        help="up: the port, if free (else one the OS picks; default: %(default)s)")
    parser.add_argument("--ivy-dir", default="~/.cache/distunlearn/ivy",
                        help="up: Ivy cache for the Delta jars (default: %(default)s)")
    parser.add_argument("--delta-jars", default="", help="up: local Delta jars instead of fetching them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = Path(args.state_dir)
    try:
        if args.command == "up":
            server = start(state_dir, args.port, args.ivy_dir, args.delta_jars)
            print(f"remote: {server.url}\nlog:    {server.log}\nuse:    distunlearn run --remote {server.url} ...\n"
                  "stop:   make connect-down")
            return 0
        found = ConnectServer.load(state_dir)
        if found is None or not found.running():
            print(f"no Connect server running from {state_dir}")
            if found is not None:
                found.stop()
            return 0 if args.command == "down" else 1
        if args.command == "down":
            found.stop()
            print(f"stopped {found.url}")
        else:
            print(f"remote: {found.url} (pid {found.pid})")
    except EnvironmentSetupError as exc:
        print(f"connectserver: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
