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
    p.add_argument("--correct", choices=["none", "soft", "confusion", "bounds"], default="none",
                   help="rates that account for noisy imputed labels, added as rate_corrected/ci_*_corrected or "
                        "bound_low/bound_high (the naive rate, ci_low, ci_high stay as they are): soft = "
                        "confidence-weighted; confusion = corrected with the gold sample's confusion matrix; "
                        "bounds = the range consistent with unknowns and the measured error (one --by only)")
    p.add_argument("--gold", help="gold labels: a gold attribute (labels import) or a uid,label file "
                                  "(default: gold_<attribute> if stored)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for confusion (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-error", type=float, help="bounds: misclassification share to allow (default: measured)")
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
    table = rep.table
    if args.correct != "none" or args.gold:
        table = corrected_table(args, rep)
    write_csv(table, args.out)
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


def corrected_table(args, rep):
    from audit.measure.correct import CorrectionError, corrected_columns, load_confusion
    from audit.store import Store
    from audit.store.labels import label_confidence_frame

    if len(args.by) != 1:
        raise CorrectionError("--correct works on one --by attribute (the confusion is measured per attribute)")
    if args.include_failed:
        raise CorrectionError("--correct and --include-failed cannot be combined yet")
    attr = args.by[0]
    with Store.reader(args.store) as st:
        conf = load_confusion(st, attr, args.gold)
        lc = label_confidence_frame(st, [attr])
    if args.correct == "confusion" and conf is None:
        raise CorrectionError(f"--correct confusion needs gold labels for {attr}: run `labels import --name "
                              f"gold_{attr} ...` or give --gold FILE")
    confidence = lc[f"{attr}__conf"].to_numpy(dtype=float)
    table = corrected_columns(rep.table, rep.selection.keep, rep.labels, confidence, args.correct, conf=conf,
                              max_error=args.max_error, bootstrap=args.bootstrap, seed=args.seed)
    if args.correct == "confusion":
        print(f"confusion correction with {conf.gold_n:,} gold samples; {table.attrs.get('bootstrap_used')} of "
              f"{args.bootstrap} bootstrap replicates usable")
    if args.correct == "bounds":
        print(f"bounds with a misclassification share up to {table.attrs['max_error']:.3f}")
    return table
    return 0
