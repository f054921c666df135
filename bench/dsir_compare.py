#!/usr/bin/env python
"""This job's ``lr_ngram`` against DSIR (Xie et al. 2023) on SpamAssassin; writes ``docs/DSIR.md``.

Setting: forget = spam (the domain to remove), retain = easy ham.  Our job scores each forget
document x by the multinomial log-likelihood ratio sum_j c_j(x) (log theta_forget_j -
log theta_retain_j) over hashed n-gram buckets; DSIR's log importance weight of x with
target = forget and raw = retain is the same sum with its own estimates of theta.  DSIR
(PyPI ``data-selection`` 1.0.3) is never a dependency of the project: this script creates
``bench-data/dsir-venv`` and runs ``bench/dsir_worker.py`` with that venv's python.

Run with the project venv from the repository root::

    .venv/bin/python bench/dsir_compare.py                       # whole corpus, 3 rounds
    .venv/bin/python bench/dsir_compare.py --max-docs 200 --rounds 1   # smoke run
    .venv/bin/python bench/dsir_compare.py --replicate 10        # 10x corpus for throughput
    .venv/bin/python bench/dsir_compare.py --ours-args "--ngram-smoothing 1e-8"

What DSIR 1.0.3 does (read from the wheel data_selection-1.0.3-py3-none-any.whl, files
``data_selection/hashed_ngram_dsir.py``, ``base.py`` and ``utils.py``):

* **Tokenizer**: ``get_ngram_counts`` calls ``tokenizer(line.lower())`` (Python ``str.lower``)
  with ``tokenizer='wordpunct'`` -> ``nltk.tokenize.WordPunctTokenizer().tokenize``, a
  ``RegexpTokenizer`` with the pattern ``\\w+|[^\\w\\s]+`` and flags UNICODE | MULTILINE |
  DOTALL, ``findall``.  ``'word_tokenize'`` (Punkt + Treebank) is the other choice; the
  constructor's default is ``'wordpunct'``.  The *engine* depends on NLTK, which
  data-selection does not pin (``nltk>=3.8.1``): NLTK <= 3.10.2 compiles the pattern with the
  stdlib ``re`` (``\\w`` = ``str.isalnum()`` or ``_``; ``\\s`` includes U+001C..U+001F), NLTK
  >= 3.10.3 with the third-party ``regex`` engine through ``nltk.redos`` (5 s timeout per
  call), whose ``\\w`` is Unicode's word class (Alphabetic, marks Mn/Mc/Me, Nd, Pc,
  Join_Control) and ``\\s`` White_Space -- the same classes as Java's ``(?U)``, which our Spark
  featurizer uses.  Checked over all code points with ``regex`` 2026.11.15: its classes equal
  that definition of Java's written with ``regex``'s own Unicode properties (a JDK's older
  Unicode tables can differ on code points assigned since); the stdlib ``re`` differs from them
  on 27024 Cn, 1950 Mn, 895 No, 445 Mc, 130 So, 13 Me, 9 Pc and 2 Cf code points and on
  U+001C..U+001F.  This script pins ``nltk==3.10.4`` (``--nltk``); the worker records what it
  ran and which characters of the corpus are affected.
* **n-grams**: every token is hashed as a unigram, then for i = 2..ngrams
  ``nltk.ngrams(words, i)`` (consecutive tokens over the whole document, no padding, across
  line breaks) joined with a single space ``' '.join(ng)``; unigrams and bigrams share the
  same B buckets.  ``ngrams=2`` means unigrams + bigrams.
* **Hash**: ``int(hashlib.sha256(text.encode('utf-8')).hexdigest(), 16) % num_buckets``, the
  whole 256-bit digest as an integer, mod B.
* **Counts**: int64 bucket counts per document (``features``), raw counts, no TF weighting,
  no length normalisation.
* **Fit** (``fit_importance_estimator``): p_raw and p_target are the summed bucket counts of
  each side, divided by their total (no pseudo-count).  ``num_tokens_to_fit='all'`` reads all
  of the raw data; ``'auto'`` stops each of the P virtual shards once its count sum (unigram +
  bigram features, not tokens) exceeds 100000 * B // P; the target is always read in full.
* **Smoothing**: ``log_diff = log(p_target + 1e-8) - log(p_raw + 1e-8)``: an additive floor of
  1e-8 in *probability* space (about 1e-8 x N_raw of a pseudo-count), so a bucket empty in the
  raw data and used by the target gets log p_target + 18.4.
* **Importance weight**: ``importance_estimator(features) = np.dot(self.log_diff, features)``
  = sum_j c_j(x) log_diff_j: our lr_ngram up to the estimate of theta.  ``featurizer`` passes
  ``self.num_buckets`` and ``self.ngrams`` to ``get_ngram_counts``, so both are honoured
  (the module default of ``hash_buckets``, 10000, is only a default).
* **Sharding and files**: ``compute_importance_weights`` splits each raw file into P =
  ``num_proc`` *virtual* shards round-robin (shard j holds lines j, j+P, j+2P, ...; joblib
  ``Parallel`` over processes) and saves ``log_importance_weights/<shard>.npy``.  The .npy
  files are therefore *not* in file order; the worker de-interleaves them.  Per-example
  metadata ``(features.sum() + n(n-1)/2) // n`` (= the token count for n = 2) goes to
  ``perexample_metadata/<shard>.npy``.
* **resample(out_dir, num_to_sample, top_k)**: concatenates the shards' weights, first drops
  the examples whose metadata fails ``min_example_length`` (default 100 tokens; only
  ``resample`` applies this filter), then with ``top_k=True`` takes
  ``np.argpartition(-w, k)[:k]``: an unordered top-k whose ties at the boundary are broken
  by introselect, not by id; with ``top_k=False`` it adds ``np.random.gumbel`` noise first
  (Gumbel top-k: k documents sampled without replacement with probability proportional to
  exp(log w) = w) from numpy's *global* RNG, no seed argument.  k equal to the number of
  eligible documents raises (argpartition's kth out of bounds), so a budget of 1.0 cannot be
  resampled.  The selected lines are copied to ``out_dir/<shard>.jsonl``.
* **The forget documents' weights**: DSIR weights the *raw* datasets only, so after fitting on
  raw = [retain] and target = [forget] this script points ``raw_datasets`` at [forget] and
  calls ``compute_importance_weights()``: log_diff stays the fitted one.  That is the closest
  faithful use: there is no API to weight a dataset other than ``raw_datasets``.

Our side, for the record: Spark 4.0's ``lower`` on a string is ICU4J's ``UCharacter.toLowerCase``
(``spark.sql.icu.caseMappings.enabled``, default true), the tokens are ``regexp_extract_all`` with a
Java regex (recorded in our ``ngram_statistics.tokenizer``), and the buckets are sha256 mod B as
DSIR's.  ``TokenDump.java`` (written under ``--work`` and run with ``java`` alone, no Spark) applies
the same lowercasing and regex to every document, so the tokens can be compared one by one.

The comparison (``docs/DSIR.md``): per budget, the overlap of our removal set with DSIR's
top-k (and with what ``resample`` picks, as shipped and without its length filter), Spearman
and Pearson correlations of our scores with DSIR's log weights over all forget documents,
wall times of both whole commands in alternating rounds, and a decomposition of the
differences (featurizer, smoothing, ties) computed from both sides' bucket counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(HERE))
import spamassassin  # noqa: E402

DSIR_REQUIREMENT = "data-selection==1.0.3"
# data-selection asks for nltk>=3.8.1 and nothing more, but its tokenizer changes with NLTK: up to
# 3.10.2 RegexpTokenizer compiles with the stdlib re, from 3.10.3 with the third-party regex engine
# (nltk.redos), whose Unicode \w and \s differ (combining marks, U+001C..U+001F).  Pinned here.
DEFAULT_NLTK = "3.10.4"
DEFAULT_WORK = REPO / "bench-data" / "dsir"
DEFAULT_VENV = REPO / "bench-data" / "dsir-venv"
DEFAULT_DOC = REPO / "docs" / "DSIR.md"
RUN_ID = "dsir-cmp"
METHOD = "lr_ngram"


# ------------------------------------------------------------------ DSIR's venv
def ensure_dsir_venv(venv: Path, nltk: str = DEFAULT_NLTK) -> Path:
    """``python3 -m venv`` + ``pip install data-selection==1.0.3 nltk==<nltk>`` once (a stamp file
    records the requirements and then the installed versions); returns the venv's python."""
    py = venv / "bin" / "python"
    stamp = venv / ".dsir-installed"
    wanted = f"{DSIR_REQUIREMENT} nltk=={nltk}"
    if py.exists() and stamp.exists() and stamp.read_text().splitlines()[:1] == [wanted]:
        return py
    python3 = shutil.which("python3") or sys.executable
    print(f"dsir venv: creating {venv} with {python3} and installing {wanted}", flush=True)
    if not py.exists():
        subprocess.run([python3, "-m", "venv", str(venv)], check=True)
    # data-selection declares numpy, tqdm, joblib and nltk; pip installs them with it.
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", DSIR_REQUIREMENT,
                    f"nltk=={nltk}"], check=True)
    subprocess.run([str(py), "-c", "import data_selection, nltk, numpy, joblib, tqdm; "
                    "from data_selection import HashedNgramDSIR"], check=True)
    freeze = subprocess.run([str(py), "-m", "pip", "freeze", "--disable-pip-version-check"], check=True,
                            capture_output=True, text=True).stdout
    stamp.write_text(wanted + "\n" + freeze)
    return py


def dsir_freeze(venv: Path) -> list[str]:
    stamp = venv / ".dsir-installed"
    return [x for x in stamp.read_text().splitlines()[1:] if x] if stamp.exists() else []


# ------------------------------------------------------------------ corpus
def build_corpus(work: Path, replicate: int, max_docs: int) -> Path:
    """JSONL (DSIR) and Parquet (ours) copies of the same forget and retain documents, once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "corpus" / f"r{replicate}-m{max_docs}"
    stamp = folder / "done.json"
    if stamp.exists():
        return folder
    data = spamassassin.fetch(work / "npm")
    counts = spamassassin.write_corpus(data, folder, replicate=replicate, max_docs=max_docs)
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    for name in ("forget", "retain"):
        out = folder / f"{name}_parquet"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        with pq.ParquetWriter(out / "part-00000.parquet", schema) as writer, \
                (folder / f"{name}.jsonl").open(encoding="utf-8") as f:
            ids: list[int] = []
            texts: list[str] = []
            for line in f:
                row = json.loads(line)
                ids.append(row["id"])
                texts.append(row["text"])
                if len(ids) == 10_000:
                    writer.write_table(pa.table([pa.array(ids, pa.int64()), pa.array(texts, pa.string())],
                                                schema=schema))
                    ids, texts = [], []
            if ids:
                writer.write_table(pa.table([pa.array(ids, pa.int64()), pa.array(texts, pa.string())], schema=schema))
    stamp.write_text(json.dumps({"replicate": replicate, "max_docs": max_docs, **counts}))
    return folder


# ------------------------------------------------------------------ the two commands
def exact_k(fraction: float, n: int) -> int:
    """floor(f * n) as the job computes it (distunlearn.core.budgets.exact_k)."""
    return math.floor(Fraction(repr(float(fraction))) * n)


def run_timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"command failed (exit {proc.returncode}), log {log}:\n" + "\n".join(tail))
    return wall


def dsir_cmd(py: Path, corpus: Path, work: Path, args: argparse.Namespace, phase: str) -> list[str]:
    cmd = [str(py), str(HERE / "dsir_worker.py"), phase, "--forget", str(corpus / "forget.jsonl"),
           "--retain", str(corpus / "retain.jsonl"), "--work", str(work / "dsir-work"),
           "--buckets", str(args.buckets), "--ngrams", str(args.ngram_order), "--num-proc", str(args.num_proc),
           "--budgets", ",".join(repr(b) for b in args.budgets), "--out", str(work / f"dsir-{phase}.json")]
    if phase == "extras":
        cmd += ["--npz", str(work / "dsir-extras.npz")]
    return cmd


def ours_budgets(budgets: list[float]) -> list[float]:
    return sorted(set(budgets) | {1.0})


def ours_cmd(corpus: Path, out: Path, args: argparse.Namespace) -> list[str]:
    exe = Path(sys.executable).parent / "distunlearn"
    return [str(exe), "run", "--forget", str(corpus / "forget_parquet"), "--retain", str(corpus / "retain_parquet"),
            "--output", str(out), "--run-id", RUN_ID, "--text-col", "text", "--methods", METHOD,
            "--ngram-hash", "sha256", "--ngram-buckets", str(args.buckets), "--ngram-order", str(args.ngram_order),
            "--budgets", ",".join(repr(b) for b in ours_budgets(args.budgets)),
            "--shuffle-partitions", str(args.shuffle_partitions), *shlex.split(args.ours_args)]


# ------------------------------------------------------------------ our tokens, outside Spark
# Our featurizer is F.regexp_extract_all(F.lower(text), PATTERN, 0).  In Spark 4.0 `lower` on a
# UTF8_BINARY string is ICU4J's UCharacter.toLowerCase (spark.sql.icu.caseMappings.enabled, default
# true; CollationSupport.Lower -> CollationAwareUTF8String.toLowerCase) and regexp_extract_all is
# java.util.regex's find loop.  TokenDump does exactly that on the JVM alone (no Spark), so DSIR's
# tokens can be compared with ours document by document.
TOKEN_DUMP_JAVA = r"""
import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * args: PATTERN IN OUT: IN and OUT hold one base64 UTF-8 line per document; OUT = its tokens joined by NUL.
 * args: classes PATTERN IN OUT: IN holds one code point (hex) per line; OUT "hex class", the class of c
 * being word, space or punct as the tokens of lower("a" + c + "a") show.
 */
public class TokenDump {
    static String lower(Method icuLower, String text) throws Exception {
        return icuLower != null ? (String) icuLower.invoke(null, text) : text.toLowerCase();
    }

    public static void main(String[] args) throws Exception {
        boolean classes = args[0].equals("classes");
        if (classes) args = new String[] {args[1], args[2], args[3]};
        Pattern pattern = Pattern.compile(args[0]);
        Method icuLower = null;
        try {
            icuLower = Class.forName("com.ibm.icu.lang.UCharacter").getMethod("toLowerCase", String.class);
        } catch (ClassNotFoundException e) {
            System.err.println("TokenDump: ICU4J not on the class path; using String.toLowerCase()");
        }
        Base64.Decoder dec = Base64.getDecoder();
        Base64.Encoder enc = Base64.getEncoder();
        try (BufferedReader in = Files.newBufferedReader(Paths.get(args[1]), StandardCharsets.US_ASCII);
             BufferedWriter out = Files.newBufferedWriter(Paths.get(args[2]), StandardCharsets.US_ASCII)) {
            String line;
            while (classes && (line = in.readLine()) != null) {
                String c = new String(Character.toChars(Integer.parseInt(line.trim(), 16)));
                String probe = lower(icuLower, "a" + c + "a");
                Matcher m = pattern.matcher(probe);
                java.util.List<String> toks = new java.util.ArrayList<>();
                while (m.find()) toks.add(m.group());
                String cls = toks.size() == 1 && toks.get(0).equals(probe) ? "word"
                        : toks.size() == 2 && toks.get(0).equals("a") && toks.get(1).equals("a") ? "space" : "punct";
                out.write(line.trim() + " " + cls);
                out.newLine();
            }
            while (!classes && (line = in.readLine()) != null) {
                String text = new String(dec.decode(line), StandardCharsets.UTF_8);
                String lower = lower(icuLower, text);
                Matcher m = pattern.matcher(lower);
                StringBuilder sb = new StringBuilder();
                boolean first = true;
                while (m.find()) {
                    if (!first) sb.append((char) 0);
                    sb.append(m.group());
                    first = false;
                }
                out.write(enc.encodeToString(sb.toString().getBytes(StandardCharsets.UTF_8)));
                out.newLine();
            }
        }
        System.out.println("TokenDump: " + (icuLower != null ? "ICU4J" : "JDK") + " lower, java "
                           + System.getProperty("java.version"));
    }
}
"""


def icu_jar() -> Path | None:
    try:
        import pyspark
    except ImportError:
        return None
    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("icu4j-*.jar"))
    return jars[-1] if jars else None


def our_token_pattern(ours: dict[str, Any]) -> str | None:
    """The regular expression our run recorded ('lower + regexp PATTERN' in ngram_statistics)."""
    desc = ours.get("ngram_tokenizer") or ""
    if "regexp " in desc:
        return desc.split("regexp ", 1)[1]
    try:
        from distunlearn.text import TOKEN_PATTERN

        return str(TOKEN_PATTERN)
    except Exception:  # an older job without text input
        return None


def dump_java_tokens(corpus: Path, work: Path, pattern: str) -> dict[str, Any]:
    """Runs TokenDump on forget.jsonl and retain.jsonl; returns the token files (or why not)."""
    import base64

    java = shutil.which("java")
    if java is None:
        return {"error": "java not found"}
    folder = work / "java"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "TokenDump.java").write_text(TOKEN_DUMP_JAVA)
    jar = icu_jar()
    result: dict[str, Any] = {"pattern": pattern, "icu_jar": jar.name if jar else None}
    base = [java, *(["-cp", str(jar)] if jar else []), str(folder / "TokenDump.java")]
    unusual: set[str] = set()
    for name in ("forget", "retain"):
        src, dst = folder / f"{name}.b64", folder / f"{name}.tokens.b64"
        with (corpus / f"{name}.jsonl").open(encoding="utf-8") as f, src.open("w", encoding="ascii") as out:
            for line in f:
                row = json.loads(line)
                if row["id"] >= spamassassin.REPLICA_STRIDE:
                    break  # --replicate: the copies follow the first copy of every document
                text = row["text"]
                unusual.update(c for c in set(text) if ord(c) > 127 or ord(c) < 32)
                out.write(base64.b64encode(text.encode("utf-8")).decode("ascii") + "\n")
        proc = subprocess.run([*base, pattern, str(src), str(dst)], capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": f"TokenDump failed: {proc.stderr.strip()[-500:]}"}
        result[name] = dst
        result["note"] = proc.stdout.strip()
    src, dst = folder / "chars.txt", folder / "chars.classes.txt"
    src.write_text("".join(f"{ord(c):X}\n" for c in sorted(unusual)))
    proc = subprocess.run([*base, "classes", pattern, str(src), str(dst)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"TokenDump classes failed: {proc.stderr.strip()[-500:]}"}
    result["classes"] = dst
    return result


# ------------------------------------------------------------------ reading our outputs
def read_delta(path: Path) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def read_ours(out: Path) -> dict[str, Any]:
    """Our removal sets per budget, the scores of all forget rows (budget 1.0), and, when the
    tables are there, the run's config/timings and the n-gram statistics."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from run import job_sets  # bench/run.py: the sets through the job's own reader

    rs = pq.read_table(job_sets(out, RUN_ID))
    rs = rs.filter(pc.equal(rs["method"], METHOD))
    cols = rs.select(["budget", "k", "rank", "id", "score"]).to_pydict()
    sets: dict[float, dict[str, Any]] = {}
    for b, k, r, i, s in zip(cols["budget"], cols["k"], cols["rank"], cols["id"], cols["score"], strict=True):
        entry = sets.setdefault(round(float(b), 12), {"k": int(k), "rows": []})
        entry["rows"].append((int(r), int(i), float(s)))
    for entry in sets.values():
        entry["rows"].sort()
    result: dict[str, Any] = {"sets": sets}
    full = sets.get(1.0)
    if full is not None:
        result["scores"] = {i: s for _, i, s in full["rows"]}
    try:
        runs = read_delta(out / "runs").to_pylist()
        row = next(r for r in runs if r.get("run_id") == RUN_ID)
        cfg = row.get("config")
        result["config"] = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
        t = row.get("timings") or {}
        result["timings"] = dict(t) if not isinstance(t, dict) else t
    except Exception as exc:  # the runs table is optional for the comparison
        result["runs_error"] = f"{type(exc).__name__}: {exc}"
    try:
        ng = read_delta(out / "ngram_statistics").to_pylist()
        for row in ng:
            if row.get("run_id") != RUN_ID:
                continue
            c = row.get("counts")
            arr = np.frombuffer(bytes(c), np.int64) if isinstance(c, bytes | bytearray) else np.asarray(c, np.int64)
            result[f"ngram_counts_{row.get('domain')}"] = arr
            result["ngram_tokenizer"] = row.get("tokenizer")
    except Exception as exc:
        result["ngram_error"] = f"{type(exc).__name__}: {exc}"
    return result


# ------------------------------------------------------------------ statistics (numpy only)
def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks)."""
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inv]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(ranks(a), ranks(b))


def top_k_ids(ids: np.ndarray, scores: np.ndarray, k: int) -> set[int]:
    """The k highest scores, ties by id ascending (the job's order)."""
    order = np.lexsort((ids, -scores))
    return set(ids[order[:k]].tolist())


def ties_at_k(scores: np.ndarray, k: int) -> int:
    """Documents whose score equals the k-th highest (1 = no tie at the boundary)."""
    if k <= 0 or k > len(scores):
        return 0
    kth = np.sort(scores)[::-1][k - 1]
    return int((scores == kth).sum())


def per_text(extras: dict[str, np.ndarray], values: np.ndarray) -> np.ndarray:
    """sum over each distinct text's (bucket, count) pairs of count * values[bucket], per document."""
    indptr, indices, data = extras["indptr"], extras["indices"], extras["data"]
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.bincount(rows, weights=data * values[indices], minlength=len(indptr) - 1)[extras["row_of"]]


def featurizer_scores(extras: dict[str, np.ndarray], log_ratio: np.ndarray) -> np.ndarray:
    """sum_j c_j(x) log_ratio_j with DSIR's per-document bucket counts."""
    return per_text(extras, log_ratio)


def laplace_log_ratio(cf: np.ndarray, cr: np.ndarray, lam: float) -> np.ndarray:
    """Our lr_ngram bucket weights: theta = (C + lambda) / (sum C + lambda B) per domain."""
    b = len(cf)
    return np.log((cf + lam) / (cf.sum() + lam * b)) - np.log((cr + lam) / (cr.sum() + lam * b))


def dsir_log_ratio(cf: np.ndarray, cr: np.ndarray) -> np.ndarray:
    return np.log(cf / cf.sum() + 1e-8) - np.log(cr / cr.sum() + 1e-8)


# ------------------------------------------------------------------ the analysis
def analyse(corpus: Path, work: Path, run: dict[str, Any], extras_json: dict[str, Any],
            extras: dict[str, np.ndarray], ours: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ids = np.asarray(run["ids"], np.int64)
    w = np.asarray(run["weights"], np.float64)
    n = len(ids)
    a: dict[str, Any] = {"n_forget": n, "n_retain": run["n_retain"]}
    if not np.array_equal(ids, extras["ids"]):
        raise SystemExit("DSIR's run and extras phases saw different forget ids")

    scores_map = ours.get("scores")
    if scores_map is None or len(scores_map) != n:
        raise SystemExit(f"our removal sets at budget 1.0 hold {0 if scores_map is None else len(scores_map)} "
                         f"rows, expected {n}")
    s = np.asarray([scores_map[int(i)] for i in ids], np.float64)
    a["pearson"], a["spearman"] = pearson(s, w), spearman(s, w)

    cf, cr = extras["forget_counts"], extras["retain_counts"]
    lam = float(ours.get("config", {}).get("ngram_smoothing", args.smoothing_default))
    a["lambda"] = lam
    dsir_recomputed = featurizer_scores(extras, dsir_log_ratio(cf, cr))
    a["dsir_recompute_maxabs"] = float(np.max(np.abs(dsir_recomputed - w))) if n else 0.0
    s_lam = featurizer_scores(extras, laplace_log_ratio(cf, cr, lam))  # DSIR's featurizer, our smoothing
    # Per-document featurizer check: DSIR's bucket counts of x scored with *our* bucket weights (from
    # our ngram_statistics) equal our score iff both featurizers give x the same bucket counts.
    ocf, ocr = ours.get("ngram_counts_forget"), ours.get("ngram_counts_retain")
    if ocf is not None and ocr is not None and len(ocf) == len(cf):
        check = featurizer_scores(extras, laplace_log_ratio(ocf.astype(np.float64), ocr.astype(np.float64), lam))
        a["featurizer_check"] = "DSIR's per-document counts scored with our bucket weights"
    else:
        check = s_lam
        a["featurizer_check"] = "DSIR's per-document counts scored with our smoothing of DSIR's totals"
    diff = np.abs(s - check)
    tol = 1e-6 * (1.0 + np.abs(s))
    a["featurizer_maxabs"] = float(diff.max()) if n else 0.0
    a["featurizer_docs_differ"] = int((diff > tol).sum())
    a["pearson_ours_vs_dsirfeat_lam"], a["spearman_ours_vs_dsirfeat_lam"] = pearson(s, s_lam), spearman(s, s_lam)
    a["pearson_dsir_vs_dsirfeat_lam"], a["spearman_dsir_vs_dsirfeat_lam"] = pearson(w, s_lam), spearman(w, s_lam)

    # bucket-level comparison with our n-gram statistics, when the job stored them
    for dom, dc in (("forget", cf), ("retain", cr)):
        oc = ours.get(f"ngram_counts_{dom}")
        if oc is not None and len(oc) == len(dc):
            a[f"buckets_differ_{dom}"] = int((oc != dc).sum())
            a[f"ngrams_ours_{dom}"], a[f"ngrams_dsir_{dom}"] = int(oc.sum()), int(dc.sum())

    # the documents whose featurization differs, against those DSIR tokenizes differently from Java
    differ_ids = {i % spamassassin.REPLICA_STRIDE for i in ids[diff > tol].tolist()}  # copies -> first copy
    a["differ_examples"] = sorted(differ_ids)[:10]
    tf = extras_json.get("tokens_forget")
    if tf is not None:
        tok_ids = set(tf["docs_dsir_vs_java"])
        a["token_docs_differ"] = len(tok_ids)
        a["token_docs_differ_retain"] = len(extras_json["tokens_retain"]["docs_dsir_vs_java"])
        a["token_and_featurizer"] = len(tok_ids & differ_ids)
        a["featurizer_not_token"] = sorted(differ_ids - tok_ids)[:10]
        a["token_not_featurizer"] = sorted(tok_ids - differ_ids)[:10]
        a["stdlib_re_docs_differ"] = len(tf["docs_stdlib_re_vs_java"])
        a["stdlib_re_docs_differ_retain"] = len(extras_json["tokens_retain"]["docs_stdlib_re_vs_java"])
        a["tokens_counts"] = {"forget": tf["tokens"], "retain": extras_json["tokens_retain"]["tokens"]}

    # empty buckets and what each smoothing does with them
    b = len(cf)
    a["buckets"] = b
    a["empty_forget"], a["empty_retain"] = int((cf == 0).sum()), int((cr == 0).sum())
    a["empty_both"] = int(((cf == 0) & (cr == 0)).sum())
    only_f = (cf > 0) & (cr == 0)
    a["forget_only_buckets"] = int(only_f.sum())
    a["retain_only_buckets"] = int(((cr > 0) & (cf == 0)).sum())
    a["forget_ngrams_in_retain_empty"] = float(cf[only_f].sum() / max(cf.sum(), 1))
    has_only = per_text(extras, only_f.astype(np.float64)) > 0
    a["docs_with_retain_empty_bucket"] = int(has_only.sum())
    ld_dsir, ld_ours = dsir_log_ratio(cf, cr), laplace_log_ratio(cf, cr, lam)
    a["log_ratio_range_dsir"] = (float(ld_dsir[cf + cr > 0].min()), float(ld_dsir[cf + cr > 0].max())) if b else (0, 0)
    a["log_ratio_range_ours"] = (float(ld_ours[cf + cr > 0].min()), float(ld_ours[cf + cr > 0].max())) if b else (0, 0)
    if only_f.any():
        a["log_ratio_forget_only_dsir_median"] = float(np.median(ld_dsir[only_f]))
        a["log_ratio_forget_only_ours_median"] = float(np.median(ld_ours[only_f]))
    a["dsir_pseudocount_equiv_retain"] = 1e-8 * float(cr.sum())
    tokens = extras["tokens"][extras["row_of"]]
    a["spearman_len_ours"], a["spearman_len_dsir"] = spearman(s, tokens), spearman(w, tokens)
    a["eligible_100"] = int((tokens >= 100).sum())
    a["distinct_scores_ours"], a["distinct_weights_dsir"] = len(np.unique(s)), len(np.unique(w))
    a["dsir_weight_std"] = float(np.std(w)) if n else 0.0

    # per budget: overlaps
    rows_out = []
    for f in args.budgets:
        k = exact_k(f, n)
        entry = ours["sets"].get(round(float(f), 12))
        ours_set = {i for _, i, _ in entry["rows"]} if entry else set()
        r: dict[str, Any] = {"budget": f, "k": k, "ours_k": entry["k"] if entry else None}
        dsir_top = top_k_ids(ids, w, k)
        r["dsir_topk"] = len(ours_set & dsir_top) / k if k else float("nan")
        r["dsirfeat_lam_topk"] = len(ours_set & top_k_ids(ids, s_lam, k)) / k if k else float("nan")
        r["dsir_vs_dsirfeat_lam"] = len(dsir_top & top_k_ids(ids, s_lam, k)) / k if k else float("nan")
        key = repr(f)
        for name, src in (("resample_topk_filter0", extras_json.get("resample_topk_filter0", {})),
                          ("resample_topk_filter100", run.get("resample_topk_filter100", {})),
                          ("resample_gumbel_filter100", extras_json.get("resample_gumbel_filter100", {})),
                          ("resample_gumbel_filter0", extras_json.get("resample_gumbel_filter0", {}))):
            got = src.get(key, {})
            if "ids" in got:
                r[name] = len(ours_set & set(got["ids"])) / k if k else float("nan")
                if name == "resample_topk_filter0":
                    r["argpartition_equals_topk"] = set(got["ids"]) == dsir_top
            else:
                r[name] = got.get("error", "n/a")
        r["ties_ours"], r["ties_dsir"] = ties_at_k(s, k), ties_at_k(w, k)
        r["chance"] = k / n if n else float("nan")
        rows_out.append(r)
    a["budgets"] = rows_out
    return a


# ------------------------------------------------------------------ the page
def fmt(x: Any, nd: int = 3) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{nd}f}"
    return str(x)


def job_version() -> str:
    """The repository's commit, and whether the working tree had changes (the job that was timed)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return f"{head}{' with uncommitted changes' if dirty else ''}" if head else "unknown"
    except Exception:  # informational only
        return "unknown"


def machine() -> dict[str, str]:
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.splitlines()[0]
    except Exception:  # java is only informational here
        java = "n/a"
    return {"nproc": str(os.cpu_count()), "python": platform.python_version(), "platform": platform.platform(),
            "java": java}


def write_page(doc: Path, args: argparse.Namespace, argv: list[str], a: dict[str, Any], run: dict[str, Any],
               extras_json: dict[str, Any], ours: dict[str, Any], rounds: list[dict[str, float]],
               dsir_internal: list[dict[str, float]], ours_cmdline: list[str], venv: Path,
               version: str = "unknown") -> None:
    n_docs = a["n_forget"] + a["n_retain"]
    med_d = statistics.median(r["dsir"] for r in rounds)
    med_o = statistics.median(r["ours"] for r in rounds)
    smoke = args.max_docs > 0
    m = machine()
    L: list[str] = []
    L += ["# This job's lr_ngram against DSIR", "",
          "<!-- generated by bench/dsir_compare.py; edits are overwritten -->", ""]
    if smoke:
        L += [f"**Smoke run** (`--max-docs {args.max_docs}`): the numbers below are from a tiny corpus and only "
              "show that the comparison works; regenerate without `--max-docs` for the real comparison.", ""]
    L += ["Regenerate this page (from the repository root, with the project venv):", "", "```bash",
          shlex.join([".venv/bin/python", "bench/dsir_compare.py", *(x for x in argv if x != "--analyse-only")]),
          "```", "",
          "## Settings", "",
          "| | |", "|---|---|",
          f"| corpus | SpamAssassin via npm `{spamassassin.SPAM_PACKAGE}` (`scripts/spamassassin.py`): "
          "Subject line + body, headers dropped |",
          f"| forget (DSIR target) | spam: {a['n_forget']} documents |",
          f"| retain (DSIR raw data for the fit) | easy ham: {a['n_retain']} documents |",
          f"| replicate / max docs | {args.replicate} / {args.max_docs or 'all'} |",
          f"| buckets B, n-gram order | {args.buckets}, {args.ngram_order} (unigrams + bigrams) |",
          f"| DSIR | `{DSIR_REQUIREMENT}` in `{venv.relative_to(REPO) if venv.is_relative_to(REPO) else venv}` "
          f"(`HashedNgramDSIR`, tokenizer='wordpunct', num_proc={args.num_proc}, "
          "fit_importance_estimator(num_tokens_to_fit='all')) |",
          f"| DSIR venv packages | {', '.join(x for x in dsir_freeze(venv) if x.split('==')[0].lower() in ('data-selection', 'nltk', 'regex', 'numpy', 'joblib', 'tqdm'))} |",  # noqa: E501
          f"| NLTK tokenizer | `{extras_json.get('tokenizer_class')}` pattern "
          f"`{str(extras_json.get('tokenizer_pattern')).replace('|', chr(92) + '|')}` "
          f"flags {extras_json.get('tokenizer_flags')} |",
          f"| ours | `{shlex.join(ours_cmdline[1:])}` |",
          f"| our smoothing lambda | {a['lambda']} (pseudo-count per bucket) |",
          ""]
    L += ["## DSIR 1.0.3's implementation", "",
          "Read from the wheel's `data_selection/hashed_ngram_dsir.py` and `base.py` (details in the docstring of "
          "`bench/dsir_compare.py`):", "",
          "* tokens: `WordPunctTokenizer().tokenize(line.lower())`: `findall` of `\\w+|[^\\w\\s]+` on Python's "
          "`str.lower()`; the regex engine depends on the NLTK version, which data-selection leaves open "
          "(`nltk>=3.8.1`): the stdlib `re` up to NLTK 3.10.2, the `regex` module (through `nltk.redos`, 5 s "
          "timeout per call) from 3.10.3; their Unicode classes differ (combining marks, `No` numbers, "
          "U+001C..U+001F), and the `regex` classes are Java's `(?U)` classes;",
          "* features: each token, then the bigrams (`nltk.ngrams`, joined with `' '`), all hashed into the same "
          "B buckets with `int(sha256(utf8).hexdigest(), 16) % B`; raw int counts;",
          "* fit: p = bucket counts / total per side, no pseudo-count; `log_diff = log(p_target + 1e-8) - "
          "log(p_raw + 1e-8)`; `num_buckets` and `ngrams` are honoured by the featurizer and the estimator;",
          "* log weight of x: `np.dot(log_diff, counts(x))` (our lr_ngram with a different estimate of theta);",
          "* weights are saved per *virtual shard* (round-robin lines j, j+P, ...), not in file order;",
          "* `resample(top_k=True)`: drops examples under `min_example_length` (default 100 tokens) and takes "
          "`np.argpartition(-w, k)[:k]` (ties broken arbitrarily); `top_k=False` adds Gumbel noise from numpy's "
          "global RNG (sampling without replacement proportional to the weight); k = n raises.",
          "* weighting the forget documents: DSIR weights only `raw_datasets`, so after the fit `raw_datasets` is "
          "set to [forget] and `compute_importance_weights()` is called (log_diff unchanged).", ""]

    L += ["## Overlap of the removal sets", "",
          "Overlap = |ours ∩ DSIR's set| / k for our top-k removal set (score descending, ties by id).  "
          "Columns: DSIR's top-k by log weight (ties by id); what `resample(top_k=True)` returns without the length "
          "filter (`min_example_length=0`) and as shipped (`100`); `resample(top_k=False)` (Gumbel, "
          f"`np.random.seed({0})`) as shipped and without the filter; DSIR's featurizer with *our* smoothing "
          "(isolates the featurizer); chance = k/n.", "",
          "| budget | k | DSIR top-k | resample top_k, filter 0 | resample top_k, as shipped | Gumbel, as shipped "
          "| Gumbel, filter 0 | DSIR featurizer + our smoothing | chance | ties at k (ours / DSIR) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in a["budgets"]:
        L.append(f"| {r['budget']} | {r['k']} | {fmt(r['dsir_topk'])} | {fmt(r['resample_topk_filter0'])} | "
                 f"{fmt(r['resample_topk_filter100'])} | {fmt(r['resample_gumbel_filter100'])} | "
                 f"{fmt(r['resample_gumbel_filter0'])} | {fmt(r['dsirfeat_lam_topk'])} | {fmt(r['chance'])} | "
                 f"{r['ties_ours']} / {r['ties_dsir']} |")
    eq = [r.get("argpartition_equals_topk") for r in a["budgets"]]
    L += ["", f"`resample(top_k=True)` without the filter picked exactly DSIR's top-k by weight: "
          f"{', '.join(str(x) for x in eq)} (per budget).  Documents with at least 100 tokens (eligible for "
          f"`resample` as shipped): {a['eligible_100']} of {a['n_forget']}.", ""]
    if any(r["ours_k"] != r["k"] for r in a["budgets"]):
        L += ["**Note:** our k differs from floor(f n) for some budget: "
              + ", ".join(f"{r['budget']}: {r['ours_k']} vs {r['k']}" for r in a["budgets"]), ""]

    L += ["## Correlations over all forget documents", "",
          "| pair | Spearman | Pearson |", "|---|---|---|",
          f"| ours vs DSIR log weight | {fmt(a['spearman'], 4)} | {fmt(a['pearson'], 4)} |",
          f"| ours vs DSIR featurizer + our smoothing | {fmt(a['spearman_ours_vs_dsirfeat_lam'], 4)} | "
          f"{fmt(a['pearson_ours_vs_dsirfeat_lam'], 4)} |",
          f"| DSIR log weight vs DSIR featurizer + our smoothing | {fmt(a['spearman_dsir_vs_dsirfeat_lam'], 4)} | "
          f"{fmt(a['pearson_dsir_vs_dsirfeat_lam'], 4)} |",
          f"| ours vs token count | {fmt(a['spearman_len_ours'], 4)} | |",
          f"| DSIR vs token count | {fmt(a['spearman_len_dsir'], 4)} | |", "",
          f"Check: DSIR's weights recomputed from its per-document counts and its log_diff differ from the .npy "
          f"files by at most {a['dsir_recompute_maxabs']:.2e}.", ""]

    L += ["## Throughput", "",
          f"Each round runs both whole commands, alternating which goes first; wall time of the process "
          f"(DSIR: the venv's python starting `bench/dsir_worker.py run`: fit, weights, resample(top_k=True) per "
          f"budget; ours: `distunlearn run` including the Spark start, statistics, scoring, selection and the Delta "
          f"writes, budgets {','.join(repr(b) for b in ours_budgets(args.budgets))}).  docs/s = (forget + retain "
          f"documents) / wall = {n_docs} / wall.", "",
          "| round | first | DSIR wall (s) | DSIR fit / weights / resample (s) | ours wall (s) |",
          "|---|---|---|---|---|"]
    for i, (r, t) in enumerate(zip(rounds, dsir_internal, strict=True), 1):
        L.append(f"| {i} | {r['first']} | {r['dsir']:.1f} | {t.get('fit', 0):.1f} / {t.get('weights', 0):.1f} / "
                 f"{t.get('resample_topk', 0):.1f} | {r['ours']:.1f} |")
    L += [f"| **median** | | **{med_d:.1f}** | | **{med_o:.1f}** |", "",
          f"docs/s: DSIR {n_docs / med_d:.0f}, ours {n_docs / med_o:.0f}; ratio ours / DSIR = "
          f"**{med_d / med_o:.2f}**.", ""]
    if ours.get("timings"):
        L += ["Our job's stage timings in the last round (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in ours["timings"].items()), ""]
    L += [f"Machine: nproc {m['nproc']}, Python {m['python']} ({m['platform']}), {m['java']}.  Job timed: "
          f"commit {version}.", ""]

    L += ["## Why the sets differ", ""]
    L.append(f"* **Featurizer (lowercasing, tokenizer, n-grams, hash).**  {a['featurizer_check']} reproduce our "
             f"scores (to within 1e-6, relative) on {a['n_forget'] - a['featurizer_docs_differ']} of "
             f"{a['n_forget']} forget documents; {a['featurizer_docs_differ']} differ (largest difference "
             f"{a['featurizer_maxabs']:.3g})" + (f", ids {a['differ_examples']}" if a["differ_examples"] else "")
             + ".")
    for dom in ("forget", "retain"):
        if f"buckets_differ_{dom}" in a:
            L.append(f"  Summed bucket counts, {dom}: {a[f'buckets_differ_{dom}']} of {a['buckets']} buckets differ "
                     f"(n-grams: ours {a[f'ngrams_ours_{dom}']}, DSIR {a[f'ngrams_dsir_{dom}']}).")

    def classes(side: str) -> str:
        rows = [d for d in extras_json.get("char_classes", []) if d[side] != d["ours"]]
        text = "; ".join(f"{d['char']}: {d[side]} / {d['ours']} ({d['forget_docs']} forget, {d['retain_docs']} retain "
                         f"docs)" for d in rows[:8])
        return (text + (f"; and {len(rows) - 8} more" if len(rows) > 8 else "")) if rows else "none"

    engine = extras_json.get("tokenizer_engine")
    java = extras_json.get("java", {})
    L.append(f"  Ours: Spark's `lower` (ICU4J `UCharacter.toLowerCase` in Spark 4.0, "
             f"`spark.sql.icu.caseMappings.enabled`) and `regexp_extract_all` with the Java regex "
             f"`{java.get('pattern', '?')}`.  DSIR: Python's `str.lower` and NLTK's `\\w+|[^\\w\\s]+` compiled "
             f"by `{engine}` (NLTK {extras_json.get('nltk')}; NLTK <= 3.10.2 compiles it with the stdlib `re`, "
             f">= 3.10.3 with the `regex` engine through `nltk.redos`).")
    tf, tr = extras_json.get("tokens_forget"), extras_json.get("tokens_retain")
    if tf is not None and tr is not None:
        L.append(f"  Our tokens, computed outside Spark by `TokenDump.java` (the same lowercasing and regex on "
                 f"{java.get('note', 'the JVM')}), against DSIR's, document by document: "
                 f"{a['token_docs_differ']} of {tf['docs_compared']} forget and {a['token_docs_differ_retain']} of "
                 f"{tr['docs_compared']} retain documents"
                 + (" (the first copy of each)" if args.replicate > 1 else "")
                 + f" tokenize differently (tokens, forget: Java "
                 f"{tf['tokens']['java']}, DSIR {tf['tokens']['dsir']}; retain: Java {tr['tokens']['java']}, DSIR "
                 f"{tr['tokens']['dsir']}); {a['token_and_featurizer']} of the forget ones are among the "
                 f"{a['featurizer_docs_differ']} whose featurization differs"
                 + (f"; featurization differs without a token difference for {a['featurizer_not_token']}"
                    if a["featurizer_not_token"] else "")
                 + f".  Characters of the corpus that DSIR's tokenizer classes differently from ours (DSIR / ours, "
                 f"class of c in lower('a' + c + 'a')): {classes('dsir')}.")
        L.append(f"  With the stdlib `re` (what NLTK <= 3.10.2 gives DSIR), {a['stdlib_re_docs_differ']} forget and "
                 f"{a['stdlib_re_docs_differ_retain']} retain documents would tokenize differently from ours; the "
                 f"characters (stdlib `re` / ours): {classes('stdlib_re')}.")
    else:
        L.append(f"  No token-level comparison: {java.get('error', 'no Java tokens')}.")
    L.append(f"* **Smoothing.**  Of the {a['buckets']} buckets, {a['empty_forget']} are empty in forget, "
             f"{a['empty_retain']} in retain ({a['empty_both']} in both); {a['forget_only_buckets']} are used by "
             f"forget only, holding {100 * a['forget_ngrams_in_retain_empty']:.2f}% of the forget n-grams, and "
             f"{a['docs_with_retain_empty_bucket']} of {a['n_forget']} forget documents have at least one of them.  "
             f"DSIR's floor of 1e-8 in probability (a pseudo-count of about {a['dsir_pseudocount_equiv_retain']:.2g} "
             f"for retain) gives such a bucket a log ratio of median "
             f"{fmt(a.get('log_ratio_forget_only_dsir_median', float('nan')), 2)} against "
             f"{fmt(a.get('log_ratio_forget_only_ours_median', float('nan')), 2)} with our lambda = {a['lambda']}; "
             f"log-ratio range over used buckets: DSIR {fmt(a['log_ratio_range_dsir'][0], 2)} .. "
             f"{fmt(a['log_ratio_range_dsir'][1], 2)}, ours {fmt(a['log_ratio_range_ours'][0], 2)} .. "
             f"{fmt(a['log_ratio_range_ours'][1], 2)}.  DSIR's weights against the same featurizer with our "
             f"smoothing: Spearman {fmt(a['spearman_dsir_vs_dsirfeat_lam'], 4)}; top-k overlaps "
             + ", ".join(f"{r['budget']}: {fmt(r['dsir_vs_dsirfeat_lam'])}" for r in a["budgets"]) + ".  "
             "Pass `--ours-args \"--ngram-smoothing X\"` to vary lambda.")
    L.append(f"* **Ties.**  Distinct scores: ours {a['distinct_scores_ours']}, DSIR {a['distinct_weights_dsir']} "
             f"of {a['n_forget']} documents.  Documents tied with the k-th score (ours / DSIR): "
             + ", ".join(f"{r['budget']}: {r['ties_ours']} / {r['ties_dsir']}" for r in a["budgets"])
             + ".  We break ties by id ascending; `resample(top_k=True)` leaves them to `np.argpartition`"
             + f"; `resample(top_k=False)` adds Gumbel noise of standard deviation 1.28 to log weights whose standard "
             f"deviation over the forget documents is {a['dsir_weight_std']:.1f}, so it reorders only near-ties"
             + (" (with `--replicate` R > 1 every document has R identical copies, so ties are the rule)."
                if args.replicate > 1 else "."))
    L.append(f"* **Length.**  Both scores are sums over a document's n-grams, so long documents dominate: "
             f"Spearman with the token count is {fmt(a['spearman_len_ours'], 3)} (ours) and "
             f"{fmt(a['spearman_len_dsir'], 3)} (DSIR).  `resample` as shipped also drops the "
             f"{a['n_forget'] - a['eligible_100']} forget documents under 100 tokens, which our job can select.")
    L.append("")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(L))


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicate", type=int, default=1, help="write each message R times (distinct ids)")
    p.add_argument("--max-docs", type=int, default=0, help="first N messages per domain, for a smoke run (0: all)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both commands")
    p.add_argument("--buckets", type=int, default=10000, help="hash buckets B (DSIR's default 10000)")
    p.add_argument("--ngram-order", type=int, default=2, help="longest n-gram (DSIR's ngrams)")
    p.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.25, 0.5],
                   help="deletion budgets (fractions of the forget set); ours also runs 1.0 for all scores")
    p.add_argument("--num-proc", type=int, default=2, help="DSIR's num_proc")
    p.add_argument("--shuffle-partitions", type=int, default=4, help="our --shuffle-partitions")
    p.add_argument("--ours-args", default="", help="extra flags for distunlearn run, e.g. '--ngram-smoothing 0.1'")
    p.add_argument("--smoothing-default", type=float, default=1.0,
                   help="lambda assumed when our runs table does not record ngram_smoothing")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="corpus cache, outputs and logs")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="DSIR's own venv")
    p.add_argument("--nltk", default=DEFAULT_NLTK, help="NLTK version pinned in DSIR's venv (its tokenizer's engine)")
    p.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the Markdown page to write")
    p.add_argument("--analyse-only", action="store_true",
                   help="skip the rounds: redo the analysis and the page from the last run's outputs under --work")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.replicate < 1:
        p.error("--rounds and --replicate must be at least 1")

    py = ensure_dsir_venv(args.venv, args.nltk)
    corpus = build_corpus(args.work, args.replicate, args.max_docs)
    print(f"corpus: {corpus} ({(corpus / 'done.json').read_text()})", flush=True)
    logs = args.work / "logs"
    out = args.work / "ours-output"
    rounds: list[dict[str, Any]] = []
    dsir_internal: list[dict[str, float]] = []
    ocmd = ours_cmd(corpus, out, args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rounds_file = args.work / "rounds.json"
    for i in range(1, 0 if args.analyse_only else args.rounds + 1):
        order = ("dsir", "ours") if i % 2 else ("ours", "dsir")
        walls: dict[str, Any] = {"first": order[0]}
        for who in order:
            if who == "dsir":
                walls["dsir"] = run_timed(dsir_cmd(py, corpus, args.work, args, "run"), logs / f"dsir-round{i}.log",
                                          env)
                dsir_internal.append(json.loads((args.work / "dsir-run.json").read_text())["timings"])
            else:
                if out.exists():
                    shutil.rmtree(out)  # every round writes fresh tables
                walls["ours"] = run_timed(ocmd, logs / f"ours-round{i}.log", env)
        rounds.append(walls)
        print(f"round {i}: first {order[0]}, DSIR {walls['dsir']:.1f} s (fit {dsir_internal[-1]['fit']:.1f}, "
              f"weights {dsir_internal[-1]['weights']:.1f}), ours {walls['ours']:.1f} s", flush=True)
    if args.analyse_only:
        saved = json.loads(rounds_file.read_text())
        if saved["corpus"] != str(corpus) or saved["ours_cmd"] != ocmd:
            raise SystemExit(f"--analyse-only: the last rounds under {args.work} ran another setting")
        rounds, dsir_internal = saved["rounds"], saved["dsir_internal"]
        version = saved.get("job_version", "unknown")
    else:
        version = job_version()
        rounds_file.write_text(json.dumps({"corpus": str(corpus), "ours_cmd": ocmd, "rounds": rounds,
                                           "dsir_internal": dsir_internal, "job_version": version}))

    ours = read_ours(out)
    pattern = our_token_pattern(ours)
    java = dump_java_tokens(corpus, args.work, pattern) if pattern else {"error": "no token pattern recorded"}
    extras_cmd = dsir_cmd(py, corpus, args.work, args, "extras")
    if "forget" in java:
        extras_cmd += ["--java-tokens-forget", str(java["forget"]), "--java-tokens-retain", str(java["retain"]),
                       "--java-classes", str(java["classes"])]
    else:
        print(f"tokens: no Java comparison ({java.get('error')})", flush=True)
    run_timed(extras_cmd, logs / "dsir-extras.log", env)
    run = json.loads((args.work / "dsir-run.json").read_text())
    extras_json = json.loads((args.work / "dsir-extras.json").read_text())
    extras_json["java"] = {k: str(v) for k, v in java.items()}
    extras = dict(np.load(args.work / "dsir-extras.npz"))
    a = analyse(corpus, args.work, run, extras_json, extras, ours, args)
    write_page(args.doc, args, argv, a, run, extras_json, ours, rounds, dsir_internal, ocmd, args.venv, version)
    (args.work / "analysis.json").write_text(json.dumps(
        {"analysis": a, "rounds": rounds, "dsir_internal": dsir_internal}, indent=1, default=str))

    med_d = statistics.median(r["dsir"] for r in rounds)
    med_o = statistics.median(r["ours"] for r in rounds)
    print(f"n_forget {a['n_forget']}, n_retain {a['n_retain']}; Spearman {a['spearman']:.4f}, "
          f"Pearson {a['pearson']:.4f}")
    for r in a["budgets"]:
        print(f"budget {r['budget']}: k {r['k']}, overlap with DSIR top-k {fmt(r['dsir_topk'])}, "
              f"resample top_k as shipped {fmt(r['resample_topk_filter100'])}, "
              f"Gumbel {fmt(r['resample_gumbel_filter100'])}")
    print(f"featurizer: {a['featurizer_docs_differ']} documents differ (max abs {a['featurizer_maxabs']:.2e})")
    print(f"median wall: DSIR {med_d:.1f} s, ours {med_o:.1f} s; docs/s ratio ours/DSIR {med_d / med_o:.2f}")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
