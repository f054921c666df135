#!/usr/bin/env python
"""Fixed cost of a query over a Delta table, against the same files read as Parquet.

    .venv/bin/python bench/query_overhead.py            # Spark 4.0.1 + Delta 4.0.1
    .venv-spark42/bin/python bench/query_overhead.py    # Spark 4.2.1 + Delta 4.4.0

On the benchmark's 1M x 384 forget table (bench/data.py, written by bench/run.py or
bench/side_by_side.py first), six rounds of: a new DataFrame on the Delta table, ``limit(1)``
of its id column, and the job's id check shape (group by id, keep counts > 1) on the Delta
table and on the same files read as Parquet.  Each query is a new plan, as the job's are.  The
first round includes the session's warm-up (class loading, JIT).  Prints one line per round.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from distunlearn.commands.config import JobConfig
from distunlearn.commands.session import get_session

PATH = str(Path(__file__).resolve().parents[1] / "bench-data" / "data" / "forget-1000000x384")


def main(path: str = PATH) -> int:
    spark = get_session(JobConfig(spark_conf={"spark.ui.enabled": "false"}))
    for _ in range(6):
        t = time.time()
        df = spark.read.format("delta").load(path)
        load = time.time() - t
        t = time.time()
        df.select("id").limit(1).collect()
        first = time.time() - t
        t = time.time()
        df.select("id").groupBy("id").count().where("count > 1").collect()
        delta = time.time() - t
        t = time.time()
        spark.read.parquet(path).select("id").groupBy("id").count().where("count > 1").collect()
        parquet = time.time() - t
        print(f"Spark {spark.version}: load {load:.2f} s, limit(1) {first:.2f} s, id check on Delta {delta:.2f} s, "
              f"on Parquet {parquet:.2f} s", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
