"""The per-row tables as immutable Parquet parts, registered in a small catalogue inside the DuckDB file.

``samples``, ``scores``, ``annotations`` and ``embedding_map`` grow with the pool (12.8M rows for DataComp *small*).
They live as Parquet files beside the DuckDB file; the file itself keeps only what is small (runs, rejects,
catalogues, the ``parts`` list) and SQL views of the same names over the registered parts::

    data/demo.duckdb                                   catalogue: parts (table_name, key, file, rows, run_id)
    data/demo.parts/scores/<key>/<run>-<id>.parquet    uid, name, value
    data/demo.parts/samples/<key>/...                  SAMPLE_COLUMNS
    data/demo.parts/annotations/<attribute>/...        uid, attribute, label, confidence, method
    data/demo.parts/embedding_map/<model>/...          model, uid, x, y, fit

Why: the dashboard reads a copy of the DuckDB file (DuckDB lets no reader in while a writer holds the file);
with the rows in parts, that copy is kilobytes whatever the pool's size, and a part, once renamed into place, is
never changed, so a reader keeps reading the parts its catalogue names while a writer adds new ones.

Writing: a part is written to a temporary name and renamed (atomic), then registered in the writer's
transaction together with the catalogues; the views are redefined in the same transaction. A stage killed before
its commit leaves unregistered files that no view names (removed by ``collect_garbage`` after an hour). A part
replaced (a score computed again) is *retired*, not deleted: a dashboard that still shows the older version reads
it; retired files are deleted a day later.

Paths in the views are relative to the parts folder, which each connection names in DuckDB's
``file_search_path`` (Store.open): a moved store, and the dashboard's copy, read the same parts.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from audit.store.schema import SAMPLE_COLUMNS, slug

if TYPE_CHECKING:  # pragma: no cover
    from audit.store.store import Store

ORPHAN_GRACE_S = 3600.0          # unregistered files younger than this may belong to a stage still writing
RETIRED_GRACE_S = 24 * 3600.0    # a dashboard may show an older version for this long
ROW_GROUP = 1 << 17              # rows per Parquet row group: a lookup by uid skips the others (parts sorted by uid)

# table -> (column, arrow type name, SQL type), in file order; the key column names the part's group
_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "samples": [("uid", "string", "VARCHAR"), ("source", "string", "VARCHAR"), ("caption", "string", "VARCHAR"),
                ("url", "string", "VARCHAR"), ("domain", "string", "VARCHAR"), ("tld", "string", "VARCHAR"),
                ("width", "int32", "INTEGER"), ("height", "int32", "INTEGER"), ("image_ref", "string", "VARCHAR"),
                ("sha256", "string", "VARCHAR"), ("simulated", "bool_", "BOOLEAN"), ("ingest_run", "int32", "INTEGER"),
                ("stored_width", "int32", "INTEGER"), ("stored_height", "int32", "INTEGER"),
                ("uid_given", "bool_", "BOOLEAN")],
    "scores": [("uid", "string", "VARCHAR"), ("name", "string", "VARCHAR"), ("value", "float64", "DOUBLE")],
    "annotations": [("uid", "string", "VARCHAR"), ("attribute", "string", "VARCHAR"), ("label", "string", "VARCHAR"),
                    ("confidence", "float64", "DOUBLE"), ("method", "string", "VARCHAR")],
    "embedding_map": [("model", "string", "VARCHAR"), ("uid", "string", "VARCHAR"), ("x", "float32", "FLOAT"),
                      ("y", "float32", "FLOAT"), ("fit", "bool_", "BOOLEAN")],
}
TABLES = tuple(_COLUMNS)
assert tuple(c for c, _, _ in _COLUMNS["samples"]) == SAMPLE_COLUMNS

CATALOGUE_DDL = [
    """CREATE TABLE IF NOT EXISTS parts (
        table_name VARCHAR, key VARCHAR, file VARCHAR, rows BIGINT, run_id INTEGER, created TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS retired_parts (file VARCHAR, retired TIMESTAMP)""",
]


def parts_dir(db_path: str | os.PathLike) -> Path:
    p = Path(db_path)
    return p.with_name(p.stem + ".parts")


def columns(table: str) -> list[str]:
    return [c for c, _, _ in _COLUMNS[table]]


def arrow_schema(table: str):
    import pyarrow as pa

    return pa.schema([pa.field(c, getattr(pa, t)()) for c, t, _ in _COLUMNS[table]])


def is_parts_table(store: "Store", table: str) -> bool:
    """Whether ``table`` is served from parts (a view) in this store; False for a store of the older layout."""
    return not store.scalar("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'",
                            [table])


# ---- writing ------------------------------------------------------------------------------------------------
def write_part(store: "Store", table: str, key: str, frame, *, run_id: int | None, replace: bool) -> int:
    """Write ``frame`` (pandas or Arrow, any subset of the table's columns) as one part of ``table`` under ``key``
    and register it; with ``replace`` the key's earlier parts are retired in the same transaction. Returns rows."""
    staged = stage_part(store.parts_dir(), table, key, frame, run_id=run_id)
    register_parts(store, table, key, [staged], run_id=run_id, replace=replace)
    return staged[1]


def stage_part(root: Path, table: str, key: str, frame, *, run_id: int | None) -> tuple[str, int]:
    """Write one part file under the parts folder ``root`` without registering it: (relative path, rows). No view
    reads it until ``register_parts``; a stage killed before that leaves an orphan ``collect_garbage`` removes."""
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401 (pa.compute)
    import pyarrow.parquet as pq

    schema = arrow_schema(table)
    if not isinstance(frame, pa.Table):
        frame = pa.Table.from_pandas(frame, preserve_index=False)
    n = frame.num_rows
    cols = {}
    for f in schema:
        if f.name in frame.column_names:
            cols[f.name] = frame.column(f.name).cast(f.type)
        else:
            cols[f.name] = pa.nulls(n, f.type)
    data = pa.table(cols, schema=schema)
    if n > 1:   # sorted by uid: each row group covers a narrow uid range, which a lookup by uid prunes on
        data = data.take(pa.compute.sort_indices(data.column("uid")))
    rel = f"{table}/{slug(key) if key else '_'}/{run_id if run_id is not None else 0:06d}-{uuid.uuid4().hex[:12]}.parquet"
    dest = Path(root) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".tmp-" + dest.name)
    # statistics for the text columns only: pyarrow leaves NaN out of a float column's min/max, and DuckDB then
    # folds isnan() to false and prunes NaN rows by those statistics (tests/test_parts.py)
    stats = [f.name for f in schema if pa.types.is_string(f.type)]
    pq.write_table(data, tmp, compression="zstd", row_group_size=ROW_GROUP, write_statistics=stats)
    os.replace(tmp, dest)
    return rel, n


def register_parts(store: "Store", table: str, key: str, staged: list[tuple[str, int]], *, run_id: int | None,
                   replace: bool) -> None:
    """Register staged part files of ``table`` under ``key`` in one transaction (retiring the key's earlier parts
    with ``replace``) and redefine the view."""
    with store.transaction():
        cur = store.cursor()
        if replace:
            retire(store, table, key)
        for rel, n in staged:
            cur.execute("INSERT INTO parts VALUES (?, ?, ?, ?, ?, now())", [table, key, rel, n, run_id])
        refresh_view(store, table)


def part_files(store: "Store", table: str) -> list[str]:
    """Absolute paths of the registered parts of ``table``, in the view's order."""
    root = store.parts_dir()
    return [str(root / r[0]) for r in store.cursor().execute(
        "SELECT file FROM parts WHERE table_name = ? ORDER BY created, file", [table]).fetchall()]


def retire(store: "Store", table: str, key: str) -> None:
    """Take the parts of ``table`` under ``key`` out of the catalogue (the files stay a day, see module doc)."""
    cur = store.cursor()
    cur.execute("INSERT INTO retired_parts SELECT file, now() FROM parts WHERE table_name = ? AND key = ?",
                [table, key])
    cur.execute("DELETE FROM parts WHERE table_name = ? AND key = ?", [table, key])


def sql_files(files) -> str:
    """A DuckDB list literal of file paths, for ``read_parquet([...])``."""
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def select_list(table: str, cols=None) -> str:
    """The view's typed column list (all of ``table``'s columns, or ``cols`` of them, in that order)."""
    types = {c: t for c, _, t in _COLUMNS[table]}
    return ", ".join(f'CAST("{c}" AS {types[c]}) AS "{c}"' for c in (types if cols is None else cols))


def refresh_view(store: "Store", table: str) -> None:
    """(Re)define the view ``table`` over its registered parts (a typed empty relation when there are none)."""
    cur = store.cursor()
    files = [r[0] for r in cur.execute(
        "SELECT file FROM parts WHERE table_name = ? ORDER BY created, file", [table]).fetchall()]
    cols = select_list(table)
    if files:
        body = f"SELECT {cols} FROM read_parquet({sql_files(files)})"
    else:
        body = "SELECT " + ", ".join(f'NULL::{t} AS "{c}"' for c, _, t in _COLUMNS[table]) + " WHERE false"
    cur.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")


# ---- the layout of older stores ------------------------------------------------------------------------------
def migrate_tables(store: "Store") -> list[str]:
    """Move the rows of an older store's per-row tables into parts (one part per key, streamed by DuckDB's COPY),
    drop the tables and define the views, each table in one transaction. Returns the tables moved."""
    moved = []
    key_col = {"samples": None, "scores": "name", "annotations": "attribute", "embedding_map": "model"}
    for table in TABLES:
        if is_parts_table(store, table):
            continue
        with store.transaction():
            cur = store.cursor()
            kc = key_col[table]
            keys = [None] if kc is None else [r[0] for r in cur.execute(
                f'SELECT DISTINCT "{kc}" FROM {table} ORDER BY 1').fetchall()]
            for key in keys:
                where, params = ("", []) if kc is None else (f' WHERE "{kc}" = ?', [key])
                n = cur.execute(f"SELECT count(*) FROM {table}{where}", params).fetchall()[0][0]
                if not n:
                    continue
                rel = f"{table}/{slug(key) if key else '_'}/000000-{uuid.uuid4().hex[:12]}.parquet"
                dest = store.parts_dir() / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(".tmp-" + dest.name)
                cols = ", ".join(f'"{c}"' for c in columns(table) if _has_column(cur, table, c))
                esc = str(tmp).replace("'", "''")
                cur.execute(f"COPY (SELECT {cols} FROM {table}{where}) TO '{esc}' (FORMAT parquet, COMPRESSION zstd)",
                            params)
                os.replace(tmp, dest)
                cur.execute("INSERT INTO parts VALUES (?, ?, ?, ?, NULL, now())", [table, key or "", rel, n])
            cur.execute(f"DROP TABLE {table}")
            refresh_view(store, table)
        moved.append(table)
    return moved


def _has_column(cur, table: str, column: str) -> bool:
    return bool(cur.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ?",
                            [table, column]).fetchall()[0][0])


def ensure_views(store: "Store") -> None:
    """Views for every parts table that has neither a table (older store) nor a view yet (new store)."""
    cur = store.cursor()
    for table in TABLES:
        exists = cur.execute(
            "SELECT count(*) FROM (SELECT table_name AS n FROM duckdb_tables() UNION ALL "
            "SELECT view_name FROM duckdb_views() WHERE NOT internal) WHERE n = ?", [table]).fetchall()[0][0]
        if not exists:
            refresh_view(store, table)


# ---- cleaning up -----------------------------------------------------------------------------------------------
def collect_garbage(store: "Store", *, orphan_grace_s: float = ORPHAN_GRACE_S,
                    retired_grace_s: float = RETIRED_GRACE_S) -> int:
    """Delete retired parts older than ``retired_grace_s``, unregistered files (a killed stage's, and its state and
    temporary files under ``inputs/``) older than ``orphan_grace_s`` and column folders (columns.py) that derive
    from parts no longer current. Returns the number of files and folders removed."""
    root = store.parts_dir()
    if not root.is_dir():
        return 0
    cur = store.cursor()
    live = {r[0] for r in cur.execute("SELECT file FROM parts").fetchall()}
    retired = dict(cur.execute("SELECT file, epoch(now()::TIMESTAMP) - epoch(max(retired)) FROM retired_parts "
                               "GROUP BY file").fetchall())   # file -> seconds since it was retired
    now = time.time()
    removed, gone = 0, []
    for path in root.rglob("*.parquet"):
        rel = path.relative_to(root).as_posix()
        if rel in live:
            continue
        if rel in retired:
            old = float(retired[rel]) > retired_grace_s
        else:
            old = now - path.stat().st_mtime > orphan_grace_s
        if old:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
                if rel in retired:
                    gone.append(rel)
    for rel in gone:
        cur.execute("DELETE FROM retired_parts WHERE file = ?", [rel])
    # a killed stage's other inputs: vas-d's state files, a join's temporary file
    for path in (root / "inputs").glob("*") if (root / "inputs").is_dir() else []:
        if path.suffix in (".pkl", ".tmp") and now - path.stat().st_mtime > orphan_grace_s:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    from audit.store import columns   # the pool-order columns of parts no longer current, on the same grace

    return removed + columns.collect_garbage(store, retired_grace_s)
