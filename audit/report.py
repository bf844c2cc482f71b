"""`python -m audit report`: the fairness table of a filter by group, as CSV (the page shows the same table).

    python -m audit report --store DB --keep 'clip_l14_similarity_score:top=0.3' --by caption_gender \
        [--by caption_age] [--min-n 30] --out table.csv

Columns: group, n, kept, rate, ci_low, ci_high, pool_share, kept_share, then difference, ratio, small,
labelled, under_represented, amplified (definitions in audit/fairness.py and docs/fairness.md). Two
``--by`` give the intersection ("woman × older"). The dashboard's "Who's in, who's out" page calls
``load_frame`` and ``table_from_frame`` too, so the page and this command give the same numbers.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

REPORT_COLUMNS = ["group", "n", "kept", "rate", "ci_low", "ci_high", "pool_share", "kept_share", "difference",
                  "ratio", "small", "labelled", "under_represented", "amplified"]


@dataclass
class Report:
    table: "object"          # pandas DataFrame, REPORT_COLUMNS
    selection: "object"      # audit.selection.Selection
    labels: "object"         # numpy array: the (intersection) group label of every sample
    regression: "object"     # audit.fairness.Regression | None
    rules: list


def parse_rules(specs: Sequence[str]):
    from audit.selection import Rule, RuleError

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
    """uid, one column per score, one label column per attribute; every sample, ordered by uid."""
    from audit.store import label_frame

    for s in scores:
        store.check_score(s)
    frame = store.score_frame(list(dict.fromkeys(scores)))
    labels = label_frame(store, list(by))
    if not (frame["uid"].to_numpy() == labels["uid"].to_numpy()).all():  # both ORDER BY uid over samples
        raise RuntimeError("score and label frames are not aligned")
    for col in by:
        frame[f"by:{col}"] = labels[col].to_numpy()
    return frame


def table_from_frame(frame, rules, by: Sequence[str], *, min_n: int = 30) -> Report:
    """Apply the rules (intersected) and tabulate inclusion by the (intersection of the) attributes."""
    from audit.fairness import amplification_regression, combine_labels, group_table
    from audit.selection import select

    columns = {r.score: frame[r.score].to_numpy(dtype=float) for r in rules}
    sel = select(rules, columns, n=len(frame))
    labels = combine_labels(*[frame[f"by:{c}"].to_numpy() for c in by])
    table = group_table(sel.keep, labels, min_n=min_n)
    return Report(table[REPORT_COLUMNS], sel, labels, amplification_regression(table, min_n=min_n), list(rules))


def build(store, specs: Sequence[str], by: Sequence[str], *, min_n: int = 30) -> Report:
    rules = parse_rules(specs)
    by = check_by(by)
    return table_from_frame(load_frame(store, [r.score for r in rules], by), rules, by, min_n=min_n)


def write_csv(table, out: str) -> None:
    from pathlib import Path

    from audit.export import neutralise

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    neutralise(table).to_csv(out, index=False)


def summary_lines(rep: Report, by: Sequence[str]) -> list[str]:
    t = rep.table
    kept, n = int(rep.selection.keep.sum()), len(rep.selection.keep)
    lines = [f"rules: {' AND '.join(str(r) for r in rep.rules)}"]
    lines += [f"  threshold {k}: {v:.6g}" for k, v in rep.selection.thresholds.items()]
    lines.append(f"kept {kept:,} of {n:,} ({kept / n:.2%})" if n else "empty store")
    lines.append(f"groups by {' × '.join(by)}: {len(t)} ({int(t['small'].sum())} with n < min n)")
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


def add_parser(subparsers) -> None:
    from audit.cli import _store_arg

    p = subparsers.add_parser(
        "report", help="fairness table of a filter by group (CSV)",
        description="Per group: n, kept, inclusion rate with a 95% Wilson interval, pool vs kept share, and the "
                    "exclusion-amplification flags. Labels of imputed attributes are estimates.")
    _store_arg(p)
    p.add_argument("--keep", action="extend", nargs="+", default=[], metavar="SPEC", required=True,
                   help="SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION; several intersect")
    p.add_argument("--by", action="append", default=[], required=True, metavar="ATTRIBUTE",
                   help="attribute or sample column to group by; give two for the intersection")
    p.add_argument("--min-n", type=int, default=30, help="groups with fewer samples are flagged small (default 30)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audit.store import Store

    if args.min_n < 1:
        raise ValueError("--min-n must be at least 1")
    with Store.reader(args.store) as st:
        rep = build(st, args.keep, args.by, min_n=args.min_n)
        cat = st.attribute_catalog()
    write_csv(rep.table, args.out)
    for line in summary_lines(rep, args.by):
        print(line)
    for attr in args.by:
        row = cat[cat["attribute"] == attr]
        if len(row) and bool(row.iloc[0]["imputed"]):
            method = str(row.iloc[0]["method"])
            note = (" [RANDOM/SIMULATED model: not meaningful]"
                    if bool(row.iloc[0]["random_weights"]) and "RANDOM" not in method else "")
            print(f"{attr}: imputed (perceived) labels, method: {method}{note}")
    print(f"wrote {args.out} ({len(rep.table)} groups)", file=sys.stderr)
    return 0
