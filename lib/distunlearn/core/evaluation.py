"""Downstream evaluation's pure parts: the budget that halves a metric, the group gap, and
the per-method summary (no pyspark; the fits are :mod:`distunlearn.transforms.evaluation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BASELINE_METHOD = "none"
HALVE_METRIC = "forget_recall"
UNWEIGHTED = "none"
REWEIGHT = "reweight"


def budget_to_halve(budgets: Sequence[float], values: Sequence[float | None],
                    baseline: float | None) -> float | None:
    """The smallest budget at which ``values`` falls to ``<= baseline / 2``.

    The curve is the point ``(0, baseline)`` followed by ``(budgets[i], values[i])`` in
    increasing budget order; between consecutive points it is linear, so the crossing of
    ``target = baseline / 2`` on the segment (b0, v0) -> (b1, v1) with ``v0 > target >= v1``
    is ``b0 + (v0 - target) / (v0 - v1) * (b1 - b0)``.  The first crossing is returned
    (non-monotone curves), ``0.0`` when the baseline itself is ``<= 0`` (nothing to halve),
    and None when the curve never reaches the target or the baseline is missing.  Points
    whose value is None or NaN are skipped.
    """
    if len(budgets) != len(values):
        raise ValueError(f"budgets and values differ in length ({len(budgets)} vs {len(values)})")
    if baseline is None or math.isnan(baseline):
        return None
    target = baseline / 2
    if baseline <= target:  # baseline <= 0
        return 0.0
    prev_b, prev_v = 0.0, float(baseline)
    for b, v in sorted(((float(b), v) for b, v in zip(budgets, values, strict=True)), key=lambda p: p[0]):
        if v is None or math.isnan(v):
            continue
        if v <= target:  # prev_v > target >= v, so prev_v != v
            return prev_b + (prev_v - target) / (prev_v - v) * (b - prev_b)
        prev_b, prev_v = b, float(v)
    return None


GroupGap = tuple[str | None, float | None, str | None, float | None, float | None]


def group_gap(rows: Sequence[Mapping[str, Any]]) -> GroupGap:
    """``(worst_group, worst, best_group, best, gap)`` of the ``retain_accuracy`` of ``rows``
    (the group rows of one fit and weighting): the lowest and the highest accuracy, the groups
    that have them (ties: the smallest group name) and ``gap = best - worst``.  Rows without a
    group (the all-rows row) or without an accuracy (no held-out retain row) are left out; all
    five are None when no row is left."""
    scored = [(str(r["group"]), float(r["retain_accuracy"])) for r in rows
              if r.get("group") is not None and r.get("retain_accuracy") is not None
              and not math.isnan(r["retain_accuracy"])]
    if not scored:
        return None, None, None, None, None
    worst_group, worst = min(scored, key=lambda p: (p[1], p[0]))
    best_group, best = min(scored, key=lambda p: (-p[1], p[0]))
    return worst_group, worst, best_group, best, best - worst


def summarize(rows: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Per method: the baseline forget_recall and the budget that halves it."""
    base = next(r[HALVE_METRIC] for r in rows if r["method"] == BASELINE_METHOD)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != BASELINE_METHOD):
        mine = [r for r in rows if r["method"] == method]
        out.append({"run_id": run_id, "method": method, "metric": HALVE_METRIC, "baseline": base,
                    "budget_to_halve": budget_to_halve([r["budget"] for r in mine],
                                                       [r[HALVE_METRIC] for r in mine], base)})
    return out
