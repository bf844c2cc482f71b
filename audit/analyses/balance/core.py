"""Balancing maths on assembled matrices: memberships, targets, proxies, M4 on ``Inputs``, before/after comparison.

The solver itself is m4.py (methods.md §5.1); run.py assembles ``Inputs`` from a store and runs MetaCLIP (§4.3).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


NON_GROUPS = ("unknown", "multiple")
DEFAULT_BUDGET = 0.9            # the M4 paper's subsampling rate η [2nd: methods.md §5]
DEFAULT_EPS_REP = 0.01
DEFAULT_EPS_ASSOC = 0.01
DEMO_EPS_REP = 0.001
DEMO_EPS_ASSOC = 0.0005
MIN_GROUP = 30
MIN_PROXY = 30
MAX_PROXY_LABELS = 30
ZS_LOGIT_SCALE = 100.0
DEMO_ZS_PROMPTS = ("portrait", "wedding", "athlete", "business meeting", "family")
M4_NOTE = ("M4 here is this project's formulation (methods.md §5.1): the moment-matching program the paper "
           "describes, solved exactly through its dual. No public M4 code exists to compare against.")


class BalanceError(ValueError):
    """Bad balancing input a user can fix (unknown attribute, bad target, too few members)."""


# ---------------------------------------------------------------------------------------------------
# pure helpers: labels -> matrices
# ---------------------------------------------------------------------------------------------------
def membership_matrix(labels: np.ndarray, conf: np.ndarray, groups: list[str]) -> np.ndarray:
    """S (n, m): s_ik = confidence of row i's label if it is group k, else 0 (NaN confidence counts as 1)."""
    labels = np.asarray(labels, dtype=object)
    c = np.clip(np.nan_to_num(np.asarray(conf, np.float64), nan=1.0), 0.0, 1.0)
    S = np.zeros((len(labels), len(groups)))
    for k, g in enumerate(groups):
        S[:, k] = np.where(labels == g, c, 0.0)
    return S


def parse_target(spec: str | None, groups: list[str], pool_shares: np.ndarray | None = None) -> np.ndarray:
    """'uniform', 'pool', 'G=P,G=P' or 'P,P' (in group order) -> proportions summing to 1."""
    m = len(groups)
    if spec is None or spec.strip().lower() == "uniform":
        return np.full(m, 1.0 / m)
    s = spec.strip()
    if s.lower() == "pool":
        if pool_shares is None or not np.all(np.isfinite(pool_shares)):
            raise BalanceError("target 'pool' needs the pool's group shares")
        return np.asarray(pool_shares, np.float64)
    parts = [p.strip() for p in s.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            got = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
            unknown = set(got) - set(groups)
            if unknown:
                raise BalanceError(f"target names unknown groups {sorted(unknown)}; groups are {groups}")
            vals = np.array([got.get(g, 0.0) for g in groups])
        else:
            vals = np.array([float(p) for p in parts])
    except ValueError as exc:
        if isinstance(exc, BalanceError):
            raise
        raise BalanceError(f"cannot read target {spec!r}: use uniform, pool, G=P,G=P or P,P") from None
    if len(vals) != m:
        raise BalanceError(f"target has {len(vals)} proportions but there are {m} groups ({', '.join(groups)})")
    if np.any(vals < 0) or vals.sum() <= 0:
        raise BalanceError(f"target proportions must be non-negative with a positive sum, got {spec!r}")
    return vals / vals.sum()


def choose_groups(counts: pd.DataFrame, requested: list[str] | None, min_group: int) -> tuple[list[str], list[str]]:
    """Groups to balance and notes. counts: label, n (from store.label_counts)."""
    labels = [str(x) for x in counts["label"]]
    n = dict(zip(labels, counts["n"]))
    notes = []
    if requested:
        missing = [g for g in requested if g not in n]
        if missing:
            raise BalanceError(f"groups {missing} not found; labels are {', '.join(labels)}")
        groups = list(requested)
    else:
        groups = [g for g in labels if g not in NON_GROUPS and n[g] >= min_group]
        small = [g for g in labels if g not in NON_GROUPS and n[g] < min_group]
        if small:
            notes.append(f"groups with fewer than {min_group} rows are not balanced (treated like unknown): "
                         + ", ".join(f"{g} (n={n[g]})" for g in small))
    if len(groups) < 2:
        raise BalanceError(f"need at least two groups with ≥ {min_group} rows to balance; labels: "
                           + ", ".join(f"{g} (n={n[g]})" for g in labels))
    return groups, notes


def parse_proxies(spec: str | list[str] | None) -> list[str]:
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [p.strip() for p in items if p and p.strip()]


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------------
# assembling the inputs from a store
# ---------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    uids: np.ndarray                    # (n,) object, uid order
    S: np.ndarray                       # (n, m)
    groups: list[str]
    Y: np.ndarray                       # (n, c)
    proxies: list[str]                  # column names
    target: np.ndarray                  # (m,)
    utility: np.ndarray | None
    attribute: str
    method: str                         # annotator method of the attribute
    imputed: bool
    notes: list[str] = field(default_factory=list)
    proxy_specs: list[str] = field(default_factory=list)


@dataclass
class ProxyPlan:
    """Fixed proxy columns, so that batches of a streamed pool get the same columns."""

    columns: list[tuple[str, str, str | None]]   # (column name, source attribute, label or None for zs)
    zs: list[str]                                 # zero-shot prompts (in-memory only)
    attributes: list[str]                         # attributes/sample columns to read
    notes: list[str]


def proxy_matrix(frame: pd.DataFrame, plan: ProxyPlan, zs_matrix: np.ndarray | None = None) -> np.ndarray:
    """Y (n, c) for a frame of labels/confidences (label_confidence_frame columns)."""
    Y = np.zeros((len(frame), len(plan.columns)))
    zi = 0
    for j, (_, src, label) in enumerate(plan.columns):
        if src == "zs":
            Y[:, j] = zs_matrix[:, zi]
            zi += 1
            continue
        lab = frame[src].to_numpy(dtype=object)
        conf = np.clip(np.nan_to_num(frame[f"{src}__conf"].to_numpy(np.float64), nan=1.0), 0, 1)
        Y[:, j] = np.where(lab == label, conf, 0.0)
    return Y


# ---------------------------------------------------------------------------------------------------
# the three ways to reach a budget, measured the same way
# ---------------------------------------------------------------------------------------------------
def run_m4(inputs: Inputs, *, budget: float = DEFAULT_BUDGET, eps_rep: float | None = DEFAULT_EPS_REP,
           eps_assoc: float | None = DEFAULT_EPS_ASSOC, seed: int = 0):
    """(M4Result, keep) for the inputs; keep_i ~ Bernoulli(q_i) from np.random.default_rng(seed) in uid order."""
    from audit.analyses.balance.m4 import bernoulli_keep, solve_m4

    res = solve_m4(inputs.S, inputs.Y, target=inputs.target, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc,
                   utility=inputs.utility, rng=np.random.default_rng([seed, 1]))
    keep = bernoulli_keep(res.q, np.random.default_rng(seed))
    return res, keep


def compare(inputs: Inputs, methods: dict[str, np.ndarray], kept: dict[str, int] | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per method (weights q): expected kept Σq, drawn kept, RB, AB and each group's share;
    plus {method: association matrix (m, c)}."""
    from audit.analyses.balance.m4 import summarize

    rows, assoc = [], {}
    for name, q in methods.items():
        s = summarize(q, inputs.S, inputs.Y, inputs.target)
        row = {"method": name, "kept (Σq)": s["sum_q"], "kept share": s["sum_q"] / len(q),
               "drawn kept": (kept or {}).get(name), "RB": s["rb"], "AB": s["ab"],
               "member mass": s["mass"]}
        for g, v in zip(inputs.groups, s["shares"]):
            row[f"share {g}"] = v
        rows.append(row)
        assoc[name] = s["assoc"]
    return pd.DataFrame(rows), assoc


def weights_frame(uids, q, keep) -> pd.DataFrame:
    return pd.DataFrame({"uid": uids, "q": np.asarray(q, np.float64), "keep": np.asarray(keep, bool).astype(np.int8)})


# ---------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------
def describe_attribute(inputs: Inputs) -> str:
    kind = f"imputed: {inputs.method}" if inputs.imputed else inputs.method
    return f"{inputs.attribute} ({kind})"


def summary_lines(title: str, groups: list[str], target: np.ndarray, res, n: int, kept: int | None,
                  budget: float, eps_rep, eps_assoc, proxies: list[str]) -> list[str]:
    lines = [title,
             f"groups: {', '.join(groups)}; target shares: "
             + ", ".join(f"{g} {p:.3f}" for g, p in zip(groups, target)),
             f"proxies ({len(proxies)}): " + (", ".join(proxies[:12]) + (" …" if len(proxies) > 12 else "")
                                               if proxies else "none (first-order constraints only)"),
             f"budget η={budget:g}: Σq = {float(getattr(res, 'sum_q', None) or res.q.sum()):,.1f} of {n:,} rows"
             + (f"; seeded Bernoulli draw keeps {kept:,}" if kept is not None else ""),
             f"status: {res.status} — {res.message}",
             f"{'':12}{'before':>10}{'after':>10}{'tolerance':>11}",
             f"{'RB':12}{res.rb_before:>10.4f}{res.rb:>10.4f}{_tol(eps_rep):>11}",
             f"{'AB':12}{res.ab_before:>10.4f}{res.ab:>10.4f}{_tol(eps_assoc):>11}",
             "group shares (before → after): " + ", ".join(
                 f"{g} {a:.3f} → {b:.3f}" for g, a, b in zip(groups, res.shares_before, res.shares))]
    return lines


def _tol(e) -> str:
    return "off" if e is None else f"{e:g}"


def json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def result_summary(inputs: Inputs, res, keep, budget, eps_rep, eps_assoc) -> dict:
    return {"attribute": inputs.attribute, "method": inputs.method, "imputed": inputs.imputed,
            "groups": inputs.groups, "proxies": inputs.proxies, "target": inputs.target, "budget": budget,
            "eps_rep": eps_rep, "eps_assoc": eps_assoc, "status": res.status, "message": res.message,
            "rb_before": res.rb_before, "rb": res.rb, "ab_before": res.ab_before, "ab": res.ab,
            "shares_before": res.shares_before, "shares": res.shares, "sum_q": float(res.q.sum()),
            "kept": int(np.sum(keep)), "n": len(res.q), "seconds": res.seconds, "notes": inputs.notes}
