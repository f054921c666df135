"""The report's HTML page: one static, self-contained file (figures embedded as PNG, no
network needed to view it), from :class:`ReportData` (pure: no pyspark, no I/O).  What the
page shows and where each part comes from: :mod:`distunlearn.commands.report`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distunlearn.core.diagnostics import best_methods
from distunlearn.report.figures import (
    evaluation_figure,
    frontier_figure,
    group_figure,
    histogram_figure,
    kl_figure,
)

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
def _best_method(cal: dict[str, dict[str, Any]]) -> str:
    """One sentence: the method that reaches the target removal with the smallest budget."""
    found = best_methods({m: c["budget_for_target"] for m, c in cal.items()})
    if found is None:
        return "<p><b>Best here: none</b>: no method reaches the target removal within the run's budgets.</p>"
    names, best = found
    verb = "reaches" if len(names) == 1 else "reach"
    return (f"<p><b>Best here: {html.escape(' and '.join(names))}</b>, which {verb} the target removal by "
            f"deleting {best:.0%} of the forget set.</p>")


def _budget_table(diag: list[dict[str, Any]]) -> str:
    """Budget, k, and alpha / eps of every method (the diagnostics table, one row per budget)."""
    methods = list(dict.fromkeys(r["method"] for r in diag if r["method"] != "none"))
    cells: dict[tuple[Any, Any], dict[str, str]] = {}
    for r in diag:
        if r["method"] != "none":
            cells.setdefault((r["budget"], r["k"]), {})[r["method"]] = f"{r['alpha']:.4f} / {r['eps']:.4f}"
    rows = [[b, k, *(row.get(m, "-") for m in methods)] for (b, k), row in sorted(cells.items(), key=lambda x: x[0][1])]
    return _table(["budget", "k", *methods], rows)


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
    if data.calibration:  # the answer first; the evidence follows
        parts.append(_best_method({c["method"]: c for c in data.calibration}))
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
                         f"alpha &ge; {first['target_alpha']:.4g} (the target removal: halfway from no "
                         "removal to removing the whole forget set, unless --target-alpha sets it):</p>")
            parts.append(_table(["method", "budget"], [[m, c["budget_for_target"]] for m, c in cal.items()]))
        parts += ["<h3>Every budget</h3>",
                  "<p>alpha = KL(p1||p) (removal: higher is better) / eps = KL(p2||p) (preservation cost: "
                  "lower is better), nats, of the data left after removing each method's top k.</p>",
                  _budget_table(data.diagnostics)]
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
