"""Command line: ``distunlearn {run,stats,score,evaluate,report,demo}``.

The same ``main`` serves the console command (which launches its own Spark) and the
``spark-submit jobs/*.py`` entry points (``launch=False``: spark-submit's JVM, master and
packages are used as they are).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distunlearn import __version__
from distunlearn.commands.config import JobConfig, add_arguments, from_args
from distunlearn.errors import CheckFailed, DistUnlearnError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("distunlearn")

DESCRIPTION = """\
Distributional unlearning by selective data removal (Allouah et al., arXiv 2507.15112).

Given a forget table (rows of an unwanted domain) and a retain table (rows to keep), each
with an id and a feature vector (or a text column), score every forget row and write, for each method and
deletion budget, the exact top-k removal set: the ranking to the Delta table <output>/removal_ranking, each
budget's size and per-group quota to <output>/removal_budgets (README, "Output tables").
"""

EPILOG = """\
subcommands:
  run    statistics + scoring + selection (the whole job)
  stats  compute and store the forget and retain statistics only
  score  score and select with statistics already stored (this run id, or --stats-run-id)
  evaluate  train a classifier per method and budget on the edited data, measure it on
         held-out rows (evaluation, evaluation_summary; with --group-col per group, and with
         --reweight weighted fits too: evaluation_groups); --forget/--retain default to the run's
  report  write one self-contained HTML page of a run's evidence (--html FILE)
  demo   generate seeded Gaussian demo tables and run the job on them (--text: text tables
         from a vendored SpamAssassin sample, run with --text-col)
  apply  apply one removal set (--run-id, --method, --budget) to --table: delete in place
         (MERGE, idempotent, conservation checked) or --mode copy --target DST
  verify exit 0 only when none of the removal set's ids is readable in --table (--as-of V)
  undo   RESTORE --table to the version before the removal set's apply
  purge  REORG TABLE ... APPLY (PURGE) and VACUUM --table: physically remove deleted rows
  export write one removal set (--run-id, --method, --budget or --k) to --target as a Delta
         table or a Parquet folder (--export-format): id, score, rank, group, group_rank

exit status: 0 success, 2 bad input or configuration (one-line message), 3 a data check
failed (verify found removed ids, conservation broken), 1 other failure.
"""


class _ConsoleFormat(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors also name their level."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, rest = line.partition(" ")
            line = f"{stamp} {record.levelname} {rest}"
        return line


def _setup_logging(level: str, verbose: bool) -> None:
    """The job's messages on stderr: one line per stage at INFO; --verbose adds the DEBUG
    details with each message's logger name."""
    if verbose:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ConsoleFormat())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("distunlearn").setLevel("DEBUG" if verbose else level)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distunlearn", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"distunlearn {__version__}")
    commands = "run,stats,score,evaluate,report,demo,apply,verify,undo,purge,export"
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + commands + "}")
    helps = {
        "run": "statistics, scoring and selection; writes statistics, removal_ranking, removal_budgets, "
               "diagnostics, calibration and runs",
        "stats": "compute and store the forget and retain statistics",
        "score": "score and select using stored statistics",
        "evaluate": "train a classifier per method and budget on the edited data and measure it on "
                    "held-out rows; writes evaluation and evaluation_summary",
        "report": "write a self-contained HTML page with the run's figures and tables",
        "demo": "generate seeded Gaussian demo data (low and high separability) and run on it; "
                "--text: the job on a vendored sample of SpamAssassin messages instead",
        "apply": "apply one removal set to --table: MERGE ... DELETE in place (idempotent) or a "
                 "cleaned copy (--mode copy --target)",
        "verify": "check that none of a removal set's ids is readable in --table (exit 3 otherwise)",
        "undo": "RESTORE --table to the version before a removal set's apply",
        "purge": "physically remove deleted rows of --table: REORG ... APPLY (PURGE), then VACUUM",
        "export": "write one removal set (--budget or --k) to --target: a Delta table or a Parquet folder",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == "demo":
            p.add_argument("--forget-rows", type=int, default=20_000, help="forget rows per pair (default: 20000)")
            p.add_argument("--retain-rows", type=int, default=100_000, help="retain rows per pair (default: 100000)")
            p.add_argument("--dim", type=int, default=16, help="feature dimension (default: 16)")
            p.add_argument("--text", action="store_true",
                           help="instead: the vendored SpamAssassin sample (40 spam to forget, 40 ham to "
                                "retain) with --text-col text; lr_ngram is added to the methods")
        add_arguments(p)
        if name == "demo":
            p.set_defaults(output="demo-output")
    return parser


def _run_demo(spark: SparkSession, cfg: JobConfig, args: argparse.Namespace) -> int:
    from distunlearn.commands.demo import write_demo_tables, write_text_tables
    from distunlearn.commands.report import write_report
    from distunlearn.commands.run import run_pipeline

    if args.text:
        d = write_text_tables(spark, str(Path(cfg.output).resolve()))
        methods = cfg.methods if "lr_ngram" in cfg.methods else ("lr_ngram", *cfg.methods)
        run_cfg = dataclasses.replace(cfg, forget=d.forget, retain=d.retain, id_col="id", text_col="text",
                                      methods=methods, run_id="demo-text")
        print(run_pipeline(spark, run_cfg.check()).table())
        print(f"\nDelta tables under {Path(cfg.output).resolve()}: removal_ranking, removal_budgets, statistics, "
              "ngram_statistics, diagnostics, calibration, runs")
        return 0

    for name, value in (("forget-rows", args.forget_rows), ("retain-rows", args.retain_rows), ("dim", args.dim)):
        if value < (2 if name != "dim" else 1):
            raise DistUnlearnError(f"--{name} must be positive, got {value}")
    data = write_demo_tables(spark, str(Path(cfg.output).resolve()), args.forget_rows, args.retain_rows,
                             args.dim, cfg.seed)
    pages = []
    for d in data:
        run_cfg = dataclasses.replace(cfg, forget=d.forget, retain=d.retain, id_col="id",
                                      feature_col="features", run_id=f"demo-{d.name}").check()
        report = run_pipeline(spark, run_cfg)
        page = write_report(spark, run_cfg, str(Path(cfg.output).resolve() / f"report-demo-{d.name}.html"),
                            cfg.report_sample_rows)
        pages.append(page)
        print(f"\n== {d.name} separability (the generating Gaussians' kappa = {d.kappa:.3f})")
        print(report.short())
    print(f"\nDelta tables under {Path(cfg.output).resolve()}: removal_ranking, removal_budgets, statistics, "
          "diagnostics, calibration, runs")
    print("Every budget, the figures and which method is best, in the reports:")
    for page in pages:
        print(f"  {page}")
    return 0


#: The cleaning subcommands and their required options.
CLEANING = {
    "apply": ("output", "run_id", "method", "table"),
    "verify": ("output", "run_id", "method", "table"),
    "undo": ("output", "run_id", "method", "table"),
    "purge": ("table",),
    "export": ("output", "run_id", "method", "target"),
}


def _run_cleaning(spark: SparkSession, cfg: JobConfig, command: str) -> int:
    from distunlearn.commands import cleaning

    run = {"apply": cleaning.apply_removal, "verify": cleaning.verify_removal, "undo": cleaning.undo_removal,
           "purge": cleaning.purge, "export": cleaning.export_removal_set}[command]
    outcome = run(spark, cfg)
    print(outcome.line())
    if outcome.action == "verify" and outcome.readable:
        raise CheckFailed(f"{outcome.readable} of the removed ids are readable in {outcome.table!r} at "
                          f"version {outcome.table_version}")
    return 0


def main(argv: Sequence[str] | None = None, launch: bool = True) -> int:
    """Parse, configure, run one subcommand.  ``launch=False`` under spark-submit."""
    args = _parser().parse_args(argv)
    try:
        base = {"output": args.output} if args.command == "demo" and "output" in vars(args) else None
        cfg = from_args(args, base)
        _setup_logging(cfg.log_level, cfg.verbose)
        if args.command == "demo":
            cfg = dataclasses.replace(cfg, run_id=cfg.run_id or "demo").check(required=("output",))
        elif args.command in ("evaluate", "report"):  # the sources default to those the run recorded
            cfg = cfg.check(required=("output", "run_id"))
        elif args.command in CLEANING:
            cfg = cfg.check(required=CLEANING[args.command])
        else:
            cfg = cfg.check()
        from distunlearn.commands import evaluate
        from distunlearn.commands import run as pipeline
        from distunlearn.commands.session import get_session

        start = time.monotonic()
        spark = get_session(cfg, launch=launch)
        try:
            commands: dict[str, Callable[..., object]] = {
                "run": pipeline.run_pipeline, "stats": pipeline.run_stats, "score": pipeline.run_score,
                "evaluate": evaluate.run_evaluation}
            if args.command == "demo":
                return _run_demo(spark, cfg, args)
            if args.command in CLEANING:
                return _run_cleaning(spark, cfg, args.command)
            if args.command == "report":
                from distunlearn.commands.report import write_report

                target = cfg.html or str(Path(cfg.output) / f"report-{cfg.run_id}.html")
                print(f"report written to {write_report(spark, cfg, target, cfg.report_sample_rows)}")
                return 0
            report = commands[args.command](spark, cfg)
            print(report.table())  # type: ignore[attr-defined]
            log.info("%s finished in %.1f s", args.command, time.monotonic() - start)
        finally:
            if launch:
                spark.stop()
    except CheckFailed as exc:
        print(f"distunlearn: error: {exc}", file=sys.stderr)
        return 3
    except DistUnlearnError as exc:
        print(f"distunlearn: error: {exc}", file=sys.stderr)
        return 2
    return 0


def console() -> None:
    """Entry point of the ``distunlearn`` console command."""
    sys.exit(main())
