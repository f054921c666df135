"""Demo data: seeded Gaussians (a low- and a high-separability forget/retain pair), and a
text pair from the vendored SpamAssassin sample (``data/spamassassin_sample.jsonl``: 40 spam
and 40 ham messages; provenance and licence in ``data/README.md``).

forget ~ N(0, I_d) and retain ~ N(mu, I_d), with mu = sep * e_1 / 1 so that
kappa = KL(p1 || p2) = sep^2 / 2 (shared identity covariance):

* ``low``:  sep = 0.5, kappa = 0.125 -- the domains overlap; selection matters most;
* ``high``: sep = 3.0, kappa = 4.5   -- well separated.

Generated with numpy's PCG64 from ``seed`` on the driver (demo sizes are small) and written as
Delta tables with Spark.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from distunlearn.store.lake import write_table

log = logging.getLogger(__name__)

SEPARATIONS = {"low": 0.5, "high": 3.0}


@dataclass(frozen=True)
class DemoData:
    name: str
    forget: str
    retain: str
    kappa: float


def gaussian_rows(n: int, dim: int, shift: float, rng: np.random.Generator, first_id: int) -> pd.DataFrame:
    """``n`` rows of N(shift * e_1, I_dim) as float32 arrays, ids first_id .. first_id + n - 1."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[:, 0] += np.float32(shift)
    return pd.DataFrame({"id": np.arange(first_id, first_id + n, dtype=np.int64), "features": list(x)})


def _local_frame(spark: SparkSession, pdf: pd.DataFrame, schema: str, rows: int = 5000) -> DataFrame:
    """``pdf`` as a DataFrame built from pieces of ``rows`` rows: in one piece, the 100 000 demo
    rows travel in two tasks of ~6 MB each and Spark warns about every one."""
    pieces = [spark.createDataFrame(pdf.iloc[i:i + rows], schema) for i in range(0, len(pdf), rows)]
    return functools.reduce(DataFrame.unionByName, pieces)


def write_demo_tables(spark: SparkSession, root: str, forget_rows: int, retain_rows: int, dim: int,
                      seed: int) -> list[DemoData]:
    """Write ``<root>/data/<name>/{forget,retain}`` Delta tables for both separations."""
    out = []
    for i, (name, sep) in enumerate(SEPARATIONS.items()):
        rng = np.random.default_rng([seed, i])
        tables = {"forget": gaussian_rows(forget_rows, dim, 0.0, rng, 0),
                  "retain": gaussian_rows(retain_rows, dim, sep, rng, forget_rows)}
        paths = {}
        for domain, pdf in tables.items():
            path = f"{root.rstrip('/')}/data/{name}/{domain}"
            write_table(_local_frame(spark, pdf, "id long, features array<float>").repartition(4), path)
            paths[domain] = path
        log.info("demo %s: %d forget + %d retain rows, d=%d, kappa=%.3f", name, forget_rows, retain_rows,
                 dim, sep * sep / 2)
        out.append(DemoData(name, paths["forget"], paths["retain"], sep * sep / 2))
    return out


SPAM_SAMPLE = Path(__file__).parents[1] / "data" / "spamassassin_sample.jsonl"


def spam_sample() -> pd.DataFrame:
    """The vendored SpamAssassin sample: id, label ("spam"/"ham"), source, text."""
    return pd.DataFrame([json.loads(line) for line in SPAM_SAMPLE.read_text().splitlines()])


def write_text_tables(spark: SparkSession, root: str) -> DemoData:
    """``<root>/data/text/{forget,retain}`` Delta tables (id, text): forget = spam, retain = ham."""
    sample = spam_sample()
    paths = {}
    for domain, label in (("forget", "spam"), ("retain", "ham")):
        path = f"{root.rstrip('/')}/data/text/{domain}"
        pdf = sample[sample.label == label][["id", "text"]]
        write_table(spark.createDataFrame(pdf, "id long, text string").repartition(2), path)
        paths[domain] = path
    log.info("demo text: %d spam (forget) and %d ham (retain) messages", (sample.label == "spam").sum(),
             (sample.label == "ham").sum())
    return DemoData("text", paths["forget"], paths["retain"], float("nan"))
