"""`python -m audit ingest FORMAT PATHS...`: read a pool into the store (audit/ingest)."""
from __future__ import annotations


from audit.cli import store_arg


def configure(p) -> None:
    from audit.images import DEFAULT_MAX_PIXELS  # stdlib only: configure runs just for this command

    p.description = "Every input row ends in exactly one of samples or rejects."
    p.add_argument("format", choices=["folder", "webdataset", "parquet", "datacomp"])
    p.add_argument("paths", nargs="+", help="files, folders, brace patterns ('shards/{00000..00009}.tar') or globs "
                                            "('shards/*.tar'), quoted so the tool expands them")
    store_arg(p)
    p.add_argument("--source", help="source name for these rows (default: from the path)")
    p.add_argument("--simulated", action="store_true", help="mark rows as simulated (the demo pool)")
    p.add_argument("--force", action="store_true",
                   help="allow ingesting into the demo store when no --store is given")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="images with more pixels are rejected as too_large before decoding (default: %(default)s)")
    p.add_argument("--no-vectors", action="store_true",
                   help="datacomp: read the parquet alone (rows and similarity scores), without the npz embeddings")
    p.set_defaults(func=run)


def run(a) -> int:
    from audit.ingest.run import ingest

    import os
    import sys

    from audit.config import DEMO_STORE

    if a.max_pixels < 1:
        raise ValueError("--max-pixels must be at least 1")
    store_given = any(x == "--store" or x.startswith("--store=") for x in sys.argv[1:])
    if "AUDIT_STORE" not in os.environ and a.store == DEMO_STORE and not store_given and not a.force:
        raise ValueError(f"no --store given: this would add your data to the demo store {DEMO_STORE}. Give "
                         f"--store PATH for your pool (or --force to add it to the demo store)")
    ingest(a.format, a.paths, store_path=a.store, source=a.source, simulated=a.simulated, max_pixels=a.max_pixels,
           vectors=not a.no_vectors)
    return 0
