"""The Python worker daemon of sessions this job launches (``spark.python.daemon.module``):
pyspark's own daemon, with Spark 4.2's fix of a per-task cost on older Spark lines.

Before every task a pyspark worker adds the session's files to ``sys.path`` and calls
``importlib.invalidate_caches()``.  Since Python 3.10 that makes every zip importer re-read
its archive's directory, and Spark puts three archives on the workers' path: pyspark.zip
(1 220 entries), py4j's zip and the spark-core jar (5 261 entries).  On Spark 4.0 this took 71 %
of a Python worker's time in a run on 420 rows (py-spy, 2026-12-07), and made both cores busy
for a job that reads a few kilobytes.  Spark 4.2 (SPARK-54744) calls it only when the path
changed, the first task of a worker; this module does the same on older lines, and is pyspark's
daemon unchanged on 4.2 and later (:func:`needed`).
"""

from __future__ import annotations

import importlib
import sys
from typing import IO


def needed(version: str) -> bool:
    """Whether pyspark ``version`` invalidates the import caches before every task."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) < (4, 2)


def _patch() -> None:
    """Make the worker's ``setup_spark_files`` invalidate the import caches only when it
    changed ``sys.path``: the original reads the task's file list from the socket, so it still
    runs whole, with the invalidation skipped, and the check follows it."""
    from pyspark import worker, worker_util

    original = worker_util.setup_spark_files
    invalidate = importlib.invalidate_caches

    def setup_spark_files(infile: IO) -> None:
        before = list(sys.path)
        importlib.invalidate_caches = lambda: None  # type: ignore[assignment]  # the worker is one thread
        try:
            original(infile)
        finally:
            importlib.invalidate_caches = invalidate  # type: ignore[assignment]
        if sys.path != before:
            invalidate()

    worker_util.setup_spark_files = setup_spark_files  # type: ignore[assignment]
    worker.setup_spark_files = setup_spark_files  # type: ignore[attr-defined]  # its own name for it


def main() -> None:
    import pyspark

    if needed(pyspark.__version__):
        _patch()
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
