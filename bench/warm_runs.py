#!/usr/bin/env python
"""Small runs on one warm session, the way the test suite makes them: wall time, Spark jobs and
stage times per run.  The fixed cost of a run (planning, Delta commits, task start-up) is what
this measures, not throughput.

    python bench/warm_runs.py --runs 4                                  # this code's settings
    python bench/warm_runs.py --runs 4 --spark-conf spark.python.daemon.module=pyspark.daemon

The session is the suite's (tests/conftest.py: local[2], 4 shuffle partitions, 7-row Arrow
batches, tests/spark-conf/), the tables its ``gaussian_tables`` (120 forget + 300 retain rows x 4),
the job's default methods and budgets.  The first run includes the JVM's warm-up: compare the
later ones (the summary gives their median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("SPARK_CONF_DIR", str(REPO / "tests" / "spark-conf"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a further session setting (repeatable)")
    args = p.parse_args(argv)

    import conftest
    from distunlearn.commands.config import JobConfig
    from distunlearn.commands.run import run_pipeline
    from distunlearn.commands.session import get_session

    extra = dict(item.split("=", 1) for item in args.spark_conf)
    cfg = JobConfig(shuffle_partitions=conftest.SHUFFLE_PARTITIONS, arrow_batch_size=conftest.ARROW_BATCH,
                    driver_memory="2g", spark_conf={"spark.ui.enabled": "false", "spark.default.parallelism": "4",
                                                    **extra})
    spark = get_session(cfg, launch=True)
    tracker = spark.sparkContext.statusTracker()
    root = Path(tempfile.mkdtemp(prefix="warm-runs-"))
    forget, retain, _, _ = conftest.gaussian_tables(spark, root / "inputs")
    walls = []
    for i in range(args.runs):
        jobs = len(tracker.getJobIdsForGroup())
        start = time.monotonic()
        report = run_pipeline(spark, conftest.make_config(root / f"run{i}", forget, retain))
        walls.append(time.monotonic() - start)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items())
        print(f"run {i}: {walls[-1]:.1f} s, {len(tracker.getJobIdsForGroup()) - jobs} Spark jobs ({stages})")
    if len(walls) > 1:
        print(f"median of runs 1..{len(walls) - 1}: {statistics.median(walls[1:]):.1f} s")
    spark.stop()


if __name__ == "__main__":
    main()
