"""Stage timing: each stage of a command is logged when it starts and ends, and its wall time
is recorded (the ``runs`` ledger keeps them in ``timings``)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("distunlearn")


class Stage:
    """Context manager that logs a stage and adds its wall time to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        log.info("stage %s ...", self.name)
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.monotonic() - self.start
        if exc[0] is None:
            log.info("stage %s done in %.1f s", self.name, self.timings[self.name])
