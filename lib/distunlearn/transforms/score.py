"""Score every forget row for several methods in one pass (Spark DataFrame -> DataFrame).

The :class:`~distunlearn.core.scoring.ScoringModel` (means, whitening matrix, LDA weights)
travels in the mapInArrow function's closure: Spark pickles the function once per job (and
broadcasts the pickle itself when it is over 1 MB), each task unpickles it once and scores
its Arrow batches with vectorised numpy.  Over Spark Connect a model too large for one gRPC
message goes as a session file instead (:mod:`distunlearn.transforms.payload`).

``random`` is not computed in Python: it is ``xxhash64(seed, id)`` mapped to [0, 1) in Spark
SQL, so it depends only on the seed and the id, never on partitioning or batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from threadpoolctl import threadpool_limits

from distunlearn.core.batches import ArrowUdf, Batch, list_to_matrix
from distunlearn.core.scoring import KERNEL_METHODS, ScoringModel
from distunlearn.core.text import GRAMS, grams_of
from distunlearn.transforms.payload import Payload, ship
from distunlearn.transforms.prepare import FEATURES, GROUP, ID

METHOD = "method"
SCORE = "score"
_MANTISSA = (1 << 53) - 1

#: Storage level of the job's intermediate frames (scores, the sorted ranking).  DISK_ONLY:
#: cached blocks streamed to local disk, never unrolled in the heap.  With MEMORY_AND_DISK
#: the 10M-row run died with "OutOfMemoryError: Java heap space" inside the MemoryStore's
#: unroll in the default 2 GB driver heap (local mode: the executors' heap too); the frames
#: are read a few times each, sequentially, from the page cache (docs/BENCHMARKS.md).
SCRATCH = StorageLevel.DISK_ONLY


def score_batches(batches: Iterable[pa.RecordBatch], model: ScoringModel,
                  methods: tuple[str, ...]) -> Iterator[tuple[pa.RecordBatch, Batch, dict[str, np.ndarray]]]:
    """For each Arrow batch with ``id`` and ``features`` columns: the batch restricted to its
    rows with valid features, their matrix, and their kernel scores (one BLAS thread).

    Rows with invalid features are left out (they only reach this point under
    ``on_invalid: drop``; otherwise the statistics pass has already failed the run).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        for rb in batches:
            batch = list_to_matrix(rb.column(FEATURES))
            if batch.mask is not None:
                rb = rb.filter(pa.array(batch.mask))
            if rb.num_rows:
                grams = grams_of(rb.column(GRAMS)) if GRAMS in rb.schema.names else None
                yield rb, batch, model.score(batch.x, methods, grams)


def shipped_model(forget: DataFrame, model: ScoringModel) -> Payload[ScoringModel]:
    """The model as the scoring UDFs of ``forget``'s session capture it: what scoring reads
    (:meth:`ScoringModel.for_workers`), inline or as a file of the session."""
    return ship(forget.sparkSession, model.for_workers(), "scoring-model")


def _scorer(model: Payload[ScoringModel], methods: tuple[str, ...]) -> ArrowUdf:
    """mapInArrow body for ``methods``: (id, features) batches -> (id, one column per method);
    a ``group`` column passes through, after the id."""

    def score_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb, _, scores in score_batches(batches, model.get(), methods):
            carry = [GROUP] if GROUP in rb.schema.names else []
            cols = [pa.array(np.asarray(scores[m], dtype=np.float64)) for m in methods]
            yield pa.RecordBatch.from_arrays([rb.column(ID), *[rb.column(c) for c in carry], *cols],
                                             names=[ID, *carry, *methods])

    return score_partition


def random_score(seed: int) -> F.Column:
    """Uniform score in [0, 1): the low 53 bits of xxhash64(seed, id), divided by 2^53."""
    return (F.xxhash64(F.lit(seed), F.col(ID)).bitwiseAND(F.lit(_MANTISSA)) / float(1 << 53)).cast("double")


def gumbel_noise(seed: int) -> F.Column:
    """Standard Gumbel noise -log(-log u), u in (0, 1) from xxhash64(seed, "gumbel", id): a
    function of the seed and the id only, like :func:`random_score` but independent of it."""
    u = (F.xxhash64(F.lit(seed), F.lit("gumbel"), F.col(ID)).bitwiseAND(F.lit(_MANTISSA)) + 0.5) / float(1 << 53)
    return -F.log(-F.log(u))


def scoring_columns(forget: DataFrame, methods: tuple[str, ...]) -> list[str]:
    """The columns the kernel reads: id, features, the n-grams for lr_ngram, and the group."""
    return ([ID, FEATURES] + ([GRAMS] if "lr_ngram" in methods and GRAMS in forget.columns else [])
            + ([GROUP] if GROUP in forget.columns else []))


def score_forget(forget: DataFrame, model: ScoringModel, methods: tuple[str, ...],
                 seed: int, selection: str = "topk") -> tuple[DataFrame, DataFrame]:
    """Long-format scores DataFrame[id, method, score], one row per (forget row, method), and
    the persisted wide frame (id, one column per method) it is a view of.

    The wide frame is persisted so that the selection's several jobs (quantiles, range
    sampling, the sort) read the scores instead of scoring the forget table again: the
    numpy kernel runs once per row for the selection.  It holds no features: at 1M x 384
    float32 they would be 1.5 GB of cache, which overflowed the default 2 GB driver heap
    (measured, docs/BENCHMARKS.md); the removal sets' statistics re-score instead
    (:func:`distunlearn.transforms.statistics.bucket_stats`).  The caller unpersists it.

    ``selection = "gumbel"`` adds :func:`gumbel_noise` to every score: the top k of the
    perturbed scores are k rows drawn without replacement with probability proportional to
    exp(score) (Gumbel top-k; Kool et al. 2019), and the stored score is the perturbed one.
    """
    kernel = tuple(m for m in methods if m in KERNEL_METHODS)
    id_type = forget.schema[ID].dataType
    carry = (GROUP,) if GROUP in forget.columns else ()
    schema = T.StructType([T.StructField(ID, id_type, False), *[forget.schema[c] for c in carry]]
                          + [T.StructField(m, T.DoubleType(), False) for m in kernel])
    wide = forget.select(*scoring_columns(forget, kernel)).mapInArrow(_scorer(shipped_model(forget, model), kernel),
                                                                      schema)
    if "random" in methods:
        wide = wide.withColumn("random", random_score(seed))
    if selection == "gumbel":  # the ranking key becomes score + G(seed, id)
        noise = gumbel_noise(seed)
        wide = wide.select(ID, *carry, *[(F.col(m) + noise).alias(m) for m in methods])
    wide = wide.persist(SCRATCH)
    return wide.unpivot([ID, *carry], list(methods), METHOD, SCORE), wide
