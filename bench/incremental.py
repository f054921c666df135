"""Incremental nightly run against a full recompute, side by side.

Tables: forget and retain Delta tables (float32 features, seeded) written with delta-rs;
one full run ("base") reads them; then 1 % more rows are appended to each.  Each round
copies the output folder holding only the base run, and times, in alternating order,

* ``incremental``: ``run`` with the default ``--incremental`` (merges the base run's
  statistics with those of the appended files), and
* ``full``: the same run with ``--no-incremental`` (one pass over every row),

in one Spark session (local[2]).  Prints the medians of the whole run and of its
statistics stage, and the ratio.  Usage::

    PYTHONPATH=lib python bench/incremental.py --forget 100000 --retain 1000000 --dim 128
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))


def table(n: int, dim: int, first_id: int, shift: float, rng: np.random.Generator) -> pa.Table:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x[:, 0] += np.float32(shift)
    features = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim).cast(pa.list_(pa.float32()))
    return pa.table({"id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)), "features": features})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget", type=int, default=100_000)
    p.add_argument("--retain", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--append", type=float, default=0.01, help="fraction of rows appended (default: 0.01)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=REPO / "bench-data" / "incremental")
    args = p.parse_args()

    from deltalake import write_deltalake

    from distunlearn.commands.config import JobConfig
    from distunlearn.commands.run import run_pipeline
    from distunlearn.commands.session import get_session

    shutil.rmtree(args.work, ignore_errors=True)
    rng = np.random.default_rng(0)
    f, r = str(args.work / "forget"), str(args.work / "retain")
    write_deltalake(f, table(args.forget, args.dim, 0, 0.0, rng))
    write_deltalake(r, table(args.retain, args.dim, 10**12, 1.0, rng))
    base_out = args.work / "base-output"
    cfg = JobConfig(forget=f, retain=r, output=str(base_out), run_id="base", methods=("lr_gauss", "random"),
                    budgets=(0.1, 0.5), spark_conf={"spark.ui.enabled": "false"}, log_level="WARNING").check()
    spark = get_session(cfg)
    run_pipeline(spark, cfg)
    nf, nr = int(args.forget * args.append), int(args.retain * args.append)
    write_deltalake(f, table(nf, args.dim, args.forget, 0.0, rng), mode="append")
    write_deltalake(r, table(nr, args.dim, 10**12 + args.retain, 1.0, rng), mode="append")

    times: dict[str, list[tuple[float, float]]] = {"incremental": [], "full": []}
    for i in range(args.rounds):
        order = ("incremental", "full") if i % 2 == 0 else ("full", "incremental")
        for kind in order:
            out = args.work / f"out-{kind}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base_out, out)
            run_cfg = dataclasses.replace(cfg, output=str(out), run_id=f"night-{i}", incremental=kind == "incremental")
            start = time.monotonic()
            report = run_pipeline(spark, run_cfg)
            total = time.monotonic() - start
            assert (report.statistics_mode == "incremental") == (kind == "incremental"), report.statistics_mode
            times[kind].append((total, report.timings["statistics"]))
            print(f"round {i} {kind}: run {total:.1f} s, statistics {report.timings['statistics']:.1f} s", flush=True)
    spark.stop()
    med = {k: (statistics.median(t for t, _ in v), statistics.median(s for _, s in v)) for k, v in times.items()}
    print(f"\n{args.forget} forget + {args.retain} retain rows x {args.dim} (float32), {nf} + {nr} appended; "
          f"medians of {args.rounds} alternating rounds:")
    print("| | whole run (s) | statistics stage (s) |\n|---|---|---|")
    for k, (t, s) in med.items():
        print(f"| {k} | {t:.1f} | {s:.1f} |")
    print(f"| full / incremental | {med['full'][0] / med['incremental'][0]:.2f}x | "
          f"{med['full'][1] / med['incremental'][1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
