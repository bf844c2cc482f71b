"""`python -m audit labels import`: store a hand-labelled gold sample beside the imputed labels (audit/measure/gold.py).
"""
from __future__ import annotations

import argparse

from audit.cli import store_arg


def configure(p) -> None:
    p.description = ("Gold labels: a hand-labelled audit sample, stored as an attribute with method 'gold' (not "
                     "imputed). `imputation` then measures an imputed attribute against it.")
    sub = p.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="import uid,label rows as gold attribute NAME")
    store_arg(imp)
    imp.add_argument("--name", required=True, help="the gold attribute's name, e.g. gold_caption_gender")
    imp.add_argument("--file", required=True, help="CSV/JSON lines/Parquet with columns uid,label")
    imp.add_argument("--attribute", help="the imputed attribute these labels audit: its label set is the allowed "
                                         "one (default: NAME without a 'gold_' prefix)")
    imp.add_argument("--uid-column", default="uid")
    imp.add_argument("--label-column", default="label")
    imp.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                     help="rename a label before checking it (repeatable), e.g. none=unknown")
    imp.add_argument("--sample", type=int, help="import a seeded random sample of this many rows")
    imp.add_argument("--seed", type=int, default=0)
    imp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audit.measure.gold import GoldError, import_gold

    mapping = {}
    for m in args.map:
        old, sep, new = m.partition("=")
        if not sep:
            raise GoldError(f"--map takes OLD=NEW, got {m!r}")
        mapping[old] = new
    print(import_gold(args.store, args.name, args.file, attribute=args.attribute, uid_column=args.uid_column,
                      label_column=args.label_column, mapping=mapping, sample=args.sample, seed=args.seed))
    return 0
