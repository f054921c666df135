"""Group-robust removal (--group-col): apportionment, caps and weights against hand-computed
values; end to end, the removal sets, group diagnostics and weights against pandas/numpy
computations from the tables read back with delta-rs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from conftest import SESSION_ARGS, make_config, read_delta, read_sets, write_table
from distunlearn.commands.run import run_pipeline
from distunlearn.core.groups import apportion, capacities, effective_k, sample_weight
from distunlearn.errors import ConfigError, InputError
from test_diagnostics import kl_reference


# ---------------------------------------------------------------------- pure
def test_apportion_largest_remainder_by_hand():
    # shares 50/30/20 of k = 7: quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6); the one unit left goes to
    # the largest remainder, a (0.5).
    assert apportion(7, {"a": 50, "b": 30, "c": 20}) == {"a": 4, "b": 2, "c": 1}
    # k = 8: quotas 4, 2.4, 1.6 -> 4, 2, 1 + the unit to c (0.6 > 0.4)
    assert apportion(8, {"a": 50, "b": 30, "c": 20}) == {"a": 4, "b": 2, "c": 2}
    # equal remainders: the larger group first, then the name
    assert apportion(1, {"x": 1, "y": 1}) == {"x": 1, "y": 0}
    assert apportion(1, {"y": 3, "x": 1, "z": 0}) == {"y": 1, "x": 0, "z": 0}
    assert apportion(0, {"a": 5}) == {"a": 0}


def test_apportion_is_exact_and_within_caps():
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = {f"g{i}": int(w) for i, w in enumerate(rng.integers(0, 40, size=rng.integers(1, 6)))}
        caps = {g: int(rng.integers(0, w + 1)) for g, w in weights.items()}
        k = int(rng.integers(0, sum(weights.values()) + 1))
        shares = apportion(k, weights, caps)
        assert sum(shares.values()) == min(k, sum(caps.values()))
        assert all(0 <= shares[g] <= caps[g] for g in weights)


def test_apportion_with_a_binding_cap_redistributes():
    # a's quota 6 of k = 8 exceeds its cap 3: a gets 3, the 5 left go to b and c by 30:10 ->
    # 3.75, 1.25 -> 3, 1 + the unit to b (0.75).
    assert apportion(8, {"a": 60, "b": 30, "c": 10}, {"a": 3, "b": 30, "c": 10}) == {"a": 3, "b": 4, "c": 1}


def test_largest_remainder_has_the_alabama_paradox():
    """Why stratified sets need not be nested: a group's share can shrink as k grows."""
    weights = {"a": 6, "b": 6, "c": 2}  # quotas at k=10: 4.29, 4.29, 1.43; at k=11: 4.71, 4.71, 1.57
    assert apportion(10, weights)["c"] == 2 and apportion(11, weights)["c"] == 1


def test_capacities_and_effective_k():
    caps = capacities({"a": 50, "b": 30, "c": 0}, {"a": 20, "b": 60, "c": 40}, 0.5)
    # a: min(50, floor(0.5 * 70)) = 35; b: min(30, 45) = 30; c: 0
    assert caps == {"a": 35, "b": 30, "c": 0}
    assert capacities({"a": 10}, {"a": 19}, 0.1) == {"a": 2}  # floor(2.9)
    assert capacities({"a": 10}, {"a": 0}, 0.3) == {"a": 3}  # exact: 0.3 * 10 = 3, not 2.999...
    assert effective_k(70, caps) == 65 and effective_k(10, caps) == 10
    with pytest.raises(ConfigError, match="group_cap"):
        capacities({"a": 1}, {}, 1.5)


def test_sample_weight_by_hand():
    assert sample_weight(n_retain=20, removed=10) == 1.5  # group total 20 + 10 kept when 10 removed
    assert sample_weight(n_retain=60, removed=0) == 1.0
    assert sample_weight(n_retain=0, removed=3) is None
    # every forget row removed: the paper's N_before / N_after = (n1 + n2) / n2
    n1, n2 = 50, 20
    assert sample_weight(n2, n1) == (n1 + n2) / n2


def test_group_options_need_a_group_column(tmp_path):
    for option in ({"group_budget": "stratified"}, {"group_cap": 0.5}, {"reweight": True}):
        with pytest.raises(ConfigError, match="--group-col"):
            make_config(tmp_path, "f", "r", **option)
    with pytest.raises(ConfigError, match="group_cap"):
        make_config(tmp_path, "f", "r", group_col=("g",), group_cap=0.0)


# ---------------------------------------------------------------------- end to end
N = {"a": (50, 20), "b": (30, 60), "c": (0, 40)}  # group -> (forget rows, retain rows)
METHODS = ("lr_gauss", "mu2")
BUDGETS = (0.1, 0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def grouped(spark, tmp_path_factory):
    """Forget and retain tables with a group column; group a's forget rows are shifted further
    from the retain domain than b's, so the global ranking takes mostly a."""
    root = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(11)
    rows = {"forget": [], "retain": []}
    next_id = {"forget": 0, "retain": 10_000}
    for g, (nf, nr) in N.items():
        for domain, n, shift in (("forget", nf, 2.0 if g == "a" else 1.0), ("retain", nr, 0.0)):
            x = rng.standard_normal((n, 3)) + shift + (0.3 if g == "b" else 0.0)
            for row in x:
                rows[domain].append((next_id[domain], g, row.tolist()))
                next_id[domain] += 1
    schema = "id long, lang string, features array<double>"
    paths = {d: write_table(spark, pd.DataFrame(r, columns=["id", "lang", "features"]), root / d, schema)
             for d, r in rows.items()}
    frames = {d: pd.DataFrame(r, columns=["id", "lang", "features"]) for d, r in rows.items()}
    return root, paths, frames


_RUNS: dict[str, tuple] = {}


def _run(spark, grouped, run_id, **options):
    """Run the job once per run id (several tests read the same run)."""
    if run_id not in _RUNS:
        root, paths, _ = grouped
        cfg = make_config(root, paths["forget"], paths["retain"], run_id=run_id, methods=METHODS, budgets=BUDGETS,
                          group_col=("lang",), **options)
        report = run_pipeline(spark, cfg)
        sets = read_sets(root / "out")
        _RUNS[run_id] = cfg, report, sets[sets.run_id == run_id]
    return _RUNS[run_id]


def _scores(sets: pd.DataFrame, method: str) -> pd.DataFrame:
    """Every forget row's score: the set of budget 1.0 of a run without caps holds all of them."""
    full = sets[(sets.method == method) & (sets.budget == 1.0)]
    assert len(full) == 80
    return full[["id", "group", "score"]]


def _top(df: pd.DataFrame, n: int) -> set:
    return set(df.sort_values(["score", "id"], ascending=[False, True]).head(n).id)


def test_global_ranking_with_groups_reports_every_group(spark, grouped):
    _, report, sets = _run(spark, grouped, "g-global", reweight=True)
    root = grouped[0]
    for m in METHODS:
        scores = _scores(sets, m)
        for b in BUDGETS:
            k = int(np.floor(b * 80 + 1e-9))
            got = sets[(sets.method == m) & (sets.budget == b)]
            assert set(got.id) == _top(scores, k)  # the global top k, as without groups
    diag = read_delta(root / "out" / "group_diagnostics")
    diag = diag[diag.run_id == "g-global"]
    assert len(diag) == len(METHODS) * len(BUDGETS) * 3  # every group, c (no forget row) included
    for _, row in diag.iterrows():
        got = sets[(sets.method == row.method) & (sets.budget == row.budget) & (sets.group == row.group)]
        nf, nr = N[row.group]
        assert (row.n_forget, row.n_retain, row.removed) == (nf, nr, len(got))
        assert row.deletion_rate == pytest.approx(len(got) / (nf + nr))
        assert row.sample_weight == pytest.approx(1 + len(got) / nr)
    assert {p.group for p in report.groups} == {"a", "b", "c"}
    assert "highest deletion rate" in report.table()


@pytest.mark.second_line
def test_stratified_budgets_are_exact_per_group_top_k(spark, grouped):
    _, _, global_sets = _run(spark, grouped, "g-global", reweight=True)
    _, _, sets = _run(spark, grouped, "g-strat", group_budget="stratified")
    for m in METHODS:
        scores = _scores(global_sets, m)
        for b in BUDGETS:
            k = int(np.floor(b * 80 + 1e-9))
            got = sets[(sets.method == m) & (sets.budget == b)]
            assert len(got) == k and set(got.k) == {k}
            quotas = apportion(k, {"a": 50, "b": 30, "c": 0})
            # by hand: k = 8 -> a 5, b 3; k = 20 -> 12.5, 7.5 -> tie on 0.5: the larger group a gets 13
            assert quotas == {8: {"a": 5, "b": 3, "c": 0}, 20: {"a": 13, "b": 7, "c": 0},
                              40: {"a": 25, "b": 15, "c": 0}, 80: {"a": 50, "b": 30, "c": 0}}[k]
            for g, q in quotas.items():
                mine = got[got.group == g]
                assert set(mine.id) == _top(scores[scores.group == g], q)
                assert sorted(mine["group_rank"]) == list(range(1, q + 1))  # rank within the group


def test_cap_limits_every_group_and_takes_the_next_rows(spark, grouped):
    _, _, global_sets = _run(spark, grouped, "g-global", reweight=True)
    cfg, report, sets = _run(spark, grouped, "g-cap", group_cap=0.3, budget_counts=(70,))  # 70 and 1.0 -> 48
    caps = {"a": 21, "b": 27, "c": 0}  # floor(0.3 * 70) = 21, floor(0.3 * 90) = 27
    for m in METHODS:
        scores = _scores(global_sets, m)
        eligible = pd.concat([scores[scores.id.isin(_top(scores[scores.group == g], c))] for g, c in caps.items()])
        for b in BUDGETS:
            k = min(int(np.floor(b * 80 + 1e-9)), 48)  # budgets above 48 rows are reduced to it
            got = sets[(sets.method == m) & (sets.k == k)]
            assert set(got.id) == _top(eligible, k) and set(got.k) == {k}
            assert all((got.group == g).sum() <= c for g, c in caps.items())
    # 70 and 1.0 both reduce to k = 48: one set, recorded once (as the first budget, k=70)
    assert [r["k"] for r in report.summary if r["method"] == "mu2"] == [8, 20, 40, 48]
    capped = sets[(sets.method == "mu2") & (sets.k == 48)]
    assert set(capped.budget_count) == {70} and len(capped) == 48


def test_stratified_with_cap(spark, grouped):
    _, _, sets = _run(spark, grouped, "g-strat-cap", group_budget="stratified", group_cap=0.3)
    got = sets[(sets.method == "lr_gauss") & (sets.budget == 0.5)]
    # k = 40: a's quota 25 exceeds its cap 21 -> a 21, b the other 19 (within its cap 27)
    assert (got.group == "a").sum() == 21 and (got.group == "b").sum() == 19


@pytest.mark.second_line
def test_group_kl_shift_and_diagnostics_match_numpy(spark, grouped):
    root, _, frames = grouped
    _, _, sets = _run(spark, grouped, "g-strat", group_budget="stratified")
    diag = read_delta(root / "out" / "group_diagnostics")
    diag = diag[(diag.run_id == "g-strat") & (diag.method == "lr_gauss") & (diag.budget == 0.25)].set_index("group")
    removed = set(sets[(sets.method == "lr_gauss") & (sets.budget == 0.25)].id)
    xf = frames["forget"]
    xr = frames["retain"]
    for g in ("a", "b"):
        before = np.array(list(xf[xf.lang == g].features) + list(xr[xr.lang == g].features))
        kept = xf[(xf.lang == g) & ~xf.id.isin(removed)]
        after = np.array(list(kept.features) + list(xr[xr.lang == g].features))
        assert diag.loc[g, "kl_shift"] == pytest.approx(kl_reference(before, after), rel=1e-6)
    assert diag.loc["c", "kl_shift"] == 0.0 and diag.loc["c", "removed"] == 0
    # the run's diagnostics (alpha) of a non-nested-safe set against numpy on the edited data
    run_diag = read_delta(root / "out" / "diagnostics")
    alpha = run_diag[(run_diag.run_id == "g-strat") & (run_diag.method == "lr_gauss") & (run_diag.budget == 0.25)]
    edited = np.array(list(xf[~xf.id.isin(removed)].features) + list(xr.features))
    assert alpha.alpha.item() == pytest.approx(kl_reference(np.array(list(xf.features)), edited), rel=1e-6)


def test_reweight_writes_weights_per_retain_row(spark, grouped):
    root, _, frames = grouped
    _, _, sets = _run(spark, grouped, "g-global", reweight=True)
    weights = read_delta(root / "out" / "retain_weights")
    weights = weights[weights.run_id == "g-global"]
    assert len(weights) == len(frames["retain"]) * len(METHODS) * len(BUDGETS)
    for (m, b), part in weights.groupby(["method", "budget"]):
        removed = sets[(sets.method == m) & (sets.budget == b)].group.value_counts()
        for g, (_, nr) in N.items():
            expected = (nr + removed.get(g, 0)) / nr  # w_g = (n2_g + r_g) / n2_g
            assert np.allclose(part[part.group == g].sample_weight, expected)
        # the group totals of the edited data equal the original sizes
        kept_forget = frames["forget"][~frames["forget"].id.isin(sets[(sets.method == m) & (sets.budget == b)].id)]
        for g, (nf, nr) in N.items():
            total = part[part.group == g].sample_weight.sum() + (kept_forget.lang == g).sum()
            assert total == pytest.approx(nf + nr)
    assert set(weights.id) == set(frames["retain"].id)


def test_null_group_is_an_input_error_and_nothing_is_written(spark, grouped, tmp_path):
    root, paths, frames = grouped
    bad = frames["retain"].copy()
    bad.loc[3, "lang"] = None
    retain = write_table(spark, bad, tmp_path / "retain", "id long, lang string, features array<double>")
    cfg = make_config(tmp_path, paths["forget"], retain, methods=METHODS, budgets=BUDGETS, group_col=("lang",))
    with pytest.raises(InputError, match="group column 'lang' of the retain table has null values"):
        run_pipeline(spark, cfg)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="no column 'missing'"):
        run_pipeline(spark, dataclasses.replace(cfg, group_col=("missing",)))


def test_report_has_the_group_section(spark, grouped, tmp_path):
    from distunlearn.commands.report import write_report

    cfg, _, sets = _run(spark, grouped, "g-global", reweight=True)
    page = write_report(spark, cfg, str(tmp_path / "r.html"), sample_rows=50).read_text()
    assert '<figure id="fig-groups">' in page and "<h2>Groups</h2>" in page
    # the table at budget 0.5 (the largest short of 1.0): group a's removed count for mu2
    removed = int(((sets.method == "mu2") & (sets.budget == 0.5) & (sets.group == "a")).sum())
    assert f"<td>mu2</td><td>a</td><td>50</td><td>20</td><td>50</td><td>{removed}</td>" in page


def test_score_subcommand_with_groups_and_a_later_run_without(spark, grouped):
    """`score` with stored statistics reads the retain groups too and gives the same stratified
    sets as `run`; a run without groups can still write to the same removal_sets table."""
    from distunlearn.commands.run import run_score

    root, paths, _ = grouped
    _, _, strat = _run(spark, grouped, "g-strat", group_budget="stratified")
    cfg = make_config(root, paths["forget"], paths["retain"], run_id="g-score", stats_run_id="g-strat",
                      methods=METHODS, budgets=BUDGETS, group_col=("lang",), group_budget="stratified")
    run_score(spark, cfg)
    sets = read_sets(root / "out")
    scored = sets[sets.run_id == "g-score"]
    key = ["method", "budget", "id"]
    assert scored[key].sort_values(key).values.tolist() == strat[key].sort_values(key).values.tolist()
    plain = dataclasses.replace(cfg, run_id="g-plain", stats_run_id="", group_col=(), group_budget="global",
                                methods=("mu2",), budgets=(0.5,))
    run_pipeline(spark, plain)
    sets = read_sets(root / "out")
    assert sets[sets.run_id == "g-plain"].group.isna().all() and (sets.run_id == "g-plain").sum() == 40


def test_group_options_from_the_command_line(spark, grouped, tmp_path, capsys):
    """The group flags as a user types them, through the command line's ``main(argv)``: exit 0,
    the group tables."""
    from distunlearn.commands.cli import main

    _, paths, _ = grouped
    out = tmp_path / "out"
    code = main(["run", "--forget", paths["forget"], "--retain", paths["retain"], "--output", str(out),
                 "--run-id", "cli", "--methods", "lr_gauss", "--budgets", "0.5,1.0", "--group-col", "lang",
                 "--group-budget", "stratified", "--group-cap", "0.5", "--reweight", *SESSION_ARGS], launch=False)
    assert code == 0
    assert "highest deletion rate" in capsys.readouterr().out
    diag = read_delta(out / "group_diagnostics")
    # caps: a min(50, 35) = 35, b min(30, 45) = 30; k = 40: a's quota 25, b 15; k = 80 -> 65: a 35, b 30
    got = {(r.budget, r.group): r.removed for r in diag.itertuples()}
    assert got == {(0.5, "a"): 25, (0.5, "b"): 15, (0.5, "c"): 0, (1.0, "a"): 35, (1.0, "b"): 30, (1.0, "c"): 0}
    assert len(read_delta(out / "retain_weights")) == 120 * 2


def test_two_group_columns_combine_and_a_null_part_is_an_error(spark, grouped, tmp_path):
    root, paths, frames = grouped
    tables = {}
    for domain, pdf in frames.items():
        pdf = pdf.assign(src=(pdf.id % 2).map({0: "web", 1: "books"}))
        tables[domain] = write_table(spark, pdf, tmp_path / domain,
                                     "id long, lang string, features array<double>, src string")
    cfg = make_config(tmp_path, tables["forget"], tables["retain"], methods=("mu2",), budgets=(0.5,),
                      group_col=("lang", "src"))
    run_pipeline(spark, cfg)
    diag = read_delta(tmp_path / "out" / "group_diagnostics")
    f = frames["forget"].assign(src=(frames["forget"].id % 2).map({0: "web", 1: "books"}))
    expected = {f'["{g}","{s}"]': n for (g, s), n in f.groupby(["lang", "src"]).size().items()}
    assert {r.group: r.n_forget for r in diag.itertuples() if r.n_forget} == expected
    assert diag.removed.sum() == 40
    bad = frames["forget"].assign(src=["web"] * 79 + [None])
    forget = write_table(spark, bad, tmp_path / "bad", "id long, lang string, features array<double>, src string")
    with pytest.raises(InputError, match=r"group column 'lang', 'src' of the forget table has null values"):
        run_pipeline(spark, dataclasses.replace(cfg, forget=forget, output=str(tmp_path / "out2")))
    assert not (tmp_path / "out2").exists()
