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

The limit can be lowered (or raised, for a server with a larger message cap) with the Spark
setting ``spark.distunlearn.inlinePayloadBytes``; the tests set it to 0 to run the artifact
path on small models.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
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
    inline, unless the session is a Connect one and the pickle is above the inline limit."""
    if not is_connect(spark):
        return Payload(value)
    blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    limit = int(spark.conf.get(INLINE_LIMIT_CONF, str(INLINE_LIMIT)))
    if len(blob) <= limit:
        return Payload(value)
    name = f"distunlearn-{what}-{hashlib.sha256(blob).hexdigest()[:32]}.pkl"
    with tempfile.TemporaryDirectory(prefix="distunlearn-payload-") as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(blob)
        spark.addArtifacts(path, file=True)
    log.info("%s: %.1f MB pickled, above the %.1f MB a Spark Connect plan carries here: sent as the session "
             "file %s", what, len(blob) / 2**20, limit / 2**20, name)
    return Payload(artifact=name)
