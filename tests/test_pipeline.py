"""End to end on small Gaussian tables: the removal sets written to Delta (read back with
delta-rs) against a numpy reference ranking computed from the raw data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import frame, gaussian_tables, make_config, read_delta, read_sets, write_table
from distunlearn.commands.run import run_pipeline, run_score, run_stats
from distunlearn.core.scoring import FEATURE_METHODS as METHODS  # lr_ngram needs text


def reference_scores(xf: np.ndarray, xr: np.ndarray, source: str = "pooled") -> dict[str, np.ndarray]:
    """The formulas of PAPER.md, written directly (explicit inverse, per-row distances)."""
    mu1, mu2 = xf.mean(0), xr.mean(0)
    if source == "pooled":
        sigma = ((xf - mu1).T @ (xf - mu1) + (xr - mu2).T @ (xr - mu2)) / (len(xf) + len(xr))
    else:
        sigma = np.cov(xr.T, bias=True)
    inv = np.linalg.inv(sigma)

    def maha(mu: np.ndarray) -> np.ndarray:
        return np.sqrt(np.einsum("ij,jk,ik->i", xf - mu, inv, xf - mu))

    def cosd(mu: np.ndarray) -> np.ndarray:
        return 1 - xf @ mu / (np.linalg.norm(xf, axis=1) * np.linalg.norm(mu))

    return {
        "mu2": np.linalg.norm(xf - mu2, axis=1),
        "maha_mu2": maha(mu2),
        "cos_mu2": cosd(mu2),
        "lr_maha": maha(mu2) - maha(mu1),
        "lr_cos": cosd(mu2) - cosd(mu1),
        "lr_gauss": 0.5 * (maha(mu2) ** 2 - maha(mu1) ** 2),
        "coreset": -np.linalg.norm(xf - mu1, axis=1),
    }


def top_ids(scores: np.ndarray, ids: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((ids, -scores))  # score descending, then id ascending
    return ids[order[:k]].tolist()


@pytest.fixture(scope="module")
def gaussian(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("gauss")
    return root, *gaussian_tables(spark, root, dim=4)


@pytest.fixture(scope="module")
def full_run(spark, gaussian):
    root, f, r, xf, xr = gaussian
    cfg = make_config(root, f, r, methods=METHODS, budgets=(0.05, 0.29, 0.5, 1.0), budget_counts=(7,))
    report = run_pipeline(spark, cfg)
    return cfg, report, read_sets(cfg.output)


@pytest.mark.second_line
def test_every_kernel_method_matches_the_numpy_reference(gaussian, full_run):
    _, _, _, xf, xr = gaussian
    cfg, _, table = full_run
    ids = np.arange(len(xf))
    ref = reference_scores(xf, xr)
    for method, scores in ref.items():
        for budget, k in ((0.05, 6), (0.29, 34), (0.5, 60), (1.0, 120)):
            got = table[(table.method == method) & (table.budget == budget) & table.budget_count.isna()]
            got = got.sort_values("rank")
            assert got["rank"].tolist() == list(range(1, k + 1)), (method, budget)
            assert got["id"].tolist() == top_ids(scores, ids, k), (method, budget)
            np.testing.assert_allclose(got["score"].to_numpy(), scores[got["id"].to_numpy()], rtol=1e-9, atol=1e-9)


@pytest.mark.second_line
def test_exact_k_and_nested_sets(full_run):
    _, report, table = full_run
    n1 = report.n_forget
    assert n1 == 120
    for method in METHODS:
        sets = {}
        for budget, group in table[table.method == method].groupby(["budget", "k"]):
            sets[budget] = set(group["id"])
            assert len(group) == group["k"].iloc[0]
        assert sorted(len(s) for s in sets.values()) == [6, 7, 34, 60, 120]  # floor(0.29*120)=34
        ordered = sorted(sets.values(), key=len)
        assert all(a <= b for a, b in zip(ordered, ordered[1:], strict=False)), method
    counts = table[table.budget_count.notna()]
    assert set(counts["budget_count"]) == {7} and np.allclose(counts["budget"], 7 / 120)


def test_random_is_seeded_uniform_and_partition_independent(spark, gaussian, full_run, tmp_path):
    root, f, r, xf, xr = gaussian
    cfg, _, table = full_run
    first = table[(table.method == "random") & (table.budget == 0.5)]["id"].tolist()
    assert len(set(first)) == 60
    # Same seed, different partitioning and batch size: same set.  Other seed: another set.
    again = dataclasses.replace(cfg, output=str(tmp_path / "a"), shuffle_partitions=3, arrow_batch_size=50,
                                methods=("random",), budgets=(0.5,), budget_counts=())
    run_pipeline(spark, again)
    t2 = read_sets(again.output)
    assert sorted(t2["id"]) == sorted(first)
    other = dataclasses.replace(again, output=str(tmp_path / "b"), seed=1)
    run_pipeline(spark, other)
    t3 = read_sets(other.output)
    assert len(set(t3["id"]) & set(first)) < 50
    # Scores are uniform in [0, 1): 120 draws have a mean near 1/2 (5 sigma band).
    scores = table[(table.method == "random") & (table.budget == 1.0)]["score"]
    assert ((scores >= 0) & (scores < 1)).all() and abs(scores.mean() - 0.5) < 5 * (1 / 12 / 120) ** 0.5


def test_summary_thresholds_are_the_kth_scores(full_run):
    _, report, table = full_run
    for row in report.summary:
        got = table[(table.method == row["method"]) & (table.k == row["k"])]
        assert row["threshold"] == pytest.approx(got["score"].min())


def test_statistics_and_runs_tables(gaussian, full_run):
    _, _, _, xf, xr = gaussian
    cfg, _, _ = full_run
    stats = read_delta(f"{cfg.output}/statistics").set_index("domain")
    for domain, x in (("forget", xf), ("retain", xr)):
        row = stats.loc[domain]
        assert row["n"] == len(x) and row["dim"] == 4 and row["run_id"] == "t1"
        np.testing.assert_allclose(np.asarray(row["mean"]), x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(row["m2"]).reshape(4, 4) / len(x), np.cov(x.T, bias=True),
                                   rtol=1e-10, atol=1e-12)
    runs = read_delta(f"{cfg.output}/runs")
    assert runs["run_id"].tolist() == ["t1"] and runs["status"].tolist() == ["succeeded"]
    assert len(runs["summary"].iloc[0]) == len(METHODS) * 5


def test_stored_statistics_are_read_back_in_pieces(spark, gaussian, full_run, monkeypatch):
    """load_statistics reads the d x d scatter as rows of READ_PIECE elements (one collected row
    must fit a Spark Connect message); with 3, the 16 elements of d = 4 come in 6 pieces."""
    from distunlearn.store import output

    monkeypatch.setattr(output, "READ_PIECE", 3)
    _, _, _, xf, xr = gaussian
    cfg, _, _ = full_run
    stats = output.Store(spark, cfg.output).load_statistics("t1", cfg.options())
    for s, x in ((stats.forget.stats, xf), (stats.retain.stats, xr)):
        assert s.n == len(x)
        np.testing.assert_allclose(s.m2, (x - x.mean(0)).T @ (x - x.mean(0)), rtol=1e-10, atol=1e-12)


def test_rerun_replaces_rows_and_other_runs_are_kept(spark, gaussian, tmp_path):
    root, f, r, _, _ = gaussian
    cfg = make_config(tmp_path, f, r, budgets=(0.1, 0.5))
    run_pipeline(spark, cfg)
    first = read_sets(cfg.output).sort_values(["method", "budget", "rank"]).reset_index(drop=True)
    run_pipeline(spark, cfg)
    second = read_sets(cfg.output).sort_values(["method", "budget", "rank"]).reset_index(drop=True)
    assert first.equals(second)
    run_pipeline(spark, dataclasses.replace(cfg, run_id="t2", budgets=(0.1,)))
    both = read_sets(cfg.output)
    assert len(both[both.run_id == "t1"]) == len(first)
    assert len(both[both.run_id == "t2"]) == 12 * len(cfg.methods)
    assert sorted(read_delta(f"{cfg.output}/runs")["run_id"]) == ["t1", "t2"]
    assert len(read_delta(f"{cfg.output}/statistics")) == 4


def test_stats_then_score_reuses_stored_statistics(spark, gaussian, tmp_path):
    root, f, r, xf, xr = gaussian
    cfg = make_config(tmp_path, f, r, run_id="s1", budgets=(0.25,), methods=("lr_gauss", "maha_mu2"),
                      covariance_source="retain")
    run_stats(spark, cfg)
    run_score(spark, dataclasses.replace(cfg, run_id="s2", stats_run_id="s1"))
    table = read_sets(cfg.output)
    assert set(table.run_id) == {"s2"}
    ref = reference_scores(xf, xr, source="retain")
    for method in ("lr_gauss", "maha_mu2"):
        got = table[table.method == method].sort_values("rank")["id"].tolist()
        assert got == top_ids(ref[method], np.arange(len(xf)), 30)


def test_pruned_selection_matches_reference(spark, tmp_path):
    """Largest budget < 1: the quantile pruning path; still the exact top-k."""
    f, r, xf, xr = gaussian_tables(spark, tmp_path, n_forget=600, n_retain=300, dim=3, seed=3)[0:4]
    cfg = make_config(tmp_path, f, r, methods=("mu2", "coreset"), budgets=(0.01, 0.1, 0.2))
    run_pipeline(spark, cfg)
    table = read_sets(cfg.output)
    ref = reference_scores(xf, xr)
    for method in ("mu2", "coreset"):
        for budget, k in ((0.01, 6), (0.1, 60), (0.2, 120)):
            got = table[(table.method == method) & (table.budget == budget)].sort_values("rank")
            assert got["id"].tolist() == top_ids(ref[method], np.arange(600), k)


def test_ties_are_broken_by_id_for_long_and_string_ids(spark, tmp_path):
    """Identical feature vectors score identically; the smallest ids come first."""
    rng = np.random.default_rng(0)
    same = [[1.0, 2.0, 3.0]] * 10
    retain = rng.standard_normal((50, 3)).tolist()
    r = write_table(spark, frame(range(100, 150), retain), tmp_path / "r", "id long, features array<double>")
    f = write_table(spark, frame([9, 3, 7, 1, 5, 0, 8, 2, 6, 4], same), tmp_path / "f",
                    "id long, features array<double>", partitions=4)
    cfg = make_config(tmp_path, f, r, methods=("mu2", "lr_gauss"), budgets=(0.3,))
    run_pipeline(spark, cfg)
    table = read_sets(cfg.output)
    for method in ("mu2", "lr_gauss"):
        assert table[table.method == method].sort_values("rank")["id"].tolist() == [0, 1, 2]
    names = ["b", "a10", "a9", "c", "a1"]  # in an id column whose name holds a backtick
    schema = "`doc``id` string, features array<double>"
    rs = write_table(spark, frame([f"r{i}" for i in range(50)], retain, id_name="doc`id"), tmp_path / "rs", schema)
    fs = write_table(spark, frame(names, same[:5], id_name="doc`id"), tmp_path / "fs", schema)
    cfg = make_config(tmp_path, fs, rs, output=str(tmp_path / "out_s"), methods=("mu2",), budgets=(0.6,),
                      id_col="doc`id")
    run_pipeline(spark, cfg)
    table = read_sets(cfg.output)
    assert table.sort_values("rank")["id"].tolist() == ["a1", "a10", "a9"]


def test_float32_parquet_and_ml_vectors_give_the_same_sets(spark, tmp_path):
    from pyspark.ml.linalg import Vectors

    f, r, xf, xr = gaussian_tables(spark, tmp_path / "f32", dim=3, dtype="float", seed=11)[0:4]
    cfg = make_config(tmp_path, f, r, methods=("maha_mu2",), budgets=(0.5,))
    run_pipeline(spark, cfg)
    expected = read_sets(cfg.output).sort_values("rank")["id"].tolist()
    assert expected == top_ids(reference_scores(xf, xr)["maha_mu2"], np.arange(len(xf)), 60)
    # Same rows as Spark ML vectors (every other one sparse) in Parquet folders, in columns whose
    # names hold a dot (F.col("doc.id") would read a struct's field).
    def vec_table(x, ids, path):
        rows = [(int(i), Vectors.sparse(len(v), {j: float(v[j]) for j in range(len(v))}) if i % 2
                 else Vectors.dense([float(a) for a in v])) for i, v in zip(ids, x, strict=True)]
        spark.createDataFrame(rows, ["doc.id", "emb.v"]).write.mode("overwrite").parquet(str(path))
        return str(path)
    fv = vec_table(xf, range(len(xf)), tmp_path / "fv")
    rv = vec_table(xr, range(10_000, 10_000 + len(xr)), tmp_path / "rv")
    cfg2 = make_config(tmp_path, fv, rv, output=str(tmp_path / "out_v"), methods=("maha_mu2",), budgets=(0.5,),
                       id_col="doc.id", feature_col="emb.v")
    run_pipeline(spark, cfg2)
    assert read_sets(cfg2.output).sort_values("rank")["id"].tolist() == expected


@pytest.mark.parametrize("budgets", [(0.1, 0.5), (0.1, 1.0)])
def test_numpy_kernel_scores_each_forget_row_once(spark, gaussian, tmp_path, monkeypatch, budgets):
    """Pruning, range sampling and sorting are separate Spark jobs; the scores are persisted
    so the kernel runs once per row for the selection (counted with an accumulator in the
    workers); the diagnostics pass scores again (aggregate.removal_bucket_stats)."""
    from distunlearn.transforms import score

    root, f, r, xf, _ = gaussian
    rows = spark.sparkContext.accumulator(0)
    original = score._scorer

    def counting(model, methods):  # nested: shipped to the workers by value
        inner = original(model, methods)

        def count(batches):
            for rb in inner(batches):
                rows.add(rb.num_rows)
                yield rb
        return count

    monkeypatch.setattr(score, "_scorer", counting)
    run_pipeline(spark, make_config(tmp_path, f, r, budgets=budgets))
    assert rows.value == len(xf)


def test_sort_partitions_cap_rows_per_partition():
    """The selection's sort: the shuffle partitions, or enough that none holds more than ~1M
    score rows (n x methods), rounded up; the 10M x 4 run needed 40 (docs/BENCHMARKS.md)."""
    from distunlearn.transforms.rank import sort_partitions

    assert sort_partitions(1_000_000, 4, 8) == 8
    assert sort_partitions(10_000_000, 4, 8) == 40
    assert sort_partitions(2_000_001, 1, 2) == 3
    assert sort_partitions(10, 4, 4) == 4
