"""Smoke run of the benchmark (bench/run.py --smoke): it runs, and the three contenders agree.

Not a timing test (timings live in docs/BENCHMARKS.md).  The three are independent
implementations of the same math: (a) the job, (b) plain numpy with a numpy port of Spark's
xxhash64, (c) MLlib's RowMatrix/Summarizer and a row-at-a-time UDF.  The run exits non-zero
unless statistics, scores and every removal set agree; here the numbers are checked again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_agrees(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    agreement = results["compare"]["agreement"]
    assert agreement["agree"] is True
    for key, value in agreement.items():
        if key.startswith(("stats_", "scores_")):
            assert value < 1e-9, key
    assert agreement["ranks_b_differing"] == 0 and agreement["ranks_c_differing"] == 0
    # every contender was timed and its processes' memory sampled
    for contender in ("a", "b", "c"):
        assert results["compare"]["median"][contender]["wall"] > 0
        assert results["compare"]["peak_mb"][contender]["driver_python"] > 0
    assert results["compare"]["peak_mb"]["a"]["driver_jvm"] > 0


def test_numpy_xxhash64_port_matches_spark(spark):
    """bench/reference.random_scores reproduces Spark's xxhash64(seed, id), negative ids and
    ids beyond 2^32 included (the smoke run compares only the resulting sets)."""
    sys.path.insert(0, str(REPO / "bench"))
    import reference

    from distunlearn.transforms.score import random_score

    ids = [0, 1, -1, 7, 2**31, 2**40 + 3, -(2**62), 10**12 + 5]
    df = spark.createDataFrame([(i,) for i in ids], "id long").select("id", random_score(11).alias("r"))
    got = {row["id"]: row["r"] for row in df.collect()}
    np.testing.assert_array_equal(reference.random_scores(np.array(ids), 11), [got[i] for i in ids])
