"""Subprocess side of tests/test_faults.py: one Spark driver that runs the pipeline with a
fault injected.  Not a test module (pytest collects test_*.py only).

    python tests/fault_job.py worker-kill FORGET RETAIN OUT_ROOT RUN_ID MARKER
        run the pipeline into OUT_ROOT/a undisturbed, then into OUT_ROOT/b with the scoring
        UDF wrapped so that the first Python worker to resume after yielding a batch SIGKILLs
        itself (once: MARKER is created with O_EXCL first, so the retried task goes on)
    python tests/fault_job.py driver-kill FORGET RETAIN OUTPUT RUN_ID
        run the pipeline with Store.write_diagnostics replaced by a SIGKILL of this driver
        (removal_ranking and removal_budgets written, diagnostics, calibration and the final
        runs row not)
    python tests/fault_job.py plain FORGET RETAIN OUTPUT RUN_ID
        run the pipeline to completion

The master is local[2,4] so that local mode retries a failed task (plain local[2] gives
each task one attempt).  The functions shipped to the workers are closures defined here, in
``__main__``, so cloudpickle sends them by value.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from distunlearn.commands import run as pipeline
from distunlearn.commands.config import JobConfig
from distunlearn.commands.session import get_session
from distunlearn.store.output import Store
from distunlearn.transforms import score

METHODS = ("lr_gauss", "maha_mu2", "mu2")
BUDGETS = (0.1, 0.5)
SHUFFLE_PARTITIONS = 3
ARROW_BATCH = 16


def job_config(forget: str, retain: str, output: str, run_id: str) -> JobConfig:
    return JobConfig(forget=forget, retain=retain, output=output, run_id=run_id, methods=METHODS,
                     budgets=BUDGETS, shuffle_partitions=SHUFFLE_PARTITIONS, arrow_batch_size=ARROW_BATCH,
                     master="local[2,4]", driver_memory="1g", log_level="WARNING",
                     spark_conf={"spark.ui.enabled": "false", "spark.default.parallelism": "2"}).check()


def kill_worker_once(marker: str) -> None:
    """Wrap the scoring UDF: after a batch has been yielded (and taken by Spark), the worker
    that first creates ``marker`` kills itself with SIGKILL; every other batch passes."""
    original = score._scorer

    def scorer(model, methods):  # nested: shipped to the workers by value
        inner = original(model, methods)

        def partition(batches):
            for rb in inner(batches):
                yield rb
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                os.write(fd, f"{os.getpid()}\n".encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return partition

    score._scorer = scorer


def kill_driver(*args: object, **kwargs: object) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode, forget, retain, output, run_id = argv[:5]
    if mode == "worker-kill":
        marker = argv[5]
        cfg_a = job_config(forget, retain, os.path.join(output, "a"), run_id)
        spark = get_session(cfg_a)
        try:
            pipeline.run_pipeline(spark, cfg_a)
            kill_worker_once(marker)
            pipeline.run_pipeline(spark, job_config(forget, retain, os.path.join(output, "b"), run_id))
        finally:
            spark.stop()
        print("worker-kill: both runs finished")
        return 0
    cfg = job_config(forget, retain, output, run_id)
    spark = get_session(cfg)
    try:
        if mode == "driver-kill":
            Store.write_diagnostics = kill_driver  # type: ignore[method-assign]
        elif mode != "plain":
            raise SystemExit(f"unknown mode {mode!r}")
        pipeline.run_pipeline(spark, cfg)
    finally:
        spark.stop()
    print(f"{mode}: run finished")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
