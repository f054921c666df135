"""A Spark standalone cluster on 127.0.0.1, and the packed Python environment its executors run.

    python scripts/localcluster.py env  [--dest dist/distunlearn-env.tar.gz]
    python scripts/localcluster.py up   [--workers 2 --cores 1 --memory 2g --state-dir .cluster]
    python scripts/localcluster.py status | down

``make cluster-env`` / ``make cluster-up`` / ``make cluster-down`` call these.  The tests in
``tests/test_cluster.py`` use the same functions.

The cluster is the installed pyspark's own standalone deploy mode: one
``spark-class org.apache.spark.deploy.master.Master`` and N
``...deploy.worker.Worker`` JVMs, all bound to 127.0.0.1 on free ports.  Each process is
started in its own session (process group); stopping it -- or killing it to simulate a lost
machine -- signals its family: the group (the daemon, the executors it launched) and their
descendants (pyspark's Python workers, which start a session of their own), Spark processes
only.  ``up`` returns once every worker has registered with the master; its pids are kept in
``<state-dir>/cluster.json`` and ``down`` stops exactly those families.

The executors' Python environment travels the way it would to a real cluster: a virtualenv
packed with venv-pack and shipped with ``--archives env.tar.gz#environment``
(``spark.pyspark.python=./environment/bin/python``).  Not a wheel through ``--py-files``: that
only puts pure-Python code on ``sys.path``, and the executors need numpy, pyarrow and pandas,
which are compiled.  The archive holds the project and its dependencies except pyspark and
delta-spark (the cluster's Spark provides pyspark to its Python workers, and must be the same
version) and matplotlib (the report's figures are drawn on the driver).  venv-pack does not
copy the interpreter: ``bin/python`` links to the same Python at the same path on every node,
so build the archive on the nodes' OS image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from distunlearn.errors import EnvironmentSetupError

log = logging.getLogger(__name__)

#: The project's dependencies that are not packed: provided by the cluster's Spark, or used on
#: the driver only.
NOT_PACKED = {"pyspark", "delta-spark", "matplotlib"}
SPARK_PROCESS = re.compile(r"org\.apache\.spark\.|pyspark|distunlearn\.daemon")  # daemons, executors, Python workers
STATE_FILE = "cluster.json"


# ------------------------------------------------------------------ the packed environment
def project_root() -> Path:
    """The checkout this script belongs to (the folder with pyproject.toml)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise EnvironmentSetupError(f"no pyproject.toml above {__file__}: packing needs the project's checkout")
    return root


def packed_requirements() -> list[str]:
    """The project's runtime requirements (as installed), without extras and NOT_PACKED."""
    keep = []
    for req in metadata.requires("distunlearn") or []:
        name = re.match(r"[A-Za-z0-9_.\-]+", req)
        if "extra ==" in req or not name or name.group(0).lower().replace("_", "-") in NOT_PACKED:
            continue
        keep.append(req.split(";")[0].strip())
    return keep


def source_digest(root: Path) -> str:
    """sha256 over pyproject.toml and the package's sources: the archive is rebuilt when it changes."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted((root / "lib" / "distunlearn").rglob("*.py"))]
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(sys.version.encode())
    return digest.hexdigest()


def pack_environment(dest: Path, force: bool = False) -> Path:
    """Build ``dest`` (a .tar.gz) unless it is already built from the same sources.

    A fresh virtualenv (of this interpreter) gets the project, built as a wheel, and
    ``packed_requirements()``; venv-pack then archives it with relocatable paths.
    """
    root = project_root()
    dest = dest.resolve()
    stamp = dest.with_name(dest.name + ".sha256")
    digest = source_digest(root)
    if not force and dest.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        log.info("%s is up to date (sources unchanged)", dest)
        return dest
    try:
        import venv_pack  # noqa: F401  (a dependency of the 'test' extra; checked before any work)
    except ImportError as exc:
        raise EnvironmentSetupError("venv-pack is not installed: pip install venv-pack "
                                    "(it is in the project's 'test' extra)") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="distunlearn-env-") as tmp:
        env = Path(tmp) / "venv"
        _check_call([sys.executable, "-m", "venv", "--without-pip", str(env)], "create the virtualenv")
        pip = [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install",
               "--quiet", "--disable-pip-version-check"]
        _check_call([*pip, *packed_requirements()], "install the dependencies into the virtualenv")
        _check_call([*pip, "--no-deps", str(root)], "install the project into the virtualenv")
        partial = dest.with_name(dest.name + ".partial")
        partial.unlink(missing_ok=True)
        _check_call([sys.executable, "-m", "venv_pack", "--prefix", str(env), "--output", str(partial),
                     "--format", "tar.gz", "--quiet"], "pack the virtualenv")
        os.replace(partial, dest)  # never a half-written archive under the final name
    stamp.write_text(digest + "\n")
    log.info("packed %s (%.0f MB) in %.0f s", dest, dest.stat().st_size / 1e6, time.monotonic() - start)
    return dest


def _check_call(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EnvironmentSetupError(f"could not {what}: {tail[0]}")


# ------------------------------------------------------------------ the cluster
def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port(wanted: int = 0) -> int:
    """``wanted`` if it is free on 127.0.0.1 right now, else (or for 0) a port the OS picks."""
    for port in (wanted, 0) if wanted else (0,):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise EnvironmentSetupError("no free TCP port on 127.0.0.1")


def daemon_env() -> dict[str, str]:
    """Environment of the master and workers (and so of the executors they launch)."""
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_DAEMON_MEMORY": "512m", "SPARK_NO_DAEMONIZE": "1"}


@dataclasses.dataclass
class LocalCluster:
    """A running standalone cluster: its URLs and the processes this module started."""

    state_dir: Path
    master_url: str
    web_url: str
    processes: list[dict[str, Any]]  # {"role": "master"|"worker-1".., "pid": int, "log": str}

    # -------------------------------------------------------------- state file
    def save(self) -> None:
        data = {"master_url": self.master_url, "web_url": self.web_url, "processes": self.processes}
        (self.state_dir / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (self.state_dir / "master-url").write_text(self.master_url + "\n")  # for --master $(cat ...)

    @classmethod
    def load(cls, state_dir: Path) -> LocalCluster | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(state_dir, data["master_url"], data["web_url"], data["processes"])

    # -------------------------------------------------------------- queries
    def master_state(self) -> dict:
        """The master's JSON status page (workers, applications)."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as resp:
            return json.load(resp)

    def alive_workers(self) -> int:
        return sum(1 for w in self.master_state().get("workers", []) if w.get("state") == "ALIVE")

    def pid(self, role: str) -> int:
        return int(next(p["pid"] for p in self.processes if p["role"] == role))

    def families(self) -> dict[int, dict[int, str]]:
        """For each process this cluster started and whose family is alive: that family's live
        Spark processes (pid -> command line), from one look at the process table."""
        table = _processes()
        found = {int(p["pid"]): _family(int(p["pid"]), table) for p in self.processes}
        return {pid: family for pid, family in found.items() if family}

    def running(self) -> list[int]:
        """Pids of this cluster's processes whose family still has Spark processes."""
        return list(self.families())

    def command_lines(self) -> list[str]:
        """Command lines of every live process of this cluster (daemons, executors, Python workers)."""
        return [line for family in self.families().values() for line in family.values()]

    # -------------------------------------------------------------- control
    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Signal one process and every Spark process it launched, as a lost machine would."""
        _signal(_family(self.pid(role), _processes()), sig)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL after ``timeout``."""
        for family in reversed(self.families().values()):  # workers first, the master last
            _signal(family, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.families() and time.monotonic() < deadline:
            time.sleep(0.2)
        for family in self.families().values():
            _signal(family, signal.SIGKILL)
        _reap(self.processes)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        (self.state_dir / "master-url").unlink(missing_ok=True)
        shutil.rmtree(self.state_dir / "work", ignore_errors=True)  # executors' folders, archives


def _signal(pids: dict[int, str], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


_children: dict[int, subprocess.Popen] = {}  # started by this process: reaped on stop


def _reap(processes: list[dict[str, Any]]) -> None:
    for p in processes:
        child = _children.pop(int(p["pid"]), None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid -> (parent pid, process group, command line)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if fields[0] == "Z":
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), cmdline.strip())
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return table


def _family(pgid: int, table: dict[int, tuple[int, int, str]]) -> dict[int, str]:
    """Live Spark processes started from the daemon whose process group is ``pgid``: the group's
    members (the daemon, the executors it launched) and their descendants in other groups
    (pyspark's Python worker daemon calls setsid).  A process group outlives its leader while
    members remain, and Linux does not hand its id to a new process meanwhile; the command-line
    check keeps an unrelated group that later got the same id out.  ``table``: ``_processes()``."""
    family = {pid for pid, (_, group, _) in table.items() if group == pgid}
    grew = True
    while grew:
        children = {pid for pid, (parent, _, _) in table.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return {pid: table[pid][2] for pid in sorted(family) if SPARK_PROCESS.search(table[pid][2])}


def _launch(args: list[str], role: str, state_dir: Path) -> dict[str, Any]:
    logfile = state_dir / "logs" / f"{role}.log"
    with open(logfile, "ab") as out:
        child = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=daemon_env(),
                                 start_new_session=True)
    _children[child.pid] = child
    return {"role": role, "pid": child.pid, "log": str(logfile)}


def start(state_dir: Path, workers: int = 2, cores: int = 1, memory: str = "2g", port: int = 0,
          web_port: int = 0, timeout: float = 120.0) -> LocalCluster:
    """Start a master and ``workers`` workers on 127.0.0.1; return when all have registered.

    The master listens on ``port`` and serves its UI on ``web_port`` when those are free, on
    ports the OS picks otherwise (and for 0); the workers always on picked ones.

    Raises EnvironmentSetupError (after stopping whatever it started) when a process exits or
    the workers do not register within ``timeout`` seconds; the message names the log file.
    """
    state_dir = state_dir.resolve()
    old = LocalCluster.load(state_dir)
    if old is not None and old.running():
        raise EnvironmentSetupError(f"a cluster from {state_dir} is already running at {old.master_url} "
                                    "(stop it first: make cluster-down)")
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    port, web_port = free_port(port), free_port(web_port)
    cluster = LocalCluster(state_dir, f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web_port}", [])
    try:
        cluster.processes.append(_launch(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(web_port)], "master", state_dir))
        cluster.save()
        for i in range(1, workers + 1):
            work = state_dir / "work" / f"worker-{i}"
            work.mkdir(parents=True, exist_ok=True)
            cluster.processes.append(_launch(
                ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(free_port()),
                 "--webui-port", str(free_port()), "--cores", str(cores), "--memory", memory,
                 "--work-dir", str(work), cluster.master_url], f"worker-{i}", state_dir))
            cluster.save()
        _wait_for_workers(cluster, workers, timeout)
    except BaseException:
        cluster.stop()
        raise
    log.info("standalone cluster up: %s (%d workers x %d cores, UI %s)", cluster.master_url, workers,
             cores, cluster.web_url)
    return cluster


def _wait_for_workers(cluster: LocalCluster, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in cluster.processes:
            child = _children.get(int(p["pid"]))
            if child is not None and child.poll() is not None:
                raise EnvironmentSetupError(f"Spark {p['role']} exited with status {child.returncode} "
                                            f"while starting; see {p['log']}")
        with contextlib.suppress(OSError, ValueError):
            if cluster.alive_workers() >= workers:
                return
        if time.monotonic() > deadline:
            raise EnvironmentSetupError(f"{workers} workers did not register with {cluster.master_url} "
                                        f"within {timeout:.0f} s; see the logs in {cluster.state_dir / 'logs'}")
        time.sleep(0.5)


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/localcluster.py",
        description="Start/stop a Spark standalone cluster on 127.0.0.1, and pack the executors' "
                    "Python environment (see the README, 'A local standalone cluster').")
    parser.add_argument("command", choices=("env", "up", "down", "status"),
                        help="env: build the packed virtualenv; up: start master and workers and "
                             "print the master URL; down: stop them; status: print the URL and workers")
    parser.add_argument("--state-dir", default=".cluster",
                        help="pids, logs and executor folders (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="workers to start (default: %(default)s)")
    parser.add_argument("--cores", type=int, default=1, help="cores per worker (default: %(default)s)")
    parser.add_argument("--memory", default="2g", help="executor memory each worker offers (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7077,
                        help="up: the master's port, if free (else one the OS picks; default: %(default)s)")
    parser.add_argument("--web-port", type=int, default=8080,
                        help="up: the master's web UI port, if free (else one the OS picks; default: %(default)s)")
    parser.add_argument("--dest", default="dist/distunlearn-env.tar.gz",
                        help="env: the archive to write (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="env: rebuild even when the sources are unchanged")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = Path(args.state_dir)
    try:
        if args.command == "env":
            print(pack_environment(Path(args.dest), force=args.force))
        elif args.command == "up":
            cluster = start(state_dir, args.workers, args.cores, args.memory, args.port, args.web_port)
            print(f"master: {cluster.master_url}\nweb UI: {cluster.web_url}\n"
                  f"logs:   {state_dir / 'logs'}\nstop:   make cluster-down")
        else:
            found = LocalCluster.load(state_dir)
            if found is None or not found.running():
                print(f"no cluster running from {state_dir}")
                if found is not None:
                    found.stop()  # clears the stale state file
                return 0 if args.command == "down" else 1
            if args.command == "down":
                found.stop()
                print(f"stopped {found.master_url}")
            else:
                print(f"master: {found.master_url} ({found.alive_workers()} workers alive)\nweb UI: {found.web_url}")
    except EnvironmentSetupError as exc:
        print(f"localcluster: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
