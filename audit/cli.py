"""Command line: `python -m audit <stage> ...`. Imports of heavy modules happen inside each command.

Stages are listed in STAGES; each has ``add(subparsers)`` registering its parser with ``func``. Later
stages (annotate, report, origin, map, balance) register here the same way from their own modules.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_STORE = os.environ.get("AUDIT_STORE", "data/demo.duckdb")


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=DEFAULT_STORE, help="DuckDB store file (default: %(default)s)")


# ---- ingest ----------------------------------------------------------------------------------
def _add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="read a pool into the store (samples + rejects)",
                       description="Every input row ends in exactly one of samples or rejects.")
    p.add_argument("format", choices=["folder", "webdataset", "parquet", "datacomp"])
    p.add_argument("paths", nargs="+", help="files or folders")
    _store_arg(p)
    p.add_argument("--source", help="source name for these rows (default: from the path)")
    p.add_argument("--simulated", action="store_true", help="mark rows as simulated (the demo pool)")
    p.set_defaults(func=_run_ingest)


def _run_ingest(a) -> int:
    from audit.ingest import ingest

    ingest(a.format, a.paths, store_path=a.store, source=a.source, simulated=a.simulated)
    return 0


# ---- embed -------------------------------------------------------------------------------------
def _add_embed(sub) -> None:
    from_defaults = ("ViT-B-32", "laion2b_s34b_b79k")
    p = sub.add_parser("embed", help="image/text embeddings of every sample with an image (resumable)")
    _store_arg(p)
    p.add_argument("--backend", default="open_clip",
                   help="open_clip, or transformers for Hugging Face CLIP/SigLIP (default: %(default)s)")
    p.add_argument("--model", default=from_defaults[0],
                   help="open_clip: architecture name, or a local open_clip config .json; transformers: a hub id "
                        "(e.g. openai/clip-vit-base-patch32[@revision]) or a folder written by save_pretrained "
                        "(default: %(default)s)")
    p.add_argument("--pretrained", default=from_defaults[1],
                   help="open_clip only (ignored by transformers, whose --model is the checkpoint): pretrained tag, "
                        "a local checkpoint path, or 'none' for random weights (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: min(2, cores))")
    p.add_argument("--flush-rows", type=int, default=2048, help="rows per written vector part (resume unit)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto uses bf16 autocast only where a timed trial shows it is faster")
    p.set_defaults(func=_run_embed)


def _run_embed(a) -> int:
    from audit.embed import embed

    embed(a.store, model=a.model, pretrained=a.pretrained, backend=a.backend, batch_size=a.batch_size,
          workers=a.workers, precision=a.precision, flush_rows=a.flush_rows)
    return 0


# ---- score -------------------------------------------------------------------------------------
def _add_score(sub) -> None:
    from audit.scores import SCORES

    p = sub.add_parser("score", help="compute a score and store it", description="Scores: " + ", ".join(SCORES.names()))
    ss = p.add_subparsers(dest="score", required=True, metavar="SCORE")
    for cls in SCORES:
        q = ss.add_parser(cls.name, help=cls.description)
        _store_arg(q)
        if cls.uses_model:
            q.add_argument("--model", help="embedding model key in the store (e.g. datacomp_l14)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--force", action="store_true", help="recompute even if done with these parameters")
        cls.add_arguments(q)
        q.set_defaults(func=_run_score, score_cls=cls)


def _run_score(a) -> int:
    from audit.scores.base import run_score

    cls = a.score_cls
    run_score(cls.name, a.store, model=getattr(a, "model", None), params=cls.params_from_args(a), seed=a.seed,
              force=a.force)
    return 0


def _add_scores(sub) -> None:
    p = sub.add_parser("scores", help="list the score names in a store")
    _store_arg(p)
    p.set_defaults(func=_run_scores)


def _run_scores(a) -> int:
    from audit.store import Store

    with Store.reader(a.store) as st:
        cat = st.score_catalog()
    for r in cat.itertuples():
        flags = " [random weights]" if r.random_weights else ""
        flags += " [simulated]" if r.simulated else ""
        model = r.model if isinstance(r.model, str) else ""  # NaN for scores that use no embeddings
        print(f"{r.name}\t{r.kind}\t{model}{flags}")
    return 0


# ---- annotate -------------------------------------------------------------------------------------
def _add_annotate(sub) -> None:
    from audit.annotators import ANNOTATORS

    p = sub.add_parser("annotate", help="impute labels (demographics, NSFW, ...) and store them")
    ss = p.add_subparsers(dest="annotator", required=True, metavar="NAME")
    for cls in ANNOTATORS:
        q = ss.add_parser(cls.name, help=cls.method)
        _store_arg(q)
        q.add_argument("--model", help="embedding model key, for annotators that use embeddings")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--force", action="store_true")
        cls.add_arguments(q)
        q.set_defaults(func=_run_annotate, ann_cls=cls)


def _run_annotate(a) -> int:
    from audit.annotators.base import run_annotator

    cls = a.ann_cls
    run_annotator(cls.name, a.store, params=cls.params_from_args(a), model=a.model, seed=a.seed, force=a.force)
    return 0


# ---- export -------------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write the kept subset (CSV, Parquet or DataComp uid .npy) + manifest")
    _store_arg(p)
    p.add_argument("--out", required=True, help="output file; the format follows the suffix")
    p.add_argument("--keep", action="append", default=[], metavar="SPEC",
                   help="SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION; several intersect. A recipe works too: "
                        "'A:top=0.3 then B:top=0.2' (ordered steps, fractions of the whole pool), 'A:top=0.3 & basic' "
                        "(see docs/scores.md)")
    p.add_argument("--format", choices=["csv", "parquet", "npy"])
    p.set_defaults(func=_run_export)


def _run_export(a) -> int:
    from audit.export import export

    export(a.store, a.out, a.keep, fmt=a.format)
    return 0


# ---- demo -------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the demo store offline (simulated pool + real photos)")
    p.add_argument("--rows", type=int, default=100_000, help="simulated pool size (default: %(default)s)")
    _store_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-photos", action="store_true", help="skip the real photos and the open_clip model")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the store exists")
    p.set_defaults(func=_run_demo)


def _run_demo(a) -> int:
    from audit.demo import build_demo

    if a.if_missing and os.path.exists(a.store):
        print(f"demo store exists: {a.store}")
        return 0
    build_demo(a.store, rows=a.rows, seed=a.seed, photos=not a.no_photos)
    return 0


STAGES = [_add_ingest, _add_embed, _add_score, _add_scores, _add_annotate, _add_export, _add_demo]
# Stages defined in their own modules: (module, function adding the parser, stage name, one-line help).
# The module is imported only when that stage is asked for, so `--help` stays instant.
EXTRA_STAGES: list[tuple[str, str, str, str]] = [
    ("audit.report", "add_parser", "report", "fairness table of a filter by group (CSV)"),
    ("audit.origin", "add_parser", "origin", "dataset-origin probe: can the sources be told apart?"),
    ("audit.embedmap", "add_parser", "map", "UMAP map of the embeddings (coordinates stored)"),
    ("audit.balance", "add_parser", "balance", "data balancing weights: M4 or MetaCLIP"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m audit",
                                description="Audit CLIP-filtered image-text pools: ingest → embed → score → "
                                            "annotate → analyse → dashboard → export.")
    sub = p.add_subparsers(dest="stage", metavar="STAGE")
    lazy = {"score", "annotate"}  # these import their registries; only when asked for
    want = sys.argv[1] if len(sys.argv) > 1 else None
    for add in STAGES:
        name = add.__name__.removeprefix("_add_")
        if name in lazy and want != name:
            sub.add_parser(name, help={"score": "compute a score and store it",
                                       "annotate": "impute labels (demographics, NSFW, ...) and store them"}[name])
            continue
        add(sub)
    import importlib

    for module, fn, name, help_text in EXTRA_STAGES:
        if want == name:
            getattr(importlib.import_module(module), fn)(sub)
        else:  # a light placeholder, so --help lists the stage without importing its module
            sub.add_parser(name, help=help_text)
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
