"""The command line as a user runs it: exit codes, one-line errors, the demo end to end.  The
console command runs as a separate process where the process is the point (--help once, the
demo, the Ivy and offline-jar starts); the other cases call ``main(argv)`` in this process.
The spark-submit entry point (jobs/run.py) is tested on a standalone cluster against a
local[2] run in tests/test_cluster.py."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SESSION_ARGS, read_delta, read_sets
from distunlearn.commands.cli import main
from distunlearn.commands.config import JobConfig
from distunlearn.commands.session import delta_build
from distunlearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# The console command the README's `make demo` runs, as pip installed it next to this interpreter
# (a wrong entry point in pyproject.toml once broke it while every in-process test passed).
CLI = [str(Path(sys.executable).with_name("distunlearn"))]


def run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_help_lists_every_option_of_every_subcommand(capsys):
    top = run([*CLI, "--help"])  # the console command itself, once
    assert top.returncode == 0
    for sub in ("run", "stats", "score", "evaluate", "demo"):
        assert sub in top.stdout
        with pytest.raises(SystemExit) as done:
            main([sub, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        for f in dataclasses.fields(JobConfig):
            assert "--" + f.name.replace("_", "-") in out, (sub, f.name)


def test_missing_required_option_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["run", "--forget", "x", "--retain", "y", "--output", str(tmp_path / "o")], launch=False)
    assert code == 2
    expected = "distunlearn: error: missing required option --run-id (or 'run_id:' in the config file)"
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "o").exists()


def test_bad_config_file_key_is_reported(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("forget: a\nfeatures_col: emb\n")
    assert main(["run", "--config", str(conf)], launch=False) == 2
    assert "unknown option 'features_col'" in capsys.readouterr().err


def test_config_file_values_stay_what_the_user_typed(tmp_path):
    """YAML 1.1 reads 0123 as the octal 83, ``no`` as False and 1e-3 as a string; the job reads
    each value's text and converts it to the option's type itself."""
    from distunlearn.commands.config import load_yaml

    conf = tmp_path / "c.yaml"
    conf.write_text("run_id: 0123\nstats_run_id: no\nid_col: 1e3\nridge: 1e-3\nbudgets: [0.1, .5]\n"
                    "budget_counts: 07,9\nverbose: yes\nspark_conf: {spark.sql.ansi.enabled: off}\n"
                    "text_col: ~\ndelta_jars:\n")
    assert load_yaml(conf) == {
        "run_id": "0123", "stats_run_id": "no", "id_col": "1e3", "ridge": 0.001, "budgets": (0.1, 0.5),
        "budget_counts": (7, 9), "verbose": True, "spark_conf": {"spark.sql.ansi.enabled": "off"},
        "text_col": "", "delta_jars": ""}
    for bad, message in (("run_id: [a, b]", "bad value for run_id"), ("ridge: lots", "bad value for ridge"),
                         ("k: 2.5", "bad value for k"), ("- run_id", "must hold a mapping")):
        conf.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_yaml(conf)


@pytest.fixture(scope="module")
def demo(spark, tmp_path_factory):  # spark: its launch has resolved and recorded the Delta jars
    root = tmp_path_factory.mktemp("demo")
    out = root / "output"
    # The suite's Spark defaults without its log4j2 file: the console command's own log
    # configuration applies, as for a user.
    conf_dir = root / "spark-conf"
    conf_dir.mkdir()
    shutil.copy(ROOT / "tests/spark-conf/spark-defaults.conf", conf_dir)
    res = subprocess.run([*CLI, "demo", "--output", str(out), "--forget-rows", "400", "--retain-rows", "800",
                          "--dim", "4", "--budgets", "0.1,0.5", "--shuffle-partitions", "3",
                          "--report-sample-rows", "200", "--spark-conf", "spark.ui.enabled=false"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
                         env={**os.environ, "SPARK_CONF_DIR": str(conf_dir)})
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_demo_runs_both_pairs_and_writes_the_tables(demo):
    out, res = demo
    assert "low separability" in res.stdout and "alpha = KL(p1||p)" in res.stdout and "high separability" in res.stdout
    # The short summary: both budgets, the calibration and best-method lines, then the reports.
    assert res.stdout.count("calibration: tolerating eps") == 2 and res.stdout.count("best here: ") == 2
    pages = [out.resolve() / f"report-demo-{name}.html" for name in ("low", "high")]
    assert res.stdout.rstrip().splitlines()[-2:] == [f"  {p}" for p in pages]
    for page in pages:
        html = page.read_text()
        assert "<h3>Every budget</h3>" in html and "Best here: " in html
        assert html.count('<figure id="fig-') == 3  # scores, KL curves, frontier (no evaluation yet)
    runs = read_delta(out / "runs")
    assert sorted(runs.run_id) == ["demo-high", "demo-low"] and set(runs.status) == {"succeeded"}
    sets = read_sets(out)
    per_run = sets.groupby(["run_id", "method", "budget"]).size()
    assert set(per_run[per_run.index.get_level_values("budget") == 0.1]) == {40}
    assert set(per_run[per_run.index.get_level_values("budget") == 0.5]) == {200}
    assert len(sets) == 2 * 4 * (40 + 200)
    assert len(read_delta(out / "statistics")) == 4


def test_the_console_is_one_line_per_stage_without_ivy_or_log4j_noise(demo):
    """A warm start (the jars resolved once): no Ivy report, no log4j banner, no Spark INFO;
    the job's lines are 'HH:MM:SS stage seconds (notes)'."""
    _, res = demo
    err = res.stderr
    for noise in (":: resolving dependencies", "Ivy Default Cache", "log4j2-defaults.properties",
                  "Setting default log level", "NativeCodeLoader", " INFO "):
        assert noise not in err, noise
    stages = re.findall(r"^\d\d:\d\d:\d\d (\w+) +\d+\.\d s(?:  \((.*)\))?$", err, re.MULTILINE)
    names = [name for name, _ in stages]
    assert names.count("statistics") == 2 and names.count("write_ranking") == 2, err[-3000:]
    notes = dict(stages)
    assert notes["statistics"] == "forget 400 x 4; retain 800 x 4"
    assert re.fullmatch(r"removal_ranking v\d+ \d+ rows; removal_budgets v\d+ 8 rows", notes["write_ranking"])


def test_bad_input_from_the_command_line_exits_2_with_one_line(spark, demo, tmp_path, capsys):
    out, _ = demo
    code = main(["run", "--forget", str(out / "data/low/forget"), "--retain", str(out / "data/low/retain"),
                 "--feature-col", "embedding", "--output", str(tmp_path / "o"), "--run-id", "x", *SESSION_ARGS],
                launch=False)
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("distunlearn: error: forget table has no column 'embedding'")
    assert not (tmp_path / "o").exists()


OFFLINE = "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=9 -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=9"


def test_unreachable_maven_central_is_one_clear_line(tmp_path):
    """An empty Ivy cache and every download sent to a closed port: exit 2, one line that
    names the Delta coordinate and the way out."""
    env = {**os.environ, "JAVA_TOOL_OPTIONS": OFFLINE}
    res = subprocess.run([*CLI, "run", "--forget", "a/b", "--retain", "c/d", "--output", str(tmp_path / "o"),
                          "--run-id", "x", "--ivy-dir", str(tmp_path / "ivy")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distunlearn: error: could not start Spark with Delta Lake")
    assert delta_build().package in last and "--delta-jars" in last
    assert not (tmp_path / "o").exists()


def test_local_delta_jars_run_offline(demo, tmp_path):
    """--delta-jars with the two cached jars: the run needs no network at all."""
    out, _ = demo
    jars = Path(JobConfig().ivy_dir).expanduser() / "jars"
    local = ",".join(str(jars / f"io.delta_{name}") for name in delta_build().jar_files)  # Ivy's file names
    env = {**os.environ, "JAVA_TOOL_OPTIONS": OFFLINE}
    res = subprocess.run([*CLI, "run", "--forget", str(out / "data/high/forget"), "--retain",
                          str(out / "data/high/retain"), "--output", str(tmp_path / "o"), "--run-id", "demo-high",
                          "--budgets", "0.1", "--delta-jars", local, "--spark-conf", "spark.ui.enabled=false"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env=env, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = read_sets(tmp_path / "o")
    want = read_sets(out)
    want = want[(want.run_id == "demo-high") & (want.budget == 0.1)]
    assert sorted(zip(got.method, got.id, strict=True)) == sorted(zip(want.method, want.id, strict=True))


def test_local_yaml_lists_every_option():
    """conf/local.yaml is documented as the annotated list of every option and its default."""
    import yaml

    data = yaml.safe_load((ROOT / "conf/local.yaml").read_text())
    assert set(data) == {f.name for f in dataclasses.fields(JobConfig)}
    defaults = JobConfig()
    for name in ("methods", "budgets", "covariance", "tolerated_eps", "holdout_fraction", "master"):
        value = getattr(defaults, name)
        assert (tuple(data[name]) if isinstance(value, tuple) else data[name]) == value, name


def test_relative_paths_name_the_same_tables_for_writes_reads_and_sql(spark, tmp_path, monkeypatch, capsys):
    """--output, sources and --table given relative to the working directory (as the README's
    walk-through does): Delta's SQL takes no relative path and Spark resolves one against its
    JVM's directory, so the store makes them absolute first.  Before that, every table looked
    missing: the ledger recorded version -1 for each write and verify found no run."""
    import numpy as np
    import pandas as pd
    from deltalake import write_deltalake

    from conftest import SESSION_ARGS, gaussian_tables
    from distunlearn.commands.cli import main

    gaussian_tables(spark, tmp_path / "in", n_forget=40, n_retain=80, dim=3)
    write_deltalake(str(tmp_path / "corpus"), pd.DataFrame({"id": np.arange(40), "text": "doc"}))
    monkeypatch.chdir(tmp_path)  # this process only: the JVM keeps its own directory
    run = ["--forget", "in/forget", "--retain", "in/retain", "--output", "out", "--methods", "lr_gauss",
           "--budgets", "0.25", *SESSION_ARGS]
    assert main(["run", *run, "--run-id", "r1"], launch=False) == 0
    assert main(["run", *run, "--run-id", "r2"], launch=False) == 0
    runs = read_delta(tmp_path / "out" / "runs").set_index("run_id")
    outputs = dict(runs.loc["r1", "outputs"])  # delta-rs reads a map as (key, value) pairs
    assert len(outputs) >= 5 and all(v >= 0 for v in outputs.values()), outputs
    assert (runs.loc["r1", "forget_version"], runs.loc["r1", "retain_version"]) == (0, 0)
    assert (runs.loc["r2", "statistics_mode"], runs.loc["r2", "base_run_id"]) == ("incremental", "r1")
    cleaning = ["--output", "out", "--run-id", "r1", "--method", "lr_gauss", "--budget", "0.25", "--table", "corpus",
                *SESSION_ARGS]
    assert main(["verify", *cleaning], launch=False) == 3
    assert main(["apply", *cleaning], launch=False) == 0
    assert main(["verify", *cleaning], launch=False) == 0
    capsys.readouterr()
    want = set(read_sets(tmp_path / "out").query("run_id == 'r1'")["id"])
    assert len(want) == 10 and set(read_delta(tmp_path / "corpus")["id"]) == set(range(40)) - want
