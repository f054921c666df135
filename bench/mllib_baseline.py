"""Baseline (c): what a Spark user reaches for today, on the same Delta tables and the same
Spark settings as the job (``distunlearn.session``: local[2], Delta, one BLAS thread).

1. statistics: ``RowMatrix.computeCovariance`` per table (pyspark.mllib), means from
   ``Summarizer``; the pooled covariance and the model built in numpy on the driver;
2. scoring: a row-at-a-time Python UDF (``F.udf``, no Arrow) returning the kernel scores of
   one row, the model broadcast; ``random`` is the job's SQL hash; the scored frame is cached
   (a careful user's choice: the UDF then runs once per row);
3. selection: per method, ``row_number()`` over ``Window.orderBy(score desc, id)``, filtered
   to the largest k and joined with the budgets; one Delta write of all removal sets.

Usage: python bench/mllib_baseline.py FORGET RETAIN OUT_DIR --budgets ...; writes
OUT_DIR/result.json (timings), OUT_DIR/stats.npz and the Delta table OUT_DIR/removal_sets.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.stat import Summarizer
    from pyspark.mllib.linalg import Vectors as MLlibVectors
    from pyspark.mllib.linalg.distributed import RowMatrix
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from distunlearn.commands.config import JobConfig
    from distunlearn.commands.session import get_session
    from distunlearn.core.budgets import resolve_budgets
    from distunlearn.transforms.score import random_score

    parser = reference.contender_args(__doc__)
    parser.add_argument("--driver-memory", default=JobConfig.driver_memory)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.monotonic()
    spark = get_session(JobConfig(run_id="mllib-baseline", driver_memory=args.driver_memory, log_level="WARNING"))
    spark.sparkContext.addPyFile(str(Path(__file__).resolve().parent / "reference.py"))  # for the UDF
    timings["session"] = time.monotonic() - start

    t = time.monotonic()
    frames, fitted = {}, {}
    for domain, path in (("forget", args.forget), ("retain", args.retain)):
        df = spark.read.format("delta").load(path)
        frames[domain] = df
        rows = df.select("features").rdd.map(lambda r: MLlibVectors.dense(r[0]))
        cov = RowMatrix(rows).computeCovariance().toArray()  # divides by n - 1
        summary = df.select(Summarizer.metrics("mean", "count").summary(array_to_vector("features")).alias("s"))
        s = summary.first()["s"]
        n = int(s["count"])
        fitted[domain] = (n, s["mean"].toArray(), cov * (n - 1))  # n, mean, centred scatter
    timings["statistics"] = time.monotonic() - t
    (nf, mu1, m2f), (nr, mu2, m2r) = fitted["forget"], fitted["retain"]
    np.savez(out / "stats.npz", forget_mean=mu1, forget_m2=m2f, forget_n=nf, retain_mean=mu2, retain_m2=m2r,
             retain_n=nr)

    t = time.monotonic()
    model = spark.sparkContext.broadcast(reference.fit(mu1, mu2, (m2f + m2r) / (nf + nr)))

    def score_row(features: list[float]) -> list[float]:
        s = reference.scores(model.value, np.asarray(features, dtype=np.float64)[None, :])
        return [float(s[m][0]) for m in reference.KERNEL]

    udf = F.udf(score_row, T.ArrayType(T.DoubleType()))
    scored = frames["forget"].select("id", udf("features").alias("s"))
    scored = scored.select("id", *[F.col("s")[i].alias(m) for i, m in enumerate(reference.KERNEL)])
    scored = scored.withColumn("random", random_score(args.seed)).cache()
    scored.count()
    budgets = resolve_budgets(tuple(args.budgets), (), nf)
    k_max = max(b.k for b in budgets)
    budget_df = F.broadcast(spark.createDataFrame([(b.budget, b.k) for b in budgets], "budget double, k long"))
    sets = None
    for m in reference.METHODS:
        window = Window.orderBy(F.desc("score"), F.asc("id"))
        ranked = (scored.select("id", F.col(m).alias("score")).withColumn("rank", F.row_number().over(window))
                  .where(F.col("rank") <= k_max))
        exploded = (ranked.join(budget_df, F.col("rank") <= F.col("k"))
                    .select(F.lit(m).alias("method"), "budget", "k", F.col("rank").cast("long"), "id", "score"))
        sets = exploded if sets is None else sets.unionByName(exploded)
    sets.write.format("delta").mode("overwrite").save(str(out / "removal_sets"))
    timings["score_select_write"] = time.monotonic() - t
    timings["total"] = time.monotonic() - start
    spark.stop()
    (out / "result.json").write_text(json.dumps({"timings": timings, "n_forget": nf}))
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
