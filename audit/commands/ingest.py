"""`python -m audit ingest FORMAT PATHS...`: read a pool into the store (audit/ingest)."""
from __future__ import annotations


from audit.cli import store_arg


def configure(p) -> None:
    p.description = "Every input row ends in exactly one of samples or rejects."
    p.add_argument("format", choices=["folder", "webdataset", "parquet", "datacomp"])
    p.add_argument("paths", nargs="+", help="files or folders")
    store_arg(p)
    p.add_argument("--source", help="source name for these rows (default: from the path)")
    p.add_argument("--simulated", action="store_true", help="mark rows as simulated (the demo pool)")
    p.set_defaults(func=run)


def run(a) -> int:
    from audit.ingest.run import ingest

    ingest(a.format, a.paths, store_path=a.store, source=a.source, simulated=a.simulated)
    return 0
