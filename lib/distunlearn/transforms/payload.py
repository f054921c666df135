"""How a UDF's large read-only object (the scoring model) reaches the Python workers.

A classic session pickles the UDF with its closure into the plan, and pyspark broadcasts that
pickle itself when it is larger than 1 MB: the object can simply be captured.

Over Spark Connect the pickled UDF travels inside the plan, in one gRPC message, which the
client and the server both cap at 128 MB by default (``spark.connect.grpc.maxInboundMessageSize``
on the server); a dense 4096 x 4096 float64 matrix alone is 134 MB.  So over Connect an object
whose pickle is larger than :data:`INLINE_LIMIT` is uploaded as a file artifact of the session
instead (``spark.addArtifacts(path, file=True)``, streamed in small chunks, so no message
limit applies), named by the SHA-256 of its bytes, and the workers load it with
``SparkFiles.get`` once per Python worker process.  Measured on a local Connect server
(docs/BENCHMARKS.md): the scoring model of d = 4096 with the full covariance, 134 MB, fails
inline with RESOURCE_EXHAUSTED and runs as an artifact.

A classic session could carry any size inline, but pyspark's broadcast of a large pickled
UDF sits in the JVM heap (the driver's, which in local mode is also the executors'): at
d = 4096 the default 2 GB heap held the model's and the statistics' copies and ran out of it
writing the statistics (docs/BENCHMARKS.md, profiling log #12).  So a classic session ships
an object above the limit as a file too (``SparkContext.addFile``; the driver's file server
streams it to each executor's disk), kept in a folder that lives as long as this process.

The limit can be lowered (or raised, for a server with a larger message cap) with the Spark
setting ``spark.distunlearn.inlinePayloadBytes``; the tests set it to 0 to run the file path
on small objects.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest pickle shipped inside a Connect plan: a quarter of the default gRPC message cap,
#: leaving room for the rest of the plan.
INLINE_LIMIT = 32 * 2**20
INLINE_LIMIT_CONF = "spark.distunlearn.inlinePayloadBytes"

#: Per Python worker process: the artifact loaded last (a worker scores with one model at a
#: time; keeping one bounds the memory of a long-lived worker shared by many runs).
_loaded: dict[str, Any] = {}


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (no JVM, no SparkContext in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@dataclass(frozen=True)
class Payload(Generic[T]):
    """What a UDF's closure captures: the object itself, or the name of the session file
    artifact that holds its pickle.  :meth:`get` returns the object on a worker."""

    value: T | None = None
    artifact: str | None = None

    def get(self) -> T:
        if self.artifact is None:
            return self.value  # type: ignore[return-value]
        if self.artifact not in _loaded:
            from pyspark import SparkFiles

            with open(SparkFiles.get(self.artifact), "rb") as f:
                value = pickle.load(f)
            _loaded.clear()
            _loaded[self.artifact] = value
        return _loaded[self.artifact]  # type: ignore[no-any-return]


def ship(spark: Any, value: T, what: str) -> Payload[T]:
    """A :class:`Payload` of ``value`` for UDFs of ``spark``'s plans (module docstring):
    inline up to the inline limit, else a file of the session."""
    blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    limit = int(spark.conf.get(INLINE_LIMIT_CONF, str(INLINE_LIMIT)))
    if len(blob) <= limit:
        return Payload(value)
    name = f"distunlearn-{what}-{hashlib.sha256(blob).hexdigest()[:32]}.pkl"
    if is_connect(spark):
        with tempfile.TemporaryDirectory(prefix="distunlearn-payload-") as folder:
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.write(blob)
            spark.addArtifacts(path, file=True)
        log.info("%s: %.1f MB pickled, above the %.1f MB a Spark Connect plan carries here: sent as the session "
                 "file %s", what, len(blob) / 2**20, limit / 2**20, name)
    elif name not in _added:  # the file server serves the path until the process ends
        path = os.path.join(_folder(), name)
        with open(path, "wb") as f:
            f.write(blob)
        spark.sparkContext.addFile(path)
        _added.add(name)
        log.debug("%s: %.1f MB pickled, shipped as the file %s", what, len(blob) / 2**20, name)
    return Payload(artifact=name)


#: Names of the files this process added to its classic SparkContext, and their folder.
_added: set[str] = set()
_files: list[str] = []


def _folder() -> str:
    if not _files:
        folder = tempfile.mkdtemp(prefix="distunlearn-payload-")
        atexit.register(shutil.rmtree, folder, True)
        _files.append(folder)
    return _files[0]


#: Local rows larger than this are made by a Python worker from a shipped copy instead of
#: travelling in the plan (:func:`local_frame`).
LOCAL_ROWS_LIMIT = 16 * 2**20


def local_frame(spark: Any, table: Any, schema: str) -> Any:  # pa.Table -> DataFrame
    """A DataFrame of the local Arrow ``table`` with the DDL ``schema``.  A small table becomes
    a local relation (``createDataFrame``); a large one (the statistics' d x d scatter: 134 MB a
    row at d = 4096) is shipped like a UDF's object and emitted by one task, a row at a time:
    ``createDataFrame`` puts the whole table in the task, which at d = 4096 the default 2 GB
    heap held several times over and ran out of memory in the Parquet writer."""
    if table.nbytes <= LOCAL_ROWS_LIMIT:
        return spark.createDataFrame(table, schema)
    from pyspark.sql.pandas.types import to_arrow_schema

    struct = spark.createDataFrame([], schema).schema
    rows = ship(spark, table.cast(to_arrow_schema(struct)), "rows")

    def emit(batches: Any) -> Any:
        for _ in batches:
            pass
        yield from rows.get().to_batches(max_chunksize=1)

    return spark.range(0, 1, numPartitions=1).mapInArrow(emit, struct)
