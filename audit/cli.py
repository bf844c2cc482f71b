"""Command line: `python -m audit <command> ...`, one table of commands.

Each command is a module under audit/commands/ with ``configure(parser)`` (arguments, ``func``). A module is
imported only when its command is asked for, so ``--help`` lists every command without importing any of them
(nor numpy, pandas, torch or duckdb).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from audit.config import default_store

# (name, module under audit.commands, one-line help), in pipeline order.
COMMANDS: list[tuple[str, str, str]] = [
    ("ingest", "ingest", "read a pool into the store (samples + rejects)"),
    ("embed", "embed", "image/text embeddings of every sample with an image (resumable)"),
    ("score", "score", "compute a score and store it"),
    ("scores", "scores", "list the score names in a store"),
    ("annotate", "annotate", "impute labels (demographics, NSFW, ...) and store them"),
    ("report", "report", "fairness table of a filter by group (CSV)"),
    ("labels", "labels", "gold labels: import a hand-labelled audit sample"),
    ("imputation", "imputation", "accuracy of imputed attributes against gold labels"),
    ("origin", "origin", "dataset-origin probe: can the sources be told apart?"),
    ("map", "map", "UMAP map of the embeddings (coordinates stored)"),
    ("balance", "balance", "data balancing weights: M4 or MetaCLIP"),
    ("export", "export", "write the kept subset (CSV, Parquet or DataComp uid .npy) + manifest"),
    ("demo", "demo", "build the demo store offline (simulated pool + real photos)"),
]


def store_arg(p: argparse.ArgumentParser) -> None:
    """The ``--store`` option every command shares."""
    p.add_argument("--store", default=default_store(), help="DuckDB store file (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m audit",
                                description="Audit CLIP-filtered image-text pools: ingest → embed → score → "
                                            "annotate → analyse → dashboard → export.")
    sub = p.add_subparsers(dest="stage", metavar="STAGE")
    want = sys.argv[1] if len(sys.argv) > 1 else None
    for name, module, help_text in COMMANDS:
        q = sub.add_parser(name, help=help_text)
        if name == want:  # only the command asked for imports its module
            importlib.import_module(f"audit.commands.{module}").configure(q)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.stage is None else 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 1
