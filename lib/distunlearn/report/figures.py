"""The report's figures (matplotlib, returned as base64 PNG), from the rows of the output
tables and a scored sample (pure: no pyspark, no I/O)."""

from __future__ import annotations

import base64
import io as stdio
import math
from typing import Any

import numpy as np

from distunlearn.core.diagnostics import frontier_eps


def png(fig: Any) -> str:
    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def methods_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))


def curve(rows: list[dict[str, Any]], method: str, key: str) -> tuple[list[float], list[float]]:
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
        ax.set_ylabel("density")
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    return png(fig)


def kl_figure(diag: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    base = next(r for r in diag if r["method"] == "none")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for m in methods_of(diag):
        a1.plot(*curve(diag, m, "alpha"), marker="o", label=m)
        a2.plot(*curve(diag, m, "eps"), marker="o", label=m)
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
    return png(fig)


def frontier_figure(diag: list[dict[str, Any]], tolerated_eps: float | None) -> str:
    import matplotlib.pyplot as plt

    base = next(r for r in diag if r["method"] == "none")
    kappa = base["kappa"]
    top = max([r["alpha"] for r in diag] + [kappa]) * 1.15
    grid = np.linspace(0, top, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(grid, [frontier_eps(a, kappa) for a in grid], color="k", lw=1.5, label="frontier eps*(alpha)")
    for m in methods_of(diag):
        ax.plot(curve(diag, m, "alpha")[1], curve(diag, m, "eps")[1], marker="o", ls="-", lw=0.8, label=m)
    ax.plot([base["alpha"]], [base["eps"]], marker="s", color="gray", ls="", label="no removal")
    # The y range follows the points: a tolerated eps far above them would squash them flat.
    top_eps = max([r["eps"] for r in diag] + [base["eps"]]) * 1.25 or 1.0
    if tolerated_eps is not None and tolerated_eps <= top_eps:
        ax.axhline(tolerated_eps, color="tab:red", ls=":", lw=1, label=f"tolerated eps = {tolerated_eps:g}")
    elif tolerated_eps is not None:
        ax.plot([], [], color="tab:red", ls=":", lw=1, label=f"tolerated eps = {tolerated_eps:g} (above the plot)")
    ax.set_ylim(-0.03 * top_eps, top_eps)
    ax.set(xlabel="removal alpha = KL(p1||p), nats", ylabel="preservation eps = KL(p2||p), nats",
           title="trade-off per budget (lower right is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def evaluation_figure(rows: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    base = next((r for r in rows if r["method"] == "none"), None)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for m in methods_of(rows):
        a1.plot(*curve(rows, m, "forget_recall"), marker="o", label=m)
        a2.plot(*curve(rows, m, "retain_accuracy"), marker="o", label=m)
    if base is not None:
        a1.axhline(base["forget_recall"] / 2, color="k", ls="--", lw=1, label="half of no-removal recall")
        a2.axhline(base["retain_accuracy"], color="gray", ls=":", lw=1, label="no removal")
    a1.set(xlabel="budget", ylabel="forget recall (held out)", title="forgetting (lower is better)")
    a2.set(xlabel="budget", ylabel="retain accuracy (held out)", title="retained performance")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def group_figure(rows: list[dict[str, Any]]) -> str:
    """Deletion rate r_g / N_g against the budget, one panel per method, one line per group."""
    import matplotlib.pyplot as plt

    methods = methods_of(rows)
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
    return png(fig)
