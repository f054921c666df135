"""Group-robust removal: per-group budgets, caps and retain weights (pure Python).

Second seed paper: "Group-robust Machine Unlearning" (arXiv 2503.09330; PAPER.md, last
section).  When the unwanted rows concentrate in one group (a language, a source, a label x
attribute), a removal set drawn from the global ranking can take most of that group's data.
With ``--group-col`` every row of both tables belongs to a group, and:

Notation, per group g: ``n1_g`` forget rows, ``n2_g`` retain rows, ``N_g = n1_g + n2_g`` its
rows in the data before removal, ``r_g`` the rows of g a removal set takes.

Deletion rate
    ``r_g / N_g``: the share of the group's data (both tables) that the removal set deletes.
    Also reported: ``r_g / n1_g``, the share of the group's forget rows removed.

Cap (``--group-cap c``, default 1: none)
    At most ``cap_g = floor(c * N_g)`` rows of g may be removed (exact rational arithmetic,
    like the budgets), and never more than n1_g: the capacity is ``min(n1_g, cap_g)``.  A
    budget larger than the sum of the capacities is reduced to it (with a warning): the set
    of that budget holds every row the cap allows.

Stratified budgets (``--group-budget stratified``)
    Group g's share of k is proportional to its share of the forget set, n1_g / n1, rounded
    by the largest-remainder (Hamilton) method so the shares sum to exactly k: every group
    gets the floor of its exact quota, and the units left go to the largest fractional
    remainders (ties: the larger group, then the group name).  With a cap, a group whose quota
    exceeds its capacity gets the capacity, and the rest of k is apportioned again among the
    others by their forget shares (repeated until no quota exceeds a capacity), so the total is
    still exactly k whenever the capacities allow it.  Each group's set is the top of *its own*
    ranking.  Largest remainder is not "house monotone" (the Alabama paradox): a group's share
    can shrink by one when k grows, so the stratified sets of two budgets need not be nested.
    Everything downstream (diagnostics, evaluation) treats each budget's set on its own.

Global (``--group-budget global``, the default)
    The global ranking, as without groups; with a cap, rows of a group past its capacity (in
    the group's own ranking) are skipped and the next rows of the global ranking are taken.

Reweighting (``--reweight``; their REWEIGHT)
    Retain rows of group g get the weight

        w_g = (n2_g + r_g) / n2_g = 1 + r_g / n2_g

    so that the group's total weight in the edited data (its n2_g retain rows at w_g plus its
    n1_g - r_g kept forget rows at weight 1) is N_g, its size before removal: downstream
    training sees the original group proportions.  Kept forget rows keep weight 1, so the
    forget domain is never re-inflated.  When every forget row of g is removed (budget 1, or
    the paper's setting, where the whole forget set goes), N_after(g) = n2_g and w_g is the
    paper's N_before(g) / N_after(g).  Applying N_before / N_after to *every* kept row instead
    would up-weight the kept forget rows too (re-inflating the domain being removed), and
    applying it to the retain rows only would fall short of N_g.  A group that loses rows but
    has no retain row cannot be re-weighted: its weight is undefined (None) and a warning says
    so.  A group that loses nothing has weight 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from distunlearn.errors import ConfigError

log = logging.getLogger(__name__)

GROUP_BUDGETS = ("global", "stratified")

#: A group's key: its value as a string, or None for the one group of a run without groups.
Group = str | None


def _name(g: Group) -> str:
    return "" if g is None else g


def check_cap(cap: float) -> float:
    """The cap fraction, checked: in (0, 1] (ConfigError otherwise)."""
    if not (0.0 < cap <= 1.0) or math.isnan(cap):
        raise ConfigError(f"group_cap {cap!r} is outside (0, 1]; it is the largest fraction of a group "
                          "that may be removed")
    return cap


def capacities(n_forget: Mapping[Group, int], n_retain: Mapping[Group, int], cap: float) -> dict[Group, int]:
    """Per group, the most rows a removal set may take: min(n1_g, floor(cap * (n1_g + n2_g)))."""
    frac = Fraction(repr(float(check_cap(cap))))
    out = {}
    for g, n1 in n_forget.items():
        total = n1 + n_retain.get(g, 0)
        out[g] = min(n1, math.floor(frac * total))
    return out


def apportion(k: int, weights: Mapping[Group, int], caps: Mapping[Group, int] | None = None) -> dict[Group, int]:
    """Largest-remainder apportionment of k units to groups in proportion to ``weights``
    (non-negative counts), no group above its cap (default: its weight).  The shares sum to
    min(k, sum of caps).  See the module docstring for the rounding and the tie rule."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    caps = dict(caps) if caps is not None else dict(weights)
    fixed: dict[Group, int] = {}
    while True:
        free = [g for g in weights if g not in fixed]
        left = k - sum(fixed.values())
        total = sum(weights[g] for g in free)
        if not free or left <= 0 or total == 0:
            quotas = {g: Fraction(0) for g in free}
            break
        quotas = {g: Fraction(left * weights[g], total) for g in free}
        over = [g for g in free if quotas[g] >= caps[g]]
        if not over:
            break
        for g in over:
            fixed[g] = caps[g]
    shares = {g: math.floor(q) for g, q in quotas.items()}
    left = max(0, k - sum(fixed.values()) - sum(shares.values()))
    # Largest fractional remainders first; every quota is below its cap, so floor + 1 <= cap.
    for g in sorted(shares, key=lambda g: (-(quotas[g] - shares[g]), -weights[g], _name(g)))[:left]:
        shares[g] += 1
    return {g: fixed.get(g, shares.get(g, 0)) for g in weights}


def effective_k(k: int, caps: Mapping[Group, int]) -> int:
    """The size of a budget's removal set under the caps: min(k, sum of capacities)."""
    return min(k, sum(caps.values()))


@dataclass(frozen=True)
class GroupCounts:
    """One group's rows in the forget and retain tables."""

    n_forget: int
    n_retain: int

    @property
    def total(self) -> int:
        return self.n_forget + self.n_retain


def sample_weight(n_retain: int, removed: int) -> float | None:
    """w_g = (n2_g + r_g) / n2_g (module docstring); None when the group has no retain row
    and lost rows, 1.0 when it lost none."""
    if removed == 0:
        return 1.0
    if n_retain == 0:
        return None
    return (n_retain + removed) / n_retain


def deletion_rate(removed: int, total: int) -> float | None:
    """r_g / N_g (None for a group without rows)."""
    return removed / total if total else None


def describe(counts: Mapping[Group, GroupCounts], limit: int = 8) -> str:
    """One log line: the groups with their forget and retain rows (the largest first)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1].n_forget, _name(kv[0])))
    shown = ", ".join(f"{g!r} {c.n_forget}/{c.n_retain}" for g, c in items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} groups (forget/retain rows): {shown}{more}"


@dataclass(frozen=True)
class GroupPlan:
    """The groups of a run and how its budgets treat them.

    A run without groups is a run with one group, whose key is None: its capacity is every
    forget row, and a budget's quota in it is k.  So selection, bucket statistics and
    diagnostics have one code path, with the group options as parameters of it.
    """

    mode: str  # "global" or "stratified"
    cap: float
    n_forget: Mapping[Group, int]
    n_retain: Mapping[Group, int]

    @classmethod
    def single(cls, n_forget: int, n_retain: int) -> GroupPlan:
        return cls("global", 1.0, {None: n_forget}, {None: n_retain})

    @property
    def grouped(self) -> bool:
        return None not in self.n_forget

    @property
    def groups(self) -> list[Group]:
        if not self.grouped:
            return [None]
        return sorted(set(self.n_forget) | set(self.n_retain), key=_name)

    def counts(self) -> dict[Group, GroupCounts]:
        return {g: GroupCounts(self.n_forget.get(g, 0), self.n_retain.get(g, 0)) for g in self.groups}

    @property
    def capacities(self) -> dict[Group, int]:
        if not self.grouped:
            return {None: self.n_forget[None]}
        counts = self.counts()
        return capacities({g: c.n_forget for g, c in counts.items()}, {g: c.n_retain for g, c in counts.items()},
                          self.cap)

    @property
    def cap_binds(self) -> bool:
        """Whether some group's capacity is below its forget rows."""
        caps = self.capacities
        return any(caps[g] < c.n_forget for g, c in self.counts().items())

    @property
    def ranked_by_group(self) -> bool:
        """Whether a set can differ from the global top k: stratified budgets or a binding cap.
        Only then is the selection's pruning by the global quantile unsafe."""
        return self.mode == "stratified" or self.cap_binds

    def effective_k(self, k: int) -> int:
        return effective_k(k, self.capacities)

    def stratified_quotas(self, k: int) -> dict[Group, int]:
        """Stratified budgets: each group's share of k (largest remainder, capped)."""
        return apportion(k, {g: c.n_forget for g, c in self.counts().items()}, self.capacities)
