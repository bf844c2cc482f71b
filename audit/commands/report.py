"""`python -m audit report`: the fairness table of a filter by group, as CSV (audit/measure/report.py).
"""
from __future__ import annotations

import argparse
import sys
from audit.measure.report import build, summary_lines, write_csv
from audit.cli import store_arg


def configure(p) -> None:
    p.description = ("Per group: n, kept, inclusion rate with a 95% Wilson interval, pool vs kept share, and the "
                    "exclusion-amplification flags. Labels of imputed attributes are estimates.")
    store_arg(p)
    p.add_argument("--keep", action="extend", nargs="+", default=[], metavar="SPEC", required=True,
                   help="SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION; several intersect")
    p.add_argument("--by", action="append", default=[], required=True, metavar="ATTRIBUTE",
                   help="attribute or sample column to group by; give two for the intersection")
    p.add_argument("--min-n", type=int, default=30, help="groups with fewer samples are flagged small (default 30)")
    p.add_argument("--include-failed", action="store_true",
                   help="count img2dataset's failed downloads (download_failed rejects) as pool rows that were not "
                        "downloaded: --keep downloaded>=1 is availability alone; a score rule is the chain "
                        "availability -> filter (its threshold from the downloaded rows). Groups then come from "
                        "the URL (domain_*) or the caption (caption_*), computed for every row")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audit.store import Store

    if args.min_n < 1:
        raise ValueError("--min-n must be at least 1")
    with Store.reader(args.store) as st:
        if args.include_failed:
            from audit.measure import availability
            from audit.measure.report import check_by, parse_rules

            rules, by = parse_rules(args.keep), check_by(args.by)
            frame = availability.load_frame(st, [r.score for r in rules], by)
            rep = availability.table_from_frame(frame, rules, by, min_n=args.min_n)
            n_failed = int((frame[availability.DOWNLOADED] == 0).sum())
            print(f"pool: {len(frame):,} input rows = {len(frame) - n_failed:,} downloaded + {n_failed:,} failed "
                  "downloads (counted as not kept)")
        else:
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
