"""Group metrics on keep masks, in fairlearn's vocabulary (by_group, overall, difference, ratio).

Pure numpy/pandas; no I/O. An inclusion (selection) rate is kept / n; the exclusion rate is 1 − that.
Every rate carries n and a 95% Wilson score interval.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
MIN_N = 30  # groups with fewer samples are flagged small (shown greyed, not tested)


def wilson(k: np.ndarray | int, n: np.ndarray | int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes out of n (vectorised). n = 0 gives (0, 1).

    centre = (k + z²/2) / (n + z²),  half = z / (n + z²) · sqrt(k (n − k) / n + z²/4)
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z2 = z * z
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = (k + z2 / 2) / (n + z2)
        half = z / (n + z2) * np.sqrt(np.where(n > 0, k * (n - k) / n, 0.0) + z2 / 4)
    low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return low, high


def encode_groups(groups: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and the sorted label array; missing labels become the level ``unknown``."""
    if isinstance(groups, pd.Series) and isinstance(groups.dtype, pd.CategoricalDtype):
        groups = groups.array
    if isinstance(groups, pd.Categorical):
        cats = np.asarray([str(c) for c in groups.categories], dtype=object)
        if (groups.codes >= 0).all() and len(set(cats)) == len(cats) and list(cats) == sorted(cats):
            used = np.bincount(groups.codes, minlength=len(cats)) > 0      # levels that occur, as factorize
            remap = np.cumsum(used) - 1
            return remap[groups.codes].astype(np.int64), cats[used]
    s = pd.Series(groups, copy=False).astype("object").where(pd.notna(groups), "unknown").astype(str)
    codes, labels = pd.factorize(s, sort=True)
    return codes.astype(np.int64), np.asarray(labels, dtype=object)


def rates_from_codes(keep: np.ndarray, codes: np.ndarray, labels: np.ndarray, *,
                     min_n: int = 30) -> pd.DataFrame:
    """Per-group table from integer group codes (fast path for the slider; O(N) bincounts).

    Columns: group, n, kept, rate, ci_low, ci_high, diff_to_overall (rate − overall), ratio_to_overall
    (rate / overall), pool_share, kept_share, small (n < min_n; shown greyed, not hidden). These two compare each
    group with the whole pool; fairlearn's between-group ``difference``/``ratio`` are the functions below.
    """
    keep = np.asarray(keep, dtype=bool)
    n = np.bincount(codes, minlength=len(labels)).astype(np.int64)
    kept = np.bincount(codes[keep], minlength=len(labels)).astype(np.int64)
    return rates_from_counts(n, kept, labels, min_n=min_n)


def rates_from_counts(n: np.ndarray, kept: np.ndarray, labels: np.ndarray, *, min_n: int = 30) -> pd.DataFrame:
    """The per-group table of rates_from_codes from the counts themselves (n and kept per group, in label order):
    what a slider move needs when the counts come from a sketch (audit/decide/preview.py), O(groups)."""
    n = np.asarray(n, dtype=np.int64)
    kept = np.asarray(kept, dtype=np.int64)
    total_n, total_kept = int(n.sum()), int(kept.sum())
    overall = total_kept / total_n if total_n else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, kept / np.maximum(n, 1), np.nan)
        ratio = rate / overall if overall else np.full_like(rate, np.nan)
    low, high = wilson(kept, n)
    out = pd.DataFrame({
        "group": labels.astype(str), "n": n, "kept": kept, "rate": rate, "ci_low": low, "ci_high": high,
        "diff_to_overall": rate - overall, "ratio_to_overall": ratio,
        "pool_share": n / total_n if total_n else np.nan,
        "kept_share": kept / total_kept if total_kept else np.nan,
    })
    out["small"] = out["n"] < min_n
    out.attrs["overall"] = overall
    out.attrs["n"] = total_n
    out.attrs["kept"] = total_kept
    return out


def group_rates(keep: np.ndarray, groups: pd.Series | np.ndarray, *, min_n: int = 30) -> pd.DataFrame:
    """by_group inclusion rates for a boolean keep mask and a label per sample."""
    codes, labels = encode_groups(groups)
    return rates_from_codes(keep, codes, labels, min_n=min_n)


def overall(table: pd.DataFrame) -> float:
    return float(table.attrs["overall"])


def difference(table: pd.DataFrame, *, method: str = "between_groups", min_n: int = 0) -> float:
    """Largest gap in rate: between groups (max − min, fairlearn's ``difference``) or to overall
    (max |rate − overall|)."""
    t = table[table["n"] >= max(min_n, 1)]
    if method == "between_groups":
        return float(t["rate"].max() - t["rate"].min())
    if method == "to_overall":
        return float((t["rate"] - table.attrs["overall"]).abs().max())
    raise ValueError(f"unknown method {method!r}")


def ratio(table: pd.DataFrame, *, min_n: int = 0) -> float:
    """min rate / max rate across groups (fairlearn's ratio); 1 means parity."""
    t = table[table["n"] >= max(min_n, 1)]
    hi = t["rate"].max()
    return float(t["rate"].min() / hi) if hi > 0 else float("nan")
