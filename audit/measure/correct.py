"""Group inclusion rates that account for noisy imputed labels (``report --correct``).

A rate by *imputed* group is not the rate by *true* (perceived) group: misclassification mixes the groups. Three
estimators beside the naive one (Chen et al. 2019, "Fairness Under Unawareness", on why this matters):

* ``soft``: each sample counts toward its label with its annotator confidence as weight; rate = Σ w·kept / Σ w,
  interval: Wilson's at the Kish effective size (Σw)² / Σw². The annotators store one label and its confidence
  per sample, so the rest of a sample's probability mass is not spread over other groups (said in the docs).
* ``confusion``: with P[i, j] = P(imputed = j | gold = i) from a gold sample (true classes i include ``unknown``:
  e.g. no person in the picture), the observed counts per imputed label satisfy n_obs = Pᵀ N_true, and the kept
  counts k_obs = Pᵀ K_true when the misclassification does not depend on the keep decision given the true class.
  Both are solved by non-negative least squares (scipy's NNLS), K_true ≤ N_true, rate = K_true / N_true in
  [0, 1]. A P of rank below the number of true classes is reported, never inverted. Intervals: a seeded
  bootstrap that resamples the pool's (label, kept) cells and the gold pairs together (``--bootstrap`` 200).
* ``bounds``: the range of each group's true rate when every ``unknown``/``multiple`` sample may belong to any
  group and up to a share e of each labelled group may be mislabelled (e = the largest misclassification rate
  measured on the gold sample, or ``--max-error``); no other assumption. Lower bound: drop the kept ones among
  the mislabelled share, add every non-kept unknown and the non-kept mislabelled share of each other group;
  upper bound the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.measure.fairness import UNLABELLED
from audit.measure.gold import gold_labels, gold_name, imputed_labels, pair_counts
from audit.measure.metrics import Z95, wilson

METHODS = ("none", "soft", "confusion", "bounds")
CORRECTED_COLUMNS = ["method", "rate_corrected", "ci_low_corrected", "ci_high_corrected", "bound_low", "bound_high",
                     "gold_n", "amplified_robust"]


class CorrectionError(ValueError):
    pass


# ---- soft ----------------------------------------------------------------------------------------------------
def soft_rates(keep: np.ndarray, labels: np.ndarray, confidence: np.ndarray, groups: list[str]) -> pd.DataFrame:
    """group, rate, ci_low, ci_high, n_eff of the confidence-weighted rate per group."""
    keep = np.asarray(keep, bool)
    w_all = np.clip(np.nan_to_num(np.asarray(confidence, float)), 0, 1)
    rows = []
    for g in groups:
        w = w_all[labels == g]
        k = keep[labels == g]
        sw, sw2 = w.sum(), (w * w).sum()
        if sw <= 0:
            rows.append({"group": g, "rate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_eff": 0.0})
            continue
        rate = float((w * k).sum() / sw)
        n_eff = float(sw * sw / sw2)
        lo, hi = wilson(rate * n_eff, n_eff)
        rows.append({"group": g, "rate": rate, "ci_low": float(lo), "ci_high": float(hi), "n_eff": n_eff})
    return pd.DataFrame(rows)


# ---- confusion ------------------------------------------------------------------------------------------------
@dataclass
class Confusion:
    true_classes: list[str]        # gold labels (unknown included: "no such person")
    obs_classes: list[str]         # imputed labels (unknown / multiple included)
    counts: np.ndarray             # (true, obs) pairs of the gold sample

    @property
    def gold_n(self) -> int:
        return int(self.counts.sum())

    def p(self, counts: np.ndarray | None = None) -> np.ndarray:
        c = self.counts if counts is None else counts
        tot = c.sum(axis=1, keepdims=True)
        return np.where(tot > 0, c / np.maximum(tot, 1), 0.0)

    def max_error(self) -> float:
        """The largest share of a labelled true class imputed as another *labelled* class (not unknown)."""
        p = self.p()
        worst = 0.0
        for i, t in enumerate(self.true_classes):
            if t in UNLABELLED:
                continue
            wrong = sum(p[i, j] for j, o in enumerate(self.obs_classes) if o != t and o not in UNLABELLED)
            worst = max(worst, float(wrong))
        return worst


def confusion_from_gold(gold: pd.Series, imputed: pd.Series) -> Confusion:
    g = gold.astype(str).to_numpy()
    m = imputed.fillna("unknown").astype(str).to_numpy()
    tc, oc = sorted(set(g)), sorted(set(m))
    return Confusion(tc, oc, pair_counts(g, m, tc, oc))


def solve_true(p: np.ndarray, n_obs: np.ndarray, k_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNLS solutions of n_obs = pᵀ N and k_obs = pᵀ K, with K ≤ N. p: (true, obs)."""
    from scipy.optimize import nnls

    if np.linalg.matrix_rank(p) < p.shape[0]:
        raise CorrectionError("the confusion matrix from the gold sample is singular (rank "
                              f"{np.linalg.matrix_rank(p)} < {p.shape[0]} true classes): two true classes are imputed "
                              "alike, so their counts cannot be told apart; not inverted")
    n_true, _ = nnls(p.T, n_obs.astype(float))
    k_true, _ = nnls(p.T, k_obs.astype(float))
    return n_true, np.minimum(k_true, n_true)


def observed(keep: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    keep = np.asarray(keep, bool)
    n = np.array([(labels == c).sum() for c in classes], dtype=float)
    k = np.array([((labels == c) & keep).sum() for c in classes], dtype=float)
    return n, k


def confusion_rates(keep: np.ndarray, labels: np.ndarray, conf: Confusion, *, bootstrap: int = 200,
                    seed: int = 0, z: float = Z95) -> pd.DataFrame:
    """group (true class), n_true, kept_true, rate, ci_low, ci_high (bootstrap percentiles)."""
    extra = sorted(set(labels) - set(conf.obs_classes))
    if extra:
        raise CorrectionError(f"imputed labels {extra} never occur in the gold sample: the confusion matrix has no "
                              "column for them; a larger gold sample is needed")
    n_obs, k_obs = observed(keep, labels, conf.obs_classes)
    n_true, k_true = solve_true(conf.p(), n_obs, k_obs)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n_true > 0, k_true / n_true, np.nan)
    rng = np.random.default_rng(seed)
    boots = np.full((bootstrap, len(conf.true_classes)), np.nan)
    cells = np.concatenate([k_obs, n_obs - k_obs])          # (obs label, kept) then (obs label, not kept)
    gold_flat = conf.counts.ravel().astype(float)
    for b in range(bootstrap):
        c = rng.multinomial(int(cells.sum()), cells / cells.sum())
        kb, nb = c[:len(k_obs)], c[:len(k_obs)] + c[len(k_obs):]
        gb = rng.multinomial(int(gold_flat.sum()), gold_flat / gold_flat.sum()).reshape(conf.counts.shape)
        pb = conf.p(gb)
        if np.linalg.matrix_rank(pb) < pb.shape[0]:
            continue   # a resample that loses a class: left out (counted in the note)
        nt, kt = solve_true(pb, nb, kb)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots[b] = np.where(nt > 0, kt / nt, np.nan)
    lo = np.nanpercentile(boots, 2.5, axis=0) if np.isfinite(boots).any() else np.full(len(rate), np.nan)
    hi = np.nanpercentile(boots, 97.5, axis=0) if np.isfinite(boots).any() else np.full(len(rate), np.nan)
    frame = pd.DataFrame({"group": conf.true_classes, "n_true": n_true, "kept_true": k_true, "rate": rate,
                          "ci_low": lo, "ci_high": hi})
    frame.attrs["bootstrap_used"] = int(np.isfinite(boots).all(axis=1).sum())
    return frame


# ---- bounds ------------------------------------------------------------------------------------------------
def rate_bounds(keep: np.ndarray, labels: np.ndarray, groups: list[str], max_error: float) -> pd.DataFrame:
    """group, bound_low, bound_high under: unknown/multiple samples may be anyone; up to max_error of each
    labelled group may truly be another group."""
    if not 0 <= max_error <= 1:
        raise CorrectionError(f"--max-error must be between 0 and 1, got {max_error}")
    keep = np.asarray(keep, bool)
    unk = np.isin(labels, list(UNLABELLED))
    u_kept, u_not = int((unk & keep).sum()), int((unk & ~keep).sum())
    n = {g: int((labels == g).sum()) for g in groups}
    k = {g: int(((labels == g) & keep).sum()) for g in groups}
    rows = []
    for g in groups:
        m = int(np.floor(max_error * n[g] + 1e-9))           # members of g that may not truly be g
        others = [h for h in groups if h != g]
        add_not = u_not + sum(min(int(np.floor(max_error * n[h] + 1e-9)), n[h] - k[h]) for h in others)
        add_kept = u_kept + sum(min(int(np.floor(max_error * n[h] + 1e-9)), k[h]) for h in others)
        x = min(k[g], m)                                      # kept members dropped
        lo_den = n[g] - x + add_not
        low = (k[g] - x) / lo_den if lo_den > 0 else np.nan
        x2 = min(n[g] - k[g], m)                              # non-kept members dropped
        hi_den = n[g] - x2 + add_kept
        high = (k[g] + add_kept) / hi_den if hi_den > 0 else np.nan
        rows.append({"group": g, "bound_low": low, "bound_high": high})
    return pd.DataFrame(rows)


# ---- the report's columns --------------------------------------------------------------------------------------
def corrected_columns(table: pd.DataFrame, keep: np.ndarray, labels: np.ndarray, confidence: np.ndarray | None,
                      method: str, *, conf: Confusion | None = None, max_error: float | None = None,
                      bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """The naive report table with CORRECTED_COLUMNS appended (NaN where a method gives no figure)."""
    if method not in METHODS:
        raise CorrectionError(f"--correct must be one of {', '.join(METHODS)}; got {method!r}")
    out = table.copy()
    out["method"] = method
    for c in CORRECTED_COLUMNS[1:-1]:
        out[c] = np.nan
    out["amplified_robust"] = out["amplified"].astype(bool) if method == "none" else False
    groups = [g for g in out["group"] if g not in UNLABELLED]
    if method == "none":
        return out
    idx = out.set_index("group").index
    if method == "soft":
        if confidence is None:
            raise CorrectionError("soft needs the annotator's confidences")
        got = soft_rates(keep, labels, confidence, groups).set_index("group")
        cols = {"rate": "rate_corrected", "ci_low": "ci_low_corrected", "ci_high": "ci_high_corrected"}
    elif method == "confusion":
        if conf is None:
            raise CorrectionError("confusion needs gold labels: --gold NAME_OR_FILE (labels import)")
        got = confusion_rates(keep, labels, conf, bootstrap=bootstrap, seed=seed).set_index("group")
        cols = {"rate": "rate_corrected", "ci_low": "ci_low_corrected", "ci_high": "ci_high_corrected"}
        out["gold_n"] = conf.gold_n
        out.attrs["bootstrap_used"] = got.attrs.get("bootstrap_used")
    else:
        e = max_error if max_error is not None else (conf.max_error() if conf is not None else None)
        if e is None:
            raise CorrectionError("bounds need a misclassification rate: --gold (measured) or --max-error E")
        got = rate_bounds(keep, labels, groups, e).set_index("group")
        cols = {"bound_low": "bound_low", "bound_high": "bound_high"}
        out["gold_n"] = conf.gold_n if conf is not None and max_error is None else np.nan
        out.attrs["max_error"] = e
    for src, dst in cols.items():
        out[dst] = got[src].reindex(idx).to_numpy()
    # amplified, robust to label noise: the naive verdict holds and the corrected interval (bounds: the whole
    # range) lies below the overall rate
    overall = float(table.attrs.get("overall", np.nan))
    top = out["bound_high"] if method == "bounds" else out["ci_high_corrected"]
    out["amplified_robust"] = out["amplified"].astype(bool) & (top < overall).fillna(False).to_numpy()
    return out


def verdict_changes(table: pd.DataFrame) -> list[str]:
    """Sentences naming the groups whose amplification verdict the correction changes."""
    out = []
    for r in table.itertuples():
        if bool(r.amplified) and not bool(r.amplified_robust):
            out.append(f"{r.group}: amplified by the naive rate, not once label noise is accounted for")
    return out


def load_confusion(store, attribute: str, gold: str | None) -> Confusion | None:
    """The confusion of ``attribute`` against gold labels: a gold attribute in the store (default ``gold_<A>``
    when it exists) or a uid,label file. None when there is no gold."""
    attrs = store.attributes()
    name = gold or (gold_name(attribute) if gold_name(attribute) in attrs else None)
    if name is None:
        return None
    g = gold_labels(store, name)
    m = imputed_labels(store, attribute, g.index)
    if not len(g):
        raise CorrectionError(f"the gold labels {name!r} do not overlap this store's samples")
    known = [c for c in set(g) if c not in UNLABELLED]
    if not known:
        raise CorrectionError(f"the gold labels {name!r} have no labelled class for {attribute} (all unknown)")
    return confusion_from_gold(g, m)
