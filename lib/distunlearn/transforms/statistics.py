"""Distributed sufficient statistics (Spark DataFrame -> values): one mapInArrow pass per
table, the per-partition results merged by :func:`~distunlearn.transforms.merge.tree_merge`
(DataFrame operations only, so it runs on Spark Connect).

* :func:`domain_stats`: the Gaussian statistics of a table's valid rows, with its validity
  counts, and per group when the table has a ``group`` column (one pass for both);
* :func:`ngram_stats`: the multinomial statistics of a text table's n-gram buckets;
* :func:`bucket_stats`: the statistics of the forget rows grouped by (method, group, removal
  set), for the diagnostics (one more pass that scores each row again).

Each partition turns its Arrow batches into float64 matrices (a reshape, see
:mod:`distunlearn.core.batches`), accumulates :class:`~distunlearn.core.stats.GaussianStats`
with the pairwise merge, and emits a few rows of bytes; a two-level tree of sorted folds
combines them so the driver receives one d x d matrix per key instead of one per partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from distunlearn.core.batches import ArrowUdf, InputCounts, list_to_matrix
from distunlearn.core.scoring import KERNEL_METHODS, ScoringModel
from distunlearn.core.stats import DomainStats, GaussianStats
from distunlearn.core.text import GRAMS, NgramStats, grams_of
from distunlearn.errors import InputError
from distunlearn.progress import note
from distunlearn.transforms.merge import PIECE_COLUMN, Merger, merged_values, partial_batches, tree_merge
from distunlearn.transforms.payload import Payload
from distunlearn.transforms.prepare import FEATURES, GROUP, ID
from distunlearn.transforms.score import gumbel_noise, random_score, score_batches, scoring_columns, shipped_model

log = logging.getLogger(__name__)

_COUNT_FIELDS = ("rows", "null_arrays", "null_elements", "nonfinite", "min_len", "max_len")
_GUMBEL = "_gumbel"
_DOMAIN_SCHEMA = ("total boolean, grp string, " + ", ".join(f"{n} long" for n in _COUNT_FIELDS)
                  + f", stats binary, {PIECE_COLUMN} long")
_DOMAIN_ARROW = pa.schema([("total", pa.bool_()), ("grp", pa.string()), *((n, pa.int64()) for n in _COUNT_FIELDS),
                          ("stats", pa.binary()), (PIECE_COLUMN, pa.int64())])
_BUCKET_SCHEMA = f"method string, grp string, bucket long, stats binary, {PIECE_COLUMN} long"
_BUCKET_ARROW = pa.schema([("method", pa.string()), ("grp", pa.string()), ("bucket", pa.int64()),
                          ("stats", pa.binary()), (PIECE_COLUMN, pa.int64())])

# ---------------------------------------------------------------------- Gaussian statistics
def _partition_stats(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the batches of one partition -> one row of counts and statistics of
    all its valid rows, and one row per group value (a ``group`` column) of its valid rows."""
    counts = InputCounts()
    total: GaussianStats | None = None
    per_group: dict[str | None, GaussianStats] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for rb in batches:
            batch = list_to_matrix(rb.column(FEATURES))
            counts = counts.merge(batch.counts)
            # Batches of different lengths (ragged within the partition) cannot be merged;
            # the counts carry min_len != max_len and counts.check reports them.
            if not batch.x.shape[0] or counts.min_len != counts.max_len:
                continue
            part = GaussianStats.from_array(batch.x)
            total = part if total is None else total.merge(part)
            if GROUP in rb.schema.names:
                groups = np.asarray(rb.column(GROUP).to_pylist(), dtype=object)
                if batch.mask is not None:
                    groups = groups[batch.mask]
                for g in set(groups.tolist()):
                    s = GaussianStats.from_array(batch.x[groups == g])
                    per_group[g] = per_group[g].merge(s) if g in per_group else s
    ragged = counts.min_len != counts.max_len
    rows: list[tuple[bool, str | None, InputCounts, GaussianStats | None]] = [
        (True, None, counts, None if ragged else total)]
    rows += [(False, g, InputCounts(), s) for g, s in per_group.items()] if not ragged else []
    for is_total, g, c, stats in rows:
        payload = b"" if stats is None else stats.to_flat().tobytes()
        yield from partial_batches({"total": is_total, "grp": g, **{n: getattr(c, n) for n in _COUNT_FIELDS},
                                    "stats": payload}, _DOMAIN_ARROW)


_Partial = tuple[InputCounts, GaussianStats | None]


def _decode_partial(values: tuple[object, ...]) -> _Partial:
    counts = InputCounts(*(int(v) for v in values[:6]))  # type: ignore[call-overload]
    payload = bytes(values[6])  # type: ignore[call-overload]
    stats = None
    if payload:
        flat = np.frombuffer(payload, dtype=np.float64)
        stats = GaussianStats.from_flat(flat, int(round(np.sqrt(len(flat) - 1))) - 1)  # len = 2 + 2d + d^2
    return counts, stats


def _combine_partial(a: _Partial, b: _Partial) -> _Partial:
    (c0, s0), (c1, s1) = a, b
    if s0 is None or s1 is None:
        merged = s0 if s1 is None else s1
    elif s0.dim != s1.dim:  # ragged across partitions: reported by counts.check
        merged = s0
    else:
        merged = s0.merge(s1)
    return c0.merge(c1), merged


def _encode_partial(value: _Partial) -> tuple[object, ...]:
    counts, stats = value
    return (*(getattr(counts, n) for n in _COUNT_FIELDS), b"" if stats is None else stats.to_flat().tobytes())


_DOMAIN_MERGER: Merger[_Partial] = Merger(_decode_partial, _combine_partial, _encode_partial)


def domain_stats(df: DataFrame, domain: str, feature_col: str, on_invalid: str) -> DomainStats:
    """Statistics of ``df[features]`` (see :func:`distunlearn.transforms.prepare.normalize`),
    and per ``group`` value when ``df`` has that column.

    Raises InputError (naming the table and ``feature_col``) for null, ragged or, unless
    ``on_invalid == "drop"``, non-finite features, and for a table with no usable row.  Null
    group values are returned under the key None (:func:`check_groups` rejects them).
    """
    start = time.monotonic()
    columns = [FEATURES, GROUP] if GROUP in df.columns else [FEATURES]
    parts = df.select(*columns).mapInArrow(_partition_stats, _DOMAIN_SCHEMA)
    merged = tree_merge(parts, ["total", "grp"], _DOMAIN_MERGER)
    counts, stats = merged.get((True, None), (InputCounts(), None))
    counts.check(domain, feature_col, on_invalid)
    if stats is None or stats.n == 0:
        raise InputError(f"the {domain} table has no usable rows ({counts.rows} rows, "
                         f"{counts.nonfinite} with NaN or infinite values)")
    if not all(np.isfinite(v).all() for v in (stats.mean, stats.m2, stats.t3, stats.q4)):
        raise InputError(f"feature column {feature_col!r} of the {domain} table has values too large for its "
                         "statistics (their squares or fourth powers overflow float64); rescale the column")
    if counts.nonfinite:
        log.warning("%s: dropped %d of %d rows with NaN or infinite features (on_invalid=drop)",
                    domain, counts.nonfinite, counts.rows)
    groups = {g: s for (is_total, g), (_, s) in merged.items() if not is_total and s is not None}
    log.debug("statistics of %s: %d rows x %d dims%s in %.1f s", domain, stats.n, stats.dim,
              f", {len(groups)} groups" if groups else "", time.monotonic() - start)
    note(f"{domain} {stats.n} x {stats.dim}" + (f", {len(groups)} groups" if groups else ""))
    return DomainStats(stats, counts, groups)  # type: ignore[arg-type]


def check_groups(stats: DomainStats, domain: str, group_cols: tuple[str, ...]) -> None:
    """InputError, naming the column(s), when some rows of the table have a null group."""
    null = stats.groups.get(None)  # type: ignore[call-overload]
    if null is not None:
        raise InputError(f"group column {', '.join(map(repr, group_cols))} of the {domain} table has null values "
                         f"({null.n} rows); give every row a group")


# ---------------------------------------------------------------------- n-gram statistics
def _partition_ngram_stats(buckets: int) -> ArrowUdf:
    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        acc, nulls = NgramStats.empty(buckets), 0
        for rb in batches:
            column = rb.column(0)
            nulls += column.null_count
            values, lengths = grams_of(column)
            acc = acc.merge(NgramStats.from_grams(values, lengths, buckets))
        yield pa.RecordBatch.from_arrays(
            [pa.array([acc.n_docs], pa.int64()), pa.array([nulls], pa.int64()),
             pa.array([acc.counts.tobytes()], pa.binary()), pa.array([acc.doc_freq.tobytes()], pa.binary())],
            names=["docs", "nulls", "counts", "doc_freq"])

    return partition


def ngram_stats(df: DataFrame, domain: str, text_col: str, buckets: int) -> NgramStats:
    """Statistics of ``df[grams]`` (from :func:`distunlearn.transforms.text.normalize_text`):
    bincounts per partition, summed.  InputError for null texts or an empty table."""
    start = time.monotonic()
    parts = df.select(GRAMS).mapInArrow(_partition_ngram_stats(buckets),
                                        "docs long, nulls long, counts binary, doc_freq binary")

    def decode(row: tuple[int, int, bytes, bytes]) -> tuple[NgramStats, int]:
        return NgramStats(int(row[0]), np.frombuffer(bytes(row[2]), np.int64).copy(),
                          np.frombuffer(bytes(row[3]), np.int64).copy()), int(row[1])

    def combine(a: tuple[NgramStats, int], b: tuple[NgramStats, int]) -> tuple[NgramStats, int]:
        return a[0].merge(b[0]), a[1] + b[1]

    def encode(v: tuple[NgramStats, int]) -> tuple[int, int, bytes, bytes]:
        return v[0].n_docs, v[1], v[0].counts.tobytes(), v[0].doc_freq.tobytes()

    merged = tree_merge(parts, [], Merger(decode, combine, encode))  # type: ignore[arg-type]
    stats, nulls = merged.get((), (NgramStats.empty(buckets), 0))
    if nulls:
        raise InputError(f"text column {text_col!r} of the {domain} table has {nulls} null values")
    if stats.n_docs == 0:
        raise InputError(f"the {domain} table has no rows")
    used = int(np.count_nonzero(stats.counts))
    log.debug("n-gram statistics of %s: %d documents, %d n-grams in %d buckets (%d used) in %.1f s", domain,
              stats.n_docs, stats.n_grams, buckets, used, time.monotonic() - start)
    note(f"{domain} {stats.n_docs} documents, {used} of {buckets} buckets used")
    return stats


# ---------------------------------------------------------------------- removal-set statistics
#: Per method and group, the (score, id) of the last row of each of the group's removal-set
#: parts, sorted by size (every part is a prefix of the group's ranking).  A run without
#: groups has the one group None.
Bounds = dict[str, dict[str | None, list[tuple[float, object]]]]


def _bucket_of(scores: np.ndarray, ids: pa.Array, bounds: list[tuple[float, object]]) -> np.ndarray:
    """Index of the smallest part holding each row (len(bounds) for none).

    ``bounds`` are the (score, id) of the last row of each part, parts sorted by size.  A row
    is in a part iff score > s or (score == s and id <= id_s): the selection order (score
    descending, id ascending).  The parts are nested, so the index is the number of parts the
    row is *not* in.
    """
    outside = np.zeros(len(scores), dtype=np.int64)
    for s, last_id in bounds:
        inside = scores > s
        tie = scores == s
        if tie.any():
            le = pc.less_equal(ids, pa.scalar(last_id, type=ids.type)).to_numpy(zero_copy_only=False)
            inside |= tie & le
        outside += ~inside
    return outside


def _bucket_aggregator(model: Payload[ScoringModel], methods: tuple[str, ...], bounds: Bounds) -> ArrowUdf:
    kernel = tuple(m for m in methods if m in KERNEL_METHODS)

    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        acc: dict[tuple[str, str | None, int], GaussianStats] = {}
        for rb, batch, scores in score_batches(batches, model.get(), kernel):  # one BLAS thread
            if "random" in methods:
                scores["random"] = rb.column("random").to_numpy()
            if _GUMBEL in rb.schema.names:  # the same sum as score_forget's, so the same keys
                noise = rb.column(_GUMBEL).to_numpy()
                scores = {m: v + noise for m, v in scores.items()}
            if GROUP in rb.schema.names:
                groups = np.asarray(rb.column(GROUP).to_pylist(), dtype=object)
                parts = [(g, groups == g) for g in sorted(set(groups.tolist()))]
            else:
                parts = [(None, None)]
            for m in methods:
                for g, mask in parts:
                    x, s, ids = (batch.x, scores[m], rb.column(ID)) if mask is None else (
                        batch.x[mask], scores[m][mask], rb.column(ID).filter(pa.array(mask)))
                    bucket = _bucket_of(s, ids, bounds[m].get(g, []))  # a group without bounds: no row in a set
                    for j in np.unique(bucket):
                        part = GaussianStats.from_array(x[bucket == j], products=np.float32)
                        key = (m, g, int(j))
                        acc[key] = acc[key].merge(part) if key in acc else part
        # One batch per part: a batch of all of them would hold methods x (budgets + 1) d x d
        # blobs at once (11 GB at d = 4096 with 4 methods and 20 budgets, past Arrow's 2 GB
        # binary offsets and any default heap); one at a time, the JVM holds one.
        for (method, group, index), stats in sorted(acc.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
            yield from partial_batches({"method": method, "grp": group, "bucket": index,
                                        "stats": stats.to_flat().tobytes()}, _BUCKET_ARROW)

    return partition


def bucket_stats(forget: DataFrame, model: ScoringModel, methods: tuple[str, ...], seed: int, bounds: Bounds,
                 dim: int, wanted: list[tuple[str, str | None, int]], selection: str = "topk", cores: int = 2
                 ) -> Iterator[tuple[tuple[str, str | None, int], GaussianStats | None]]:
    """Statistics of the forget rows per (method, group, bucket), one key at a time in the
    order of ``wanted`` (None: no row in that bucket): the bucket of a row is the number of its
    group's parts (:data:`Bounds`) that do not hold it.

    One more pass over the forget table (id, features, group) that scores each row again with
    the same model: the sets are defined by (score, id) against ``bounds``, so no join with the
    written sets is needed.  The same batches give bit-identical scores; were a GEMM to round a
    row differently on a rerun, only a row tied with a part's last row to the last bit could
    land in the neighbouring part, which moves a statistic by one row.  The merged statistics
    come to the driver in bounded rounds (:func:`merged_values`): methods x (budgets + 1) of
    them are 11 GB at d = 4096 with the defaults.
    """
    cols = [F.col(c) for c in scoring_columns(forget, methods)]
    cols += [random_score(seed).alias("random")] if "random" in methods else []
    cols += [gumbel_noise(seed).alias(_GUMBEL)] if selection == "gumbel" else []
    # Each task emits one d x d blob per (method, group, part): with 12 input partitions,
    # 4 methods and 20 budgets at d = 384 that was 1.2 GB of pickled statistics through
    # treeAggregate, which took most of this pass (profiled with py-spy, docs/BENCHMARKS.md).
    # One task per core keeps the output at #cores x blobs; coalesce does not shuffle.
    source = forget.select(*cols).coalesce(cores)  # no-op when it has fewer partitions
    parts = source.mapInArrow(_bucket_aggregator(shipped_model(forget, model), methods, bounds), _BUCKET_SCHEMA)

    merger: Merger[GaussianStats] = Merger(
        lambda v: GaussianStats.from_flat(np.frombuffer(bytes(v[0]), np.float64), dim),
        GaussianStats.merge, lambda s: (s.to_flat().tobytes(),))
    # At most `cores` partials per key (the coalesce above): one level, no level-1 shuffle of
    # the d x d blobs (that level cost 5-10 s of this pass at 1M x 384, docs/BENCHMARKS.md).
    return merged_values(parts, ["method", "grp", "bucket"], merger, fan=None,
                         wanted=wanted)  # type: ignore[arg-type]
