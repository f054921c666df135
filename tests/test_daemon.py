"""The Python worker daemon of launched sessions (distunlearn/daemon.py): on Spark < 4.2 a
worker invalidates the import caches only when a task changed ``sys.path`` (Spark 4.2's rule,
SPARK-54744), and the suite's session runs its tasks under it."""

from __future__ import annotations

import importlib
import io
import struct
import sys

import pyspark
import pytest
from pyspark import SparkFiles, worker, worker_util

from distunlearn import daemon


def task_header(files_dir: str, includes: list[str]) -> io.BytesIO:
    """What the JVM writes before a task's command, as pyspark's ``setup_spark_files`` reads it:
    the files folder (a length-prefixed UTF-8 string), the number of includes, their names."""
    def text(s: str) -> bytes:
        return struct.pack(">i", len(s.encode())) + s.encode()
    return io.BytesIO(text(files_dir) + struct.pack(">i", len(includes)) + b"".join(text(n) for n in includes))


@pytest.mark.parametrize(("version", "expected"), [("4.0.1", True), ("4.1.0", True), ("3.5.3", True),
                                                   ("4.2.1", False), ("4.2.0.dev0", False), ("5.0.0", False)])
def test_only_lines_before_4_2_need_the_daemon(version, expected):
    assert daemon.needed(version) is expected


def test_the_import_caches_are_invalidated_only_when_a_task_changes_the_path(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(importlib, "invalidate_caches", lambda: calls.append(1))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(worker_util, "setup_spark_files", worker_util.setup_spark_files)
    monkeypatch.setattr(worker, "setup_spark_files", worker.setup_spark_files)
    # setup_spark_files also points SparkFiles at the task's folder: keep this process's
    monkeypatch.setattr(SparkFiles, "_root_directory", SparkFiles._root_directory)
    monkeypatch.setattr(SparkFiles, "_is_running_on_worker", SparkFiles._is_running_on_worker)
    daemon._patch()
    files, egg = str(tmp_path / "files"), "deps.zip"

    worker.setup_spark_files(task_header(files, [egg]))  # a worker's first task: two new entries
    assert calls == [1]
    assert sys.path[1:3] == [str(tmp_path / "files" / egg), files]
    for _ in range(3):  # its next tasks: the same files, nothing new on the path
        worker.setup_spark_files(task_header(files, [egg]))
    assert calls == [1]
    worker.setup_spark_files(task_header(files, [egg, "more.zip"]))  # a file added to the session
    assert calls == [1, 1]
    assert worker_util.setup_spark_files is worker.setup_spark_files


def test_the_suite_session_runs_its_python_tasks_under_the_right_daemon(spark):
    def entry(_):
        import sys as worker_sys
        yield worker_sys.argv[0]

    entries = set(spark.sparkContext.parallelize(range(8), 4).mapPartitions(entry).collect())
    line = tuple(int(part) for part in pyspark.__version__.split(".")[:2])
    module = "distunlearn/daemon.py" if line < (4, 2) else "pyspark/daemon.py"  # SPARK-54744 is in 4.2
    assert entries and all(e.endswith(module) for e in entries), entries
