"""spark-submit entry point for `distunlearn export`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.1 \
        --conf spark.pyspark.python=.venv/bin/python \
        jobs/export.py --output OUT --run-id ID --method M --budget B --target DST

--packages names the Delta build of the cluster's Spark: io.delta:delta-spark_2.13:4.0.1 for Spark 4.0,
io.delta:delta-spark_4.2_2.13:4.4.0 for 4.2 (README, "Versions").
Options are those of `distunlearn export --help`; spark-submit's --master wins over --master.
"""

from __future__ import annotations

import sys

from distunlearn.commands.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)], launch=False)


if __name__ == "__main__":
    sys.exit(main())
