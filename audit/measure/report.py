"""`python -m audit report`: the fairness table of a filter by group, as CSV (the page shows the same table).

    python -m audit report --store DB --keep 'clip_l14_similarity_score:top=0.3' --by caption_gender \
        [--by caption_age] [--min-n 30] --out table.csv

Columns: group, n, kept, rate, ci_low, ci_high, pool_share, kept_share, then diff_to_overall (rate − overall),
ratio_to_overall (rate / overall), small, labelled, under_represented, amplified (definitions in
audit/measure/fairness.py and docs/fairness.md). The CSV also carries ``difference`` and ``ratio``, the old
names of diff_to_overall and ratio_to_overall, for one release (CSV_ALIASES); fairlearn uses those words for
gaps *between* groups, which the summary prints as "between groups". Two
``--by`` give the intersection ("woman × older"). The dashboard's "Who's in, who's out" page calls
``load_frame`` and ``table_from_frame`` too, so the page and this command give the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from audit.measure.metrics import difference, ratio


REPORT_COLUMNS = ["group", "n", "kept", "rate", "ci_low", "ci_high", "pool_share", "kept_share", "diff_to_overall",
                  "ratio_to_overall", "small", "labelled", "under_represented", "amplified"]
# Deprecated CSV columns kept for one release: old name -> the column it repeats (appended after REPORT_COLUMNS).
CSV_ALIASES = {"difference": "diff_to_overall", "ratio": "ratio_to_overall"}


@dataclass
class Report:
    table: "object"          # pandas DataFrame, REPORT_COLUMNS
    selection: "object"      # audit.selection.Selection
    labels: "object"         # numpy array: the (intersection) group label of every sample
    regression: "object"     # audit.fairness.Regression | None
    rules: list


def parse_rules(specs: Sequence[str]):
    from audit.decide.selection import Rule, RuleError

    if not specs:
        raise RuleError("give at least one --keep rule (SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION)")
    return [Rule.parse(s) for s in specs]


def check_by(by: Sequence[str]) -> list[str]:
    by = list(by)
    if not 1 <= len(by) <= 2:
        raise ValueError(f"give one or two --by attributes (got {len(by)})")
    if len(set(by)) != len(by):
        raise ValueError(f"--by attributes must differ (got {by[0]!r} twice)")
    return by


def load_frame(store, scores: Sequence[str], by: Sequence[str]):
    """One column per score and one ``by:<attribute>`` label column per attribute (a pandas Categorical: a code per
    sample, no string per sample); every sample, row i = the i-th uid in uid order (``Store.uids_at``). Read from
    the store's pool-order columns (audit/store/columns.py)."""
    import numpy as np
    import pandas as pd

    for s in scores:
        store.check_score(s)
    data = {s: np.asarray(store.score_array(s), dtype=np.float64) for s in dict.fromkeys(scores)}
    for col in by:
        _, codes, labels = store.score_group_arrays(None, col)
        data[f"by:{col}"] = pd.Categorical.from_codes(np.asarray(codes, dtype=np.int32), categories=list(labels))
    n = len(next(iter(data.values()))) if data else int(store.count("samples"))
    return pd.DataFrame(data, index=pd.RangeIndex(n))


def table_from_frame(frame, rules, by: Sequence[str], *, min_n: int = 30,
                     thresholds: dict[str, float] | None = None) -> Report:
    """Apply the rules (intersected) and tabulate inclusion by the (intersection of the) attributes.
    ``thresholds``: precomputed top-fraction thresholds ({str(rule): τ}), as ``selection.select`` takes them."""
    from audit.measure.fairness import amplification_regression, combine_labels, group_table
    from audit.decide.selection import select

    columns = {r.score: frame[r.score].to_numpy(dtype=float) for r in rules}
    sel = select(rules, columns, n=len(frame), thresholds=thresholds)
    labels = combine_labels(*[frame[f"by:{c}"].array for c in by])
    table = group_table(sel.keep, labels, min_n=min_n)
    return Report(table[REPORT_COLUMNS], sel, labels, amplification_regression(table, min_n=min_n), list(rules))


def build(store, specs: Sequence[str], by: Sequence[str], *, min_n: int = 30) -> Report:
    rules = parse_rules(specs)
    by = check_by(by)
    return table_from_frame(load_frame(store, [r.score for r in rules], by), rules, by, min_n=min_n)


def write_csv(table, out: str) -> None:
    from pathlib import Path

    from audit.export.csvsafe import to_csv

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    for old, new in CSV_ALIASES.items():
        table[old] = table[new]
    to_csv(table, out)


def summary_lines(rep: Report, by: Sequence[str]) -> list[str]:
    t = rep.table
    kept, n = int(rep.selection.keep.sum()), len(rep.selection.keep)
    lines = [f"rules: {' AND '.join(str(r) for r in rep.rules)}"]
    lines += [f"  threshold {k}: {v:.6g}" for k, v in rep.selection.thresholds.items()]
    lines.append(f"kept {kept:,} of {n:,} ({kept / n:.2%})" if n else "empty store")
    lines.append(f"groups by {' × '.join(by)}: {len(t)} ({int(t['small'].sum())} with n < min n)")
    big = t[~t["small"]]
    if len(big) >= 2:
        lines.append(f"between groups with n ≥ min n (fairlearn): difference max − min rate = "
                     f"{difference(big):.4f}, ratio min / max rate = {ratio(big):.4f}")
    amp = t[t["amplified"]]
    if len(amp):
        lines.append("exclusion amplification (under-represented, interval below overall): "
                     + ", ".join(f"{g} ({r:.3f} [{lo:.3f}, {hi:.3f}], n={m:,})"
                                 for g, r, lo, hi, m in zip(amp["group"], amp["rate"], amp["ci_low"], amp["ci_high"],
                                                            amp["n"])))
    else:
        lines.append("exclusion amplification: none")
    lines.append("regression of inclusion rate on log10 pool count: "
                 + (rep.regression.sentence() if rep.regression else "fewer than 3 labelled groups with n ≥ min n"))
    return lines
