"""Coverage of the 95% intervals of each rate estimator for the TRUE group rate, over seeded replicates.

    .venv/bin/python bench/bench_label_noise.py [--replicates 100] [--pool 20000] [--gold 1000] [--bootstrap 200]

The noise model (documented, configurable below): true perceived gender man/woman plus "none" (no person); a
filter keeps men at 0.35, women at 0.20 and non-person samples at 0.30 (a real gap). The imputation behaves like a
face model whose errors differ by age: for *older* people it confuses gender more (P(imputed woman | man) = 0.25
against 0.08 for the young) and abstains more (unknown). Every replicate draws a pool, its imputed labels, a
gold sample of --gold uniformly drawn samples with their true labels, and computes naive (Wilson on imputed
groups), soft (confidence = the calibrated posterior of the imputed label), confusion (report --correct
confusion, bootstrap) and bounds (measured error). Prints, per method and group, the share of replicates whose
interval covers the true rate, and the mean width.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.measure.correct import confusion_from_gold, confusion_rates, rate_bounds, soft_rates  # noqa: E402
from audit.measure.metrics import wilson  # noqa: E402

TRUE = ["man", "woman", "none"]
OBS = ["man", "woman", "unknown"]
TRUE_SHARE = [0.3, 0.3, 0.4]
KEEP_RATE = {"man": 0.35, "woman": 0.20, "none": 0.30}
OLDER_SHARE = 0.3
# P(imputed | true) for young and older people (rows: man, woman, none)
P_YOUNG = np.array([[0.82, 0.08, 0.10], [0.06, 0.84, 0.10], [0.03, 0.03, 0.94]])
P_OLDER = np.array([[0.55, 0.25, 0.20], [0.15, 0.60, 0.25], [0.03, 0.03, 0.94]])


def replicate(rng, n_pool: int, n_gold: int, bootstrap: int):
    t = rng.choice(3, size=n_pool, p=TRUE_SHARE)
    older = rng.random(n_pool) < OLDER_SHARE
    keep = rng.random(n_pool) < np.array([KEEP_RATE[c] for c in TRUE])[t]
    p_rows = np.where(older[:, None], P_OLDER[t], P_YOUNG[t])
    obs = (rng.random(n_pool)[:, None] < np.cumsum(p_rows, axis=1)).argmax(axis=1)
    labels = np.array(OBS, dtype=object)[obs]
    # a calibrated annotator's confidence: P(true = its label | imputed label), from the pool's joint
    joint = np.zeros((3, 3))
    np.add.at(joint, (t, obs), 1)
    post = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1)
    conf = np.array([post[o, o] if o < 2 else 0.0 for o in range(3)])[obs]
    gold = rng.choice(n_pool, size=n_gold, replace=False)
    cm = confusion_from_gold(pd.Series(np.array(TRUE, dtype=object)[t[gold]]), pd.Series(labels[gold]))
    out = {}
    for g in ("man", "woman"):
        k, n = int(keep[labels == g].sum()), int((labels == g).sum())
        lo, hi = wilson(k, n)
        out[("naive", g)] = (float(lo), float(hi))
    s = soft_rates(keep, labels, conf, ["man", "woman"]).set_index("group")
    for g in ("man", "woman"):
        out[("soft", g)] = (s.loc[g, "ci_low"], s.loc[g, "ci_high"])
    c = confusion_rates(keep, labels, cm, bootstrap=bootstrap, seed=int(rng.integers(1 << 31))).set_index("group")
    for g in ("man", "woman"):
        out[("confusion", g)] = (c.loc[g, "ci_low"], c.loc[g, "ci_high"])
    b = rate_bounds(keep, labels, ["man", "woman"], cm.max_error()).set_index("group")
    for g in ("man", "woman"):
        out[("bounds", g)] = (b.loc[g, "bound_low"], b.loc[g, "bound_high"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--pool", type=int, default=20_000)
    ap.add_argument("--gold", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=200)
    a = ap.parse_args()
    t0 = time.perf_counter()
    results = [replicate(np.random.default_rng([7, r]), a.pool, a.gold, a.bootstrap) for r in range(a.replicates)]
    print(f"{a.replicates} replicates, pool {a.pool:,}, gold {a.gold:,}, bootstrap {a.bootstrap} "
          f"({time.perf_counter() - t0:.0f} s); true rates: man {KEEP_RATE['man']}, woman {KEEP_RATE['woman']}\n")
    print("| method | group | coverage of the true rate | mean width |\n|---|---|---|---|")
    for m in ("naive", "soft", "confusion", "bounds"):
        for g in ("man", "woman"):
            iv = np.array([r[(m, g)] for r in results], dtype=float)
            cov = np.mean((iv[:, 0] <= KEEP_RATE[g]) & (KEEP_RATE[g] <= iv[:, 1]))
            print(f"| {m} | {g} | {cov:.2f} | {np.mean(iv[:, 1] - iv[:, 0]):.3f} |")


if __name__ == "__main__":
    main()
