"""How the job names a user's column in Spark: quoted, whatever characters it holds.

``F.col("doc.id")`` reads a field ``id`` of a struct ``doc``, and a backtick in a name ends a
quoted identifier in SQL; every column name a user gives goes through :func:`quote` before it
reaches ``F.col`` or a SQL string.
"""

from __future__ import annotations


def quote(name: str) -> str:
    """``name`` as a quoted Spark identifier: ``doc.id`` -> ```doc.id```, ``a`b`` -> ```a``b```."""
    return "`" + name.replace("`", "``") + "`"
