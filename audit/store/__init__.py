"""The audit store: the only SQL and the only vector file I/O of the project.

One small DuckDB file (runs, rejects, catalogues), a folder of Parquet parts for the per-row tables and a folder
of float16 Parquet vectors beside it::

    data/demo.duckdb               tables (schema.py) and views over the parts
    data/demo.parts/<table>/<key>/<run>-<id>.parquet   samples, scores, annotations, embedding_map (parts.py)
    data/demo.vectors/<model>/part-000000.parquet   uid, img, txt (vectors.py)

store.py   opening (writer/reader with lock retry), the dashboard's snapshot, runs, samples, scores, annotations
schema.py  every CREATE statement, allow-listed columns, identifier checks
labels.py  per-sample label/caption/score columns for group tables and balancing (whole pool or streamed)
results.py analysis results (origin probe, embedding map) and the meta key/value table
vectors.py writing and reading the vector parts
parts.py   the per-row tables' Parquet parts, their catalogue, migration of older stores, clean-up

Style: ``Store`` methods cover the core tables; the topic modules are functions taking a ``Store`` first.
"""
from audit.store.parts import parts_dir  # noqa: F401
from audit.store.schema import SAMPLE_COLUMNS, SAMPLE_GROUP_COLUMNS, StoreError, ident, slug  # noqa: F401
from audit.store.store import (Store, connect, copy_store, failed_run_guard, param_key, pid_alive, score_table,  # noqa: F401
                               prune_orphan_snapshots, snapshot, store_version, vectors_dir)
