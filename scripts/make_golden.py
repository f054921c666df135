#!/usr/bin/env python
"""Store the outputs of the job as it is on the cases of tests/golden_cases.py.

    .venv/bin/python scripts/make_golden.py

Run once, on commit fdb7d07 (the last with the ``removal_sets`` contract), to freeze what
that code wrote: tests/test_golden.py compares the redesigned job with these files.  It uses
that commit's API (``pipeline.run_pipeline``); it is kept for the record, not to be rerun.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from golden_cases import CASES, GOLDEN, TABLES, write_inputs  # noqa: E402

DROP = ("run_id", "created_at", "source")


def main() -> int:
    from deltalake import DeltaTable

    from distunlearn.config import JobConfig
    from distunlearn.pipeline import run_pipeline
    from distunlearn.session import get_session

    work = Path(tempfile.mkdtemp(prefix="golden-"))
    session_cfg = JobConfig(shuffle_partitions=4, arrow_batch_size=7, driver_memory="2g",
                            spark_conf={"spark.ui.enabled": "false", "spark.default.parallelism": "4",
                                        "spark.sql.warehouse.dir": str(work / "warehouse")})
    spark = get_session(session_cfg, launch=True)
    inputs: dict[str, tuple[str, str]] = {}
    shutil.rmtree(GOLDEN, ignore_errors=True)
    try:
        for case in CASES:
            if case.inputs not in inputs:
                inputs[case.inputs] = write_inputs(work / "inputs", case.inputs)
            forget, retain = inputs[case.inputs]
            cfg = dataclasses.replace(session_cfg, forget=forget, retain=retain, output=str(work / case.name),
                                      run_id="golden", **case.options).check()
            report = run_pipeline(spark, cfg)
            folder = GOLDEN / case.name
            folder.mkdir(parents=True)
            for table, key in TABLES.items():
                path = Path(cfg.output) / table
                if not (path / "_delta_log").is_dir():
                    continue
                df = DeltaTable(str(path)).to_pandas()
                df = df.drop(columns=[c for c in DROP if c in df.columns])
                df = df.sort_values(key, na_position="first").reset_index(drop=True)
                df.to_parquet(folder / f"{table}.parquet", index=False)
            pd.DataFrame(report.summary).to_parquet(folder / "summary.parquet", index=False)
            print(f"{case.name}: {', '.join(sorted(p.stem for p in folder.iterdir()))}")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
