"""Hostile-looking but legitimate input (issue 20): each kind gives exit status 0 and finite,
correct results, through the command line in-process (``main(argv)`` on the suite's session,
as in test_hostile.py, whose ``Lake`` builds the tables).  Outputs are read with delta-rs,
never with Spark, and checked against an independent reference: numpy on the rows, the
Gaussian KL divergence's closed form, and n-gram counts from hand-written token lists.

Three runs, one per kind of input, each made once and shared by the tests that read it:

``degenerate``
    d = 5 features of 3 forget rows (n <= d); coordinate 2 is the same constant in both
    tables (zero variance); the retain rows are the forget rows under other ids (identical
    rows, kappa = 0); string ids, among them the empty string and 10 000-character ones.
    Every feature method.  Then apply, undo, undo again and apply again of one of its sets.
``one_dim``
    d = 1; a NaN, a +inf and a -inf forget row and a NaN retain row, with
    ``--on-invalid drop``; budgets 0.29 and 29 rows of the 100 usable forget rows (the same
    k); a group column with a group only in the forget table and one only in the retain table.
``text``
    ``--text-col`` with an empty document, one of control characters only, NUL and escape
    characters inside words, and a 1 MB document.

A refused input (null text, null group, a group column in one table only, a vacuumed
version) is a ``Case`` of test_hostile.py instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SESSION_ARGS, read_delta, read_sets
from distunlearn.commands.cli import main
from test_hostile import Lake
from test_text import ref_bucket

FEATURE_METHODS = "random,mu2,maha_mu2,cos_mu2,lr_maha,lr_cos,lr_gauss,coreset"
STRING_IDS = "id string, features array<double>"
LONG = "x" * 10_000  # a forget id
LONG_RETAIN = "y" * 10_000


# ----------------------------------------------------------------------------- running the CLI
@dataclasses.dataclass
class Ran:
    """One command: its exit status, what it printed, and the job's log messages."""

    code: int
    out: str
    err: str
    logs: list[str]

    def assert_clean(self, code: int = 0) -> None:
        assert self.code == code and "Traceback" not in self.err, (self.code, self.err)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def cli(command: str, *args: str) -> Ran:
    """``main([command, *SESSION_ARGS, *args])`` in-process, its output captured (usable in a
    module-scoped fixture, where capsys and caplog are not)."""
    handler, out, err = _Messages(), io.StringIO(), io.StringIO()
    logger = logging.getLogger("distunlearn")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([command, *SESSION_ARGS, *args], launch=False)
    finally:
        logger.removeHandler(handler)
    return Ran(code, out.getvalue(), err.getvalue(), handler.messages)


@dataclasses.dataclass
class Run:
    """A run's inputs as numpy arrays (the usable rows only), its output folder and its command."""

    name: str
    out: str
    ran: Ran
    forget_ids: list
    retain_ids: list
    forget_x: np.ndarray  # (n, d), usable rows
    retain_x: np.ndarray
    budgets: dict[float, int]  # budget recorded -> k
    forget_groups: list | None = None
    retain_groups: list | None = None

    def table(self, name: str) -> pd.DataFrame:
        return read_delta(Path(self.out) / name)


def _run(h: Lake, forget: str, retain: str, *args: str) -> tuple[str, Ran]:
    out = str(h.here / "out")
    return out, cli("run", "--forget", forget, "--retain", retain, "--output", out, "--run-id", "accepted", *args)


def degenerate(h: Lake) -> Run:
    # "" and LONG are the two rows farthest from the mean: mu2's set of k = 2
    x = np.array([[3.0, 0.0, 4.0, 1.0, 0.0], [-3.0, 1.0, 4.0, 0.0, 2.0], [0.1, 0.2, 4.0, 0.3, 0.4]])
    fids, rids = ["", LONG, "b"], ["r1", LONG_RETAIN, " "]
    forget = h.features("forget", x.tolist(), ids=fids, schema=STRING_IDS)
    retain = h.features("retain", x.tolist(), ids=rids, schema=STRING_IDS)
    out, ran = _run(h, forget, retain, "--methods", FEATURE_METHODS, "--budgets", "0.34,0.67,1")
    return Run("degenerate", out, ran, fids, rids, x, x, {0.34: 1, 0.67: 2, 1.0: 3})


def one_dim(h: Lake) -> Run:
    rng = np.random.default_rng(20)
    xf, xr = rng.standard_normal(100), rng.standard_normal(50) + 1.0
    fg, rg = ["a"] * 40 + ["b"] * 30 + ["c"] * 30, ["a"] * 20 + ["b"] * 20 + ["d"] * 10  # c, d: one table only
    bad = [float("nan"), float("inf"), float("-inf")]
    forget = h.features("forget", [[float(v)] for v in [*xf, *bad]], groups=[*fg, "a", "b", "c"])
    retain = h.features("retain", [[float(v)] for v in [*xr, float("nan")]], ids=list(range(10_000, 10_051)),
                        groups=[*rg, "d"])
    out, ran = _run(h, forget, retain, "--methods", "mu2,lr_gauss", "--budgets", "0.29,0.5", "--budget-counts", "29",
                    "--on-invalid", "drop", "--group-col", "lang")
    return Run("one_dim", out, ran, list(range(100)), list(range(10_000, 10_050)), xf[:, None], xr[:, None],
               {0.29: 29, 0.5: 50}, fg, rg)


# The text run: each document with its tokens counted by hand (the tokenizer's rule: runs of
# word characters, or of other non-space characters; lowercased).
MEGA_REPEATS = 2**20 // 10 + 1  # "spam eggs " this often: 1 MB
FORGET_DOCS = [
    ("", []),
    ("a\x00b", ["a", "\x00", "b"]),
    ("\x1b[31mRed\x1b[0m\r\n\tok", ["\x1b[", "31mred", "\x1b[", "0m", "ok"]),
    ("\r\n\t \t\r", []),
    ("spam eggs " * MEGA_REPEATS, ["spam", "eggs"] * MEGA_REPEATS),
    ("Buy cheap pills", ["buy", "cheap", "pills"]),
]
RETAIN_DOCS = [("ham and eggs", ["ham", "and", "eggs"]), ("", []), ("eggs\tand\rham", ["eggs", "and", "ham"]),
               ("hello", ["hello"])]
BUCKETS = 64


def text(h: Lake) -> Run:
    def table(name: str, docs: list[tuple[str, list[str]]], first: int) -> str:
        return h.table(name, pd.DataFrame({"id": range(first, first + len(docs)), "text": [d for d, _ in docs]}),
                       "id long, text string")

    forget, retain = table("forget", FORGET_DOCS, 0), table("retain", RETAIN_DOCS, 100)
    out, ran = _run(h, forget, retain, "--text-col", "text", "--methods", "lr_ngram,mu2", "--budgets", "0.5,1",
                    "--ngram-buckets", str(BUCKETS), "--text-dim", "4")
    empty = np.zeros((0, 4))
    return Run("text", out, ran, list(range(6)), list(range(100, 104)), empty, empty, {0.5: 3, 1.0: 6})


RUNS: dict[str, Callable[[Lake], Run]] = {"degenerate": degenerate, "one_dim": one_dim, "text": text}
FEATURE_RUNS = ["degenerate", "one_dim"]


@pytest.fixture(scope="module")
def made(spark, tmp_path_factory):
    """``made(name)``: the run ``name`` of RUNS, made once for the module."""
    root = tmp_path_factory.mktemp("accepted")
    done: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in done:
            done[name] = RUNS[name](Lake(spark, forget="", retain="", corpus="", out="", here=root / name))
        return done[name]

    return get


# ----------------------------------------------------------------------------- references
def ml_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.atleast_2d(np.cov(x.T, bias=True))


def gaussian_kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL(N_a || N_b) of the maximum-likelihood Gaussian fits of the rows a and b: the closed form
    1/2 [tr(S_b^-1 S_a) + (m_b - m_a)^T S_b^-1 (m_b - m_a) - d + ln det S_b - ln det S_a]."""
    (ma, sa), (mb, sb) = ml_fit(a), ml_fit(b)
    inv = np.linalg.inv(sb)
    diff = mb - ma
    return 0.5 * float(np.trace(inv @ sa) + diff @ inv @ diff - len(ma)
                       + np.linalg.slogdet(sb)[1] - np.linalg.slogdet(sa)[1])


def mu2_order(run: Run) -> list:
    """The forget ids in mu2's removal order: ||x - mean(retain)|| descending, then id ascending."""
    score = np.linalg.norm(run.forget_x - run.retain_x.mean(axis=0), axis=1)
    return [i for _, i in sorted(zip(-score, run.forget_ids, strict=True))]


def grams(tokens: list[str]) -> list[str]:
    """Unigrams and bigrams (tokens joined by one space): the default --ngram-order 2."""
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def bucket_counts(tokens: list[str]) -> np.ndarray:
    counts = np.zeros(BUCKETS, np.int64)
    for gram, c in Counter(grams(tokens)).items():
        counts[ref_bucket(gram, BUCKETS, "xxhash64")] += c
    return counts


# ----------------------------------------------------------------------------- every run
@pytest.mark.parametrize("name", list(RUNS))
def test_exit_0_and_finite_diagnostics(made, name):
    run = made(name)
    run.ran.assert_clean()
    diagnostics = run.table("diagnostics")
    assert len(diagnostics) > 1
    assert np.isfinite(diagnostics[["kappa", "alpha", "eps", "frontier_eps", "frontier_gap"]].to_numpy()).all()
    ranking = run.table("removal_ranking")
    assert np.isfinite(ranking["score"]).all() and set(ranking["id"]) <= set(run.forget_ids)


@pytest.mark.parametrize("name", FEATURE_RUNS)
def test_mu2_removal_sets_equal_numpys(made, name):
    run = made(name)
    run.ran.assert_clean()
    sets = read_sets(run.out)
    order = mu2_order(run)
    for budget, k in run.budgets.items():
        got = sets[(sets.method == "mu2") & (sets.budget == budget)]
        assert set(got["id"]) == set(order[:k]), budget
        assert (got["k"] == k).all()


@pytest.mark.parametrize("name", FEATURE_RUNS)
def test_statistics_are_the_usable_rows(made, name):
    run = made(name)
    run.ran.assert_clean()
    stats = run.table("statistics").set_index("domain")
    for domain, x in (("forget", run.forget_x), ("retain", run.retain_x)):
        row = stats.loc[domain]
        centred = x - x.mean(axis=0)
        assert (row["n"], row["dim"]) == x.shape
        np.testing.assert_allclose(row["mean"], x.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.reshape(row["m2"], (x.shape[1],) * 2), centred.T @ centred, rtol=1e-10,
                                   atol=1e-10)


# ----------------------------------------------------------------------------- degenerate features
def test_degenerate_features_have_every_method_and_budget(made):
    run = made("degenerate")
    run.ran.assert_clean()
    diagnostics = run.table("diagnostics")
    assert sorted(diagnostics["k"]) == sorted([0] + [1, 2, 3] * 8)  # no removal, then 8 methods x 3 budgets
    assert diagnostics["kappa"].abs().max() < 1e-6  # identical rows in both tables: KL(p1 || p2) = 0
    full = diagnostics[diagnostics.k == 3]  # everything removed: the edited data is the retain table
    np.testing.assert_allclose(full[["alpha", "eps"]].to_numpy(), 0.0, atol=1e-6)


def test_string_ids_apply_undo_undo_apply(made):
    """The set of the empty and the 10 000-character id: apply removes exactly those rows; undo
    puts them back; a second undo is a no-op (exit 0, table untouched, logged as
    already_undone, as "each safe to repeat" in the README); apply after the undo removes them again."""
    from deltalake import DeltaTable, write_deltalake

    run = made("degenerate")
    run.ran.assert_clean()
    corpus = str(Path(run.out).parent / "corpus")
    everything = [*run.forget_ids, *run.retain_ids]
    write_deltalake(corpus, pd.DataFrame({"id": everything, "payload": range(len(everything))}))
    removal = set(mu2_order(run)[:2])
    assert removal == {"", LONG}
    args = ("--output", run.out, "--run-id", "accepted", "--method", "mu2", "--budget", "0.67", "--table", corpus)

    def state() -> tuple[int, set]:
        return DeltaTable(corpus).version(), set(read_delta(corpus)["id"])

    applied = cli("apply", *args)
    applied.assert_clean()
    assert state() == (1, set(everything) - removal) and "apply committed" in applied.out
    cli("undo", *args).assert_clean()
    assert state() == (2, set(everything))
    again = cli("undo", *args)
    again.assert_clean()
    assert state() == (2, set(everything)) and "undo already_undone" in again.out
    reapplied = cli("apply", *args)
    reapplied.assert_clean()
    assert state() == (3, set(everything) - removal) and "apply committed" in reapplied.out
    log = read_delta(Path(run.out) / "applies").sort_values("at")
    assert list(zip(log.action, log.outcome, strict=True)) == [
        ("apply", "committed"), ("undo", "committed"), ("undo", "already_undone"), ("apply", "committed")]


# ----------------------------------------------------------------------------- d = 1, NaN and inf, groups
def test_nonfinite_rows_are_dropped_and_counted(made):
    run = made("one_dim")
    run.ran.assert_clean()
    stats = run.table("statistics").set_index("domain")
    assert (stats.loc["forget", "rows"], stats.loc["forget", "dropped_nonfinite"]) == (103, 3)
    assert (stats.loc["retain", "rows"], stats.loc["retain", "dropped_nonfinite"]) == (51, 1)
    assert {100, 101, 102}.isdisjoint(run.table("removal_ranking")["id"])


def test_one_dim_diagnostics_equal_the_closed_form(made):
    """alpha, eps and kappa of mu2's sets against the 1-d Gaussian KL of numpy's fits of the
    usable rows: the results of a run on the tables without the NaN and inf rows."""
    run = made("one_dim")
    run.ran.assert_clean()
    diagnostics = run.table("diagnostics")
    xf, xr = run.forget_x, run.retain_x
    kappa = gaussian_kl(xf, xr)
    np.testing.assert_allclose(diagnostics["kappa"], kappa, rtol=1e-6)
    index = {i: n for n, i in enumerate(run.forget_ids)}
    order = mu2_order(run)
    for budget, k in run.budgets.items():
        kept = np.delete(xf, [index[i] for i in order[:k]], axis=0)
        edited = np.vstack([xr, kept])
        row = diagnostics[(diagnostics.method == "mu2") & (diagnostics.k == k)]
        assert len(row) == 1 and row["budget"].iloc[0] == budget
        np.testing.assert_allclose(row[["alpha", "eps"]].to_numpy()[0], [gaussian_kl(xf, edited),
                                                                        gaussian_kl(xr, edited)], rtol=1e-5)


def test_budgets_of_the_same_k_are_one_set_recorded_as_the_fraction(made):
    """README ("Output contract 2"): budgets that resolve to the same k are one set, recorded
    once as the first of them (fractions before counts), and the run logs the merge.
    0.29 x 100 = 29 exactly (decimal arithmetic), the same k as --budget-counts 29."""
    run = made("one_dim")
    run.ran.assert_clean()
    for table in ("removal_budgets", "diagnostics"):
        rows = run.table(table)
        rows = rows[rows.method != "none"][["method", "budget", "budget_count", "k"]].drop_duplicates()
        assert sorted(zip(rows.method, rows.budget, rows.k, strict=True)) == [
            (m, b, k) for m in ("lr_gauss", "mu2") for b, k in ((0.29, 29), (0.5, 50))], table
        assert rows["budget_count"].isna().all(), table
    assert any("budget k=29 resolves to the same removal set as budget 0.29" in m for m in run.ran.logs)


def test_groups_in_one_table_only_are_reported(made):
    """Group c has forget rows only, d retain rows only (README, "Groups": reported too).
    Reference: counts of the usable rows, mu2's numpy sets, and the closed-form KL."""
    run = made("one_dim")
    run.ran.assert_clean()
    got = run.table("group_diagnostics")
    got = got[got.method == "mu2"].set_index(["k", "group"])
    fg, rg = np.array(run.forget_groups), np.array(run.retain_groups)
    order, ids = mu2_order(run), np.array(run.forget_ids)
    for k in run.budgets.values():
        removed = np.isin(ids, order[:k])
        assert sorted(got.loc[k].index) == ["a", "b", "c", "d"]
        for g in "abcd":
            row = got.loc[(k, g)]
            n1, n2, r = int((fg == g).sum()), int((rg == g).sum()), int((removed & (fg == g)).sum())
            assert (row["n_forget"], row["n_retain"], row["removed"]) == (n1, n2, r), (k, g)
            assert row["deletion_rate"] == pytest.approx(r / (n1 + n2))
            share = r / n1 if n1 else None
            weight = 1 + r / n2 if n2 else (1.0 if r == 0 else None)  # None: rows lost, no retain row to weigh
            for column, value in (("forget_removed_share", share), ("sample_weight", weight)):
                assert pd.isna(row[column]) if value is None else row[column] == pytest.approx(value), (k, g, column)
            before = np.vstack([run.retain_x[rg == g], run.forget_x[fg == g]])
            after = np.vstack([run.retain_x[rg == g], run.forget_x[(fg == g) & ~removed]])
            shift = gaussian_kl(before, after) if r else 0.0
            assert row["kl_shift"] == pytest.approx(shift, rel=1e-5, abs=1e-12), (k, g)


# ----------------------------------------------------------------------------- text
def test_ngram_counts_match_a_hand_count(made):
    run = made("text")
    run.ran.assert_clean()
    stats = run.table("ngram_statistics").set_index("domain")
    for domain, docs in (("forget", FORGET_DOCS), ("retain", RETAIN_DOCS)):
        per_doc = [bucket_counts(tokens) for _, tokens in docs]
        row = stats.loc[domain]
        assert (row["n_docs"], row["n_grams"]) == (len(docs), sum(len(grams(t)) for _, t in docs))
        np.testing.assert_array_equal(row["counts"], np.sum(per_doc, axis=0))
        np.testing.assert_array_equal(row["doc_freq"], np.sum([c > 0 for c in per_doc], axis=0))
    assert stats.loc["forget", "n_grams"] == 0 + 5 + 9 + 0 + (2 * (2 * MEGA_REPEATS) - 1) + 5  # t + t - 1 each


def test_lr_ngram_scores_equal_the_multinomial_ratio_of_the_hand_counts(made):
    """lr_ngram(x) = sum_j c_j(x) (log theta1_j - log theta2_j), theta = (C + 1) / (N + B):
    0 for the empty and the control-character document; the ranking orders by it."""
    run = made("text")
    run.ran.assert_clean()
    forget = [bucket_counts(t) for _, t in FORGET_DOCS]
    retain = np.sum([bucket_counts(t) for _, t in RETAIN_DOCS], axis=0)
    theta1 = (np.sum(forget, axis=0) + 1.0) / (np.sum(forget) + BUCKETS)
    theta2 = (retain + 1.0) / (retain.sum() + BUCKETS)
    expected = {i: float(c @ (np.log(theta1) - np.log(theta2))) for i, c in enumerate(forget)}
    assert expected[0] == expected[3] == 0.0
    ranking = run.table("removal_ranking")
    ranking = ranking[ranking.method == "lr_ngram"].sort_values("rank")
    got = dict(zip(ranking["id"], ranking["score"], strict=True))
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[i] for i in expected], list(expected.values()), rtol=1e-9, atol=1e-9)
    in_rank_order = np.array([expected[i] for i in ranking["id"]])
    assert (np.diff(in_rank_order) <= 1e-9 * np.abs(in_rank_order).max()).all()  # descending
