"""Who's in and who's out (Hong et al. 2024, methods.md §6): pure computations on a keep mask and labels.

No I/O: callers pass a boolean keep mask (from ``audit.decide.selection``) and one label per sample.

* ``group_table``: per group n, kept, inclusion rate r_g = kept_g / n_g with a 95% Wilson interval,
  difference and ratio to the overall rate (fairlearn's vocabulary), pool share vs kept share, and the
  exclusion-amplification flags below. Built on ``audit.metrics.group_rates``.
* **Exclusion amplification** (our operational definition of the paper's notion): a group is
  *under-represented* when its share of the labelled pool is below four fifths of parity,
  n_g / Σn < 0.8 / k over the k labelled groups (the four-fifths rule's cut, applied to shares) (``unknown``/``multiple`` and any intersection containing them are not labelled
  groups); it is *amplified* when it is under-represented, has n ≥ min_n, and its inclusion rate is
  below the overall rate with the whole 95% interval below it (ci_high < overall). Filtering then
  shrinks its share further: kept_share < pool_share.
* ``amplification_regression``: across labelled groups with n ≥ min_n, the least-squares line of the
  inclusion rate on log10(pool count) (``scipy.stats.linregress``, as in the paper's notebooks). A
  positive slope means bigger groups are kept at higher rates, i.e. filtering widens existing gaps.
* ``flag_rates``: share of a flagged category (NSFW, copyright-relevant) in the pool vs in the kept set.
* ``confusion``: agreement between two labelings (e.g. caption lexicon vs face model), with a
  harmonising label map, the agreement rate and Cohen's kappa over samples both label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.measure.metrics import Z95, group_rates, wilson

UNLABELLED = ("unknown", "multiple")
SEP = " × "


def combine_labels(*columns: np.ndarray | pd.Series | pd.Categorical) -> np.ndarray | pd.Categorical:
    """Intersection labels ("woman × older") from one or more label columns of equal length. Categorical columns
    combine by their codes (no string per sample) into a Categorical whose categories are sorted."""
    if columns and all(isinstance(c, pd.Categorical) for c in columns):
        return _combine_categoricals(columns)
    cols = [np.asarray(pd.Series(c, copy=False).astype(object).where(pd.notna(c), "unknown"), dtype=object).astype(str)
            for c in columns]
    if len(cols) == 1:
        return cols[0].astype(object)
    out = cols[0].astype(object)
    for c in cols[1:]:
        out = out + SEP + c.astype(object)
    return out


def _combine_categoricals(columns) -> pd.Categorical:
    cats = [[("unknown" if pd.isna(x) else str(x)) for x in c.categories] for c in columns]
    codes = [c.codes.astype(np.int64) for c in columns]
    for i, c in enumerate(codes):       # a missing value is the level 'unknown'
        if (c < 0).any():
            if "unknown" not in cats[i]:
                cats[i] = cats[i] + ["unknown"]
            codes[i] = np.where(c < 0, cats[i].index("unknown"), c)
    joint = codes[0]
    names = np.asarray(cats[0], dtype=object)
    for cat, c in zip(cats[1:], codes[1:]):
        joint = joint * len(cat) + c
        names = np.asarray([f"{a}{SEP}{b}" for a in names for b in cat], dtype=object)
    used = np.flatnonzero(np.bincount(joint, minlength=len(names)))   # levels that occur, sorted by name
    names = names[used]
    rank = np.argsort(names.astype(str), kind="stable")
    remap = np.full(int(used.max()) + 1 if len(used) else 1, -1, dtype=np.int64)
    remap[used[rank]] = np.arange(len(used))
    return pd.Categorical.from_codes(remap[joint] if len(joint) else joint, categories=list(names[rank]))


def is_labelled(groups: pd.Series | np.ndarray, unlabelled=UNLABELLED) -> np.ndarray:
    """True for group labels with no ``unknown``/``multiple`` part (intersections split on SEP)."""
    return np.array([not any(p in unlabelled for p in str(g).split(SEP)) for g in groups], dtype=bool)


PARITY_FRACTION = 0.8


def group_table(keep: np.ndarray, labels: np.ndarray | pd.Series, *, min_n: int = 30,
                unlabelled=UNLABELLED, parity_fraction: float = PARITY_FRACTION) -> pd.DataFrame:
    """by-group inclusion table with amplification flags.

    A labelled group is under-represented when n_g / Σ_labelled n < parity_fraction / k (k labelled groups).

    Columns: group, n, kept, rate, ci_low, ci_high, pool_share, kept_share, diff_to_overall, ratio_to_overall, small,
    labelled, under_represented, amplified. ``attrs``: overall, n, kept, min_n.
    """
    t = group_rates(keep, labels, min_n=min_n)
    overall = t.attrs["overall"]
    t["labelled"] = is_labelled(t["group"], unlabelled)
    lab = t["labelled"] & (t["n"] > 0)
    k = int(lab.sum())
    n_lab = int(t.loc[lab, "n"].sum())
    share_lab = np.where(lab, t["n"] / max(n_lab, 1), np.nan)
    t["under_represented"] = lab & (k > 1) & (share_lab < parity_fraction / max(k, 1))
    t["amplified"] = t["under_represented"] & ~t["small"] & (t["ci_high"] < overall)
    cols = ["group", "n", "kept", "rate", "ci_low", "ci_high", "pool_share", "kept_share", "diff_to_overall",
            "ratio_to_overall", "small", "labelled", "under_represented", "amplified"]
    out = t[cols].copy()
    out.attrs.update(t.attrs)
    out.attrs["min_n"] = min_n
    return out


@dataclass
class Regression:
    slope: float          # change in inclusion rate per 10× more samples in the pool
    intercept: float
    rvalue: float
    pvalue: float
    stderr: float
    n_groups: int
    groups: list[str]

    def sentence(self, alpha: float = 0.05) -> str:
        if self.pvalue >= alpha:
            trend = f"no clear trend (p ≥ {alpha:g})"
        else:
            trend = "bigger groups are kept at higher rates" if self.slope > 0 else "smaller groups are kept at higher rates"
        return (f"slope {self.slope:+.4f} per 10× pool count (r = {self.rvalue:+.2f}, p = {self.pvalue:.3g}, "
                f"{self.n_groups} groups): {trend}")


def amplification_regression(table: pd.DataFrame, *, min_n: int | None = None) -> Regression | None:
    """Least-squares line of rate on log10(n) over labelled groups with n ≥ min_n; None with fewer than 3 groups."""
    m = table.attrs.get("min_n", 30) if min_n is None else min_n
    t = table[table["labelled"] & (table["n"] >= max(m, 1))]
    if len(t) < 3 or t["n"].nunique() < 2:
        return None
    slope, intercept, r, p, se = line_fit(np.log10(t["n"].to_numpy(float)), t["rate"].to_numpy(float))
    return Regression(slope, intercept, r, p, se, len(t), t["group"].tolist())


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """(slope, intercept, Pearson r, two-sided p of slope = 0 from Student's t with n − 2 degrees of freedom,
    the slope's standard error): ordinary least squares, the quantities of ``scipy.stats.linregress``
    (tests/test_fairness.py compares them), without importing scipy.stats (~1.4 s on a page's first render)."""
    from scipy.special import stdtr

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    slope = sxy / sxx
    intercept = float(y.mean() - slope * x.mean())
    r = 0.0 if syy == 0 else max(-1.0, min(1.0, sxy / np.sqrt(sxx * syy)))
    df = n - 2
    if abs(r) == 1.0:
        p, se = 0.0, 0.0
    else:
        t = r * np.sqrt(df / ((1.0 - r) * (1.0 + r)))
        p = float(2 * stdtr(df, -abs(t)))
        se = float(np.sqrt((1 - r * r) * syy / sxx / df))
    return float(slope), intercept, float(r), p, se


def flag_rates(keep: np.ndarray, flagged: np.ndarray, *, z: float = Z95) -> dict:
    """Share of flagged samples in the pool and in the kept set, with Wilson intervals.

    Returns pool (count, n, rate, ci), kept (count, n, rate, ci), the flagged samples' inclusion rate,
    and kept_rate / pool_rate (> 1: the filter concentrates them; < 1: it removes them).
    """
    keep = np.asarray(keep, bool)
    flagged = np.asarray(flagged, bool)
    n, k = len(keep), int(keep.sum())
    c_pool, c_kept = int(flagged.sum()), int((flagged & keep).sum())
    pl, ph = wilson(c_pool, n, z)
    kl, kh = wilson(c_kept, k, z)
    il, ih = wilson(c_kept, c_pool, z)
    pool_rate = c_pool / n if n else float("nan")
    kept_rate = c_kept / k if k else float("nan")
    return {
        "pool_count": c_pool, "pool_n": n, "pool_rate": pool_rate, "pool_ci": (float(pl), float(ph)),
        "kept_count": c_kept, "kept_n": k, "kept_rate": kept_rate, "kept_ci": (float(kl), float(kh)),
        "inclusion_rate": c_kept / c_pool if c_pool else float("nan"), "inclusion_ci": (float(il), float(ih)),
        "overall_rate": k / n if n else float("nan"),
        "concentration": kept_rate / pool_rate if pool_rate else float("nan"),
    }


# labels of different annotators, mapped onto one vocabulary before comparing
HARMONISE = {
    "caption_race": {"black": "black", "african": "black", "white": "white", "caucasian": "white",
                     "european": "white", "latino": "latino/hispanic", "asian": "asian"},
    "zeroshot_race": {"east asian": "asian", "southeast asian": "asian"},
}


@dataclass
class Agreement:
    table: pd.DataFrame          # crosstab of harmonised labels over samples both label (margins added)
    n_both: int                  # samples with a known label on both sides
    agreement: float             # share of n_both with equal labels
    kappa: float                 # Cohen's kappa over n_both
    raw: pd.DataFrame            # crosstab of the raw labels over every sample


def confusion(a: np.ndarray | pd.Series, b: np.ndarray | pd.Series, *, map_a: dict | None = None,
              map_b: dict | None = None, unlabelled=UNLABELLED, name_a: str = "a", name_b: str = "b") -> Agreement:
    """Agreement between two labelings of the same samples (unknown/multiple excluded from n_both). Computed on
    the joint counts of the two label codes (one bincount), so a 12.8M-row pool costs what its label pairs do."""
    from audit.measure.metrics import encode_groups

    ca, la = encode_groups(a)
    cb, lb = encode_groups(b)
    counts = np.bincount(ca * len(lb) + cb, minlength=len(la) * len(lb)).reshape(len(la), len(lb))
    keep_a, keep_b = counts.sum(1) > 0, counts.sum(0) > 0
    raw = pd.DataFrame(counts[np.ix_(keep_a, keep_b)], index=pd.Index(la[keep_a], name=name_a),
                       columns=pd.Index(lb[keep_b], name=name_b))
    ha = pd.Series([(map_a or {}).get(v, v) for v in raw.index], dtype=object)
    hb = pd.Series([(map_b or {}).get(v, v) for v in raw.columns], dtype=object)
    long = raw.set_axis(ha, axis=0).set_axis(hb, axis=1)
    long = long.loc[~ha.isin(unlabelled).to_numpy(), ~hb.isin(unlabelled).to_numpy()]
    tab = long.T.groupby(level=0).sum().T.groupby(level=0).sum()
    tab = tab.loc[:, tab.sum(0) > 0].loc[tab.sum(1) > 0]
    n = int(tab.to_numpy().sum())
    if n == 0:
        return Agreement(pd.DataFrame(), 0, float("nan"), float("nan"), raw)
    tab.index.name, tab.columns.name = name_a, name_b
    cats = sorted(set(tab.index) | set(tab.columns))
    full = tab.reindex(index=cats, columns=cats, fill_value=0).to_numpy()
    agree = float(np.trace(full) / n)
    pa, pb = full.sum(1) / n, full.sum(0) / n
    pe = float((pa * pb).sum())
    kappa = (agree - pe) / (1 - pe) if pe < 1 else float("nan")
    return Agreement(tab, n, agree, kappa, raw)
