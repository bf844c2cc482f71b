"""Decisions from stored scores: keep rules -> (keep mask, reasons). Scores are never recomputed here.

Rule forms (the `--keep` contract):
    SCORE>=VALUE     keep score >= VALUE (absolute threshold, DataComp --threshold)
    SCORE<=VALUE     keep score <= VALUE
    SCORE:top=P      DataComp --fraction: n = int(N*P), tau = (n+1)-th largest over the whole pool,
                     keep score >= tau (ties at tau are kept, so slightly more than P may be kept)
Several rules intersect. A sample with a missing (NaN) score fails every rule on that score.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

_RULE = re.compile(r"^\s*(?P<score>[A-Za-z_][A-Za-z0-9_]*)\s*(?:(?P<op>>=|<=)\s*(?P<value>[-+0-9.eE]+|nan)"
                   r"|:\s*top\s*=\s*(?P<top>[0-9.eE+-]+))\s*$")


class RuleError(ValueError):
    """A --keep spec that cannot be parsed or applied."""


@dataclass(frozen=True)
class Rule:
    score: str
    op: str            # ">=", "<=" or "top"
    value: float       # threshold, or the fraction for "top"

    @classmethod
    def parse(cls, spec: str) -> "Rule":
        m = _RULE.match(spec)
        if not m:
            raise RuleError(
                f"cannot read keep rule {spec!r}; use SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION")
        if m.group("top") is not None:
            frac = float(m.group("top"))
            if not 0.0 <= frac <= 1.0:
                raise RuleError(f"top fraction must be in [0, 1], got {frac} in {spec!r}")
            return cls(m.group("score"), "top", frac)
        value = float(m.group("value"))
        if np.isnan(value):
            raise RuleError(f"threshold is NaN in {spec!r}")
        return cls(m.group("score"), m.group("op"), value)

    def __str__(self) -> str:
        return f"{self.score}:top={self.value:g}" if self.op == "top" else f"{self.score}{self.op}{self.value:g}"

    @property
    def keeps(self) -> str:
        """What the rule keeps, for legends and labels ("top 0.3 of s", "s ≥ 0.2187")."""
        if self.op == "top":
            return f"top {self.value:.4g} of {self.score}"
        return f"{self.score} {'≥' if self.op == '>=' else '≤'} {self.value:g}"

    @property
    def reason(self) -> str:
        """The reason a sample that fails this rule carries."""
        if self.op == "top":
            return f"{self.score} not in top {self.value:.4g}"
        return f"{self.score} {'<' if self.op == '>=' else '>'} {self.value:g}"


def top_fraction_rank(n_pool: int, n_finite: int, fraction: float) -> int | None:
    """0-based rank, among the finite scores in descending order, of DataComp's top-fraction threshold: the
    (int(N·p)+1)-th largest score of the whole pool of N, or the smallest finite score when int(N·p) reaches the
    number of finite scores (NaN scores sort last and are never kept). None when no score is finite."""
    if n_finite == 0:
        return None
    return min(int(n_pool * fraction), n_finite - 1)


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """DataComp's global threshold: the (int(N·p)+1)-th largest score of the whole pool.

    NaN scores sort last (they are never kept). With n = int(N·p) >= the number of finite scores,
    every finite score is kept (threshold = the smallest finite score; -inf when there is none).
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = s[~np.isnan(s)]
    rank = top_fraction_rank(len(s), len(finite), fraction)
    if rank is None:
        return float("-inf")
    # the rank-th largest = element at index len-1-rank of the ascending order
    return float(np.partition(finite, len(finite) - 1 - rank)[len(finite) - 1 - rank])


def top_fraction_threshold_sorted(values: np.ndarray, order: np.ndarray, fraction: float) -> float:
    """``top_fraction_threshold(values, fraction)`` read off ``order``, the rows of the finite values sorted
    descending (a store's pool-order ``score_order``): O(1) instead of a partition of the pool."""
    rank = top_fraction_rank(len(values), len(order), fraction)
    return float("-inf") if rank is None else float(values[order[rank]])


def threshold_for(rule: Rule, scores: np.ndarray) -> float:
    return top_fraction_threshold(scores, rule.value) if rule.op == "top" else rule.value


def apply_rule(rule: Rule, scores: np.ndarray, *, tau: float | None = None) -> np.ndarray:
    """Boolean keep mask for one rule. NaN never passes."""
    s = np.asarray(scores, dtype=np.float64)
    t = threshold_for(rule, s) if tau is None else tau
    with np.errstate(invalid="ignore"):
        return (s <= t) if rule.op == "<=" else (s >= t)


@dataclass
class Selection:
    keep: np.ndarray                       # bool (N,)
    failed: dict[str, np.ndarray] = field(default_factory=dict)   # reason -> bool mask of failures
    thresholds: dict[str, float] = field(default_factory=dict)   # rule -> threshold used

    def reasons(self) -> list[str]:
        """Per sample: '; '-joined reasons it failed ('' when kept)."""
        out = [""] * len(self.keep)
        for reason, mask in self.failed.items():
            for i in np.flatnonzero(mask):
                out[i] = f"{out[i]}; {reason}" if out[i] else reason
        return out

    def counts_by_reason(self) -> dict[str, int]:
        return {r: int(m.sum()) for r, m in self.failed.items()}


def select(rules: Sequence[Rule], columns: dict[str, np.ndarray], n: int | None = None,
           thresholds: dict[str, float] | None = None) -> Selection:
    """Intersect rules; every threshold is computed over the whole pool (all N rows), or taken from
    ``thresholds`` ({str(rule): τ}, e.g. ``top_fraction_threshold_sorted``: the same number without a partition)."""
    if n is None:
        n = len(next(iter(columns.values()))) if columns else 0
    keep = np.ones(n, dtype=bool)
    sel = Selection(keep=keep)
    for rule in rules:
        if rule.score not in columns:
            raise RuleError(f"unknown score {rule.score!r}; known: {', '.join(sorted(columns)) or 'none'}")
        s = columns[rule.score]
        tau = (thresholds or {}).get(str(rule))
        tau = threshold_for(rule, s) if tau is None else tau
        ok = apply_rule(rule, s, tau=tau)
        sel.thresholds[str(rule)] = tau
        sel.failed[rule.reason] = ~ok
        keep &= ok
    return sel
