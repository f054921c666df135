"""The cases whose outputs were stored from the job before the one-engine redesign (issue 16).

``tests/golden/<case>/<table>.parquet`` hold what the code of commit fdb7d07 (the last one
with the ``removal_sets`` contract) wrote for each case below (``tests/golden/README.md`` says
how), and ``tests/test_golden.py`` runs the same cases through today's code and
compares every number: ranks, ids, scores, k, statistics, diagnostics, calibration, group
diagnostics and weights.

The inputs are written with pyarrow (no Spark), three Parquet files per table, so the rows
reach Spark in the same partitions and Arrow batches on every run; the session is the
suite's (``tests/conftest.py``: local[2], 4 shuffle partitions, Arrow batches of 7 rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GOLDEN = Path(__file__).resolve().parent / "golden"
FEATURE_METHODS = ("random", "mu2", "maha_mu2", "cos_mu2", "lr_maha", "lr_cos", "lr_gauss", "coreset")
GROUP_COUNTS = {"a": (50, 20), "b": (30, 60), "c": (0, 40)}  # group -> (forget rows, retain rows)


@dataclass(frozen=True)
class Case:
    name: str
    inputs: str  # a key of :func:`write_inputs`
    options: dict[str, Any] = field(default_factory=dict)  # config fields (JobConfig names)


CASES = [
    Case("features", "gauss", dict(methods=FEATURE_METHODS, budgets=(0.05, 0.29, 0.5, 1.0), budget_counts=(7,))),
    Case("pruned", "gauss600", dict(methods=("mu2", "coreset", "lr_gauss", "random"), budgets=(0.01, 0.1, 0.2))),
    Case("diagonal-retain", "gauss", dict(methods=("maha_mu2", "lr_maha", "lr_gauss", "cos_mu2", "lr_cos"),
                                          budgets=(0.1, 0.5), covariance="diagonal", covariance_source="retain",
                                          cosine_center="pooled_mean")),
    Case("lowrank", "gauss", dict(methods=("maha_mu2", "lr_maha", "lr_gauss"), budgets=(0.1, 0.5, 1.0),
                                  covariance="lowrank", covariance_rank=2)),
    Case("string-ties", "ties", dict(methods=("mu2", "lr_gauss", "random"), budgets=(0.3, 0.6))),
    Case("drop-nonfinite", "nan", dict(methods=("lr_gauss", "random"), budgets=(0.25, 0.5), on_invalid="drop")),
    Case("groups-global", "groups", dict(methods=("lr_gauss", "mu2"), budgets=(0.1, 0.25, 0.5, 1.0),
                                         group_col=("lang",), reweight=True)),
    Case("groups-global-pruned", "groups", dict(methods=("lr_gauss", "random"), budgets=(0.1, 0.25),
                                                group_col=("lang",))),
    Case("groups-stratified", "groups", dict(methods=("lr_gauss", "mu2"), budgets=(0.1, 0.25, 0.5, 1.0),
                                             group_col=("lang",), group_budget="stratified")),
    Case("groups-cap", "groups", dict(methods=("lr_gauss", "mu2"), budgets=(0.1, 0.25, 0.5, 1.0),
                                      budget_counts=(70,), group_col=("lang",), group_cap=0.3)),
    Case("groups-stratified-cap", "groups", dict(methods=("lr_gauss", "mu2", "random"), budgets=(0.25, 0.5, 1.0),
                                                 group_col=("lang",), group_budget="stratified", group_cap=0.3,
                                                 reweight=True)),
    Case("text", "text", dict(text_col="text", ngram_buckets=1024, text_dim=8,
                              methods=("lr_ngram", "lr_gauss", "mu2", "random"), budgets=(0.1, 0.25, 0.5, 1.0))),
    Case("text-gumbel", "text", dict(text_col="text", ngram_buckets=1024, text_dim=8, ngram_hash="sha256",
                                     ngram_length_norm=True, selection="gumbel", seed=5,
                                     methods=("lr_ngram", "random"), budgets=(0.25, 0.5))),
    Case("text-groups", "text", dict(text_col="text", ngram_buckets=1024, text_dim=8, methods=("lr_ngram", "mu2"),
                                     budgets=(0.25, 0.5), group_col=("src",), group_budget="stratified")),
]


def _write(folder: Path, table: pa.Table, files: int = 3) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in enumerate(np.array_split(np.arange(table.num_rows), files)):
        pq.write_table(table.take(pa.array(rows)), folder / f"part-{part:05d}.parquet")
    return str(folder)


def _features(x: np.ndarray) -> pa.Array:
    return pa.array([None if row is None else list(map(float, row)) for row in x], pa.list_(pa.float64()))


def _gauss(n_forget: int, n_retain: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))
    return rng.standard_normal((n_forget, dim)) @ mix.T, rng.standard_normal((n_retain, dim)) @ mix.T + 1.0


def write_inputs(root: Path, key: str) -> tuple[str, str]:
    """Write the forget and retain tables of input ``key`` under ``root``; return their paths."""
    out = root / key
    if key in ("gauss", "gauss600", "nan"):
        n_forget = 600 if key == "gauss600" else 120
        xf, xr = _gauss(n_forget, 300, 3 if key == "gauss600" else 4, 3 if key == "gauss600" else 7)
        rows = list(xf)
        if key == "nan":
            for i in (5, 17, 88):
                rows[i] = np.where(np.arange(xf.shape[1]) == 1, np.nan, xf[i])
        forget = pa.table({"id": pa.array(range(n_forget), pa.int64()), "features": _features(rows)})
        retain = pa.table({"id": pa.array(range(10_000, 10_300), pa.int64()), "features": _features(xr)})
    elif key == "ties":
        rng = np.random.default_rng(0)
        same = [[1.0, 2.0, 3.0]] * 6 + rng.standard_normal((14, 3)).tolist()
        names = ["b", "a10", "a9", "c", "a1", "a2"] + [f"x{i}" for i in range(14)]
        forget = pa.table({"id": pa.array(names), "features": _features(same)})
        retain = pa.table({"id": pa.array([f"r{i}" for i in range(50)]),
                           "features": _features(rng.standard_normal((50, 3)))})
    elif key == "groups":
        rng = np.random.default_rng(11)
        rows: dict[str, list[tuple[int, str, list[float]]]] = {"forget": [], "retain": []}
        next_id = {"forget": 0, "retain": 10_000}
        for g, (nf, nr) in GROUP_COUNTS.items():
            for domain, n, shift in (("forget", nf, 2.0 if g == "a" else 1.0), ("retain", nr, 0.0)):
                for row in rng.standard_normal((n, 3)) + shift + (0.3 if g == "b" else 0.0):
                    rows[domain].append((next_id[domain], g, row.tolist()))
                    next_id[domain] += 1
        forget, retain = (pa.table({"id": pa.array([r[0] for r in rows[d]], pa.int64()),
                                    "lang": pa.array([r[1] for r in rows[d]]),
                                    "features": _features([r[2] for r in rows[d]])}) for d in ("forget", "retain"))
    elif key == "text":
        sample = Path(__file__).resolve().parents[1] / "lib" / "distunlearn" / "data" / "spamassassin_sample.jsonl"
        docs = [json.loads(line) for line in sample.read_text().splitlines()]
        forget, retain = (pa.table({"id": pa.array([d["id"] for d in docs if d["label"] == label], pa.int64()),
                                    "text": pa.array([d["text"] for d in docs if d["label"] == label]),
                                    "src": pa.array([str(d["id"] % 3 == 0).lower() for d in docs
                                                     if d["label"] == label])})
                          for label in ("spam", "ham"))
    else:
        raise KeyError(key)
    return _write(out / "forget", forget), _write(out / "retain", retain)


#: Tables stored per case, and the columns that identify a row of each (sort order).
TABLES = {
    "removal_sets": ["method", "budget", "budget_count", "id"],
    "statistics": ["domain"],
    "ngram_statistics": ["domain"],
    "diagnostics": ["method", "budget", "budget_count"],
    "calibration": ["method"],
    "group_diagnostics": ["method", "budget", "budget_count", "group"],
    "retain_weights": ["method", "budget", "id"],
}
