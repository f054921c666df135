"""Input contract checks and normalisation (Spark DataFrame -> DataFrame, no I/O).

Each input table must have an id column (long, int or string; unique and non-null in the
forget table) and a feature column: ``array<float>``, ``array<double>``, an integer array
(cast to double) or a Spark ML vector (converted with ``vector_to_array``).  The result has
exactly two columns, ``id`` (long or string) and ``features``.
"""

from __future__ import annotations

import logging

from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from distunlearn.errors import InputError
from distunlearn.identifiers import quote

log = logging.getLogger(__name__)

ID = "id"
FEATURES = "features"
GROUP = "group"
_FLOAT_ELEMENTS = (T.FloatType, T.DoubleType)
_INT_ELEMENTS = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_ID_TYPES = (T.LongType, T.IntegerType, T.ShortType, T.StringType)


def column(name: str) -> Column:
    """A user's column by its name, whatever characters the name holds (:mod:`distunlearn.identifiers`)."""
    return F.col(quote(name))


def field_of(df: DataFrame, column: str, domain: str) -> T.StructField:
    names = {f.name: f for f in df.schema.fields}
    if column not in names:
        raise InputError(f"{domain} table has no column {column!r} (columns: {', '.join(names)})")
    return names[column]


def id_column(df: DataFrame, id_col: str, domain: str) -> Column:
    """The id column, type-checked: long or string (int and short ids become long, so every
    run of an output folder stores one id type whatever integer width the source uses)."""
    id_field = field_of(df, id_col, domain)
    if not isinstance(id_field.dataType, _ID_TYPES):
        raise InputError(f"id column {id_col!r} of the {domain} table must be long, int or string, "
                         f"got {id_field.dataType.simpleString()}")
    ident = column(id_col)
    return ident if isinstance(id_field.dataType, T.StringType) else ident.cast(T.LongType())


def group_column(df: DataFrame, group_cols: tuple[str, ...], domain: str) -> Column:
    """The group of a row as a string (``--group-col``): the column cast to string, or for several
    columns the JSON array of their string values (``["en","web"]``: unambiguous), null when any
    of them is null.  Nulls stay null here;
    :func:`distunlearn.transforms.statistics.check_groups` rejects them."""
    cols = [column(field_of(df, c, domain).name).cast("string") for c in group_cols]
    if len(cols) == 1:
        return cols[0]
    any_null = F.greatest(*[c.isNull() for c in cols])  # a null part makes the group null
    return F.when(~any_null, F.to_json(F.array(*cols)))


def normalize(df: DataFrame, id_col: str, feature_col: str, domain: str, keep: tuple[str, ...] = (),
              group_cols: tuple[str, ...] = ()) -> DataFrame:
    """Select and type-check the id and feature columns; return DataFrame[id, features, *keep]
    (``keep``: further columns passed through unchanged, e.g. a label for the evaluation), and
    a ``group`` column (:func:`group_column`) when ``group_cols`` are given."""
    ident = id_column(df, id_col, domain)
    feat_field = field_of(df, feature_col, domain)
    dtype = feat_field.dataType
    feature = column(feature_col)
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _FLOAT_ELEMENTS):
        pass
    elif isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _INT_ELEMENTS):
        feature = feature.cast(T.ArrayType(T.DoubleType()))
    elif isinstance(dtype, VectorUDT):  # dense or sparse
        feature = vector_to_array(feature, dtype="float64")
    else:
        raise InputError(f"feature column {feature_col!r} of the {domain} table must be "
                         f"array<float|double> or a Spark ML vector, got {dtype.simpleString()}")
    extra = [column(field_of(df, name, domain).name) for name in keep]
    if group_cols:
        extra.append(group_column(df, group_cols, domain).alias(GROUP))
    return df.select(ident.alias(ID), feature.alias(FEATURES), *extra)


def check_ids(df: DataFrame, id_col: str, domain: str) -> None:
    """Raise InputError when ids are null or repeated: one Spark job, one shuffle of the id
    column (nulls form one group of their own in the aggregation)."""
    bad = (df.groupBy(ID).count().where(F.col(ID).isNull() | (F.col("count") > 1))
           .orderBy(F.col(ID).isNotNull()).limit(1).collect())  # a null id first, if any
    if not bad:
        return
    if bad[0][ID] is None:
        raise InputError(f"id column {id_col!r} of the {domain} table has null values")
    raise InputError(f"id column {id_col!r} of the {domain} table has duplicate id "
                     f"{bad[0][ID]!r} ({bad[0]['count']} rows)")
