"""Stage timing and the console's one line per stage.

Each stage of a command records its wall time (the ``runs`` ledger keeps them in ``timings``)
and, when it ends, logs one line: its name, seconds and the notes the code inside it added
with :func:`note` (rows read, tables written).  The details behind a note are logged at DEBUG
(``--verbose``).  On a terminal a stage also logs when it starts, so Spark's progress bar
below it (``spark.ui.showConsoleProgress``, on only for a terminal: commands/session.py) has a
name.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("distunlearn")

_active: list[Stage] = []


def note(text: str) -> None:
    """Add ``text`` to the line of the innermost running stage (nothing outside a stage)."""
    if _active:
        _active[-1].notes.append(text)


class Stage:
    """Context manager that adds its wall time to ``timings[name]`` and logs one line at the end."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name
        self.notes: list[str] = []

    def __enter__(self) -> Stage:
        log.log(logging.INFO if sys.stderr.isatty() else logging.DEBUG, "%s ...", self.name)
        self.start = time.monotonic()
        _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active.remove(self)
        seconds = time.monotonic() - self.start
        self.timings[self.name] = self.timings.get(self.name, 0.0) + seconds
        if exc[0] is None:
            details = f"  ({'; '.join(self.notes)})" if self.notes else ""
            log.info("%-18s %6.1f s%s", self.name, seconds, details)
