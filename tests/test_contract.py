"""Output contract 2 and the library API: one ranking row per (method, id), budgets of one k
recorded once, the one reader (budget, --k, export), folders of contract 1 refused, readers
pinned to the versions a succeeded run names, and select_removal on DataFrames writing
nothing.  References: numpy top-k of the raw arrays, the tables read back with delta-rs and
pyarrow."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SESSION_ARGS, frame, gaussian_tables, make_config, read_delta, read_sets
from distunlearn.commands.cli import main
from distunlearn.commands.run import run_pipeline
from distunlearn.errors import InputError

N_FORGET = 100
LIB = Path(__file__).resolve().parents[1] / "lib"


def top_ids(xf: np.ndarray, xr: np.ndarray, k: int) -> list[int]:
    """lr_gauss's top k from the paper's formula (pooled covariance, explicit inverse)."""
    mu1, mu2 = xf.mean(0), xr.mean(0)
    sigma = ((xf - mu1).T @ (xf - mu1) + (xr - mu2).T @ (xr - mu2)) / (len(xf) + len(xr))
    inv = np.linalg.inv(sigma)
    def maha2(mu: np.ndarray) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", xf - mu, inv, xf - mu)

    score = 0.5 * (maha2(mu2) - maha2(mu1))
    ids = np.arange(len(xf))
    return ids[np.lexsort((ids, -score))][:k].tolist()


@pytest.fixture(scope="module")
def colliding(spark, tmp_path_factory):
    """A run whose budgets 0.29 and 29 (of 100 rows) resolve to the same k, with 0.6 beside them."""
    root = tmp_path_factory.mktemp("contract")
    f, r, xf, xr = gaussian_tables(spark, root, n_forget=N_FORGET, n_retain=200, dim=3)
    cfg = make_config(root, f, r, run_id="d1", methods=("lr_gauss", "random"), budgets=(0.29, 0.6),
                      budget_counts=(29,))
    report = run_pipeline(spark, cfg)
    return cfg, report, xf, xr


def test_budgets_of_one_k_are_one_set_recorded_once(colliding, caplog):
    cfg, report, xf, xr = colliding
    budgets = read_delta(Path(cfg.output) / "removal_budgets")
    assert sorted(zip(budgets.method, budgets.k, strict=True)) == [("lr_gauss", 29), ("lr_gauss", 60),
                                                                   ("random", 29), ("random", 60)]
    assert budgets.group.isna().all() and (budgets.quota == budgets.k).all()
    ranking = read_delta(Path(cfg.output) / "removal_ranking")
    # one row per (method, id) up to the largest k, ranks 1..60, and group_rank = rank without groups
    assert len(ranking) == 2 * 60 and not ranking.duplicated(["method", "id"]).any()
    assert (ranking.group_rank == ranking["rank"]).all() and ranking.group.isna().all()
    sets = read_sets(cfg.output)
    got = sets[(sets.method == "lr_gauss") & (sets.k == 29)].sort_values("rank")
    assert got.id.tolist() == top_ids(xf, xr, 29)
    assert [r["k"] for r in report.summary if r["method"] == "lr_gauss"] == [29, 60]


def test_apply_of_a_colliding_budget_and_any_k(spark, colliding, tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    from distunlearn.commands import cleaning

    cfg, _, xf, xr = colliding
    table = str(tmp_path / "corpus")
    write_deltalake(table, pd.DataFrame({"id": np.arange(N_FORGET), "text": "doc"}))
    out = cleaning.apply_removal(spark, dataclasses.replace(cfg, table=table, method="lr_gauss", budget=0.29))
    assert (out.outcome, out.rows_removed) == ("committed", 29)
    # --k 29 is the same set: already applied
    again = cleaning.apply_removal(spark, dataclasses.replace(cfg, table=table, method="lr_gauss", budget=0.0, k=29))
    assert again.outcome == "already_applied"
    assert set(read_delta(table).id) == set(range(N_FORGET)) - set(top_ids(xf, xr, 29))


def test_any_k_up_to_the_largest_is_read_from_the_ranking(spark, colliding):
    from distunlearn import read_removal_set

    cfg, _, xf, xr = colliding
    rs = read_removal_set(spark, cfg.output, "d1", "lr_gauss", k=44)
    rows = rs.rows.toPandas().sort_values("rank")
    assert rows.id.tolist() == top_ids(xf, xr, 44) and rows["rank"].tolist() == list(range(1, 45))
    assert rs.budget == pytest.approx(0.44)
    with pytest.raises(InputError, match=r"--k 61 is outside 1..60"):
        read_removal_set(spark, cfg.output, "d1", "lr_gauss", k=61)
    with pytest.raises(InputError, match=r"recorded no budget 0.3 .* it recorded 0.29 \(k=29\), 0.6 \(k=60\)"):
        read_removal_set(spark, cfg.output, "d1", "lr_gauss", budget=0.3)


def test_export_to_delta_and_parquet(spark, colliding, tmp_path, capsys):
    cfg, _, xf, xr = colliding
    base = ["--output", cfg.output, "--run-id", "d1", "--method", "lr_gauss", *SESSION_ARGS]
    assert main(["export", *base, "--budget", "0.6", "--target", str(tmp_path / "d")], launch=False) == 0
    assert "export exported" in capsys.readouterr().out
    got = read_delta(tmp_path / "d").sort_values("rank")
    assert got.id.tolist() == top_ids(xf, xr, 60)
    assert list(got.columns) == ["id", "score", "rank", "group", "group_rank"]
    assert main(["export", *base, "--k", "7", "--target", str(tmp_path / "p"), "--export-format", "parquet"],
                launch=False) == 0
    table = pq.read_table(tmp_path / "p").to_pandas().sort_values("rank")
    assert table.id.tolist() == top_ids(xf, xr, 7)
    # a target that holds something else: one line, exit 2, nothing written
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["export", *base, "--k", "7", "--target", str(other)], launch=False) == 2
    assert "exists and is not a Delta table" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_readers_take_the_versions_the_succeeded_run_names(spark, colliding):
    """A second writer of run d1's ranking (a rerun, or a concurrent run of the same id) does
    not change what a reader of the succeeded d1 gets: its budgets rows name the ranking version."""
    from distunlearn import read_removal_set
    from distunlearn.store.output import Store

    cfg, _, xf, xr = colliding
    store = Store(spark, cfg.output)
    other = spark.createDataFrame([("lr_gauss", i, 1.0, i + 1, None, i + 1) for i in range(50, 100)],
                                  "method string, id long, score double, rank long, group string, group_rank long")
    store.write_ranking("d1", other)
    rs = read_removal_set(spark, cfg.output, "d1", "lr_gauss", budget=0.29)
    assert sorted(r.id for r in rs.ids.collect()) == sorted(top_ids(xf, xr, 29))


def test_a_folder_of_contract_1_is_refused_with_one_line(spark, tmp_path):
    f, r, *_ = gaussian_tables(spark, tmp_path, n_forget=20, n_retain=40, dim=2)
    out = tmp_path / "old"
    spark.createDataFrame([("r", "mu2", 0.5, None, 1, 1, 3, 0.1)],
                          "run_id string, method string, budget double, budget_count long, k long, rank long, "
                          "id long, score double").write.format("delta").save(str(out / "removal_sets"))
    cfg = make_config(tmp_path, f, r, output=str(out), methods=("mu2",), budgets=(0.5,))
    with pytest.raises(InputError, match="written by distunlearn 0.1 \\(output contract 1\\)") as info:
        run_pipeline(spark, cfg)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["removal_sets"]


def test_select_removal_on_dataframes_writes_nothing(spark, tmp_path, caplog):
    """The library API: DataFrames in, the ranking and the values out; result.write is what
    the run command writes; a stratified run's sets exist for its recorded k only."""
    from distunlearn import Columns, Groups, Selection, read_removal_set, select_removal

    rng = np.random.default_rng(5)
    xf, xr = rng.standard_normal((60, 2)), rng.standard_normal((90, 2)) + 1.5
    forget = spark.createDataFrame(frame(range(60), xf).assign(lang=["a"] * 40 + ["b"] * 20),
                                   "id long, features array<double>, lang string")
    retain = spark.createDataFrame(frame(range(1000, 1090), xr).assign(lang=["a"] * 45 + ["b"] * 45),
                                   "id long, features array<double>, lang string")
    caplog.set_level(logging.INFO)
    result = select_removal(spark, forget, retain, columns=Columns(groups=("lang",)),
                            groups=Groups(budget="stratified"), selection=Selection(budgets=(0.25, 0.5)))
    try:
        assert not any(tmp_path.iterdir())
        assert [b.k for b in result.budgets] == [15, 30]
        quotas = {(s.method, s.budget.k): s.quotas for s in result.sets}
        assert quotas[("lr_gauss", 15)] == {"a": 10, "b": 5}  # 40:20 of 15, largest remainder
        got = result.removal_set("lr_gauss", 15).toPandas()
        assert sorted(got.groupby("group").size().items()) == [("a", 10), ("b", 5)]
        assert (got.group_rank <= got.group.map({"a": 10, "b": 5})).all()
        out = str(tmp_path / "out")
        versions = result.write(out, "api1")
        assert {"removal_ranking", "removal_budgets", "group_diagnostics"} <= set(versions)
    finally:
        result.release()
    stored = read_removal_set(spark, out, "api1", "lr_gauss", budget=0.25).rows.toPandas()
    assert sorted(stored.id) == sorted(got.id)
    with pytest.raises(InputError, match="stratified budgets: its sets exist for the recorded k only"):
        read_removal_set(spark, out, "api1", "lr_gauss", k=16)


def test_the_pure_layer_imports_without_pyspark():
    """Every module of distunlearn.core in a process where pyspark cannot be imported."""
    code = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError("pyspark is blocked in this test")
sys.meta_path.insert(0, Block())
import distunlearn.core as core
names = [m.name for m in pkgutil.iter_modules(core.__path__)]
for name in names:
    importlib.import_module(f"distunlearn.core.{name}")
assert not any(m.startswith("pyspark") for m in sys.modules)
print(len(names), "modules")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(LIB)})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) >= 10
