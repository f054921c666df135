#!/usr/bin/env python
"""Rows and time the job spends writing its removal sets: today's code against another
checkout's (for example the last commit of output contract 1), side by side.

    python bench/write_volume.py --other-lib /tmp/before/lib --rounds 2

Each round runs ``distunlearn run`` once with this checkout's ``lib/`` and once with
``--other-lib`` (alternating, in that order), on the benchmark's tables (bench/data.py,
1M + 1M rows x 384 by default), with the job's default methods and budgets.  Per run it reads
the stage timings from the ``runs`` table and, from the Delta logs, the rows each removal-set
table received (``numOutputRows`` of the run's commit).  Prints a JSON summary (medians) and
writes it to WORK/write_volume.json.
"""

from __future__ import annotations

import argparse
import json
import os
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


def run(lib: Path, forget: Path, retain: Path, output: Path, log: Path) -> dict[str, object]:
    from deltalake import DeltaTable

    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(lib)}
    cmd = [sys.executable, "-m", "distunlearn", "run", "--forget", str(forget), "--retain", str(retain),
           "--output", str(output), "--run-id", "bench", "--spark-conf", "spark.ui.enabled=false"]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other-lib", type=Path, required=True, help="lib/ folder of the other checkout")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=REPO / "bench-data")
    args = p.parse_args(argv)
    forget, retain = data.tables(args.work / "data", args.rows, args.rows, args.dim)
    results: dict[str, list[dict[str, object]]] = {"this": [], "other": []}
    for i in range(args.rounds):
        for name, lib in (("this", REPO / "lib"), ("other", args.other_lib)):
            out = run(lib, forget, retain, args.work / f"wv-{name}", args.work / f"wv-{name}-{i}.log")
            results[name].append(out)
            print(name, json.dumps(out), flush=True)
    summary = {}
    for name, runs in results.items():
        stages = sorted({k for r in runs for k in r["timings"]})  # type: ignore[union-attr]
        summary[name] = {"wall": statistics.median(r["wall"] for r in runs),  # type: ignore[misc]
                         "rows": runs[0]["rows"],
                         "timings": {s: statistics.median(r["timings"].get(s, 0.0) for r in runs)  # type: ignore[union-attr]
                                     for s in stages},
                         "rounds_wall": [round(r["wall"], 1) for r in runs]}  # type: ignore[call-overload]
    summary["ratio_wall_this_over_other"] = summary["this"]["wall"] / summary["other"]["wall"]
    (args.work / "write_volume.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
