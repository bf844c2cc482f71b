"""`python -m audit export`: the kept subset as CSV, Parquet or DataComp uid .npy (audit/export)."""
from __future__ import annotations


from audit.cli import store_arg


def configure(p) -> None:
    store_arg(p)
    p.add_argument("--out", required=True, help="output file; the format follows the suffix")
    p.add_argument("--keep", action="append", default=[], metavar="SPEC",
                   help="SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION; several intersect. A recipe works too: "
                        "'A:top=0.3 then B:top=0.2' (ordered steps, fractions of the whole pool), 'A:top=0.3 & basic' "
                        "(see docs/scores.md)")
    p.add_argument("--format", choices=["csv", "parquet", "npy"])
    p.add_argument("--by", action="append", default=[], metavar="ATTRIBUTE",
                   help="add a group column (label and <name>__conf confidence; method in the manifest); repeatable")
    p.add_argument("--all-rows", action="store_true",
                   help="every sample with its keep decision (keep 1/0) and excluded_by reasons, not only the kept "
                        "ones: inclusion rates by group can then be computed from the file (CSV/Parquet)")
    p.set_defaults(func=run)


def run(a) -> int:
    from audit.export.writer import export

    export(a.store, a.out, a.keep, fmt=a.format, by=a.by, all_rows=a.all_rows)
    return 0
