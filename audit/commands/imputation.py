"""`python -m audit imputation`: the measured accuracy of imputed attributes against gold labels (audit/measure/gold.py).
"""
from __future__ import annotations

import argparse

from audit.cli import store_arg


def configure(p) -> None:
    p.description = ("Per imputed attribute: coverage, the confusion matrix P(imputed | gold) with counts, precision "
                     "and recall per class with Wilson 95% intervals, and Cohen's kappa, against gold labels.")
    store_arg(p)
    p.add_argument("--attribute", action="append", required=True, metavar="A",
                   help="imputed attribute to measure (repeatable: one per annotator method)")
    p.add_argument("--gold", required=True, help="a gold attribute in the store (labels import) or a uid,label file")
    p.add_argument("--out", help="write the measurements as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from audit.measure.gold import GoldError, accuracy, format_accuracy, gold_labels, imputed_labels
    from audit.store import Store

    with Store.reader(args.store) as st:
        gold = gold_labels(st, args.gold)
        cat = st.attribute_catalog().set_index("attribute")
        results = []
        for a in args.attribute:
            if a not in cat.index:
                raise GoldError(f"unknown attribute {a!r}; this store has: {', '.join(cat.index)}")
            imputed = imputed_labels(st, a, gold.index)
            acc = accuracy(gold, imputed, attribute=a, method=str(cat.loc[a, "method"]))
            if acc.gold_n == 0:
                raise GoldError(f"no gold label overlaps {a}: every gold label is unknown")
            results.append(acc)
    for acc in results:
        print("\n".join(format_accuracy(acc)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"gold": args.gold, "attributes": [a.to_json() for a in results]},
                                             indent=2, allow_nan=False))
        print(f"wrote {args.out}")
    return 0

