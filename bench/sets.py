#!/usr/bin/env python
"""Write every removal set of a job's run to one Parquet file, read through the job's own
reader (``Store.members``, the one that apply, evaluate and export use).

    python bench/sets.py OUTPUT RUN_ID DEST.parquet

Columns: method, budget, k, rank, id, score (one row per set and id).  bench/run.py calls it
once per job output it checks (one Spark start).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output")
    p.add_argument("run_id")
    p.add_argument("dest")
    args = p.parse_args(argv)

    from pyspark.sql import functions as F

    from distunlearn.commands.config import JobConfig
    from distunlearn.commands.session import get_session
    from distunlearn.store.output import Store

    spark = get_session(JobConfig(log_level="WARNING", spark_conf={"spark.ui.enabled": "false"}))
    try:
        rows, members = Store(spark, args.output).members(args.run_id)
        budgets = spark.createDataFrame(sorted({(r["method"], int(r["k"]), float(r["budget"])) for r in rows}),
                                        "method string, k bigint, budget double")
        (members.join(F.broadcast(budgets), ["method", "k"]).select("method", "budget", "k", "rank", "id", "score")
         .toPandas().to_parquet(args.dest, index=False))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
