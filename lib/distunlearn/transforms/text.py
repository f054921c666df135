"""Text input in Spark SQL: hashed word n-grams, and the Gaussian methods' dense features
(DataFrame -> DataFrame, no I/O).  The n-gram model itself is :mod:`distunlearn.core.text`.

A forget or retain table may carry a text column (``--text-col``) instead of a feature vector.
The featurizer (:func:`normalize_text`), with no Python per row:

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

:func:`with_features` adds the dense ``features`` of each document (the TF-IDF projection or
the sentence embeddings of :class:`distunlearn.core.text.TextModel`) in a mapInArrow pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.core.batches import ArrowUdf
from distunlearn.core.text import GRAMS, TEXT, TOKEN_PATTERN, Featurizer, TextSettings
from distunlearn.errors import InputError
from distunlearn.transforms.prepare import FEATURES, GROUP, ID, column, field_of, group_column, id_column


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


def normalize_text(df: DataFrame, id_col: str, text_col: str, domain: str, settings: TextSettings,
                   group_cols: tuple[str, ...] = ()) -> DataFrame:
    """DataFrame[id, grams] of a table with a string text column (InputError otherwise), with
    a ``group`` column when ``group_cols`` are given."""
    ident = id_column(df, id_col, domain)
    field = field_of(df, text_col, domain)
    if not isinstance(field.dataType, T.StringType):
        raise InputError(f"text column {text_col!r} of the {domain} table must be string, "
                         f"got {field.dataType.simpleString()}")
    # Two projections: Spark keeps them apart (the tokens are used several times and are not
    # cheap to recompute), so each document is tokenized once.
    text = [column(text_col).alias(TEXT)] if settings.embedding_model else []
    group = [group_column(df, group_cols, domain).alias(GROUP)] if group_cols else []
    toks = df.select(ident.alias(ID), tokens(column(text_col)).alias("_tokens"), *text, *group)
    grams = F.transform(ngrams(F.col("_tokens"), settings.order),
                        lambda g: bucket(g, settings.buckets, settings.hash_name))
    return toks.select(ID, grams.alias(GRAMS), *([TEXT] if text else []), *([GROUP] if group else []))


def _featurizer(featurizer: Featurizer) -> ArrowUdf:
    def partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from threadpoolctl import threadpool_limits

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


def with_features(df: DataFrame, featurizer: Featurizer) -> DataFrame:
    """DataFrame[id, features, grams(, group)] from DataFrame[id, grams(, group)] (and the text
    for sentence embeddings): the projected TF-IDF vectors, or the embeddings."""
    extra = [GROUP] if GROUP in df.columns else []
    schema = T.StructType([df.schema[ID], T.StructField(FEATURES, T.ArrayType(T.FloatType())),
                           df.schema[GRAMS], *[df.schema[c] for c in extra]])
    columns = [ID, GRAMS] + ([TEXT] if TEXT in df.columns else []) + extra
    return df.select(*columns).mapInArrow(_featurizer(featurizer), schema)
