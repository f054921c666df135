"""One self-contained HTML page per run: the evidence for choosing a budget.

Figures (matplotlib, embedded as base64 PNG, so the file can be mailed or archived alone):

1. score histograms, forget vs retain, per method -- scored on a seeded sample of each table
   (``--report-sample-rows`` rows at most) with the run's own statistics and options;
2. removal alpha = KL(p1||p) and preservation eps = KL(p2||p) against the budget, per method,
   with kappa and the no-removal values marked (from the ``diagnostics`` table);
3. the (alpha, eps) plane: every method's points and the shared-covariance frontier
   eps*(alpha) = (sqrt(alpha) - sqrt(kappa))_+^2, with the tolerated eps;
4. when ``distunlearn evaluate`` has run: forget recall and retain accuracy against the budget,
   and the budget-to-halve table.

Missing inputs (no evaluation yet) leave their section out with a sentence saying how to get
it; a run id without a ``runs`` row is an error.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io as stdio
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distunlearn import io
from distunlearn.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from distunlearn.config import JobConfig

log = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 0.2em 0.8em; text-align: right; }
th { border-bottom: 1px solid #888; } .note { color: #555; font-style: italic; }
"""

# Set on window load: how many images the browser decoded (the browser test reads it).
_RENDER_CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute('data-figures', imgs.length);
  document.body.setAttribute('data-rendered', imgs.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length);
});
</script>
"""


@dataclass
class ReportData:
    """Everything the page shows, read from the output tables (and a scored sample)."""

    run_id: str
    run: dict[str, Any]
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    evaluation: list[dict[str, Any]] = field(default_factory=list)
    evaluation_summary: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # group_diagnostics (runs with --group-col)
    evaluation_groups: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # domain -> method -> scores


def _rows(spark: SparkSession, cfg: JobConfig, name: str) -> list[dict[str, Any]]:
    path = io.table_path(cfg.output, name)
    if not io.exists(spark, path):
        return []
    return [r.asDict() for r in spark.read.format("delta").load(path).where(f"run_id = '{cfg.run_id}'").collect()]


def _sample_scores(spark: SparkSession, run: dict[str, Any], run_cfg: JobConfig,
                   rows: int) -> dict[str, dict[str, np.ndarray]]:
    """Scores of a seeded sample of each table, with the model the run used."""
    from distunlearn.pipeline import build_model, featurize, load_statistics, load_text_model, normalized
    from distunlearn.score import METHOD, SCORE, score_forget

    stats_run = run["stats_run_id"] or run_cfg.run_id
    f_stats, r_stats = load_statistics(spark, run_cfg, stats_run)
    text = load_text_model(spark, run_cfg, stats_run) if run_cfg.text_col else None
    model = spark.sparkContext.broadcast(build_model(run_cfg, f_stats, r_stats, text))
    out: dict[str, dict[str, np.ndarray]] = {}
    for domain, source, n in (("forget", run["forget_source"], f_stats.n), ("retain", run["retain_source"], r_stats.n)):
        df = normalized(spark, run_cfg, source, domain)
        if n > rows:
            df = df.sample(fraction=min(1.0, 1.2 * rows / n), seed=run_cfg.seed).limit(rows)
        if text:
            (df,) = featurize(spark, text, df)
        scores, wide = score_forget(df, model, run_cfg.methods, run_cfg.seed, run_cfg.selection)
        try:
            collected = scores.select(METHOD, SCORE).collect()
        finally:
            wide.unpersist()
        out[domain] = {m: np.array([r[SCORE] for r in collected if r[METHOD] == m]) for m in run_cfg.methods}
    model.unpersist()
    return out


def collect(spark: SparkSession, cfg: JobConfig, sample_rows: int = 5000) -> ReportData:
    """Read the run's tables under ``cfg.output`` and score a sample for the histograms."""
    from distunlearn.config import from_stored

    runs = _rows(spark, cfg, io.RUNS)
    if not runs:
        raise InputError(f"run {cfg.run_id!r} has no row in {io.table_path(cfg.output, io.RUNS)!r}; "
                         "run `distunlearn run` first")
    run = runs[0]
    run_cfg = from_stored(json.loads(run["config"]))
    data = ReportData(cfg.run_id, run, _rows(spark, cfg, io.DIAGNOSTICS), _rows(spark, cfg, io.CALIBRATION),
                      _rows(spark, cfg, io.EVALUATION), _rows(spark, cfg, io.EVALUATION_SUMMARY))
    data.groups = _rows(spark, cfg, "group_diagnostics")
    data.evaluation_groups = _rows(spark, cfg, "evaluation_groups")
    data.scores = _sample_scores(spark, run, run_cfg, sample_rows)
    return data


# ---------------------------------------------------------------------- figures
def _png(fig: Any) -> str:
    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))


def _curve(rows: list[dict[str, Any]], method: str, key: str) -> tuple[list[float], list[float]]:
    pts = sorted((r["k"], r["budget"], r[key]) for r in rows if r["method"] == method)
    return [p[1] for p in pts], [p[2] for p in pts]


def histogram_figure(scores: dict[str, dict[str, np.ndarray]]) -> str:
    import matplotlib.pyplot as plt

    methods = list(scores["forget"])
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, m in zip(axes.flat, methods, strict=False):
        both = np.concatenate([scores["forget"][m], scores["retain"][m]])
        lo, hi = np.percentile(both, [0.5, 99.5]) if both.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        ax.hist(scores["retain"][m], bins=bins, density=True, alpha=0.55, label="retain", color="tab:blue")
        ax.hist(scores["forget"][m], bins=bins, density=True, alpha=0.55, label="forget", color="tab:red")
        ax.set_title(m)
        ax.set_xlabel("score (higher: removed first)")
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    return _png(fig)


def kl_figure(diag: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    base = next(r for r in diag if r["method"] == "none")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for m in _methods(diag):
        a1.plot(*_curve(diag, m, "alpha"), marker="o", label=m)
        a2.plot(*_curve(diag, m, "eps"), marker="o", label=m)
    a1.axhline(base["kappa"], color="k", ls="--", lw=1, label="kappa (full removal)")
    a1.axhline(base["alpha"], color="gray", ls=":", lw=1, label="no removal")
    a1.set(xlabel="budget (fraction of forget set)", ylabel="alpha = KL(p1||p), nats",
           title="removal (higher is better)")
    a2.axhline(base["eps"], color="gray", ls=":", lw=1, label="no removal")
    a2.set(xlabel="budget (fraction of forget set)", ylabel="eps = KL(p2||p), nats",
           title="preservation cost (lower is better)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def frontier_figure(diag: list[dict[str, Any]], tolerated_eps: float | None) -> str:
    import matplotlib.pyplot as plt

    from distunlearn.diagnostics import frontier_eps

    base = next(r for r in diag if r["method"] == "none")
    kappa = base["kappa"]
    top = max([r["alpha"] for r in diag] + [kappa]) * 1.15
    grid = np.linspace(0, top, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(grid, [frontier_eps(a, kappa) for a in grid], color="k", lw=1.5, label="frontier eps*(alpha)")
    for m in _methods(diag):
        ax.plot(_curve(diag, m, "alpha")[1], _curve(diag, m, "eps")[1], marker="o", ls="-", lw=0.8, label=m)
    ax.plot([base["alpha"]], [base["eps"]], marker="s", color="gray", ls="", label="no removal")
    if tolerated_eps is not None:
        ax.axhline(tolerated_eps, color="tab:red", ls=":", lw=1, label=f"tolerated eps = {tolerated_eps:g}")
    ax.set(xlabel="removal alpha = KL(p1||p)", ylabel="preservation eps = KL(p2||p)",
           title="trade-off per budget (lower right is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def evaluation_figure(rows: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    base = next((r for r in rows if r["method"] == "none"), None)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for m in _methods(rows):
        a1.plot(*_curve(rows, m, "forget_recall"), marker="o", label=m)
        a2.plot(*_curve(rows, m, "retain_accuracy"), marker="o", label=m)
    if base is not None:
        a1.axhline(base["forget_recall"] / 2, color="k", ls="--", lw=1, label="half of no-removal recall")
        a2.axhline(base["retain_accuracy"], color="gray", ls=":", lw=1, label="no removal")
    a1.set(xlabel="budget", ylabel="forget recall (held out)", title="forgetting (lower is better)")
    a2.set(xlabel="budget", ylabel="retain accuracy (held out)", title="retained performance")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def group_figure(rows: list[dict[str, Any]]) -> str:
    """Deletion rate r_g / N_g against the budget, one panel per method, one line per group."""
    import matplotlib.pyplot as plt

    methods = _methods(rows)
    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods) + 1, 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        for g in groups[:12]:
            pts = sorted((r["budget"], r["deletion_rate"] or 0.0) for r in rows if r["method"] == m and r["group"] == g)
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", ms=3, label=g)
        ax.set(xlabel="budget", title=m)
    axes[0][0].set_ylabel("deletion rate of the group")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _group_section(data: ReportData) -> list[str]:
    rows = data.groups
    top = max(r["budget"] for r in rows)
    below = [r["budget"] for r in rows if r["budget"] < top]
    shown = max(below) if below else top  # the largest budget short of everything
    parts = ["<h2>Groups</h2>", _figure("fig-groups", group_figure(rows),
             "Share of each group's rows (forget + retain) that the removal set deletes, against the budget.")]
    parts.append(f"<p>At budget {shown:g}, per method and group (KL shift = KL(before || after) of the "
                 "group's Gaussian fit; weight = the retain rows' sample weight under --reweight):</p>")
    parts.append(_table(["method", "group", "forget rows", "retain rows", "capacity", "removed", "deletion rate",
                         "KL shift", "weight"],
                        [[r["method"], r["group"], r["n_forget"], r["n_retain"], r["capacity"], r["removed"],
                          r["deletion_rate"], r["kl_shift"], r["sample_weight"]]
                         for r in sorted(rows, key=lambda r: (r["method"], r["group"])) if r["budget"] == shown]))
    ev = [r for r in data.evaluation_groups if r.get("group") is not None and r.get("retain_accuracy") is not None]
    if ev:
        fits: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in ev:
            fits.setdefault((r["method"], r["budget"], r["weighting"]), []).append(r)
        table = []
        for (m, b, w), rs in sorted(fits.items(), key=lambda kv: (kv[0][0] != "none", *kv[0])):
            worst = min(rs, key=lambda r: r["retain_accuracy"])
            best = max(rs, key=lambda r: r["retain_accuracy"])
            table.append([m, b, w, worst["group"], worst["retain_accuracy"], best["retain_accuracy"],
                          best["retain_accuracy"] - worst["retain_accuracy"]])
        parts.append("<p>Downstream model, held-out retain rows per group (weighting <code>reweight</code>: trained "
                     "with the retain rows' sample weights):</p>")
        parts.append(_table(["method", "budget", "weighting", "worst group", "worst accuracy", "best accuracy",
                             "gap"], table))
    return parts


# ---------------------------------------------------------------------- page
def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(fig_id: str, png: str, caption: str) -> str:
    return (f'<figure id="{fig_id}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(data: ReportData) -> str:
    """The HTML page for ``data`` (a string; nothing is read or written)."""
    run = data.run
    parts = [f"<h1>Selective removal, run {html.escape(data.run_id)}</h1>",
             f"<p>forget: <code>{html.escape(str(run['forget_source']))}</code> ({run['n_forget']} rows), "
             f"retain: <code>{html.escape(str(run['retain_source']))}</code> ({run['n_retain']} rows), "
             f"d = {run['dim']}, covariance {html.escape(str(run['covariance']))}; finished "
             f"{html.escape(str(run['finished_at']))}.</p>"]
    if data.scores:
        n_f = len(next(iter(data.scores["forget"].values()), []))
        n_r = len(next(iter(data.scores["retain"].values()), []))
        parts += ["<h2>Scores</h2>", _figure("fig-scores", histogram_figure(data.scores),
                  f"Score distributions on a sample ({n_f} forget, {n_r} retain rows). A rule separates the "
                  "domains when the red mass sits to the right of the blue.")]
    if data.diagnostics:
        cal = {c["method"]: c for c in data.calibration}
        first = next(iter(cal.values()), None)
        tolerated = first["tolerated_eps"] if first else None
        parts += ["<h2>Removal and preservation</h2>",
                  _figure("fig-kl", kl_figure(data.diagnostics),
                          "Gaussian-fit KL divergences of the edited data against the budget."),
                  _figure("fig-frontier", frontier_figure(data.diagnostics, tolerated),
                          "Each budget as a point (alpha, eps); no removal can lie below the frontier when "
                          "the domains share a covariance.")]
        if first:
            parts.append(f"<p>Tolerating eps = {first['tolerated_eps']:g} nats, the frontier reaches alpha = "
                         f"{first['alpha_max']:.4g} (kappa = {first['kappa']:.4g}). Smallest budget reaching "
                         f"alpha &ge; {first['target_alpha']:.4g}:</p>")
            parts.append(_table(["method", "budget"], [[m, c["budget_for_target"]] for m, c in cal.items()]))
    if data.groups:
        parts += _group_section(data)
    if data.evaluation:
        parts += ["<h2>Downstream model</h2>", _figure("fig-eval", evaluation_figure(data.evaluation),
                  "Logistic regression trained on the edited data, measured on held-out rows.")]
        parts.append("<p>Budget at which forget recall falls to half its no-removal value:</p>")
        parts.append(_table(["method", "baseline recall", "budget to halve"],
                            [[s["method"], s["baseline"], s["budget_to_halve"]] for s in data.evaluation_summary]))
    else:
        parts.append('<p class="note">No downstream evaluation for this run yet: run <code>distunlearn evaluate '
                     f"--output ... --run-id {html.escape(data.run_id)}</code> and write the report again.</p>")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Written by distunlearn report, {stamp}.</p>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>distunlearn run '
            f"{html.escape(data.run_id)}</title><style>{_STYLE}</style></head><body>"
            + "".join(parts) + _RENDER_CHECK + "</body></html>")


def write_report(spark: SparkSession, cfg: JobConfig, html_path: str, sample_rows: int = 5000) -> Path:
    """Collect, render and write the page; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    page = render(collect(spark, cfg, sample_rows))
    path = Path(html_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    log.info("report of run %s: %s (%d kB)", cfg.run_id, path, len(page) // 1024)
    return path
