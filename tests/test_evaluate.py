"""Downstream evaluation: budget_to_halve on hand-computed curves (no Spark), then the Spark
evaluation against independent references: the held-out split recomputed from its documented
formula, scikit-learn's logistic regression on the same training rows, a numpy log-loss from
the Spark model's probabilities, and the evaluation tables read back with delta-rs."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import frame, make_config, read_delta, write_table
from distunlearn.errors import ConfigError, InputError
from distunlearn.evaluate import (
    EvalOptions,
    budget_to_halve,
    fit_model,
    prepare_evaluation,
    run_evaluation,
)
from distunlearn.pipeline import run_pipeline

BUDGETS = (0.25, 0.5, 1.0)


# ---------------------------------------------------------------------- budget_to_halve (pure)
@pytest.mark.parametrize(("budgets", "values", "baseline", "expected"), [
    # target 0.5 on (0.25, 0.8) -> (0.5, 0.3): 0.25 + 0.3/0.5 * 0.25 = 0.4
    ((0.25, 0.5, 1.0), (0.8, 0.3, 0.0), 1.0, 0.4),
    # first segment from (0, 0.8): target 0.4, 0 + 0.4/0.8 * 0.5 = 0.25
    ((0.5,), (0.0,), 0.8, 0.25),
    # reached exactly at a budget
    ((0.2, 0.4, 0.6), (0.9, 0.5, 0.1), 1.0, 0.4),
    # never reached
    ((0.5, 1.0), (0.9, 0.6), 1.0, None),
    # non-monotone: first crossing on (0.1, 0.6) -> (0.3, 0.45): 0.1 + 0.1/0.15 * 0.2
    ((0.1, 0.3, 0.5, 0.7), (0.6, 0.45, 0.8, 0.2), 1.0, 0.1 + 0.2 * 0.1 / 0.15),
    # non-monotone, falls then rises: the first crossing counts, 0 + 0.5/0.6 * 0.2
    ((0.2, 0.4, 0.6), (0.4, 0.7, 0.1), 1.0, 0.2 * 0.5 / 0.6),
    # unsorted input is sorted by budget first (same as the first case)
    ((1.0, 0.25, 0.5), (0.0, 0.8, 0.3), 1.0, 0.4),
    # NaN points are skipped: (0.25, nan) ignored, segment (0, 1) -> (0.5, 0.3): 0.5/0.7 * 0.5
    ((0.25, 0.5), (math.nan, 0.3), 1.0, 0.5 * 0.5 / 0.7),
    # nothing to halve, or no baseline
    ((0.5,), (0.0,), 0.0, 0.0),
    ((0.5,), (0.0,), None, None),
])
def test_budget_to_halve(budgets, values, baseline, expected):
    got = budget_to_halve(budgets, values, baseline)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_budget_to_halve_rejects_length_mismatch_and_needs_no_spark():
    with pytest.raises(ValueError, match="length"):
        budget_to_halve([0.5, 1.0], [0.1], 1.0)
    code = ("import sys; from distunlearn.evaluate import budget_to_halve; "
            "assert budget_to_halve([1.0], [0.0], 1.0) == 0.5; "
            "assert not any(m.startswith('pyspark') for m in sys.modules), 'pyspark imported'")
    lib = str(Path(__file__).resolve().parents[1] / "lib")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": lib})


# ---------------------------------------------------------------------- shared data
def two_gaussians(rng: np.random.Generator, n_forget: int, n_retain: int, shift: float) -> tuple[np.ndarray, ...]:
    """2-D, forget ~ N(0, I), retain ~ N((shift, shift), I)."""
    return rng.standard_normal((n_forget, 2)), rng.standard_normal((n_retain, 2)) + shift


@pytest.fixture(scope="module")
def domain_run(spark, tmp_path_factory):
    """A run with lr_gauss and random on low-separability 2-D Gaussians (kappa =
    KL(p1||p2) = 0.7^2 = 0.49, the paper's regime where selection pays), then its evaluation."""
    root = tmp_path_factory.mktemp("evaldomain")
    xf, xr = two_gaussians(np.random.default_rng(11), 300, 600, 0.7)
    schema = "id long, features array<double>"
    f = write_table(spark, frame(range(300), xf), root / "forget", schema)
    r = write_table(spark, frame(range(10_000, 10_600), xr), root / "retain", schema)
    cfg = make_config(root, f, r, methods=("lr_gauss", "random"), budgets=BUDGETS, seed=3)
    run_pipeline(spark, cfg)
    opts = EvalOptions(holdout_fraction=0.25)
    report = run_evaluation(spark, cfg, opts)
    return cfg, opts, report, xf, xr


def heldout_ids(spark, ids: list[int], seed: int, fraction: float) -> set[int]:
    """The documented split, evaluated here by Spark SQL on the ids alone."""
    df = spark.createDataFrame([(int(i),) for i in ids], "id long")
    expr = f"pmod(xxhash64({seed}, 'holdout', id), 10000) < {round(fraction * 10000)}"
    return {r["id"] for r in df.where(expr).collect()}


def reference_split(spark, cfg, opts, n_forget, n_retain):
    f_ids, r_ids = list(range(n_forget)), list(range(10_000, 10_000 + n_retain))
    return heldout_ids(spark, f_ids, cfg.seed, opts.holdout_fraction), \
        heldout_ids(spark, r_ids, cfg.seed, opts.holdout_fraction)


def removal_set(cfg, method: str, budget: float) -> set[int]:
    sets = read_delta(f"{cfg.output}/removal_sets")
    return set(sets[(sets.run_id == cfg.run_id) & (sets.method == method) & (sets.budget == budget)]["id"])


# ---------------------------------------------------------------------- domain mode
def test_evaluation_table_has_one_row_per_method_and_budget(domain_run):
    cfg, opts, report, _, _ = domain_run
    table = read_delta(f"{cfg.output}/evaluation")
    assert len(table) == 1 + 2 * len(BUDGETS)
    keys = sorted(zip(table.method, table.budget, table.k, strict=True))
    assert keys == sorted([("none", 0.0, 0)] + [(m, b, int(b * 300)) for m in ("lr_gauss", "random")
                                                for b in BUDGETS])
    assert (table.run_id == "t1").all() and table.budget_count.isna().all()
    # domain mode: forget accuracy is the recall
    np.testing.assert_array_equal(table.forget_accuracy, table.forget_recall)
    full = table[table.budget == 1.0]
    assert (full.forget_recall == 0.0).all() and (full.retain_accuracy == 1.0).all()
    assert (full.retain_log_loss == 0.0).all()  # one class left: P(retain) = 1
    base = table[table.method == "none"].iloc[0]
    assert base.forget_recall > 0.25 and base.retain_accuracy > 0.7
    assert "lr_gauss" in report.table() and "budget to halve" in report.table()


def test_selective_removal_beats_random_at_half_budget(domain_run):
    """Low separability (kappa 0.49): removing the most forget-like half (lr_gauss) leaves
    forget rows indistinguishable from retain ones, and the held-out forget recall falls to
    about 0, while a random half only shifts the prior by ln 2 (recall about 0.2; a numpy +
    scikit-learn simulation of this setting gave 0.00-0.01 vs 0.13-0.34 over 8 seeds).

    Not true in general for a linear classifier: with well-separated domains (shift 1.4 or
    more in 2-D) removing the most extreme forget rows first barely moves the decision
    boundary, and random removal lowers recall more at budget 0.5 (selection wins only from
    about 0.75 on); this test deliberately uses the low-separability regime."""
    cfg, _, _, _, _ = domain_run
    table = read_delta(f"{cfg.output}/evaluation")
    at = {m: table[(table.method == m) & (table.budget == 0.5)].forget_recall.iloc[0] for m in ("lr_gauss", "random")}
    assert at["lr_gauss"] <= at["random"], at
    summary = read_delta(f"{cfg.output}/evaluation_summary").set_index("method")
    assert set(summary.index) == {"lr_gauss", "random"} and (summary.metric == "forget_recall").all()
    for method in ("lr_gauss", "random"):
        rows = table[table.method == method].sort_values("budget")
        base = table[table.method == "none"].forget_recall.iloc[0]
        assert summary.loc[method, "baseline"] == base
        expected = budget_to_halve(rows.budget.tolist(), rows.forget_recall.tolist(), base)
        assert summary.loc[method, "budget_to_halve"] == pytest.approx(expected)
    assert summary.loc["lr_gauss", "budget_to_halve"] <= summary.loc["random", "budget_to_halve"]


def test_heldout_rows_are_never_trained_on(spark, domain_run):
    cfg, opts, _, _, _ = domain_run
    held_f, held_r = reference_split(spark, cfg, opts, 300, 600)
    assert 40 < len(held_f) < 110 and 100 < len(held_r) < 200  # ~25% of each
    table = read_delta(f"{cfg.output}/evaluation")
    data = prepare_evaluation(spark, cfg, opts)
    try:
        test_ids = {r["id"] for r in data.test_frame().select("id").collect()}
        assert test_ids == held_f | held_r
        for method in ("none", "lr_gauss", "random"):
            for budget in (0.0,) if method == "none" else BUDGETS:
                removed = set() if method == "none" else removal_set(cfg, method, budget)
                k = int(budget * 300)
                assert len(removed) == k
                train = {r["id"] for r in data.train_frame(method, k).select("id").collect()}
                expected = (set(range(300)) - held_f - removed) | (set(range(10_000, 10_600)) - held_r)
                assert train == expected, (method, budget)
                assert not train & (held_f | held_r)
                row = table[(table.method == method) & (table.budget == budget)].iloc[0]
                assert row.n_train == len(expected)
                assert (row.n_test_forget, row.n_test_retain) == (len(held_f), len(held_r))
    finally:
        data.release()


def test_metrics_match_scikit_learn_on_the_same_rows(spark, domain_run):
    """scikit-learn's logistic regression (standardised features, C = 1/(n * regParam), the
    same objective as Spark's up to the variance estimator) on the training rows rebuilt here;
    the two models may disagree only on held-out rows right at the boundary."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg, opts, _, xf, xr = domain_run
    held_f, held_r = reference_split(spark, cfg, opts, 300, 600)
    table = read_delta(f"{cfg.output}/evaluation")
    f_ids, r_ids = np.arange(300), np.arange(10_000, 10_600)
    f_test = np.isin(f_ids, list(held_f))
    r_test = np.isin(r_ids, list(held_r))
    for _, row in table.iterrows():
        removed = set() if row.method == "none" else removal_set(cfg, row.method, row.budget)
        keep_f = ~f_test & ~np.isin(f_ids, list(removed))
        x = np.vstack([xf[keep_f], xr[~r_test]])
        y = np.r_[np.ones(keep_f.sum()), np.zeros((~r_test).sum())]
        if keep_f.sum() == 0:  # one class: the only sensible model predicts it
            pred_f, pred_r = np.zeros(f_test.sum()), np.zeros(r_test.sum())
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (len(y) * opts.reg_param),
                                                                       max_iter=1000))
            model.fit(x, y)
            pred_f, pred_r = model.predict(xf[f_test]), model.predict(xr[r_test])
        n_f, n_r = f_test.sum(), r_test.sum()
        assert row.forget_recall == pytest.approx((pred_f == 1).mean(), abs=2.5 / n_f), (row.method, row.budget)
        assert row.retain_accuracy == pytest.approx((pred_r == 0).mean(), abs=2.5 / n_r), (row.method, row.budget)


def test_log_loss_matches_numpy_on_the_spark_probabilities(spark, domain_run):
    """The baseline and a one-class fit (random at budget 1.0: no forget row left), refitted
    with the same deterministic L-BFGS; -mean ln max(P(label), 1e-15) over held-out retain rows
    computed in numpy from the collected probability vectors."""
    cfg, opts, _, _, _ = domain_run
    table = read_delta(f"{cfg.output}/evaluation")
    data = prepare_evaluation(spark, cfg, opts)
    try:
        for method, budget in (("none", 0.0), ("random", 1.0)):
            k = int(budget * 300)
            model, counts = fit_model(data.train_frame(method, k), opts, data.num_classes)
            assert len(counts) == (1 if method == "random" else 2)
            rows = model.transform(data.test_frame()).select("domain", "label", "probability", "prediction").collect()
            retain = [r for r in rows if r["domain"] == 0]
            p_true = np.array([r["probability"].toArray()[int(r["label"])] for r in retain])
            assert np.isfinite(p_true).all()
            expected = -np.mean(np.log(np.clip(p_true, 1e-15, None)))
            got = table[(table.method == method) & (table.budget == budget)].retain_log_loss.iloc[0]
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
            if method == "random":  # the one-class model predicts retain with probability 1
                assert all(r["prediction"] == 0.0 for r in rows) and expected == 0.0
            else:
                assert 0.05 < expected < 1.0
    finally:
        data.release()


def test_rerun_replaces_rows_and_budget_subset(spark, domain_run):
    """Last of the domain tests: it leaves only budget 0.5 in the run's evaluation."""
    cfg, opts, _, _, _ = domain_run
    out = dataclasses.replace(cfg, output=cfg.output)  # same output, same run id
    run_evaluation(spark, out, dataclasses.replace(opts, budgets=(0.5,)))
    table = read_delta(f"{cfg.output}/evaluation")
    assert sorted(zip(table.method, table.budget, strict=True)) == [("lr_gauss", 0.5), ("none", 0.0),
                                                                    ("random", 0.5)]
    assert len(read_delta(f"{cfg.output}/evaluation_summary")) == 2


# ---------------------------------------------------------------------- label mode
def test_label_mode_forgets_a_class(spark, tmp_path):
    """Retain holds classes 0 and 1, the forget table only class 2 (class unlearning): the
    multinomial model recognises class 2 before removal and never predicts it once every
    class-2 training row is removed (its probability is declared through the label metadata,
    3 classes, so the log-loss stays defined)."""
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 5.0]])
    xr = np.vstack([rng.standard_normal((150, 2)) + centres[c] for c in (0, 1)])
    yr = np.repeat([0, 1], 150)
    xf = rng.standard_normal((120, 2)) + centres[2]
    schema = "id long, features array<double>, digit int"
    pf = frame(range(120), xf).assign(digit=2)
    pr = frame(range(1000, 1300), xr).assign(digit=yr)
    f = write_table(spark, pf, tmp_path / "forget", schema)
    r = write_table(spark, pr, tmp_path / "retain", schema)
    cfg = make_config(tmp_path, f, r, methods=("lr_gauss",), budgets=(0.5, 1.0))
    run_pipeline(spark, cfg)
    report = run_evaluation(spark, cfg, EvalOptions(label_col="digit"))
    assert (report.mode, report.forget_class) == ("label", 2)
    table = read_delta(f"{cfg.output}/evaluation").set_index(["method", "budget"])
    base, full = table.loc[("none", 0.0)], table.loc[("lr_gauss", 1.0)]
    assert base.forget_recall > 0.9 and base.forget_accuracy == base.forget_recall  # every forget label is 2
    assert base.retain_accuracy > 0.95
    assert full.forget_recall == 0.0 and full.forget_accuracy == 0.0
    assert full.retain_accuracy > 0.95 and math.isfinite(full.retain_log_loss)


# ---------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalbad")
    xf, xr = two_gaussians(np.random.default_rng(1), 40, 80, 2.0)
    schema = "id long, features array<double>"
    f = write_table(spark, frame(range(40), xf), root / "forget", schema)
    r = write_table(spark, frame(range(500, 580), xr), root / "retain", schema)
    cfg = make_config(root, f, r, methods=("random",), budgets=(0.5,))
    run_pipeline(spark, cfg)
    return cfg


@pytest.mark.parametrize(("change", "opts", "error", "message"), [
    ({"run_id": "nope"}, {}, InputError, "no removal sets for run 'nope'"),
    ({}, {"label_col": "digit"}, InputError, "no label column 'digit'"),
    ({}, {"holdout_fraction": 0.0}, ConfigError, "holdout_fraction"),
    ({}, {"holdout_fraction": 1.0}, ConfigError, "holdout_fraction"),
    ({}, {"budgets": (0.3,)}, InputError, "eval budget 0.3 is not a budget of run 't1'"),
    ({"feature_col": "vec"}, {}, InputError, "no column 'vec'"),
])
def test_bad_input_writes_nothing(spark, small_run, change, opts, error, message):
    cfg = dataclasses.replace(small_run, **change)
    with pytest.raises(error, match=message.replace("(", r"\(")) as info:
        run_evaluation(spark, cfg, EvalOptions(**opts))
    assert "\n" not in str(info.value)
    assert not Path(small_run.output, "evaluation").exists()
    assert not Path(small_run.output, "evaluation_summary").exists()


def test_sources_default_to_the_runs_record(spark, small_run):
    """`evaluate --output DIR --run-id ID`: the forget and retain paths come from `runs`."""
    cfg = dataclasses.replace(small_run, forget="", retain="")
    report = run_evaluation(spark, cfg, EvalOptions())
    assert [r["method"] for r in report.rows] == ["none", "random"]
    assert len(read_delta(f"{small_run.output}/evaluation")) == 2
