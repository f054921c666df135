"""Rank arithmetic of the selection (pure Python, no pyspark).

The selection sorts the scores of every method with one range-partitioned sort (score
descending, then id ascending; :mod:`distunlearn.transforms.rank`).  Each partition then
holds a contiguous stretch of one or more methods' order, and the partitions of a method
follow each other in partition-id order.  Counting the rows of every (partition, method,
group) block (a few hundred small rows, collected) is enough to give every row its ranks
without comparing it with rows of other partitions:

* ``group_rank``: the row's position in its group's own ranking (the global order restricted
  to the group, which is the group's ranking because the order is total);
* eligible: ``group_rank <= capacity`` of its group (``--group-cap``; every row without a cap);
* ``rank``: the row's position among the method's eligible rows.  Without groups and caps it
  is the plain rank, and ``group_rank == rank``.

A removal set is then, in every group, a prefix of the group's ranking: with global budgets
the set of size k is the eligible rows of ``rank <= k`` and its part in group g has
``quota_g`` rows, the number of g's rows among them; with stratified budgets ``quota_g``
is g's apportioned share.  Either way the set is ``group_rank <= quota_g`` in each group,
which is the output contract (``removal_ranking`` + ``removal_budgets``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from distunlearn.core.groups import Group

#: One block of the sorted scores: (partition id, method, group, rows).
Block = tuple[int, str, Group, int]


@dataclass(frozen=True)
class Offsets:
    """Per block, the ranks of the rows before it (see :func:`offsets`)."""

    group_before: dict[tuple[int, str, Group], int]  # (pid, method, group) -> rows of the group earlier
    eligible_before: dict[tuple[int, str], int]  # (pid, method) -> eligible rows of the method earlier


def offsets(blocks: Iterable[Block], capacities: Mapping[Group, int]) -> Offsets:
    """Offsets of every block, walking each method's blocks in partition order.  A block of
    group g whose first row has group rank r + 1 holds min(count, max(0, cap_g - r))
    eligible rows, all at its start (the group's rows are in rank order)."""
    group_seen: dict[tuple[str, Group], int] = {}
    group_before: dict[tuple[int, str, Group], int] = {}
    in_partition: dict[tuple[int, str], int] = {}  # eligible rows of each (pid, method)
    for pid, method, group, count in sorted(blocks, key=lambda b: (b[1], b[0], "" if b[2] is None else b[2])):
        before = group_seen.get((method, group), 0)
        allowed = min(count, max(0, capacities.get(group, 0) - before))
        group_before[(pid, method, group)] = before
        group_seen[(method, group)] = before + count
        in_partition[(pid, method)] = in_partition.get((pid, method), 0) + allowed
    eligible_before: dict[tuple[int, str], int] = {}
    running: dict[str, int] = {}
    for pid, method in sorted(in_partition, key=lambda key: (key[1], key[0])):
        eligible_before[(pid, method)] = running.get(method, 0)
        running[method] = running.get(method, 0) + in_partition[(pid, method)]
    return Offsets(group_before, eligible_before)
