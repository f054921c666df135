"""Baseline (b): the single-node limit.  One Python process, pyarrow + numpy, one BLAS thread
and pyarrow without its thread pool, doing the job's math on the same files:

1. statistics of both tables (streamed record batches, :class:`reference.Moments`);
2. the pooled-covariance model; the kernel scores and ``random`` of every forget row
   (the forget features are kept in memory from a second read, as the job keeps them);
3. exact top-k per method and budget (score descending, id ascending);
4. the removal sets, one row per (method, budget, selected row), written as Parquet, and the
   statistics of each removal set with the job's KL diagnostics.

Usage: python bench/single_node.py FORGET RETAIN OUT_DIR [--budgets ...]; writes
OUT_DIR/result.json (timings) and OUT_DIR/stats.npz, OUT_DIR/removal_sets.parquet.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)


def _batches(path: str, columns: list[str]):
    dataset = ds.dataset(path, format="parquet")  # files starting with "_" (the Delta log) are ignored
    yield from dataset.to_batches(columns=columns, use_threads=False, batch_size=65_536)


def _matrix(column: pa.Array) -> np.ndarray:
    dim = len(column[0])
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def read_stats(path: str) -> reference.Moments:
    moments = reference.Moments()
    for rb in _batches(path, ["features"]):
        moments.add(_matrix(rb.column(0)))
    return moments


def main(argv: list[str] | None = None) -> int:
    from distunlearn.core.budgets import resolve_budgets
    from distunlearn.core.diagnostics import diagnose
    from distunlearn.core.stats import GaussianStats

    args = reference.contender_args(__doc__).parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = t = time.monotonic()

    forget_m, retain_m = read_stats(args.forget), read_stats(args.retain)
    timings["statistics"] = time.monotonic() - t
    np.savez(out / "stats.npz", forget_mean=forget_m.mean, forget_m2=forget_m.m2, forget_n=forget_m.n,
             retain_mean=retain_m.mean, retain_m2=retain_m.m2, retain_n=retain_m.n)

    t = time.monotonic()
    pooled = (forget_m.m2 + retain_m.m2) / (forget_m.n + retain_m.n)
    model = reference.fit(forget_m.mean, retain_m.mean, pooled)
    ids_parts, x_parts, score_parts = [], [], []
    for rb in _batches(args.forget, ["id", "features"]):
        x = _matrix(rb.column(1))
        ids_parts.append(rb.column(0).to_numpy())
        x_parts.append(x)
        score_parts.append(reference.scores(model, x))
    ids = np.concatenate(ids_parts)
    x = np.concatenate(x_parts)
    del x_parts
    scores = {m: np.concatenate([s[m] for s in score_parts]) for m in reference.KERNEL}
    scores["random"] = reference.random_scores(ids, args.seed)
    budgets = resolve_budgets(tuple(args.budgets), (), len(ids))
    k_max = max(b.k for b in budgets)
    order = {m: reference.top_k_order(scores[m], ids, k_max) for m in reference.METHODS}
    timings["score_select"] = time.monotonic() - t

    t = time.monotonic()
    schema = pa.schema([("method", pa.string()), ("budget", pa.float64()), ("k", pa.int64()),
                        ("rank", pa.int64()), ("id", pa.int64()), ("score", pa.float64())])
    with pq.ParquetWriter(out / "removal_sets.parquet", schema) as writer:
        for m in reference.METHODS:
            ranked_ids, ranked_scores = ids[order[m]], scores[m][order[m]]
            for b in budgets:
                writer.write_table(pa.table({
                    "method": pa.array([m] * b.k, pa.string()), "budget": np.full(b.k, b.budget),
                    "k": np.full(b.k, b.k, dtype=np.int64), "rank": np.arange(1, b.k + 1, dtype=np.int64),
                    "id": ranked_ids[: b.k], "score": ranked_scores[: b.k]}, schema=schema))
    timings["write_removal_sets"] = time.monotonic() - t

    t = time.monotonic()
    ks = sorted({b.k for b in budgets if b.k > 0})
    buckets: dict[str, list[GaussianStats]] = {}
    for m in reference.METHODS:
        rank = np.empty(len(ids), dtype=np.int64)
        rank[order[m]] = np.arange(1, len(order[m]) + 1)
        if len(order[m]) < len(ids):
            rank[np.setdiff1d(np.arange(len(ids)), order[m])] = len(ids) + 1
        bucket = np.searchsorted(ks, rank)  # smallest set holding the row; len(ks) for none
        buckets[m] = [GaussianStats.from_array(x[bucket == j]) for j in range(len(ks) + 1)]
    to_stats = [GaussianStats(mo.n, mo.mean, mo.m2, np.zeros(len(mo.mean)), 0.0) for mo in (forget_m, retain_m)]
    diagnose(to_stats[0], to_stats[1], buckets, ks, [(b.budget, b.k) for b in budgets], 0.1, 0.0)
    timings["diagnostics"] = time.monotonic() - t
    timings["total"] = time.monotonic() - start
    (out / "result.json").write_text(json.dumps({"timings": timings, "n_forget": int(len(ids))}))
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
