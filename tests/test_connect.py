"""The job over Spark Connect, against the classic session on the same inputs: identical outputs.

A real Spark Connect server with Delta (scripts/connectserver.py: the installed pyspark's
SparkConnectServer on local[2], 127.0.0.1, a free port) runs for this module and is stopped by
pid at its end, also on failure.  The Connect side is the console command with ``--remote`` in
a subprocess (a process cannot hold a classic and a Connect session: pyspark switches its
functions module for the whole process); the classic side is the same command line run in
this process on the suite's session.  Both sessions have local[2], 4 shuffle partitions,
spark.default.parallelism 4 and 7-row Arrow batches, so the same partitions are merged in the
same order and every number must be equal, not close.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SESSION_ARGS, SESSION_SETTINGS, frame, read_delta, read_sets, subprocess_env, write_table
from distunlearn.commands.cli import main
from distunlearn.core.evaluation import BASELINE_METHOD
from golden_cases import CASES, FEATURE_METHODS, write_inputs

pytestmark = pytest.mark.connect

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = str(Path(sys.executable).with_name("distunlearn"))
#: Columns that differ between two runs by nature: wall-clock times and durations.
VOLATILE = {"created_at", "started_at", "finished_at", "seconds", "duration_s", "timings",
            "claim_token", "claim_pid"}  # the run id's claim: which process wrote it
RUN_TABLES = {"removal_ranking": ["method", "id"], "removal_budgets": ["method", "budget", "budget_count", "group"],
              "statistics": ["domain"], "ngram_statistics": ["domain"], "diagnostics": ["method", "k"],
              "calibration": ["method"], "group_diagnostics": ["method", "k", "group"],
              "retain_weights": ["method", "budget", "id"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from connectserver import start

    srv = start(tmp_path_factory.mktemp("connect-server"),
                conf={"spark.default.parallelism": "4", "spark.sql.shuffle.partitions": "4"})
    try:
        yield srv
    finally:
        srv.stop()
        assert not srv.running()


def over_connect(server, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONSOLE, *args, *SESSION_ARGS, "--remote", server.url], capture_output=True, text=True,
                          timeout=900, env=subprocess_env())


def over_connect_in_one_process(server, commands: list[list[str]]) -> tuple[list[int], str]:
    """Each command line of ``commands`` through ``main(argv)`` in one client process that holds
    a Connect session (as a notebook does; one process start instead of one per command):
    the exit codes, and the process's stderr."""
    script = "\n".join([
        "import json, sys",
        "from pyspark.sql import SparkSession",
        "from distunlearn.commands.cli import main",
        f"SparkSession.builder.remote({server.url!r}).getOrCreate()",
        f"codes = [main([*argv, *{SESSION_ARGS!r}], launch=False) for argv in {commands!r}]",
        "print(json.dumps(codes))",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def classic(spark, args: list[str]) -> int:
    return main([*args, *SESSION_ARGS], launch=False)


def assert_same_tables(a: Path, b: Path, tables: dict[str, list[str]]) -> list[str]:
    """Every table of ``tables`` present under ``a`` is under ``b`` with equal rows (volatile
    columns aside); returns the names compared."""
    seen = []
    for table, key in tables.items():
        if not (a / table / "_delta_log").is_dir():
            assert not (b / table / "_delta_log").is_dir(), table
            continue
        x, y = read_delta(a / table), read_delta(b / table)
        drop = [c for c in x.columns if c in VOLATILE]
        x = x.drop(columns=drop).sort_values(key).reset_index(drop=True)
        y = y.drop(columns=drop).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=table)
        seen.append(table)
    return seen


def _config(path: Path, forget: str, retain: str, output: Path, options: dict, run_id: str = "c1") -> Path:
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    path.write_text(yaml.safe_dump({**data, "forget": forget, "retain": retain, "output": str(output),
                                    "run_id": run_id}))
    return path


#: Over Connect a scoring model above spark.distunlearn.inlinePayloadBytes (32 MB by default)
#: goes to the workers as a session file (distunlearn.transforms.payload); 0 sends every one so.
AS_FILE = ["--spark-conf", "spark.distunlearn.inlinePayloadBytes=0"]


@pytest.mark.parametrize("name,extra", [pytest.param("features", [], id="features", marks=pytest.mark.second_line),
                                        pytest.param("features", AS_FILE, id="features-model-as-session-file"),
                                        *[pytest.param(n, [], id=n) for n in ("groups-stratified-cap", "text",
                                                                              "text-groups")]])
def test_run_over_connect_writes_what_the_classic_session_writes(golden_run, server, tmp_path, name, extra):
    """The case over Connect against the classic session's run of it (shared with test_golden,
    which compares that run with the previous code's stored outputs)."""
    case = next(c for c in CASES if c.name == name)
    classic_cfg, _ = golden_run(name)
    _config(tmp_path / "connect.yaml", classic_cfg.forget, classic_cfg.retain, tmp_path / "connect", case.options,
            run_id=classic_cfg.run_id)
    done = over_connect(server, ["run", "--config", str(tmp_path / "connect.yaml"), *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over Spark Connect at sc://127.0.0.1" in done.stderr
    assert ("sent as the session file distunlearn-scoring-model-" in done.stderr) == bool(extra)
    compared = assert_same_tables(Path(classic_cfg.output), tmp_path / "connect", RUN_TABLES)
    assert {"removal_ranking", "removal_budgets", "statistics", "diagnostics"} <= set(compared)
    runs = read_delta(tmp_path / "connect" / "runs")
    assert runs.status.tolist()[-1] == "succeeded"


@pytest.fixture(scope="module")
def features_run(spark, server, tmp_path_factory):
    """One run of the features case, written by the classic session (equal to Connect's above)."""
    root = tmp_path_factory.mktemp("connect-run")
    case = next(c for c in CASES if c.name == "features")
    forget, retain = write_inputs(root / "in", case.inputs)
    config = _config(root / "run.yaml", forget, retain, root / "out", case.options)
    assert classic(spark, ["run", "--config", str(config)]) == 0
    return root / "out", forget, retain


def _corpus(path: Path, forget: str, retain: str) -> str:
    """The table to clean, written by delta-rs: every forget and retain id with a payload."""
    from deltalake import write_deltalake

    ids = pd.concat([pd.read_parquet(forget)["id"], pd.read_parquet(retain)["id"]]).to_numpy()
    write_deltalake(str(path), pd.DataFrame({"id": ids, "text": [f"doc {i}" for i in ids]}))
    return str(path)


@pytest.mark.second_line
def test_apply_verify_undo_purge_over_connect_as_on_the_classic_session(spark, server, features_run, tmp_path):
    out, forget, retain = features_run
    tables = {side: _corpus(tmp_path / side, forget, retain) for side in ("classic", "connect")}
    steps = [("verify", [], 3), ("apply", [], 0), ("verify", [], 0), ("undo", [], 0), ("verify", [], 3),
             ("apply", [], 0), ("purge", ["--retention-hours", "0", "--ignore-retention-check"], 0)]
    lines = [[command, "--output", str(out), "--run-id", "c1", "--method", "lr_gauss", "--budget", "0.29", *extra]
             for command, extra, _ in steps]
    want = [code for *_, code in steps]
    assert [classic(spark, [*line, "--table", tables["classic"]]) for line in lines] == want
    codes, stderr = over_connect_in_one_process(server, [[*line, "--table", tables["connect"]] for line in lines])
    assert codes == want, stderr[-3000:]
    assert "over the active Spark Connect session" in stderr
    from deltalake import DeltaTable

    got = {side: DeltaTable(path).to_pandas().sort_values("id").reset_index(drop=True) for side, path in tables.items()}
    pd.testing.assert_frame_equal(got["classic"], got["connect"])
    everything = set(pd.read_parquet(forget)["id"]) | set(pd.read_parquet(retain)["id"])
    assert 0 < len(got["connect"]) < len(everything)
    ops = {side: [c["operation"] for c in sorted(DeltaTable(p).history(), key=lambda c: c["version"])]
           for side, p in tables.items()}
    assert ops["classic"] == ops["connect"]
    ledger = read_delta(out / "applies").sort_values("at")
    entries = {side: ledger[ledger.table == path][["action", "outcome", "rows_removed", "rows_after"]]
               .reset_index(drop=True) for side, path in tables.items()}
    assert len(entries["connect"]) >= 3  # apply, undo, apply at least
    pd.testing.assert_frame_equal(entries["classic"], entries["connect"])


def test_evaluate_and_report_over_connect(spark, server, features_run, tmp_path):
    out, *_ = features_run
    base = ["--output", str(out), "--run-id", "c1"]
    # One budget of the run: a model per method and the baseline (9 fits, not 41; the fits of
    # every budget on the classic session are test_evaluate's).
    one_budget = ["--eval-budgets", "0.29"]
    done = over_connect(server, ["evaluate", *base, *one_budget])
    assert done.returncode == 0, done.stderr[-3000:]
    connect_eval = read_delta(out / "evaluation")
    # the classic evaluate replaces the run's rows: compare them with what Connect wrote
    assert classic(spark, ["evaluate", *base, *one_budget]) == 0
    classic_eval = read_delta(out / "evaluation")
    key = ["method", "budget", "budget_count", "k"]
    got, want = (df.sort_values(key).reset_index(drop=True) for df in (connect_eval, classic_eval))
    fits = got[got.method != BASELINE_METHOD]
    assert set(fits.method) == set(FEATURE_METHODS) and set(fits.budget) == {0.29}
    # retain_log_loss is a Spark SUM over the held-out rows: its partial sums are added in the
    # order the shuffle delivers them, which moves the last bits between any two runs (classic
    # ones too); everything else, counts and the models' accuracies, is identical.
    np.testing.assert_allclose(got.pop("retain_log_loss"), want.pop("retain_log_loss"), rtol=1e-12)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    html = tmp_path / "report.html"
    done = over_connect(server, ["report", *base, "--html", str(html)])
    assert done.returncode == 0, done.stderr[-3000:]
    page = html.read_text()
    assert "c1" in page and "<img" in page


@pytest.mark.parametrize("remote,message", [
    ("http://127.0.0.1:15002", "--remote 'http://127.0.0.1:15002': a Spark Connect endpoint starts with sc:// "
                                "(for example sc://127.0.0.1:15002)"),
    ("sc://127.0.0.1:1", "no Spark Connect server answers at sc://127.0.0.1:1 (127.0.0.1:1: Connection refused)"),
])
def test_a_bad_endpoint_is_one_line_and_exit_2(tmp_path, remote, message):
    done = subprocess.run([CONSOLE, "run", "--forget", "a", "--retain", "b", "--output", str(tmp_path / "o"),
                           "--run-id", "r", "--remote", remote], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"distunlearn: error: {message}"
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


def test_a_setting_the_server_refuses_is_one_line_and_exit_2(server, tmp_path):
    """--spark-conf the user gave must hold; a static setting cannot be changed on a running
    server (the job's own tuning settings, refused, would only be a warning)."""
    done = over_connect(server, ["run", "--forget", "a", "--retain", "b", "--output", str(tmp_path / "o"),
                                 "--run-id", "r", "--spark-conf", "spark.sql.extensions=x"])
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("distunlearn: error: the session refuses --spark-conf spark.sql.extensions=x: ")
    assert "CANNOT_MODIFY_CONFIG" in last
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


def _readme_block(first: str) -> str:
    """The README's python code block that starts with ``first``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(first)]
    return block


def test_the_readme_notebook_example_and_the_job_entry_point_on_a_connect_session(spark, server, tmp_path):
    """What a Databricks serverless notebook and job do: the README's notebook block, as
    written, on a process's Connect session (only its first line, naming the tables, changed),
    then jobs/run.py in that process, which joins the active Connect session.  Both give the
    sets a classic run of the same options gives."""
    rng = np.random.default_rng(11)
    xf, xr = rng.standard_normal((90, 5)), rng.standard_normal((160, 5)) + 0.7
    schema = "doc_id long, embedding array<double>"
    forget = write_table(spark, frame(range(90), xf, "doc_id", "embedding"), tmp_path / "forget", schema)
    retain = write_table(spark, frame(range(1000, 1160), xr, "doc_id", "embedding"), tmp_path / "retain", schema)
    out = tmp_path / "out"
    block = _readme_block("FORGET, RETAIN, OUTPUT = ")
    script = "\n".join([
        "import sys",
        "from pyspark.sql import SparkSession",
        f"spark = SparkSession.builder.remote({server.url!r}).getOrCreate()",
        *[f"spark.conf.set({k!r}, {v!r})" for k, v in SESSION_SETTINGS.items()],  # the classic session's batches
        f"FORGET, RETAIN, OUTPUT = 'delta.`{forget}`', 'delta.`{retain}`', {str(out)!r}",
        block.split("\n", 1)[1],
        "from jobs.run import main",
        f"sys.exit(main(['--forget', {forget!r}, '--retain', {retain!r}, '--output', {str(out)!r}, '--run-id', "
        f"'job-1', '--id-col', 'doc_id', '--feature-col', 'embedding', '--methods', 'lr_gauss,random', "
        f"'--budgets', '0.05,0.1,0.2', *{SESSION_ARGS!r}]))",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=subprocess_env(PYTHONPATH=f"{ROOT}:{ROOT / 'lib'}"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'method': 'lr_gauss', 'budget': 0.05" in done.stdout
    assert "over the active Spark Connect session" in done.stderr  # jobs/run.py joined it
    k = int(0.05 * 90)
    assert f"{k} {k}\n" in done.stdout  # removal.k, removal.rows.count()
    assert classic(spark, ["run", "--forget", forget, "--retain", retain, "--output", str(tmp_path / "classic"),
                           "--run-id", "c", "--id-col", "doc_id", "--feature-col", "embedding",
                           "--methods", "lr_gauss,random", "--budgets", "0.05,0.1,0.2"]) == 0
    want = read_sets(tmp_path / "classic").drop(columns="run_id")
    sets = read_sets(out)
    for run_id in ("notebook-1", "job-1"):
        got = sets[sets.run_id == run_id].drop(columns="run_id")
        key = ["method", "budget", "rank"]
        pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                      want.sort_values(key).reset_index(drop=True), check_exact=True, obj=run_id)
