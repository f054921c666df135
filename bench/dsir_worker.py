#!/usr/bin/env python
"""DSIR's side of ``bench/dsir_compare.py``: runs inside ``bench-data/dsir-venv`` only.

This script imports ``data_selection`` (DSIR 1.0.3, Xie et al. 2023), which is *not* a
dependency of the project: ``bench/dsir_compare.py`` creates that venv and runs this file with
its python.  It uses nothing but the standard library, numpy and DSIR's own dependencies.

Two phases (each writes one JSON file, ``--out``):

``run`` (the timed command of the throughput comparison)
    HashedNgramDSIR(raw_datasets=[retain], target_datasets=[forget], num_buckets=B, ngrams=n,
    tokenizer='wordpunct', num_proc=P); fit_importance_estimator(num_tokens_to_fit='all'),
    which makes log_diff = log(p_forget + 1e-8) - log(p_retain + 1e-8); then raw_datasets is
    pointed at [forget] and compute_importance_weights() writes the forget documents' log
    importance weights (one .npy per virtual shard); they are read back and put in file order;
    then resample(top_k=True) as shipped (min_example_length=100) for every budget.

``extras`` (untimed analysis, after ``run`` with the same ``--work``)
    the other resample variants (top_k=True without the length filter; top_k=False, i.e. Gumbel
    noise, with numpy's global RNG seeded, with and without the filter), DSIR's per-document
    bucket counts of the forget documents and both domains' summed bucket counts (written to
    ``--npz``, so the comparison can re-score with another smoothing), token counts, the
    tokenizer's regular expression as NLTK defines it, and, given the tokens our Spark featurizer
    makes (dumped by ``TokenDump.java``), the documents that DSIR tokenizes differently.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path


def read_ids(path: Path) -> list[int]:
    """The ids of a JSONL file, in file order (DSIR's default_load_dataset_fn reads the same lines)."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f if line]


def budgets_k(budgets: list[float], n: int) -> list[tuple[float, int]]:
    """(fraction, k = floor(f * n)) as the project's job computes k (the fraction read from its repr)."""
    return [(f, math.floor(Fraction(repr(float(f))) * n)) for f in budgets]


def make_dsir(args: argparse.Namespace, raw: Path, min_example_length: int = 100):
    from data_selection import HashedNgramDSIR

    return HashedNgramDSIR(raw_datasets=[str(raw)], target_datasets=[str(args.forget)],
                           cache_dir=str(args.work / "cache"), num_buckets=args.buckets, ngrams=args.ngrams,
                           tokenizer="wordpunct", num_proc=args.num_proc, min_example_length=min_example_length)


def weights_in_file_order(dsir, n: int):
    """The forget documents' log importance weights in file order.

    compute_importance_weights() shards a file *virtually*: shard j of P holds lines j, j+P,
    j+2P, ... and is saved as <overall_idx>.npy, so the concatenation resample() uses is
    [lines 0, P, 2P, ...; lines 1, P+1, ...], not file order.  Returns (weights in file order,
    the line index of every position of the concatenation)."""
    import numpy as np

    shards = dsir._get_virtually_sharded_datasets(dsir.raw_datasets)
    weights = np.empty(n, dtype=np.float64)
    concat_lines = []
    for s in shards:
        w = np.load(str(Path(dsir.log_importance_weights_dir) / f"{s['overall_idx']}.npy"))
        lines = np.arange(s["shard_idx"], n, s["num_shards"])
        if len(lines) != len(w):
            raise RuntimeError(f"shard {s}: {len(w)} weights for {len(lines)} lines")
        weights[lines] = w
        concat_lines.append(lines)
    return weights, np.concatenate(concat_lines), shards


def resample_ids(dsir, out: Path, k: int, top_k: bool) -> dict:
    """Calls dsir.resample(out, k, top_k=...) and returns the ids it wrote (or the error)."""
    if out.exists():
        shutil.rmtree(out)
    cache = out.parent / (out.name + ".tmp")
    if cache.exists():
        shutil.rmtree(cache)
    start = time.perf_counter()
    try:
        dsir.resample(out_dir=str(out), num_to_sample=k, cache_dir=str(cache), top_k=top_k)
    except Exception as exc:  # e.g. k >= the number of eligible documents: argpartition's kth out of bounds
        return {"k": k, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}
    ids = []
    for part in sorted(out.glob("*.jsonl")):
        ids += read_ids(part)
    return {"k": k, "ids": ids, "seconds": time.perf_counter() - start}


def phase_run(args: argparse.Namespace) -> dict:
    import data_selection

    t_all = time.perf_counter()
    cache = args.work / "cache"
    if cache.exists():
        shutil.rmtree(cache)  # every round starts from nothing
    forget_ids = read_ids(args.forget)
    n = len(forget_ids)
    timings = {}

    t = time.perf_counter()
    dsir = make_dsir(args, args.retain)
    dsir.fit_importance_estimator(num_tokens_to_fit="all")
    timings["fit"] = time.perf_counter() - t

    import numpy as np

    np.savez(args.work / "dsir_model.npz", raw_probs=dsir.raw_probs, target_probs=dsir.target_probs,
             log_diff=dsir.log_diff)

    t = time.perf_counter()
    dsir.raw_datasets = [str(args.forget)]
    dsir.compute_importance_weights()
    timings["weights"] = time.perf_counter() - t

    t = time.perf_counter()
    weights, concat_lines, shards = weights_in_file_order(dsir, n)
    timings["read_weights"] = time.perf_counter() - t

    t = time.perf_counter()
    resampled = {}
    for f, k in budgets_k(args.budgets, n):
        resampled[repr(f)] = resample_ids(dsir, args.work / "resample" / f"topk-filter100-{f}", k, top_k=True)
    timings["resample_topk"] = time.perf_counter() - t
    timings["total_in_process"] = time.perf_counter() - t_all

    return {
        "phase": "run", "data_selection_version": data_selection.__version__, "python": sys.version.split()[0],
        "numpy": np.__version__, "num_buckets": dsir.num_buckets, "ngrams": dsir.ngrams, "num_proc": dsir.num_proc,
        "min_example_length": dsir.min_example_length, "n_forget": n, "n_retain": len(read_ids(args.retain)),
        "ids": forget_ids, "weights": weights.tolist(), "concat_lines": concat_lines.tolist(),
        "shards": [{k: v for k, v in s.items() if k != "path"} for s in shards],
        "resample_topk_filter100": resampled, "timings": timings,
    }


def phase_extras(args: argparse.Namespace) -> dict:
    import nltk
    import numpy as np
    from data_selection.hashed_ngram_dsir import get_ngram_counts, wpt

    forget_ids = read_ids(args.forget)
    n = len(forget_ids)
    out: dict = {"phase": "extras", "nltk": nltk.__version__,
                 "tokenizer_pattern": wpt._pattern, "tokenizer_flags": int(wpt._flags),
                 "tokenizer_class": type(wpt).__module__ + "." + type(wpt).__qualname__}

    # resample variants on the weights the run phase wrote
    variants = {"topk_filter0": (0, True), "gumbel_filter100": (100, False), "gumbel_filter0": (0, False)}
    for name, (min_len, top_k) in variants.items():
        dsir = make_dsir(args, args.forget, min_example_length=min_len)
        np.random.seed(args.seed)  # resample(top_k=False) draws from numpy's global RNG and takes no seed
        out[f"resample_{name}"] = {
            repr(f): resample_ids(dsir, args.work / "resample" / f"{name}-{f}", k, top_k=top_k)
            for f, k in budgets_k(args.budgets, n)}
    meta_dir = Path(dsir.perexample_metadata_dir)
    meta = np.concatenate([np.load(str(meta_dir / f"{s['overall_idx']}.npy"))
                           for s in dsir._get_virtually_sharded_datasets(dsir.raw_datasets)])
    out["metadata_eligible_100"] = int((meta >= 100).sum())

    # DSIR's own featurizer on every distinct text (copies of --replicate share one row):
    # per-document counts of the forget documents (CSR over distinct texts + a row per document)
    # and both domains' summed counts
    b, order = args.buckets, args.ngrams
    indptr, indices, data, tokens, row_of = [0], [], [], [], []
    rows: dict[str, int] = {}
    forget_counts = np.zeros(b, dtype=np.int64)
    with args.forget.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if text not in rows:
                rows[text] = len(rows)
                c = get_ngram_counts(text, n=order, num_buckets=b, tokenizer=wpt.tokenize)
                nz = np.flatnonzero(c)
                indices.append(nz.astype(np.int32))
                data.append(c[nz].astype(np.int32))
                indptr.append(indptr[-1] + len(nz))
                tokens.append(len(wpt.tokenize(text.lower())))
            row_of.append(rows[text])
            r = rows[text]
            np.add.at(forget_counts, indices[r], data[r])
    retain_counts = np.zeros(b, dtype=np.int64)
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with args.retain.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if text not in seen:
                c = get_ngram_counts(text, n=order, num_buckets=b, tokenizer=wpt.tokenize)
                nz = np.flatnonzero(c)
                seen[text] = (nz, c[nz])
            np.add.at(retain_counts, *seen[text])
    del seen
    np.savez_compressed(args.npz, ids=np.asarray(forget_ids, dtype=np.int64), indptr=np.asarray(indptr, np.int64),
                        indices=np.concatenate(indices) if indices else np.zeros(0, np.int32),
                        data=np.concatenate(data) if data else np.zeros(0, np.int32),
                        row_of=np.asarray(row_of, np.int64), tokens=np.asarray(tokens, np.int64),
                        forget_counts=forget_counts, retain_counts=retain_counts)
    out["tokenizer_engine"] = type(getattr(wpt, "_regexp", None)).__module__
    for dom, path, java in (("forget", args.forget, args.java_tokens_forget),
                            ("retain", args.retain, args.java_tokens_retain)):
        if java is not None:
            out[f"tokens_{dom}"] = compare_tokens(path, java, wpt)
    if args.java_classes is not None:
        limits = [out.get(f"tokens_{dom}", {}).get("docs_compared") for dom in ("forget", "retain")]
        out["char_classes"] = char_classes(args.java_classes, [args.forget, args.retain], limits, wpt)
    model = np.load(args.work / "dsir_model.npz")
    out["probs_match_counts"] = bool(
        np.allclose(model["target_probs"], forget_counts / forget_counts.sum(), rtol=0, atol=1e-15)
        and np.allclose(model["raw_probs"], retain_counts / retain_counts.sum(), rtol=0, atol=1e-15))
    return out


def compare_tokens(jsonl: Path, java_tokens: Path, wpt) -> dict:
    """Per document, DSIR's tokens (``wpt.tokenize(text.lower())``) against the tokens of our Spark
    featurizer as dumped by ``TokenDump.java`` (one base64 line per document: the tokens joined by
    NUL), and the stdlib ``re`` tokens (what NLTK <= 3.10.2 gives) against the same Java tokens.
    Returns the ids of the documents whose token lists differ and, per comparison, the unusual
    characters (non-ASCII or control) of the tokens that only one side has."""
    import base64
    import collections
    import re
    import unicodedata

    std = re.compile(r"\w+|[^\w\s]+")
    result: dict = {}
    docs: dict[str, list] = {"dsir": [], "stdlib_re": []}
    examples: dict[str, list] = {"dsir": [], "stdlib_re": []}
    chars: dict[str, dict[str, list]] = {"dsir": {}, "stdlib_re": {}}
    n_tokens = {"dsir": 0, "java": 0, "stdlib_re": 0}
    compared = 0
    with jsonl.open(encoding="utf-8") as f, java_tokens.open(encoding="ascii") as jt:
        for jline in jt:  # the first documents of the file (with --replicate, the first copy of each)
            row = json.loads(next(f))
            compared += 1
            raw = base64.b64decode(jline.strip()).decode("utf-8")
            java = raw.split("\0") if raw else []
            lower = row["text"].lower()
            n_tokens["java"] += len(java)
            for name, toks in (("dsir", wpt.tokenize(lower)), ("stdlib_re", std.findall(lower))):
                n_tokens[name] += len(toks)
                if toks == java:
                    continue
                docs[name].append(row["id"])
                a, b = collections.Counter(toks), collections.Counter(java)
                if len(examples[name]) < 5:  # ascii(): combining marks and controls stay visible
                    examples[name].append({"id": row["id"], "python_only": [ascii(t) for t in list(a - b)[:4]],
                                           "java_only": [ascii(t) for t in list(b - a)[:4]]})
                seen = set()
                for side, diff in (("python", a - b), ("java", b - a)):
                    for tok in diff:
                        for c in tok:
                            if (ord(c) > 127 or ord(c) < 32) and (c, side) not in seen:
                                seen.add((c, side))
                                desc = f"U+{ord(c):04X} {unicodedata.category(c)} {unicodedata.name(c, '?')}"
                                entry = chars[name].setdefault(desc, [0, 0])
                                entry[0 if side == "python" else 1] += 1
    for name in ("dsir", "stdlib_re"):
        result[f"docs_{name}_vs_java"] = docs[name]
        result[f"chars_{name}_vs_java"] = chars[name]
        result[f"examples_{name}_vs_java"] = examples[name]
    result["tokens"] = n_tokens
    result["docs_compared"] = compared
    return result


def char_classes(java_classes: Path, files: list[Path], limits: list[int | None], wpt) -> list[dict]:
    """The unusual characters (non-ASCII or control) that DSIR's tokenizer or the stdlib ``re`` put in
    another class (word, space, punct) than our featurizer does (``TokenDump classes``: the tokens
    of lower("a" + c + "a")), with the number of forget and retain documents holding each (among the
    first ``limits`` documents of each file, the ones whose tokens were compared)."""
    import re
    import unicodedata

    std = re.compile(r"\w+|[^\w\s]+")

    def cls(toks: list[str], probe: str) -> str:
        return "word" if toks == [probe] else "space" if toks == ["a", "a"] else "punct"

    java = {}
    for line in java_classes.read_text().splitlines():
        cp, c = line.split()
        java[chr(int(cp, 16))] = c
    differ = {}
    for c, jc in java.items():
        probe = ("a" + c + "a").lower()
        dc, sc = cls(wpt.tokenize(probe), probe), cls(std.findall(probe), probe)
        if dc != jc or sc != jc:
            differ[c] = {"char": f"U+{ord(c):04X} {unicodedata.category(c)} {unicodedata.name(c, '?')}",
                         "dsir": dc, "stdlib_re": sc, "ours": jc, "forget_docs": 0, "retain_docs": 0}
    for path, key, limit in zip(files, ("forget_docs", "retain_docs"), limits, strict=True):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if limit is not None and i >= limit:
                    break
                for c in set(json.loads(line)["text"]) & differ.keys():
                    differ[c][key] += 1
    return sorted(differ.values(), key=lambda d: -(d["forget_docs"] + d["retain_docs"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("run", "extras"))
    parser.add_argument("--forget", type=Path, required=True, help="forget JSONL (DSIR's target)")
    parser.add_argument("--retain", type=Path, required=True, help="retain JSONL (DSIR's raw data for the fit)")
    parser.add_argument("--work", type=Path, required=True, help="DSIR cache_dir and resample outputs")
    parser.add_argument("--buckets", type=int, default=10000)
    parser.add_argument("--ngrams", type=int, default=2)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.25, 0.5])
    parser.add_argument("--seed", type=int, default=0, help="numpy global seed before resample(top_k=False)")
    parser.add_argument("--npz", type=Path, help="extras: where the bucket counts go")
    parser.add_argument("--java-tokens-forget", type=Path, help="extras: TokenDump.java's tokens of the forget file")
    parser.add_argument("--java-tokens-retain", type=Path, help="extras: TokenDump.java's tokens of the retain file")
    parser.add_argument("--java-classes", type=Path, help="extras: TokenDump.java's class of every unusual character")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase == "extras" and args.npz is None:
        parser.error("extras needs --npz")
    result = phase_run(args) if args.phase == "run" else phase_extras(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result))
    t = result.get("timings", {})
    print(json.dumps({"phase": args.phase, "out": str(args.out), **({"timings": t} if t else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
