#!/usr/bin/env python
"""The performance benchmark: this job against the single-node limit and Spark MLlib.

``make bench`` (or ``python bench/run.py``) generates seeded float32 tables (Parquet files
turned into Delta tables in place, so every contender reads the same files), then, side by
side in one run and in alternating order:

(a) this job, ``distunlearn run`` (statistics, scoring, selection, Delta output, diagnostics);
(b) ``bench/single_node.py``: one Python process, pyarrow + numpy, one thread;
(c) ``bench/mllib_baseline.py``: RowMatrix.computeCovariance + Summarizer, a row-at-a-time
    Python UDF and a Window row_number for the selection.

Each contender is a separate process; wall times are medians over ``--repeats`` rounds and
peak resident memory is sampled every 0.2 s per process role (driver JVM, driver Python,
Python workers).  Then it checks that (a), (b) and (c) agree (statistics, scores, removal
sets), measures 1M -> 10M forget rows for (a), runs (a) at large d with the full, diagonal
and low-rank covariances (accuracy against full on the same data), and rewrites
``docs/BENCHMARKS.md``.  ``--smoke`` runs a tiny version (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402

DOC = REPO / "docs" / "BENCHMARKS.md"
KEEP_BEGIN, KEEP_END = "<!-- profiling log: kept by bench/run.py -->", "<!-- end of profiling log -->"


# ------------------------------------------------------------------ processes and memory
@dataclass
class Measured:
    wall: float
    peak_mb: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def _role(proc, root_pid: int) -> str:
    import psutil

    try:
        name, cmd = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if proc.pid == root_pid:
        return "driver_python"
    if name == "java" or "java" in cmd.split(" ")[0]:
        return "driver_jvm"
    if "pyspark" in cmd or "python" in name:
        return "workers"
    return "other"


def run_measured(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd``; wall time and peak RSS per role (workers: the peak of their sum, an upper
    bound since forked workers share pages).  Raises on a non-zero exit, showing the log."""
    import psutil

    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peaks: dict[str, float] = {}
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                now: dict[str, float] = {}
                try:
                    for p in [root, *root.children(recursive=True)]:
                        role = _role(p, proc.pid)
                        try:
                            now[role] = now.get(role, 0.0) + p.memory_info().rss / 2**20
                        except psutil.Error:
                            pass
                except psutil.Error:
                    pass
                for role, mb in now.items():
                    peaks[role] = max(peaks.get(role, 0.0), mb)
                done.wait(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        done.set()
        thread.join()
    wall = time.monotonic() - start
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise SystemExit(f"benchmark step failed (exit {code}): {' '.join(cmd)}\n{tail}")
    peaks.pop("gone", None)
    peaks.pop("other", None)
    return Measured(wall, peaks)


def job_cmd(forget: Path, retain: Path, output: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "distunlearn", "run", "--forget", str(forget), "--retain", str(retain),
            "--output", str(output), "--run-id", "bench", *extra]


def run_job(forget: Path, retain: Path, work: Path, name: str, extra: list[str] = ()) -> Measured:
    """(a): the job in its own process; its stage timings come from its runs table."""
    from deltalake import DeltaTable

    output = work / name
    shutil.rmtree(output, ignore_errors=True)
    m = run_measured(job_cmd(forget, retain, output, list(extra)), work / f"{name}.log")
    runs = DeltaTable(str(output / "runs")).to_pyarrow_table().to_pylist()
    m.timings = dict(runs[0]["timings"])
    return m


def run_script(script: str, forget: Path, retain: Path, work: Path, name: str, budgets: list[float]) -> Measured:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(HERE / script), str(forget), str(retain), str(out),
           "--budgets", *map(str, budgets)]
    m = run_measured(cmd, work / f"{name}.log")
    m.timings = json.loads((out / "result.json").read_text())["timings"]
    return m


# ------------------------------------------------------------------ agreement of (a), (b), (c)
def _job_stats(output: Path) -> dict[str, np.ndarray]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(output / "statistics")).to_pyarrow_table().to_pylist()
    out: dict[str, np.ndarray] = {}
    for r in rows:
        d = r["dim"]
        out[f"{r['domain']}_mean"] = np.asarray(r["mean"])
        out[f"{r['domain']}_m2"] = np.asarray(r["m2"]).reshape(d, d)
    return out


def job_sets(output: Path, run_id: str = "bench") -> Path:
    """The job's removal sets as one Parquet file, read through its own reader (bench/sets.py)."""
    dest = output.parent / f"{output.name}-sets.parquet"
    subprocess.run([sys.executable, str(HERE / "sets.py"), str(output), run_id, str(dest)], check=True,
                   capture_output=True, cwd=REPO)
    return dest


def _largest_sets(path: Path, delta: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, (ids, scores) in rank order of the largest budget's removal set (``path``:
    a Delta table, or a Parquet file or folder)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if delta:
        from deltalake import DeltaTable

        dataset = DeltaTable(str(path)).to_pyarrow_dataset()
    else:
        dataset = ds.dataset(str(path), format="parquet")
    table = dataset.to_table(columns=["method", "k", "rank", "id", "score"])
    out = {}
    for method in pc.unique(table["method"]).to_pylist():
        t = table.filter(pc.equal(table["method"], method))
        t = t.filter(pc.equal(t["k"], pc.max(t["k"]))).sort_by("rank")
        out[method] = (t["id"].to_numpy(), t["score"].to_numpy())
    return out


def agreement(a: Path, b: Path, c: Path) -> dict[str, object]:
    """Largest relative differences of (b) and (c) from (a), and whether every removal set is
    the same up to near-ties (rows whose score is within 1e-9 relative of the k-th score)."""
    result: dict[str, object] = {}
    stats = {"a": _job_stats(a), "b": dict(np.load(b / "stats.npz")), "c": dict(np.load(c / "stats.npz"))}
    for other in ("b", "c"):
        for key in ("forget_mean", "retain_mean", "forget_m2", "retain_m2"):
            ref, got = stats["a"][key], stats[other][key]
            result[f"stats_{other}_{key}"] = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    sets = {"a": _largest_sets(job_sets(a), False), "b": _largest_sets(b / "removal_sets.parquet", False),
            "c": _largest_sets(c / "removal_sets", True)}
    ok = True
    for other in ("b", "c"):
        worst_score, differing = 0.0, 0
        for method, (ids_a, scores_a) in sets["a"].items():
            ids_o, scores_o = sets[other][method]
            scale = max(1.0, float(np.max(np.abs(scores_a))))
            order_a, order_o = np.argsort(ids_a), np.argsort(ids_o)
            if len(ids_a) == len(ids_o) and np.array_equal(ids_a[order_a], ids_o[order_o]):
                worst_score = max(worst_score, float(np.max(np.abs(scores_a[order_a] - scores_o[order_o]))) / scale)
            mismatch = np.flatnonzero(ids_a != ids_o) if len(ids_a) == len(ids_o) else np.arange(len(ids_a))
            # a position may differ only where two rows' scores tie to within rounding
            if mismatch.size and np.max(np.abs(scores_a[mismatch] - scores_o[mismatch])) > 1e-9 * scale:
                ok = False
            differing += int(mismatch.size)
        result[f"scores_{other}_max_rel_diff"] = worst_score
        result[f"ranks_{other}_differing"] = differing
    stats_ok = all(v < 1e-8 for k, v in result.items() if k.startswith("stats_"))
    scores_ok = all(v < 1e-9 for k, v in result.items() if k.startswith("scores_"))
    result["agree"] = bool(ok and stats_ok and scores_ok)
    return result


# ------------------------------------------------------------------ the experiments
def medians(runs: list[Measured]) -> dict[str, float]:
    keys = set().union(*(r.timings for r in runs))
    out = {k: statistics.median(r.timings[k] for r in runs if k in r.timings) for k in keys}
    out["wall"] = statistics.median(r.wall for r in runs)
    return out


def peak(runs: list[Measured]) -> dict[str, float]:
    roles = set().union(*(r.peak_mb for r in runs))
    return {role: max(r.peak_mb.get(role, 0.0) for r in runs) for role in roles}


def compare(args: argparse.Namespace, work: Path, budgets: list[float]) -> dict[str, object]:
    forget, retain = data.tables(work / "data", args.rows, args.retain_rows, args.dim)
    runs: dict[str, list[Measured]] = {"a": [], "b": [], "c": []}
    for i in range(args.repeats):
        print(f"round {i + 1}/{args.repeats}", flush=True)
        runs["a"].append(run_job(forget, retain, work, "a"))
        print(f"  (a) job      {runs['a'][-1].wall:7.1f} s", flush=True)
        runs["b"].append(run_script("single_node.py", forget, retain, work, "b", budgets))
        print(f"  (b) numpy    {runs['b'][-1].wall:7.1f} s", flush=True)
        if not args.skip_mllib:
            runs["c"].append(run_script("mllib_baseline.py", forget, retain, work, "c", budgets))
            print(f"  (c) MLlib    {runs['c'][-1].wall:7.1f} s", flush=True)
    result: dict[str, object] = {"median": {k: medians(v) for k, v in runs.items() if v},
                                 "peak_mb": {k: peak(v) for k, v in runs.items() if v},
                                 "walls": {k: [r.wall for r in v] for k, v in runs.items()}}
    if not args.skip_mllib:
        result["agreement"] = agreement(work / "a", work / "b", work / "c")
    return result


def scaling(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """(a) at ``rows`` and at ``scale_rows`` forget rows, the same retain table, alternating."""
    small = data.tables(work / "data", args.rows, args.retain_rows, args.dim)
    big = data.tables(work / "data", args.scale_rows, args.retain_rows, args.dim)
    runs: dict[str, list[Measured]] = {"small": [], "big": []}
    for i in range(args.scale_repeats):
        for name, (forget, retain) in (("small", small), ("big", big)):
            runs[name].append(run_job(forget, retain, work, f"scale-{name}"))
            print(f"  scaling {name} round {i + 1}: {runs[name][-1].wall:.1f} s", flush=True)
    return {"median": {k: medians(v) for k, v in runs.items()}, "peak_mb": {k: peak(v) for k, v in runs.items()},
            "rows": {"small": args.rows, "big": args.scale_rows}}


#: Settings of the large-d runs: none since the job derives its batch sizes from d and the heap
#: (``distunlearn.transforms.sizing``) and takes the diagnostics' statistics in rounds.  Before
#: that, d = 4096 needed ``--arrow-batch-size 1000 --spark-conf
#: spark.sql.parquet.columnarReaderBatchSize=1024 --driver-memory 6g`` (profiling log #9).
LARGE_D_SETTINGS: list[str] = []


def large_dims(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """(a) at each large d with the full, diagonal and low-rank covariances; overlap of each
    approximation's removal sets with the full covariance's, and the removal alpha reached."""
    from deltalake import DeltaTable

    out: dict[str, object] = {}
    for dim in args.large_dims:
        forget, retain = data.tables(work / "data", args.large_dim_rows, args.large_dim_rows, dim)
        entry: dict[str, object] = {}
        sets: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for kind in ("full", "diagonal", "lowrank"):
            extra = ["--covariance", kind, "--methods", "lr_gauss,maha_mu2", "--budgets", "0.05,0.1,0.2,0.5",
                     *LARGE_D_SETTINGS]
            if kind == "lowrank":
                extra += ["--covariance-rank", str(args.rank)]
            name = f"d{dim}-{kind}"
            try:
                m = run_job(forget, retain, work, name, extra)
            except SystemExit as failed:  # recorded, not fatal: the page says what failed and why
                entry[kind] = {"error": str(failed).splitlines()[0][:300], "log": str(work / f"{name}.log")}
                print(f"  d={dim} {kind}: FAILED, see {work / f'{name}.log'}", flush=True)
                continue
            sets[kind] = _all_sets(job_sets(work / name))
            diag = DeltaTable(str(work / name / "diagnostics")).to_pyarrow_table().to_pylist()
            entry[kind] = {"wall": m.wall, "timings": m.timings, "peak_mb": m.peak_mb,
                           "alpha": {f"{r['method']}@{r['budget']}": r["alpha"] for r in diag if r["method"] != "none"}}
            print(f"  d={dim} {kind}: {m.wall:.1f} s", flush=True)
        for kind in ("diagonal", "lowrank"):
            if kind in sets and "full" in sets:
                entry[kind]["overlap_with_full"] = {  # type: ignore[index]
                    key: len(np.intersect1d(ids, sets["full"][key])) / max(1, len(ids))
                    for key, ids in sets[kind].items()}
        out[str(dim)] = entry
    return out


def _all_sets(path: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    t = pd.read_parquet(path, columns=["method", "budget", "id"])
    return {f"{m}@{b}": g["id"].to_numpy() for (m, b), g in t.groupby(["method", "budget"])}


# ------------------------------------------------------------------ the Markdown page
def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil
    import pyspark

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
            "os": platform.platform(), "python": platform.python_version(), "spark": pyspark.__version__,
            "java": java[0] if java else "unknown", "numpy": np.__version__}


def _fmt(x: float | None, unit: str = "") -> str:
    return "–" if x is None else f"{x:.1f}{unit}"


def _mem(p: dict[str, float]) -> str:
    return ", ".join(f"{role.replace('_', ' ')} {mb:,.0f} MB" for role, mb in sorted(p.items()))


def render(args: argparse.Namespace, results: dict[str, object], kept: str) -> str:
    m = machine()
    lines = ["# Benchmarks", "",
             "Regenerate everything on this page (except the profiling log, which is kept) with:", "",
             "```", f"make bench ROWS={args.rows} DIM={args.dim}", "```", "",
             f"which runs `python bench/run.py --rows {args.rows} --dim {args.dim}` (defaults: "
             f"{args.repeats} rounds, scaling to {args.scale_rows:,} forget rows, large d "
             f"{', '.join(map(str, args.large_dims))} at {args.large_dim_rows:,} rows).  "
             f"Measured {time.strftime('%Y-%m-%d')} on: {m['cpu']}, {m['cores']} cores, {m['memory']}, "
             f"{m['os']}; Python {m['python']}, numpy {m['numpy']}, Spark {m['spark']} (local[2]), {m['java']}.", "",
             "The machine is shared and noisy: times are medians over rounds that alternate the contenders, and "
             "the conclusions rest on ratios measured side by side in one run.", ""]
    cmp = results.get("compare")
    if cmp:
        med, pk = cmp["median"], cmp["peak_mb"]
        a, b, c = med["a"], med["b"], med.get("c")
        lines += [f"## (a) vs (b) vs (c): {args.rows:,} forget + {args.retain_rows:,} retain rows x {args.dim} float32",
                  "",
                  "Same Delta/Parquet files; the job's default methods (lr_gauss, maha_mu2, mu2, random) and budgets "
                  "(0.05 to 1.0 in steps of 0.05: every forget row is ranked; the job writes n ranking rows per "
                  "method, the single process one Parquet row per set and id, 10.5 x n per method).",
                  "",
                  "| | statistics (both tables) | score + select + write | whole process (wall) | peak memory |",
                  "|---|---:|---:|---:|---|",
                  f"| (a) this job | {_fmt(a['statistics'], ' s')} | "
                  f"{_fmt(a['score_select'] + a['write_ranking'], ' s')} (+ diagnostics "
                  f"{_fmt(a['diagnostics'], ' s')}) | {_fmt(a['wall'], ' s')} | {_mem(pk['a'])} |",
                  f"| (b) one process, numpy | {_fmt(b['statistics'], ' s')} | "
                  f"{_fmt(b['score_select'] + b['write_removal_sets'], ' s')} (+ diagnostics "
                  f"{_fmt(b['diagnostics'], ' s')}) | {_fmt(b['wall'], ' s')} | {_mem(pk['b'])} |"]
        if c:
            lines.append(f"| (c) MLlib RowMatrix + row UDF | {_fmt(c['statistics'], ' s')} | "
                         f"{_fmt(c['score_select_write'], ' s')} (no diagnostics) | {_fmt(c['wall'], ' s')} | "
                         f"{_mem(pk['c'])} |")
        lines += ["", "Rounds (wall, s): " + "; ".join(f"({k}) " + ", ".join(f"{w:.1f}" for w in v)
                                                     for k, v in cmp["walls"].items() if v), ""]
        lines += ["Stage times of (a) (medians, s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(a.items()) if k != "wall"), ""]
        targets = [("statistics at least 15x faster than RowMatrix.computeCovariance (+ Summarizer)",
                    c and c["statistics"] / a["statistics"], ">= 15", c and c["statistics"] / a["statistics"] >= 15),
                   ("end to end at most 1.0x the single-process numpy pipeline (whole process)",
                    a["wall"] / b["wall"], "<= 1.0", a["wall"] / b["wall"] <= 1.0)]
        sc = results.get("scaling")
        if sc:
            ratio = sc["median"]["big"]["wall"] / sc["median"]["small"]["wall"]
            targets.append((f"{args.rows:,} -> {args.scale_rows:,} forget rows: time ratio", ratio, "<= 11",
                            ratio <= 11))
        lines += ["## Targets", "", "| target | measured | wanted | met |", "|---|---:|---:|---|"]
        for name, value, want, met in targets:
            lines.append(f"| {name} | {'–' if value is None else f'{value:.2f}'} | {want} | "
                         f"{'yes' if met else 'no' if value is not None else 'not run'} |")
        lines.append("")
        if "agreement" in cmp:
            ag = cmp["agreement"]
            lines += ["## Agreement of (a), (b) and (c)", "",
                      f"All three agree: **{ag['agree']}**.  Largest relative differences from the job's output:", "",
                      "| quantity | (b) numpy | (c) MLlib |", "|---|---:|---:|"]
            for key in ("forget_mean", "retain_mean", "forget_m2", "retain_m2"):
                lines.append(f"| {key} | {ag[f'stats_b_{key}']:.2e} | {ag[f'stats_c_{key}']:.2e} |")
            lines += [f"| scores (same ids) | {ag['scores_b_max_rel_diff']:.2e} | {ag['scores_c_max_rel_diff']:.2e} |",
                      f"| ranks holding another id (near-ties only) | {ag['ranks_b_differing']} | "
                      f"{ag['ranks_c_differing']} |", ""]
    sc = results.get("scaling")
    if sc:
        s, bg = sc["median"]["small"], sc["median"]["big"]
        lines += [f"## Scaling: {args.rows:,} -> {args.scale_rows:,} forget rows "
                  f"(retain {args.retain_rows:,}), (a) only",
                  "", "| forget rows | wall | statistics | score + select | write ranking | diagnostics | "
                  "peak memory |", "|---:|---:|---:|---:|---:|---:|---|"]
        for name, med in (("small", s), ("big", bg)):
            lines.append(f"| {sc['rows'][name]:,} | {med['wall']:.1f} s | {med['statistics']:.1f} s | "
                         f"{med['score_select']:.1f} s | {med['write_ranking']:.1f} s | {med['diagnostics']:.1f} s"
                         f" | {_mem(sc['peak_mb'][name])} |")
        lines += ["", f"Time ratio {bg['wall'] / s['wall']:.2f} for {args.scale_rows / args.rows:.0f}x "
                  "the forget rows.", ""]
    ld = results.get("large_dims")
    if ld:
        lines += [f"## Large d ({args.large_dim_rows:,} forget + {args.large_dim_rows:,} retain rows; "
                  f"settings {'`' + ' '.join(LARGE_D_SETTINGS) + '`' if LARGE_D_SETTINGS else 'the defaults'}; "
                  "methods lr_gauss, maha_mu2; "
                  f"budgets 0.05, 0.1, 0.2, 0.5; low rank r = {args.rank})", "",
                  "| d | covariance | wall | statistics | score + select | peak memory | overlap with full "
                  "(maha_mu2 @0.05 / @0.5) | alpha maha_mu2 @0.1 (full: same row) |",
                  "|---:|---|---:|---:|---:|---|---:|---:|"]
        for dim, entry in ld.items():
            for kind in ("full", "diagonal", "lowrank"):
                e = entry[kind]
                if "error" in e:
                    lines.append(f"| {dim} | {kind} | failed ({e['error'].split(':')[0]}; log: "
                                 f"`{Path(e['log']).name}`) | | | | | |")
                    continue
                ov = e.get("overlap_with_full")
                ov_txt = ("1 (reference)" if kind == "full" else "–" if ov is None
                          else f"{ov['maha_mu2@0.05']:.3f} / {ov['maha_mu2@0.5']:.3f}")
                lines.append(f"| {dim} | {kind} | {e['wall']:.1f} s | {e['timings']['statistics']:.1f} s | "
                             f"{e['timings']['score_select']:.1f} s | {_mem(e['peak_mb'])} | {ov_txt} | "
                             f"{e['alpha']['maha_mu2@0.1']:.4f} |")
        lines.append("")
    lines += [KEEP_BEGIN, kept.strip(), KEEP_END, ""]
    return "\n".join(lines)


def _kept_section(path: Path) -> str:
    if not path.exists():
        return "## Profiling log\n\n(none yet)"
    text = path.read_text()
    if KEEP_BEGIN in text and KEEP_END in text:
        return text.split(KEEP_BEGIN, 1)[1].split(KEEP_END, 1)[0]
    return "## Profiling log\n\n(none yet)"


def main(argv: list[str] | None = None) -> int:
    from distunlearn.commands.config import JobConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="forget rows of the main comparison")
    p.add_argument("--retain-rows", type=int, default=None, help="retain rows (default: --rows)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3, help="rounds of (a), (b), (c)")
    p.add_argument("--scale-rows", type=int, default=10_000_000, help="forget rows of the scaling run (0: skip)")
    p.add_argument("--scale-repeats", type=int, default=1)
    p.add_argument("--large-dims", type=lambda s: [int(v) for v in s.split(",") if v], default=[1024, 4096],
                   help="comma-separated; empty to skip")
    p.add_argument("--large-dim-rows", type=int, default=100_000)
    p.add_argument("--rank", type=int, default=64, help="rank of the low-rank covariance")
    p.add_argument("--skip-mllib", action="store_true", help="leave out (c) (and the agreement check)")
    p.add_argument("--work", type=Path, default=REPO / "bench-data", help="data and outputs (reused across runs)")
    p.add_argument("--doc", type=Path, default=DOC, help="Markdown page to rewrite ('' to skip)")
    p.add_argument("--sections", type=lambda s: s.split(","), default=["compare", "scaling", "large_dims"],
                   help="comma-separated subset of compare,scaling,large_dims to (re)measure; the others are "
                        "kept from WORK/results.json when it was made with the same sizes")
    p.add_argument("--render-only", action="store_true", help="rewrite the page from WORK/results.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round, no page; fail unless (a)=(b)=(c)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.dim, args.repeats, args.scale_rows, args.large_dims = 3000, 8, 1, 0, []
        args.doc = None
    args.retain_rows = args.retain_rows or args.rows
    args.work.mkdir(parents=True, exist_ok=True)
    budgets = list(JobConfig.budgets)
    saved = args.work / "results.json"
    recorded = ("rows", "retain_rows", "dim", "repeats", "scale_rows", "scale_repeats", "large_dims",
                "large_dim_rows", "rank")
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    if args.render_only:
        results = previous
        for key in recorded:
            setattr(args, key, results["args"][key])
    else:
        run_args = {key: getattr(args, key) for key in recorded}
        # sections not re-measured now are kept from an earlier run with the same arguments
        results = previous if previous.get("args") == json.loads(json.dumps(run_args)) else {"args": run_args}
        runners = {"compare": lambda: compare(args, args.work, budgets),
                   "scaling": lambda: scaling(args, args.work),
                   "large_dims": lambda: large_dims(args, args.work)}
        wanted = [name for name in args.sections if name in runners]
        if not args.scale_rows and "scaling" in wanted:
            wanted.remove("scaling")
        if not args.large_dims and "large_dims" in wanted:
            wanted.remove("large_dims")
        for name in wanted:
            results[name] = runners[name]()
            saved.write_text(json.dumps(results, indent=1, default=str))  # partial results survive
    print(json.dumps(results.get("compare", {}).get("agreement", {}), indent=1))
    if args.doc:
        args.doc.write_text(render(args, results, _kept_section(args.doc)))
        print(f"wrote {args.doc}")
    agree = results.get("compare", {}).get("agreement", {"agree": True})["agree"]
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
