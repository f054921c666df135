"""The n-gram model of text input (pure numpy, pyarrow and scipy; no pyspark).

How text becomes bucket ids is Spark SQL (:mod:`distunlearn.transforms.text`); what is done
with the bucket ids is here:

**Multinomial sufficient statistics** (:class:`NgramStats`): per domain, the number of documents,
the summed bucket counts C_j = sum_x c_j(x) (the multinomial's sufficient statistics) and the
document frequencies (for TF-IDF).  They add up, so partitions are summed; they are stored in
the Delta table ``ngram_statistics``.

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
up to O(1/sqrt(d))).  An empty document maps to the zero vector.  Or, optionally, the
embeddings of a locally saved sentence-transformers model (:class:`SentenceEmbedder`).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from distunlearn.errors import ConfigError

GRAMS = "grams"
TEXT = "_text"  # the raw text, carried only for sentence embeddings
TOKEN_PATTERN = r"(?U)\w+|[^\w\s]+"
TOKENIZER = "lower + regexp " + TOKEN_PATTERN
NGRAM_HASHES = ("xxhash64", "sha256")
MAX_BUCKETS = 1 << 24
MAX_ORDER = 5

Array = NDArray[np.float64]
Counts = NDArray[np.int64]


@dataclass(frozen=True)
class TextSettings:
    """The text options of a run: how text becomes n-gram buckets (``buckets``, ``order``,
    ``hash_name``), lr_ngram's ``smoothing`` and ``length_norm``, and the Gaussian methods'
    features (``dim`` projected dimensions, or a local ``embedding_model``).  The projection's
    seed is the run's seed (:class:`TextModel`)."""

    buckets: int = 65536
    order: int = 2
    hash_name: str = "xxhash64"
    smoothing: float = 1.0
    length_norm: bool = False
    dim: int = 64
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


def grams_of(column: pa.Array | pa.ChunkedArray) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(bucket ids of all rows, concatenated; n-grams per row) of a list<int> Arrow column.
    Null lists count as empty."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return values, lengths



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


@dataclass(frozen=True)
class TextModel:
    """Both domains' n-gram statistics and the settings: the projection and lr_ngram of a run."""

    forget: NgramStats
    retain: NgramStats
    settings: TextSettings
    seed: int = 0  # of the random projection: the run's seed

    def projection(self) -> Featurizer:
        """What turns documents into the Gaussian methods' features: the TF-IDF projection, or
        the sentence embeddings of ``embedding_model``."""
        if self.settings.embedding_model:
            return SentenceEmbedder(self.settings.embedding_model)
        return TextProjection.build(self.forget, self.retain, self.settings.dim, self.seed)

    def ngram_model(self) -> NgramModel:
        return NgramModel.build(self.forget, self.retain, self.settings.smoothing, self.settings.length_norm)
