"""Text input: hashed word n-grams, their multinomial statistics, ``lr_ngram``, and dense features.

A forget or retain table may carry a text column (``--text-col``) instead of a feature vector.

**Featurizer** (Spark SQL, no Python per row; :func:`hashed_ngrams`):

1. lowercase the text (Spark's ``lower``: ICU's case mapping; Python's ``str.lower`` differs
   on a few special cases);
2. tokenize with ``(?U)\\w+|[^\\w\\s]+``: runs of word characters, or runs of other non-space
   characters.  This is NLTK's ``WordPunctTokenizer``, which DSIR uses, as NLTK >= 3.10.3 runs
   it: with the ``regex`` module, whose Unicode ``\\w`` (letters, marks, decimal digits,
   connector punctuation) and ``\\s`` are the classes of Java's ``(?U)``.  NLTK <= 3.10.2 used
   Python's ``re``, whose ``\\w`` differs on combining marks and "other numbers" (1/2, ^2);
   ``docs/DSIR.md`` counts the documents where that matters;
3. n-grams of orders 1 .. ``ngram_order`` (default 2: unigrams and bigrams), the tokens of an
   n-gram joined with one space;
4. bucket = hash(n-gram) mod ``ngram_buckets``, with ``ngram_hash``:

   * ``xxhash64`` (default): Spark's ``xxhash64`` of the UTF-8 bytes (seed 42), ``pmod`` B;
   * ``sha256``: the integer value of the SHA-256 hex digest of the UTF-8 bytes, mod B, which
     is DSIR's ``hash_buckets`` exactly.  Spark computes ``sha2`` and reduces the 256-bit
     number mod B from its eight 32-bit hex chunks (Horner's rule, every step mod B), so it
     stays in SQL; it is slow: a SpamAssassin run took 195 s with it against 47 s with xxhash64
     (docs/DSIR.md), so it is for comparisons with DSIR.

A document becomes ``grams: array<int>``, its bucket ids with repeats (its count vector
c(x) in sparse form).  A null text is an error; an empty text has no n-gram.

**Multinomial sufficient statistics** (:class:`NgramStats`): per domain, the number of documents,
the summed bucket counts C_j = sum_x c_j(x) (the multinomial's sufficient statistics) and the
document frequencies (for TF-IDF).  They add up, so partitions are summed with
``treeAggregate``; they are stored in the Delta table ``ngram_statistics``.

**lr_ngram** (:class:`NgramModel`): with additive smoothing lambda (``ngram_smoothing``,
default 1: Laplace), theta_j = (C_j + lambda) / (sum_i C_i + lambda B) for each domain and

    lr_ngram(x) = log p1(x) - log p2(x) = sum_j c_j(x) (log theta1_j - log theta2_j)

(the multinomial coefficient cancels): the paper's likelihood-ratio rule for an exponential
family, and DSIR's log importance weight.  ``ngram_length_norm`` divides it by the number of
n-grams of x (a per-n-gram average: long documents no longer win by length alone).

**Dense features** for the Gaussian methods (:class:`TextProjection`): TF-IDF of the bucket
counts, as scikit-learn's ``TfidfTransformer()`` computes it (idf_j = ln((1 + N) / (1 + df_j))
+ 1 over the N documents of both tables, tf = raw count, rows L2-normalised), then a seeded
Gaussian random projection R (B x d, entries N(0, 1/d), generated from ``seed`` on every
worker, never shipped) to ``text_dim`` dimensions (Johnson-Lindenstrauss: inner products kept
up to O(1/sqrt(d))).  An empty document maps to the zero vector.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.batches import ArrowUdf
from distunlearn.errors import ConfigError, InputError
from distunlearn.prepare import FEATURES, GROUP, ID, _field, group_column, id_column

log = logging.getLogger(__name__)

GRAMS = "grams"
TEXT = "_text"  # the raw text, carried only for sentence embeddings
TOKEN_PATTERN = r"(?U)\w+|[^\w\s]+"
TOKENIZER = "lower + regexp " + TOKEN_PATTERN
NGRAM_HASHES = ("xxhash64", "sha256")
MAX_BUCKETS = 1 << 24
MAX_ORDER = 5

Array = NDArray[np.float64]
Counts = NDArray[np.int64]


# ----------------------------------------------------------------------------- featurizer (SQL)
def tokens(text: Column) -> Column:
    """array<string>: the lowercased text split into word and punctuation runs."""
    return F.regexp_extract_all(F.lower(text), F.lit(TOKEN_PATTERN), 0)


def ngrams(toks: Column, order: int) -> Column:
    """array<string>: the n-grams of orders 1 .. ``order``, unigrams first, tokens joined by ' '.

    The m-grams are the (m-1)-grams but the last, zipped with the tokens from the m-th on:
    ``toks`` appears only outside lambdas, so it is evaluated a few times per document, never
    once per n-gram (a lambda slicing ``toks`` re-evaluated the tokenizer for every element:
    quadratic in the document's length, 400 messages took minutes).
    """
    n = F.size(toks)
    parts, previous = [toks], toks
    for m in range(2, order + 1):
        count = F.greatest(n - m + 1, F.lit(0))  # m-grams of a document of n tokens
        previous = F.zip_with(F.slice(previous, 1, count), F.slice(toks, m, count),
                              lambda a, b: F.concat_ws(" ", a, b))
        parts.append(previous)
    return F.concat(*parts) if len(parts) > 1 else toks


def bucket(gram: Column, buckets: int, hash_name: str) -> Column:
    """int: the bucket of one n-gram (see the module docstring)."""
    if hash_name == "xxhash64":
        return F.pmod(F.xxhash64(gram), F.lit(buckets)).cast("int")
    if hash_name != "sha256":
        raise ValueError(f"unknown ngram hash {hash_name!r}")
    digest = F.sha2(gram, 256)  # 64 hex digits, most significant first
    radix = (1 << 32) % buckets
    acc: Column = F.lit(0).cast("long")
    for i in range(8):  # value = sum chunk_i 2^(32 (7 - i)): Horner, reduced mod B at each step
        chunk = F.conv(F.substring(digest, 8 * i + 1, 8), 16, 10).cast("long")
        acc = (acc * F.lit(radix) + chunk) % F.lit(buckets)  # < B^2 + 2^32 < 2^63 for B <= 2^24
    return acc.cast("int")


def hashed_ngrams(text: Column, buckets: int, order: int, hash_name: str) -> Column:
    """array<int>: the bucket of every n-gram of the text (null for a null text)."""
    return F.transform(ngrams(tokens(text), order), lambda g: bucket(g, buckets, hash_name))


@dataclass(frozen=True)
class TextSettings:
    """How text becomes n-gram buckets, and the n-gram and projection options of a run."""

    buckets: int = 65536
    order: int = 2
    hash_name: str = "xxhash64"
    smoothing: float = 1.0
    length_norm: bool = False
    dim: int = 64
    seed: int = 0
    embedding_model: str = ""  # a local sentence-transformers model instead of the projection

    def check(self) -> TextSettings:
        if not 2 <= self.buckets <= MAX_BUCKETS:
            raise ConfigError(f"ngram_buckets must be in [2, {MAX_BUCKETS}], got {self.buckets}")
        if not 1 <= self.order <= MAX_ORDER:
            raise ConfigError(f"ngram_order must be in [1, {MAX_ORDER}], got {self.order}")
        if self.hash_name not in NGRAM_HASHES:
            raise ConfigError(f"unknown ngram_hash {self.hash_name!r}; choose from {', '.join(NGRAM_HASHES)}")
        if not (self.smoothing > 0 and math.isfinite(self.smoothing)):
            raise ConfigError(f"ngram_smoothing must be a positive number, got {self.smoothing}")
        if self.dim < 1:
            raise ConfigError(f"text_dim must be at least 1, got {self.dim}")
        if self.embedding_model:
            if importlib.util.find_spec("sentence_transformers") is None:
                raise ConfigError("text_embedding_model needs the sentence-transformers package, which is not "
                                  "installed (it is not part of the default install: pip install "
                                  "sentence-transformers into the job's environment)")
            if not Path(self.embedding_model).is_dir():
                raise ConfigError(f"text_embedding_model {self.embedding_model!r} is not a folder: give a "
                                  "sentence-transformers model saved locally (nothing is downloaded at run time)")
        return self


def normalize_text(df: DataFrame, id_col: str, text_col: str, domain: str, settings: TextSettings,
                   group_cols: tuple[str, ...] = ()) -> DataFrame:
    """DataFrame[id, grams] of a table with a string text column (InputError otherwise), with
    a ``group`` column when ``group_cols`` are given."""
    ident = id_column(df, id_col, domain)
    field = _field(df, text_col, domain)
    if not isinstance(field.dataType, T.StringType):
        raise InputError(f"text column {text_col!r} of the {domain} table must be string, "
                         f"got {field.dataType.simpleString()}")
    # Two projections: Spark keeps them apart (the tokens are used several times and are not
    # cheap to recompute), so each document is tokenized once.
    text = [F.col(text_col).alias(TEXT)] if settings.embedding_model else []
    group = [group_column(df, group_cols, domain).alias(GROUP)] if group_cols else []
    toks = df.select(ident.alias(ID), tokens(F.col(text_col)).alias("_tokens"), *text, *group)
    grams = F.transform(ngrams(F.col("_tokens"), settings.order),
                        lambda g: bucket(g, settings.buckets, settings.hash_name))
    return toks.select(ID, grams.alias(GRAMS), *([TEXT] if text else []), *([GROUP] if group else []))


def grams_of(column: pa.Array | pa.ChunkedArray) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(bucket ids of all rows, concatenated; n-grams per row) of a list<int> Arrow column.
    Null lists count as empty."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return values, lengths


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class NgramStats:
    """Multinomial sufficient statistics of one table's documents (they add up)."""

    n_docs: int
    counts: Counts  # (B,) summed n-gram counts C_j
    doc_freq: Counts  # (B,) documents holding bucket j at least once

    @property
    def buckets(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_grams(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def empty(cls, buckets: int) -> NgramStats:
        return cls(0, np.zeros(buckets, np.int64), np.zeros(buckets, np.int64))

    @classmethod
    def from_grams(cls, values: NDArray[np.int64], lengths: NDArray[np.int64], buckets: int) -> NgramStats:
        """Statistics of the documents whose bucket ids are ``values`` (``lengths`` per document)."""
        counts = np.bincount(values, minlength=buckets).astype(np.int64)
        rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        distinct = np.unique(rows * buckets + values)  # one (document, bucket) pair per occurrence set
        doc_freq = np.bincount(distinct % buckets, minlength=buckets).astype(np.int64)
        return cls(len(lengths), counts, doc_freq)

    def merge(self, other: NgramStats) -> NgramStats:
        if self.buckets != other.buckets:
            raise ValueError(f"cannot merge n-gram statistics of {self.buckets} and {other.buckets} buckets")
        return NgramStats(self.n_docs + other.n_docs, self.counts + other.counts, self.doc_freq + other.doc_freq)

    def probabilities(self, smoothing: float) -> Array:
        """theta_j = (C_j + lambda) / (sum C + lambda B)."""
        return np.asarray((self.counts + smoothing) / (self.n_grams + smoothing * self.buckets), np.float64)


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


def compute_ngram_stats(df: DataFrame, domain: str, text_col: str, buckets: int) -> NgramStats:
    """Statistics of ``df[grams]`` (from :func:`normalize_text`): one mapInArrow pass (bincounts
    per partition) and a treeAggregate.  InputError for null texts or an empty table."""
    start = time.monotonic()
    parts = df.select(GRAMS).mapInArrow(_partition_ngram_stats(buckets),
                                        "docs long, nulls long, counts binary, doc_freq binary")

    def decode(row: tuple[int, int, bytes, bytes]) -> tuple[NgramStats, int]:
        return NgramStats(int(row[0]), np.frombuffer(bytes(row[2]), np.int64).copy(),
                          np.frombuffer(bytes(row[3]), np.int64).copy()), int(row[1])

    def combine(a: tuple[NgramStats, int], b: tuple[NgramStats, int]) -> tuple[NgramStats, int]:
        return a[0].merge(b[0]), a[1] + b[1]

    stats, nulls = parts.rdd.map(tuple).map(decode).treeAggregate((NgramStats.empty(buckets), 0), combine, combine,
                                                                 depth=2)
    if nulls:
        raise InputError(f"text column {text_col!r} of the {domain} table has {nulls} null values")
    if stats.n_docs == 0:
        raise InputError(f"the {domain} table has no rows")
    log.info("n-gram statistics of %s: %d documents, %d n-grams in %d buckets (%d used) in %.1f s", domain,
             stats.n_docs, stats.n_grams, buckets, int(np.count_nonzero(stats.counts)), time.monotonic() - start)
    return stats


# ----------------------------------------------------------------------------- lr_ngram
@dataclass(frozen=True)
class NgramModel:
    """lr_ngram: per-bucket log-ratio weights w_j = log theta1_j - log theta2_j."""

    weights: Array  # (B,)
    length_norm: bool

    @classmethod
    def build(cls, forget: NgramStats, retain: NgramStats, smoothing: float, length_norm: bool) -> NgramModel:
        w = np.log(forget.probabilities(smoothing)) - np.log(retain.probabilities(smoothing))
        return cls(w, length_norm)

    def score(self, values: NDArray[np.int64], lengths: NDArray[np.int64]) -> Array:
        """sum_j c_j(x) w_j per document (divided by its n-gram count with ``length_norm``)."""
        rows = np.repeat(np.arange(len(lengths)), lengths)
        out = np.bincount(rows, weights=self.weights[values], minlength=len(lengths)).astype(np.float64)
        return out / np.maximum(lengths, 1) if self.length_norm else out


# ----------------------------------------------------------------------------- dense features
_MATRICES: dict[tuple[int, int, int], NDArray[np.float32]] = {}


@dataclass(frozen=True)
class TextProjection:
    """TF-IDF of the bucket counts, projected to ``dim`` dimensions (see the module docstring)."""

    idf: Array  # (B,)
    dim: int
    seed: int

    @classmethod
    def build(cls, forget: NgramStats, retain: NgramStats, dim: int, seed: int) -> TextProjection:
        n = forget.n_docs + retain.n_docs
        idf = np.log((1.0 + n) / (1.0 + forget.doc_freq + retain.doc_freq)) + 1.0
        return cls(idf, dim, seed)

    def matrix(self) -> NDArray[np.float32]:
        """R, (B, dim), N(0, 1/dim) entries from ``seed``: made once per Python process."""
        key = (self.seed, len(self.idf), self.dim)
        if key not in _MATRICES:
            rng = np.random.default_rng([self.seed, len(self.idf), self.dim])
            _MATRICES[key] = (rng.standard_normal((len(self.idf), self.dim), dtype=np.float32)
                              / np.float32(math.sqrt(self.dim)))
        return _MATRICES[key]

    def tfidf(self, values: NDArray[np.int64], lengths: NDArray[np.int64]) -> object:
        """The rows' L2-normalised TF-IDF vectors, a scipy CSR matrix (n, B)."""
        from scipy import sparse

        n, b = len(lengths), len(self.idf)
        rows = np.repeat(np.arange(n), lengths)
        tf = sparse.csr_matrix((np.ones(len(values)), (rows, values)), shape=(n, b))  # duplicates summed
        tf.sum_duplicates()
        tf.data *= self.idf[tf.indices]
        norms = np.sqrt(np.asarray(tf.multiply(tf).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sparse.diags(inv) @ tf

    def project(self, values: NDArray[np.int64], lengths: NDArray[np.int64]) -> NDArray[np.float32]:
        """(n, dim) float32 features of the rows."""
        tfidf = self.tfidf(values, lengths)
        return np.asarray(tfidf @ self.matrix(), dtype=np.float32)  # type: ignore[operator]


    def features(self, rb: pa.RecordBatch) -> NDArray[np.float32]:
        return self.project(*grams_of(rb.column(GRAMS)))


_EMBEDDERS: dict[str, Any] = {}


@dataclass(frozen=True)
class SentenceEmbedder:
    """Dense text features from a locally saved sentence-transformers model (optional; the
    package is not a dependency).  Loaded once per Python process, offline, on the CPU with one
    thread (like the BLAS kernels)."""

    model_path: str
    batch_size: int = 64

    def model(self) -> Any:
        if self.model_path not in _EMBEDDERS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(1)
            _EMBEDDERS[self.model_path] = SentenceTransformer(self.model_path, device="cpu")
        return _EMBEDDERS[self.model_path]

    def features(self, rb: pa.RecordBatch) -> NDArray[np.float32]:
        texts = rb.column(TEXT).to_pylist()
        out = self.model().encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


class Featurizer(Protocol):
    def features(self, rb: pa.RecordBatch) -> NDArray[np.float32]: ...


def _featurizer(broadcast: Broadcast[Featurizer]) -> ArrowUdf:
    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from threadpoolctl import threadpool_limits

        featurizer = broadcast.value
        with threadpool_limits(limits=1, user_api="blas"):
            for rb in batches:
                x = featurizer.features(rb)
                flat = pa.array(x.ravel(), pa.float32())
                features = pa.FixedSizeListArray.from_arrays(flat, x.shape[1]).cast(pa.list_(pa.float32()))
                extra = [GROUP] if GROUP in rb.schema.names else []
                yield pa.RecordBatch.from_arrays([rb.column(ID), features, rb.column(GRAMS),
                                                  *[rb.column(c) for c in extra]],
                                                 names=[ID, FEATURES, GRAMS, *extra])

    return partition


def with_features(df: DataFrame, featurizer: Broadcast[Featurizer]) -> DataFrame:
    """DataFrame[id, features, grams(, group)] from DataFrame[id, grams(, group)] (and the text
    for sentence embeddings): the projected TF-IDF vectors, or the embeddings."""
    extra = [GROUP] if GROUP in df.columns else []
    schema = T.StructType([df.schema[ID], T.StructField(FEATURES, T.ArrayType(T.FloatType())),
                           df.schema[GRAMS], *[df.schema[c] for c in extra]])
    columns = [ID, GRAMS] + ([TEXT] if TEXT in df.columns else []) + extra
    return df.select(*columns).mapInArrow(_featurizer(featurizer), schema)


@dataclass(frozen=True)
class TextModel:
    """Both domains' n-gram statistics and the settings: the projection and lr_ngram of a run."""

    forget: NgramStats
    retain: NgramStats
    settings: TextSettings

    def projection(self) -> Featurizer:
        """What turns documents into the Gaussian methods' features: the TF-IDF projection, or
        the sentence embeddings of ``embedding_model``."""
        if self.settings.embedding_model:
            return SentenceEmbedder(self.settings.embedding_model)
        return TextProjection.build(self.forget, self.retain, self.settings.dim, self.settings.seed)

    def ngram_model(self) -> NgramModel:
        return NgramModel.build(self.forget, self.retain, self.settings.smoothing, self.settings.length_norm)
