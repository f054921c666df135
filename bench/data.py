"""Seeded benchmark tables: N rows x d float32 embeddings, written once as Parquet files and
turned into a Delta table in place (``deltalake.convert_to_deltalake``), so the Parquet reader
of baseline (b) and the Delta readers of (a) and (c) read the very same files.

Rows: ``x = mu + z A`` with z ~ N(0, I) and one random mixing matrix A (d x d, seeded,
shared by both domains) so the features are correlated, as embeddings are; the forget mean
is shifted from the retain mean by ``shift`` along a random direction.  Ids: forget 0..N-1,
retain from 10^12 on (disjoint, long).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 250_000  # ~384 MB per file at d = 384: several Spark partitions per table
RETAIN_ID_BASE = 10**12


def _mixing(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, dim])
    a = (rng.standard_normal((dim, dim)) / np.sqrt(dim) + 0.5 * np.eye(dim)).astype(np.float32)
    direction = rng.standard_normal(dim)
    return a, (direction / np.linalg.norm(direction)).astype(np.float32)


def write_table(path: Path, rows: int, dim: int, domain: str, seed: int, shift: float = 1.0) -> Path:
    """Write (or reuse, when the same parameters are already there) one domain's table."""
    meta = {"rows": rows, "dim": dim, "domain": domain, "seed": seed, "shift": shift, "version": 1}
    marker = path / "_bench_table.json"
    if marker.exists() and json.loads(marker.read_text()) == meta:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    a, direction = _mixing(dim, seed)
    mean = (shift * direction) if domain == "forget" else np.zeros(dim, dtype=np.float32)
    base = 0 if domain == "forget" else RETAIN_ID_BASE
    rng = np.random.default_rng([seed, dim, 0 if domain == "forget" else 1])
    for part, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        x = rng.standard_normal((n, dim), dtype=np.float32) @ a + mean
        features = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim).cast(pa.list_(pa.float32()))
        ids = pa.array(np.arange(base + start, base + start + n, dtype=np.int64))
        table = pa.table({"id": ids, "features": features})
        pq.write_table(table, path / f"part-{part:05d}.parquet", row_group_size=50_000)
    from deltalake import convert_to_deltalake

    convert_to_deltalake(str(path))
    marker.write_text(json.dumps(meta))
    return path


def tables(root: Path, forget_rows: int, retain_rows: int, dim: int, seed: int = 7) -> tuple[Path, Path]:
    """The forget and retain tables for one benchmark size under ``root``."""
    forget = write_table(root / f"forget-{forget_rows}x{dim}", forget_rows, dim, "forget", seed)
    retain = write_table(root / f"retain-{retain_rows}x{dim}", retain_rows, dim, "retain", seed)
    return forget, retain
