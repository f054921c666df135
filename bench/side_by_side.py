#!/usr/bin/env python
"""Two versions of the job on the same files, side by side: stage times and rows written.

    python bench/side_by_side.py --other-lib /tmp/before/lib --rounds 3          # code A vs code B
    python bench/side_by_side.py --other-python .venv-spark42/bin/python          # Spark 4.0 vs 4.2

A *side* is a ``lib/`` folder and an interpreter (whose pyspark is the Spark it runs on):
"this" is ``--this-lib`` (default this checkout's ``lib/``) with ``--this-python`` (default
this interpreter), "other" is ``--other-lib`` / ``--other-python`` (defaults: the same as
this side's).  Each round runs ``distunlearn run`` once per side, alternating, in that order,
on the benchmark's tables (bench/data.py, 1M + 1M rows x 384 by default), with the job's
default methods and budgets unless ``--job-args`` says otherwise.  Per run it reads the stage
timings from the ``runs`` table and, from the Delta logs, the rows each removal-set table
received (``numOutputRows`` of the run's commit).  Prints a JSON summary (medians, and the
ratio other / this of the wall time and of every stage) and writes it to
WORK/side_by_side.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402

SET_TABLES = ("removal_ranking", "removal_budgets", "removal_sets")  # contract 2, and contract 1


def run(python: Path, lib: Path, forget: Path, retain: Path, output: Path, log: Path,
        job_args: list[str]) -> dict[str, object]:
    from deltalake import DeltaTable

    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(lib)}
    cmd = [str(python), "-m", "distunlearn", "run", "--forget", str(forget), "--retain", str(retain),
           "--output", str(output), "--run-id", "bench", "--spark-conf", "spark.ui.enabled=false", *job_args]
    start = time.monotonic()
    with open(log, "w") as sink:
        code = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    wall = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"run failed (exit {code}), log {log}")
    timings = dict(DeltaTable(str(output / "runs")).to_pyarrow_table().to_pylist()[0]["timings"])
    rows = {}
    for table in SET_TABLES:
        if (output / table / "_delta_log").is_dir():
            commits = [c for c in DeltaTable(str(output / table)).history() if c.get("operation") == "WRITE"]
            rows[table] = sum(int(c["operationMetrics"].get("numOutputRows", 0)) for c in commits)
    return {"wall": wall, "timings": timings, "rows": rows}


def spark_version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import pyspark; print(pyspark.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--this-lib", type=Path, default=REPO / "lib", help="lib/ of side 'this' (default: this checkout's)")
    p.add_argument("--this-python", type=Path, default=Path(sys.executable), help="interpreter of side 'this'")
    p.add_argument("--other-lib", type=Path, help="lib/ of side 'other' (default: --this-lib)")
    p.add_argument("--other-python", type=Path, help="interpreter of side 'other' (default: --this-python)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--job-args", default="", help="more options for both runs, one string (e.g. '--methods mu2')")
    p.add_argument("--work", type=Path, default=REPO / "bench-data")
    args = p.parse_args(argv)
    sides = {"this": (args.this_python, args.this_lib),
             "other": (args.other_python or args.this_python, args.other_lib or args.this_lib)}
    if sides["this"] == sides["other"]:
        p.error("the two sides are the same: give --other-lib or --other-python")
    forget, retain = data.tables(args.work / "data", args.rows, args.rows, args.dim)
    job_args = shlex.split(args.job_args)
    results: dict[str, list[dict[str, object]]] = {"this": [], "other": []}
    for i in range(args.rounds):
        for name, (python, lib) in sides.items():
            out = run(python, lib, forget, retain, args.work / f"sbs-{name}", args.work / f"sbs-{name}-{i}.log",
                      job_args)
            results[name].append(out)
            print(name, json.dumps(out), flush=True)
    summary: dict[str, object] = {"rows": args.rows, "dim": args.dim, "job_args": job_args}
    for name, runs in results.items():
        python, lib = sides[name]
        stages = sorted({k for r in runs for k in r["timings"]})  # type: ignore[union-attr]
        summary[name] = {"python": str(python), "spark": spark_version(python), "lib": str(lib),
                         "wall": statistics.median(r["wall"] for r in runs),  # type: ignore[misc]
                         "rows": runs[0]["rows"],
                         "timings": {s: statistics.median(r["timings"].get(s, 0.0) for r in runs)  # type: ignore[union-attr]
                                     for s in stages},
                         "rounds_wall": [round(r["wall"], 1) for r in runs]}  # type: ignore[call-overload]
    this, other = summary["this"], summary["other"]
    summary["ratio_other_over_this"] = {
        "wall": other["wall"] / this["wall"],  # type: ignore[index]
        **{s: other["timings"][s] / t for s, t in this["timings"].items()  # type: ignore[index]
           if t and s in other["timings"]}}  # type: ignore[index]
    (args.work / "side_by_side.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
