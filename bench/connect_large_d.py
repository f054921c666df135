#!/usr/bin/env python
"""Large d over Spark Connect: does the job run, and how do its d x d values travel?

    python bench/connect_large_d.py                       # d = 1024 and 4096, full/diagonal/lowrank
    python bench/connect_large_d.py --dims 4096 --covariances full --inline-limit 1e12

Starts a local Spark Connect server with Delta (scripts/connectserver.py; 6 GB driver, Parquet
batches of 1024 rows, as the large-d section of docs/BENCHMARKS.md uses), writes the
benchmark's tables (bench/data.py) and runs ``distunlearn run --remote`` once per d and
covariance (methods lr_gauss and maha_mu2, budgets 0.05 to 0.5).  A Connect plan travels in one
gRPC message, capped at 128 MB by default on both sides; the job sends a scoring model whose
pickle is above ``--inline-limit`` bytes (the job's default: 32 MB) as a session file instead
(distunlearn.transforms.payload).  ``--inline-limit 1e12`` keeps every model inline, to see the
cap.  Per run: exit status, wall time, stage times, how the model went, the error's last line.
Prints a Markdown table and writes WORK/connect_large_d.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts"))
import data  # noqa: E402

CONSOLE = str(Path(sys.executable).with_name("distunlearn"))
ROWS = {1024: 20_000, 4096: 10_000}  # per table: n > d in each, pooled n well above d


def run_one(url: str, forget: Path, retain: Path, out: Path, log: Path, covariance: str,
            inline_limit: float | None) -> dict[str, object]:
    cmd = [CONSOLE, "run", "--remote", url, "--forget", str(forget), "--retain", str(retain), "--output", str(out),
           "--run-id", covariance, "--methods", "lr_gauss,maha_mu2", "--budgets", "0.05,0.1,0.2,0.5",
           "--covariance", covariance, "--arrow-batch-size", "1000"]
    if inline_limit is not None:
        cmd += ["--spark-conf", f"spark.distunlearn.inlinePayloadBytes={int(inline_limit)}"]
    start = time.monotonic()
    with open(log, "w") as sink:
        code = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO).returncode
    wall = time.monotonic() - start
    text = log.read_text(errors="replace")
    shipped = re.search(r"scoring-model: ([\d.]+) MB pickled", text)
    timings = re.search(r"timings \(s\): (.*)", text)
    errors = [line for line in text.splitlines() if "Error" in line or "error:" in line or "RESOURCE_EXHAUSTED" in line]
    return {"exit": code, "wall": round(wall, 1), "model": f"session file, {shipped.group(1)} MB" if shipped
            else "inline", "timings": timings.group(1) if timings else "", "error": errors[-1][:300] if code else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="1024,4096")
    p.add_argument("--covariances", default="full,diagonal,lowrank")
    p.add_argument("--inline-limit", type=float, help="bytes; default: the job's own (32 MB)")
    p.add_argument("--server-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="more settings of the Connect server (repeat), e.g. spark.driver.maxResultSize=4g")
    p.add_argument("--work", type=Path, default=REPO / "bench-data")
    args = p.parse_args(argv)
    from connectserver import start

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    results = []
    conf = {"spark.driver.memory": "6g", "spark.sql.parquet.columnarReaderBatchSize": "1024",
            **dict(kv.split("=", 1) for kv in args.server_conf)}
    server = start(args.work / "connect-large-d", conf=conf)
    try:
        for dim in (int(d) for d in args.dims.split(",")):
            forget, retain = data.tables(args.work / "data", ROWS[dim], ROWS[dim], dim)
            for cov in args.covariances.split(","):
                out = args.work / f"connect-d{dim}"
                got = run_one(server.url, forget, retain, out, args.work / f"connect-d{dim}-{cov}.log", cov,
                              args.inline_limit)
                results.append({"dim": dim, "rows": ROWS[dim], "covariance": cov, **got})
                print(json.dumps(results[-1]), flush=True)
    finally:
        server.stop()
    (args.work / "connect_large_d.json").write_text(json.dumps({"server_conf": conf, "runs": results}, indent=2))
    print("\n| d | rows per table | covariance | exit | wall | scoring model | stage times (s) |")
    print("|---:|---:|---|---:|---:|---|---|")
    for r in results:
        detail = r["timings"] or r["error"]
        print(f"| {r['dim']} | {r['rows']:,} | {r['covariance']} | {r['exit']} | {r['wall']} s | {r['model']} | "
              f"{detail} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
