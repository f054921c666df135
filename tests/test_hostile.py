"""Hostile input, table-driven, through the command line in-process (``main(argv)`` on the
suite's session): every case is refused with one line on stderr naming the value, column or
table, exit status 2, no traceback, and nothing written.

"Nothing written" is read with a second client (delta-rs): the Delta version of every table
under the case's output folder and of the table it cleans, before and after the command.  A
case's output folder is new unless it is the shared run's (``out``).

Add a case: one ``Case`` row.  ``build`` makes the case's inputs under its folder (a
``Lake``) and returns the command's arguments; ``fragment`` is a piece of the expected line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SESSION_ARGS, frame, gaussian_tables, make_config, write_table
from distunlearn.commands.cli import main
from distunlearn.commands.run import run_pipeline

SCHEMA = "id long, features array<double>"
RUN = ["--methods", "mu2", "--budgets", "0.5"]  # what a run case adds to its own arguments


@dataclasses.dataclass
class Lake:
    """The shared good tables and run, and a folder of the case's own."""

    spark: object
    forget: str  # ids 0..19, d = 3, Delta
    retain: str  # ids 10_000..10_039, d = 3, Delta
    corpus: str  # a Delta table of ids 0..19 and 10_000..10_039 with a text payload: what apply cleans
    out: str  # output folder with the succeeded run "good" (mu2 and random at budget 0.5)
    here: Path  # the case's folder

    def table(self, name: str, pdf: pd.DataFrame, schema: str = SCHEMA, fmt: str = "parquet") -> str:
        return write_table(self.spark, pdf, self.here / name, schema, fmt=fmt, partitions=2)

    def features(self, name: str, rows: list, ids: list | None = None, schema: str = SCHEMA,
                 groups: list | None = None) -> str:
        """A Parquet table of the given feature rows (ids 0..n-1 unless given), from Python
        tuples: through pandas a NaN element would arrive as a null.  ``groups``: the values of
        a string column ``lang``."""
        columns = [range(len(rows)) if ids is None else ids, rows, *([] if groups is None else [groups])]
        data = list(zip(*columns, strict=True))
        schema += "" if groups is None else ", lang string"
        df = self.spark.createDataFrame(data, schema).repartition(2)  # type: ignore[attr-defined]
        df.write.parquet(str(self.here / name))
        return str(self.here / name)

    def file(self, name: str, content: str | bytes) -> str:
        path = self.here / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def run(self, *args: str, forget: str | None = None, retain: str | None = None) -> list[str]:
        """``run`` on the good tables (or the given ones) into a new output folder."""
        return ["run", "--forget", forget or self.forget, "--retain", retain or self.retain,
                "--output", str(self.here / "out"), "--run-id", "h", *RUN, *args]

    def score(self, forget: str | None = None) -> list[str]:
        """``score`` into the good run's folder with the good run's statistics."""
        return ["score", "--forget", forget or self.forget, "--retain", self.retain, "--output", self.out,
                "--run-id", "scored", "--stats-run-id", "good", *RUN]

    def clean(self, command: str, *args: str, table: str | None = None) -> list[str]:
        """apply / verify / undo / purge / export of the good run's mu2 set at budget 0.5."""
        return [command, "--output", self.out, "--run-id", "good", "--method", "mu2", "--budget", "0.5",
                "--table", table or self.corpus, *args]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Lake], list[str]]
    fragment: str


def _rows(n: int, d: int = 3, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, d)).tolist()


def _appended_other_dimension(h: Lake) -> list[str]:
    """A succeeded run, then forget rows of dimension 4 appended (delta-rs) to its d = 3 table:
    the next run extends the statistics incrementally and meets the new rows."""
    from deltalake import write_deltalake

    forget = h.table("f", frame(range(20), _rows(20)), fmt="delta")
    assert main([*h.run(forget=forget), *SESSION_ARGS], launch=False) == 0
    write_deltalake(forget, pd.DataFrame({"id": [100, 101], "features": _rows(2, d=4)}), mode="append")
    return [*h.run(forget=forget), "--run-id", "h2"]


def _vacuumed(h: Lake) -> str:
    """A Delta table (delta-rs) of the good run's ids whose version 0 was overwritten, then
    vacuumed with no retention: version 0 is still in the log, its data files are gone."""
    from deltalake import DeltaTable, write_deltalake

    path = str(h.here / "vacuumed")
    write_deltalake(path, pd.DataFrame({"id": np.arange(20)}))
    write_deltalake(path, pd.DataFrame({"id": np.arange(1)}), mode="overwrite")
    DeltaTable(path).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    return path


def _held_by_another_host(h: Lake) -> list[str]:
    """The run id's "running" ledger row, written by a run on another machine."""
    from test_claims import left_behind

    left_behind(h.spark, h.here / "out", "h", claim_host="elsewhere", claim_pid=1)
    return h.run()


def _texts(h: Lake, name: str, texts: list[str | None], first: int = 0) -> str:
    return h.table(name, pd.DataFrame({"id": range(first, first + len(texts)), "text": texts}), "id long, text string")


CASES = [
    # ---------------------------------------------------------------- sources
    Case("forget missing", lambda h: h.run(forget=str(h.here / "nope")), "not found: no such file or folder"),
    Case("forget a plain file", lambda h: h.run(forget=h.file("notes.txt", "hello\n")),
         "is a file that is not Parquet"),
    Case("forget a CSV folder", lambda h: h.run(forget=str(Path(h.file("csv/a.csv", "id,features\n1,2\n")).parent)),
         "its file 'a.csv' is not Parquet"),
    Case("forget a JSON folder", lambda h: h.run(forget=str(Path(h.file("js/part-0.json", '{"id": 1}\n')).parent)),
         "its file 'part-0.json' is not Parquet"),
    Case("forget corrupt Parquet", lambda h: h.run(forget=str(Path(h.file("bad/part-0.parquet", b"PAR1xx")).parent)),
         "its file 'part-0.parquet' is not Parquet"),
    Case("forget an empty folder", lambda h: h.run(forget=str(Path(h.file("empty/_SUCCESS", "")).parent)),
         "is an empty folder"),
    Case("forget with zero rows", lambda h: h.run(forget=h.features("f0", [])), "forget table has no usable rows"),
    Case("retain an unknown catalog table", lambda h: h.run(retain="no_such_table"),
         "retain table 'no_such_table' not found"),
    # ---------------------------------------------------------------- ids
    Case("forget without the id column", lambda h: h.run("--id-col", "doc"), "forget table has no column 'doc'"),
    Case("forget id null", lambda h: h.run(forget=h.features("f", _rows(4), ids=[1, None, 2, 3])),
         "id column 'id' of the forget table has null values"),
    Case("forget id repeated", lambda h: h.run(forget=h.features("f", _rows(4), ids=[1, 2, 2, 3])),
         "duplicate id 2"),
    Case("retain id repeated", lambda h: h.run(retain=h.features("r", _rows(5), ids=[7, 8, 9, 9, 10])),
         "id column 'id' of the retain table has duplicate id 9"),
    Case("id of type double", lambda h: h.run(forget=h.table("f", frame([0.5, 1.5], _rows(2)),
                                                              "id double, features array<double>")),
         "id column 'id' of the forget table must be long, int or string, got double"),
    # ---------------------------------------------------------------- features
    Case("features a string", lambda h: h.run(forget=h.table("f", pd.DataFrame({"id": [1, 2], "features": ["a", "b"]}),
                                                              "id long, features string")),
         "feature column 'features' of the forget table must be array<float|double> or a Spark ML vector"),
    Case("a null feature array", lambda h: h.run(forget=h.features("f", [[1.0, 2.0, 3.0], None, [0.0, 1.0, 2.0]])),
         "null"),
    Case("a null element", lambda h: h.run(forget=h.features("f", [[1.0, None, 3.0], [0.0, 1.0, 2.0]])), "null"),
    Case("ragged arrays", lambda h: h.run(forget=h.features("f", [[1.0, 2.0, 3.0], [1.0, 2.0]])), "length"),
    Case("NaN under --on-invalid fail", lambda h: h.run(forget=h.features("f", [[1.0, float("nan"), 3.0],
                                                                               [0.0, 1.0, 2.0]])), "NaN"),
    Case("features whose squares overflow float64", lambda h: h.run(forget=h.features("f", [[1e200, 0.0, 1.0],
                                                                                        [-1e200, 1.0, 0.0]])),
         "feature column 'features' of the forget table has values too large for its statistics"),
    Case("dimension differs between tables", lambda h: h.run(forget=h.features("f", _rows(5, d=4))), "dimension"),
    Case("retain with one row", lambda h: h.run(retain=h.features("r", _rows(1), ids=[10_000])), "at least 2"),
    Case("incremental rows of another dimension", _appended_other_dimension,
         "of the forget table has dimension 4 in the rows added since run 'h' (version 0) but 3 in the rows before"),
    # ---------------------------------------------------------------- options
    Case("budget 0", lambda h: h.run("--budgets", "0"), "budget 0.0 is outside (0, 1]"),
    Case("budget above 1", lambda h: h.run("--budgets", "1.5"), "budget 1.5 is outside (0, 1]"),
    Case("budget not a number", lambda h: h.run("--budgets", "half"), "bad value for budgets: 'half'"),
    Case("budget count negative", lambda h: h.run("--budget-counts", "-3"), "budget count -3 is not a positive"),
    Case("budget count above the forget rows", lambda h: h.run("--budget-counts", "21"),
         "budget count 21 exceeds the forget set size n1 = 20"),
    Case("unknown method", lambda h: h.run("--methods", "mu2,nope"), "unknown method 'nope'"),
    Case("ridge infinite", lambda h: h.run("--ridge", "inf"), "ridge must be a finite number, got inf"),
    Case("ridge negative", lambda h: h.run("--ridge", "-1"), "ridge must be at least 0, got -1.0"),
    Case("covariance rank 0", lambda h: h.run("--covariance-rank", "0"), "covariance_rank must be at least 1"),
    Case("tolerated eps NaN", lambda h: h.run("--tolerated-eps", "nan"), "tolerated_eps must be a finite number"),
    Case("shuffle partitions 0", lambda h: h.run("--shuffle-partitions", "0"),
         "shuffle_partitions must be in [1, 2147483647], got 0"),
    Case("run id with a slash", lambda h: h.run("--run-id", "a/b"), "run_id 'a/b' must match"),
    Case("run id with a quote", lambda h: h.run("--run-id", "it's"), "run_id \"it's\" must match"),
    Case("run id ..", lambda h: h.run("--run-id", ".."), "run_id '..' must match"),
    Case("run id of 300 characters", lambda h: h.run("--run-id", "r" * 300), "must match"),
    Case("run id a run on another host is writing", _held_by_another_host,
         "run id 'h' is being written by another run (pid 1 on host 'elsewhere' since 2026-01-01 00:00:00); "
         "if that run died, rerun with --takeover"),
    Case("score: forget with NaN",
         lambda h: h.score(forget=h.features("f", [[1.0, float("nan"), 3.0], [0.0, 1.0, 2.0]])), "NaN"),
    Case("score: forget of another dimension than the statistics",
         lambda h: h.score(forget=h.features("f", _rows(5, d=4))), "dimension 4, the stored statistics 3"),
    Case("score: statistics of an unknown run", lambda h: [*h.score(), "--stats-run-id", "nope"], "nope"),
    # ---------------------------------------------------------------- config files
    Case("config with an unknown key", lambda h: ["run", "--config", h.file("c.yaml", "forget: a\nfeatures_col: x\n")],
         "unknown option 'features_col'"),
    Case("config with a wrong type", lambda h: [*h.run(), "--config", h.file("c.yaml", "ridge: lots\n")],
         "bad value for ridge: 'lots'"),
    Case("config empty", lambda h: ["run", "--config", h.file("c.yaml", "")], "missing required option --forget"),
    Case("config a list", lambda h: ["run", "--config", h.file("c.yaml", "- forget\n")], "must hold a mapping"),
    # ---------------------------------------------------------------- outputs
    Case("output a file", lambda h: [*h.run(), "--output", h.file("o.txt", "x")], "is a file; --output names"),
    # /sys refuses new files even to root (as a read-only folder refuses them to its non-owners)
    Case("output a folder that refuses writes", lambda h: [*h.run(), "--output", "/sys/distunlearn-hostile"],
         "output folder '/sys/distunlearn-hostile' cannot be written: Permission denied in '/sys'"),
    Case("output under a file", lambda h: [*h.run(), "--output", h.file("o.txt", "x") + "/out"],
         "cannot be written: Not a directory in"),
    Case("output holding a Parquet statistics folder", lambda h: [
        *h.run(), "--output", str(Path(h.features("o/statistics", _rows(2))).parent)],
         "holds 'statistics', which is not a Delta table"),
    # ---------------------------------------------------------------- text
    Case("text column not a string", lambda h: h.run("--text-col", "features", "--methods", "lr_ngram"),
         "text column 'features' of the forget table must be string"),
    Case("lr_ngram without a text column", lambda h: h.run("--methods", "lr_ngram"), "lr_ngram scores text"),
    Case("text null in the forget table", lambda h: h.run(
        "--text-col", "text", "--methods", "lr_ngram", forget=_texts(h, "f", ["spam", None, "eggs"]),
        retain=_texts(h, "r", ["ham", "eggs"], first=100)), "text column 'text' of the forget table has 1 null values"),
    Case("text null in the retain table", lambda h: h.run(
        "--text-col", "text", "--methods", "lr_ngram", forget=_texts(h, "f", ["spam", "eggs"]),
        retain=_texts(h, "r", [None, "ham", None], first=100)), "text column 'text' of the retain table has 2 null"),
    # ---------------------------------------------------------------- groups
    Case("group column missing", lambda h: h.run("--group-col", "lang"), "has no column 'lang'"),
    Case("group column missing in the retain table only", lambda h: h.run(
        "--group-col", "lang", forget=h.features("f", _rows(6), groups=["en", "de"] * 3)),
         "retain table has no column 'lang'"),
    Case("group null in the forget table", lambda h: h.run(
        "--group-col", "lang", forget=h.features("f", _rows(4), groups=["en", None, "de", "en"]),
        retain=h.features("r", _rows(4), ids=list(range(100, 104)), groups=["en", "de"] * 2)),
         "group column 'lang' of the forget table has null values (1 rows)"),
    Case("group null in the retain table", lambda h: h.run(
        "--group-col", "lang", forget=h.features("f", _rows(4), groups=["en", "de"] * 2),
        retain=h.features("r", _rows(4), ids=list(range(100, 104)), groups=[None, None, "de", "en"])),
         "group column 'lang' of the retain table has null values (2 rows)"),
    Case("group cap 0", lambda h: h.run("--group-col", "id", "--group-cap", "0"), "group_cap 0.0 is outside (0, 1]"),
    Case("group cap above 1", lambda h: h.run("--group-col", "id", "--group-cap", "1.5"), "group_cap 1.5 is outside"),
    Case("stratified without groups", lambda h: h.run("--group-budget", "stratified"),
         "group_budget needs a group column"),
    # ---------------------------------------------------------------- apply / verify / undo / purge
    Case("apply an unknown run", lambda h: [*h.clean("apply"), "--run-id", "nope"], "not a succeeded run"),
    Case("apply an unknown budget", lambda h: [*h.clean("apply"), "--budget", "0.3"], "recorded no budget 0.3"),
    Case("apply an unknown method", lambda h: [*h.clean("apply"), "--method", "lr_gauss"], "lr_gauss"),
    Case("apply to a table without the id column", lambda h: h.clean("apply", table=h.table(
        "t", pd.DataFrame({"doc": [1]}), "doc long", fmt="delta")), "has no id column 'id'"),
    Case("apply to a table of string ids", lambda h: h.clean("apply", table=h.table(
        "t", pd.DataFrame({"id": ["a"]}), "id string", fmt="delta")), "is string, the removal sets store bigint"),
    Case("verify as of a vacuumed version", lambda h: h.clean("verify", "--as-of", "0", table=_vacuumed(h)),
         "version 0 cannot be read: its data files were removed (VACUUM)"),
    Case("verify as of a version after the latest", lambda h: h.clean("verify", "--as-of", "7"),
         "has no readable version 7"),
    Case("undo without an apply", lambda h: h.clean("undo"), "has no apply of"),
    Case("copy onto the table itself", lambda h: h.clean("apply", "--mode", "copy", "--target", h.corpus),
         "is the table itself"),
    Case("copy into a non-Delta folder", lambda h: h.clean("apply", "--mode", "copy", "--target",
                                                           str(Path(h.features("dst/x", _rows(2))).parent)),
         "exists and is not a Delta table"),
    Case("copy without a target", lambda h: h.clean("apply", "--mode", "copy"), "needs --target"),
    Case("copy into a folder that refuses writes", lambda h: h.clean("apply", "--mode", "copy", "--target",
                                                                    "/sys/distunlearn-hostile"),
         "target '/sys/distunlearn-hostile' cannot be written: Permission denied"),
    Case("export into a folder that refuses writes", lambda h: [*h.clean("export"), "--target",
                                                                "/sys/distunlearn-hostile"],
         "target '/sys/distunlearn-hostile' cannot be written: Permission denied"),
    Case("purge below the retention", lambda h: h.clean("purge", "--retention-hours", "0"),
         "below the table's delta.deletedFileRetentionDuration"),
    Case("purge retention infinite", lambda h: h.clean("purge", "--retention-hours", "inf"),
         "retention_hours must be a finite number"),
]


def _option(command: str, option: str, value: str, fragment: str | None = None) -> Case:
    """A numeric option at a value outside its range (or not a number), on the command that
    uses it; the line must name the option."""
    flag = f"--{option.replace('_', '-')}"
    build: Callable[[Lake], list[str]] = {
        "run": lambda h: h.run(flag, value),
        "text": lambda h: h.run("--text-col", "text", "--methods", "lr_ngram", flag, value),
        "evaluate": lambda h: ["evaluate", "--output", h.out, "--run-id", "good", flag, value],
        "report": lambda h: ["report", "--output", h.out, "--run-id", "good", flag, value],
        "apply": lambda h: [*h.clean("apply"), flag, value],
        "verify": lambda h: [*h.clean("verify"), flag, value],
    }[command]
    return Case(f"{command} {flag} {value}", build, fragment or option)


#: Every numeric option the commands read, at the values its range excludes.
CASES += [_option(command, option, value) for command, option, values in (
    ("run", "covariance_rank", ("-1", "abc")),
    ("run", "ridge", ("nan", "abc")),
    ("run", "max_condition", ("0", "-1", "nan")),
    ("run", "seed", ("-1", "abc", "1e30")),
    ("run", "tolerated_eps", ("-1", "inf")),
    ("run", "target_alpha", ("-1", "inf")),
    ("run", "shuffle_partitions", ("-1", "1e30")),
    ("run", "arrow_batch_size", ("0", "1e30")),
    ("text", "ngram_buckets", ("0", "1", "-1")),
    ("text", "ngram_order", ("0",)),
    ("text", "ngram_smoothing", ("0", "-1", "nan", "inf")),
    ("text", "text_dim", ("0",)),
    ("evaluate", "eval_reg_param", ("-1", "inf")),
    ("evaluate", "eval_max_iter", ("0",)),
    ("evaluate", "holdout_fraction", ("0", "1")),
    ("report", "report_sample_rows", ("0",)),
    ("apply", "budget", ("-1", "nan")),
    ("apply", "k", ("-1",)),
    ("verify", "as_of", ("-5",)),
) for value in values]

@pytest.fixture(scope="module")
def shared(spark, tmp_path_factory):
    """The good tables, the corpus apply cleans and one succeeded run."""
    from deltalake import write_deltalake

    root = tmp_path_factory.mktemp("hostile")
    f, r, *_ = gaussian_tables(spark, root, n_forget=20, n_retain=40, dim=3)
    cfg = make_config(root, f, r, run_id="good", methods=("mu2", "random"), budgets=(0.5,))
    run_pipeline(spark, cfg)
    ids = np.concatenate([np.arange(20), np.arange(10_000, 10_040)])
    corpus = str(root / "corpus")
    write_deltalake(corpus, pd.DataFrame({"id": ids, "text": [f"doc {i}" for i in ids]}))
    return f, r, corpus, cfg.output


def delta_versions(*roots: str | Path) -> dict[str, int]:
    """Every Delta table at or under ``roots``, with its version, read with delta-rs."""
    from deltalake import DeltaTable

    found = {}
    for root in map(Path, roots):
        for log in [root / "_delta_log", *root.rglob("*/_delta_log")] if root.exists() else []:
            if log.is_dir():
                found[str(log.parent)] = DeltaTable(str(log.parent)).version()
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_in_one_line_with_exit_2_and_nothing_written(spark, shared, tmp_path, capsys, case):
    h = Lake(spark, *shared, here=tmp_path)
    command, *args = case.build(h)
    argv = [command, *SESSION_ARGS, *args]  # the case's own flags last: they win
    capsys.readouterr()
    before = delta_versions(tmp_path, h.out, h.corpus)
    code = main(argv, launch=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distunlearn: error:")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and case.fragment in lines[0], err
    assert delta_versions(tmp_path, h.out, h.corpus) == before


def test_the_suite_has_the_cases_the_issue_asks_for():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


def test_an_output_folder_the_job_wrote_keeps_a_crashed_first_writes_files(spark, tmp_path):
    """Data files without a Delta log under a table's name are the user's in a new folder
    (refused above) but the job's own in a folder holding its Delta tables: a run killed in
    that table's first write left them, and the rerun must go through."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    from distunlearn.errors import InputError
    from distunlearn.store.output import Store

    (tmp_path / "statistics").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "statistics" / "part-00000.snappy.parquet")
    with pytest.raises(InputError, match="holds 'statistics', which is not a Delta table"):
        Store(spark, str(tmp_path)).check_folder()
    write_deltalake(str(tmp_path / "runs"), pd.DataFrame({"run_id": ["a"]}))
    Store(spark, str(tmp_path)).check_folder()
