"""The configuration examples under conf/ load the way the job loads them, and the platform job
specs (Databricks, EMR) are well-formed and point at the right entry point and environment.
No Spark: these only read files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distunlearn.commands.config import JobConfig, load_yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
YAMLS = sorted(CONF.glob("*.yaml"))
JSONS = sorted(CONF.glob("*.json"))
ENV_PYTHON = "spark.pyspark.python=./environment/bin/python"


def test_the_examples_exist():
    names = {p.name for p in YAMLS + JSONS}
    for name in ("local.yaml", "cluster.example.yaml", "standalone.example.yaml", "yarn.example.yaml",
                 "kubernetes.example.yaml", "databricks.example.yaml", "emr.example.yaml",
                 "databricks-job.example.json", "databricks-serverless-job.example.json", "emr-step.example.json"):
        assert name in names, name


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_loads_and_checks(path: Path):
    """Loaded as `--config` loads it (unknown keys are errors), then checked as far as a file alone
    can be: the per-run required options (run_id, ...) come from flags."""
    cfg = JobConfig(**load_yaml(path))
    assert cfg.check(required=()) is cfg


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.name)
def test_json_parses(path: Path):
    json.loads(path.read_text())


def test_standalone_example_ships_the_archive():
    cfg = JobConfig(**load_yaml(CONF / "standalone.example.yaml"))
    assert cfg.master.startswith("spark://")
    assert cfg.python_archive == "dist/distunlearn-env.tar.gz"


def test_databricks_job_runs_the_spark_submit_entry_point():
    spec = json.loads((CONF / "databricks-job.example.json").read_text())
    (task,) = spec["tasks"]
    python_task = task["spark_python_task"]
    assert python_task["python_file"].endswith("jobs/run.py")
    params = python_task["parameters"]
    assert params[params.index("--config") + 1].endswith("databricks.example.yaml")
    assert "--run-id" in params
    assert any(lib.get("whl", "").endswith(".whl") for lib in task["libraries"])


def test_databricks_serverless_job_installs_the_wheel_in_its_environment():
    """Serverless tasks get no cluster libraries: the wheel is a dependency of the task's
    environment, and the task runs the same spark-submit entry point, which joins the task's
    Spark Connect session (tests/test_connect.py runs that path)."""
    spec = json.loads((CONF / "databricks-serverless-job.example.json").read_text())
    (env,) = spec["environments"]
    assert any(dep.endswith(".whl") for dep in env["spec"]["dependencies"])
    (task,) = spec["tasks"]
    assert task["environment_key"] == env["environment_key"] and "new_cluster" not in task
    params = task["spark_python_task"]["parameters"]
    assert task["spark_python_task"]["python_file"].endswith("jobs/run.py")
    assert params[params.index("--config") + 1].endswith("databricks.example.yaml") and "--run-id" in params


def test_emr_step_ships_the_environment_archive():
    (step,) = json.loads((CONF / "emr-step.example.json").read_text())
    assert step["Jar"] == "command-runner.jar"
    args = step["Args"]
    assert args[0] == "spark-submit"
    assert "--archives" in args
    assert args[args.index("--archives") + 1].endswith("#environment")
    assert ENV_PYTHON in args
    assert "spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python" in args
    assert any(a.endswith("jobs/run.py") for a in args)
    assert args[args.index("--config") + 1] == "emr.example.yaml"


@pytest.mark.parametrize("path", [p for p in YAMLS + JSONS if ".example." in p.name], ids=lambda p: p.name)
def test_readme_names_every_example(path: Path):
    assert f"conf/{path.name}" in (ROOT / "README.md").read_text()
