"""The audit store: one small DuckDB file, Parquet parts of its per-row tables and float16 Parquet vectors beside it.

This is the only module that imports duckdb. All SQL is parameterised; identifiers that cannot be
parameters (score names in an export pivot, sample columns in a GROUP BY) come from allow-lists.

Layout on disk for a store ``data/demo.duckdb``::

    data/demo.duckdb               rejects, runs, catalogues; views samples, scores, annotations, embedding_map
    data/demo.parts/<table>/<key>/<run>-<id>.parquet   the rows of those views (parts.py)
    data/demo.vectors/<model>/part-000000.parquet   uid, img, txt (float16, vectors.py)

Contract tables (other tools read them): ``samples`` (uid unique), ``rejects`` (reason), ``runs`` and
``embeddings`` (uid, model, img, txt; a view over the Parquet vectors, read as FLOAT arrays).

Locking: DuckDB lets one process hold a file for writing and no other process may open it then, not
even read-only. Writers therefore hold the file only for short transactions (``Store.writer``, with
retry), long stages write Parquet first and register it at the end, and the dashboard reads a
*snapshot* copy (``snapshot``) so that a running CLI stage never takes it down. The per-row tables are
Parquet parts (parts.py), so the file, and its copy, stay small whatever the pool's size.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd
from audit.store import columns as pool_columns
from audit.store import parts
from audit.store.schema import (DDL, LEGACY_SAMPLE_MIGRATIONS, MIGRATIONS, REJECT_COLUMNS, SAMPLE_COLUMNS,
                                SAMPLE_GROUP_COLUMNS, SCHEMA_VERSION, StoreError, _EMPTY_EMBEDDINGS_VIEW, ident, slug)


_LOCK_ERRORS = ("Could not set lock", "Conflicting lock", "database is locked", "lock on file")


def vectors_dir(db_path: str | os.PathLike) -> Path:
    p = Path(db_path)
    return p.with_name(p.stem + ".vectors")


def _is_lock_error(exc: Exception) -> bool:
    return any(s in str(exc) for s in _LOCK_ERRORS)


def connect(path: str | os.PathLike, *, read_only: bool = False, wait_s: float = 60.0) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, retrying while another process holds its lock."""
    path = str(path)
    if read_only and not os.path.exists(path):
        raise StoreError(f"store not found: {path} (build one with `python -m audit demo` or `audit ingest`)")
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.Error as exc:  # IOException on lock conflicts
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                if _is_lock_error(exc):
                    raise StoreError(
                        f"store {path} is held by another process for writing (waited {wait_s:.0f} s)"
                    ) from exc
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Store:
    """A handle on one store. ``con`` is a DuckDB connection; use a cursor per query."""

    path: str
    con: duckdb.DuckDBPyConnection
    read_only: bool
    vectors_root: Path | None = None   # set for snapshots: their vectors stay beside the live store
    parts_root: Path | None = None     # set for snapshots: so do their Parquet parts (parts.py)
    _tx: Any = field(default=None, repr=False)   # the cursor of the open transaction (Store.transaction)

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, read_only: bool = False, wait_s: float = 60.0,
             vectors_root: str | os.PathLike | None = None, parts_root: str | os.PathLike | None = None,
             memory_limit: str | None = None) -> "Store":
        """``memory_limit`` (DuckDB's, e.g. "1GB"): larger sorts and joins spill to disk instead of growing."""
        path = str(path)
        if not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        home = _snapshot_home(path)
        if home is not None:   # a snapshot's parts and vectors stay beside the store it copies
            vectors_root = vectors_root if vectors_root is not None else vectors_dir(home)
            parts_root = parts_root if parts_root is not None else parts.parts_dir(home)
        con = connect(path, read_only=read_only, wait_s=wait_s)
        st = cls(path=path, con=con, read_only=read_only,
                 vectors_root=Path(vectors_root) if vectors_root is not None else None,
                 parts_root=Path(parts_root) if parts_root is not None else None)
        st._configure(con, memory_limit)
        if not read_only:
            st._init_schema()
        return st

    def _configure(self, con: duckdb.DuckDBPyConnection, memory_limit: str | None = None) -> None:
        """Relative part paths of the views resolve in this store's parts folder; Parquet footers are cached."""
        root = str(self.parts_dir().resolve()).replace("'", "''")
        con.execute(f"SET GLOBAL file_search_path = '{root}'")
        con.execute("SET GLOBAL parquet_metadata_cache = true")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")

    @property
    def live(self) -> bool:
        """The store itself, not the dashboard's copy of it (whose parts and vectors stay beside the store)."""
        return self.vectors_root is None and self.parts_root is None

    def parts_dir(self) -> Path:
        return self.parts_root or parts.parts_dir(self.path)

    @classmethod
    def writer(cls, path: str | os.PathLike, *, wait_s: float = 60.0) -> contextlib.AbstractContextManager["Store"]:
        """Open for a short write and release the file lock at the end (checkpointing)."""
        return cls._session(path, read_only=False, wait_s=wait_s)

    @classmethod
    def reader(cls, path: str | os.PathLike, *, wait_s: float = 60.0,
               memory_limit: str | None = None) -> contextlib.AbstractContextManager["Store"]:
        """Open read-only for a short read; the file lock is released at the end. ``memory_limit``: as in open."""
        return cls._session(path, read_only=True, wait_s=wait_s, memory_limit=memory_limit)

    @classmethod
    @contextlib.contextmanager
    def detached(cls, path: str | os.PathLike, *, wait_s: float = 60.0,
                 memory_limit: str | None = None) -> Iterator["Store"]:
        """A read-only store for long computations that holds the file only while each query runs (DuckDB lets
        no writer in while any reader has the file open), so another stage can write meanwhile. Each query
        sees the store as it is then; the computing stage reads what it needs once."""
        if not os.path.exists(str(path)):
            raise StoreError(f"store not found: {path}")
        yield _DetachedStore(path=str(path), con=None, read_only=True, wait_s=wait_s, memory_limit=memory_limit)

    @classmethod
    @contextlib.contextmanager
    def _session(cls, path: str | os.PathLike, *, read_only: bool, wait_s: float,
                 memory_limit: str | None = None) -> Iterator["Store"]:
        st = cls.open(path, read_only=read_only, wait_s=wait_s, memory_limit=memory_limit)
        try:
            yield st
        finally:
            st.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.read_only:
                self.con.execute("CHECKPOINT")
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self._tx if self._tx is not None else self.con.cursor()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Every statement of the block in one transaction (DuckDB's cursors are separate connections, so the
        store hands out the transaction's cursor meanwhile); a nested block joins the outer one."""
        if self._tx is not None:
            yield
            return
        cur = self.con.cursor()
        cur.execute("BEGIN")
        self._tx = cur
        try:
            yield
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            self._tx = None

    def _init_schema(self) -> None:
        cur = self.cursor()
        for stmt in DDL + parts.CATALOGUE_DDL:
            cur.execute(stmt)
        if not parts.is_parts_table(self, "samples"):   # a store of layout 1: its rows move into parts once
            for stmt in LEGACY_SAMPLE_MIGRATIONS:
                cur.execute(stmt)
            if self.live:
                parts.migrate_tables(self)
        else:
            for table in ("scores", "annotations", "embedding_map"):
                if not parts.is_parts_table(self, table) and self.live:
                    parts.migrate_tables(self)
                    break
        parts.ensure_views(self)
        for stmt in MIGRATIONS:
            cur.execute(stmt)
        cur.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        if self.live and parts.is_parts_table(self, "samples"):
            cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
            parts.collect_garbage(self)
        has_view = cur.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'embeddings' AND NOT internal"
        ).fetchall()[0][0]
        if not has_view:
            cur.execute(_EMPTY_EMBEDDINGS_VIEW)
        elif cur.execute("SELECT count(*) FROM embedding_models").fetchall()[0][0]:
            self.refresh_embeddings_view()   # the view holds absolute paths: a moved store points it here again

    # ---- generic queries -------------------------------------------------------------------
    def df(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        return self.cursor().execute(sql, params or []).df()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.cursor().execute(sql, params or []).fetchmany(2)   # read to the end: the cursor may be a transaction's
        return rows[0][0] if rows else None

    def table_exists(self, name: str) -> bool:
        return bool(self.scalar(
            "SELECT count(*) FROM (SELECT table_name AS n FROM duckdb_tables() UNION ALL "
            "SELECT view_name FROM duckdb_views() WHERE NOT internal) WHERE n = ?", [name]))

    # ---- runs ------------------------------------------------------------------------------
    def find_done_run(self, stage: str, name: str, param_key: str) -> int | None:
        return self.scalar(
            "SELECT max(run_id) FROM runs WHERE stage=? AND name=? AND param_key=? AND status='done'",
            [stage, name, param_key])

    def start_run(self, stage: str, name: str, *, params: dict, version: int = 1, model: str | None = None,
                  pretrained: str | None = None, random_weights: bool = False) -> int:
        self.mark_interrupted()
        cur = self.cursor()
        run_id = cur.execute("SELECT nextval('run_ids')").fetchall()[0][0]
        cur.execute(
            "INSERT INTO runs (run_id, stage, name, version, model, pretrained, random_weights, params, param_key, "
            "status, started_at, pid, host) VALUES (?,?,?,?,?,?,?,?,?, 'running', now(), ?, ?)",
            [run_id, stage, name, version, model, pretrained, random_weights,
             json.dumps(params, sort_keys=True, default=str), param_key(params), os.getpid(), socket.gethostname()])
        return int(run_id)

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a process of this host that no longer exists (killed, crashed) become
        'interrupted'; returns how many. Runs of other hosts are left alone (their process may be alive)."""
        host = socket.gethostname()
        stale = [rid for rid, pid in self.cursor().execute(
            "SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ?", [host]).fetchall()
            if pid is None or not pid_alive(int(pid))]
        for rid in stale:
            self.cursor().execute("UPDATE runs SET status = 'interrupted', ended_at = now(), "
                                  "note = 'the process ended before the run finished' WHERE run_id = ?", [rid])
        return len(stale)

    def end_run(self, run_id: int, *, status: str = "done", rows_in: int | None = None,
                rows_out: int | None = None, rows_rejected: int | None = None, note: str | None = None) -> None:
        self.cursor().execute(
            "UPDATE runs SET status=?, ended_at=now(), rows_in=?, rows_out=?, rows_rejected=?, note=? "
            "WHERE run_id=?", [status, rows_in, rows_out, rows_rejected, note, run_id])

    def runs(self) -> pd.DataFrame:
        return self.df("SELECT * FROM runs ORDER BY run_id")

    # ---- samples and rejects -----------------------------------------------------------------
    def input_done(self, path: str, fingerprint: str) -> bool:
        return bool(self.scalar(
            "SELECT count(*) FROM ingested_inputs WHERE path=? AND fingerprint=?", [path, fingerprint]))

    def existing_uids(self, uids: Iterable[str]) -> set[str]:
        frame = _uid_table(uids)
        cur = self.cursor()
        cur.register("_probe", frame)
        try:
            got = cur.execute("SELECT p.uid FROM _probe p JOIN samples s USING (uid)").fetchall()
        finally:
            cur.unregister("_probe")
        return {r[0] for r in got}

    def add_samples(self, frame: pd.DataFrame, *, run_id: int | None = None) -> int:
        """Add accepted samples as one part (columns: any subset of SAMPLE_COLUMNS; uid required). The caller
        keeps uids unique (ingest checks existing_uids first)."""
        if frame.empty:
            return 0
        cols = [c for c in SAMPLE_COLUMNS if c in frame.columns]
        if "uid" not in cols:
            raise StoreError("samples need a uid column")
        if self.live and not parts.is_parts_table(self, "samples"):
            raise StoreError("this store has the older layout; open it for writing once to move its rows")
        if frame["uid"].duplicated().any():
            raise StoreError("duplicate uids in one batch of samples")
        return parts.write_part(self, "samples", "", frame[cols], run_id=run_id, replace=False)

    def add_rejects(self, frame: pd.DataFrame) -> int:
        if frame.empty:
            return 0
        frame = frame.reindex(columns=list(REJECT_COLUMNS))
        cur = self.cursor()
        cur.register("_rej", frame)
        cols = ", ".join(REJECT_COLUMNS)
        try:
            cur.execute(f"INSERT INTO rejects ({cols}) SELECT {cols} FROM _rej")
        finally:
            cur.unregister("_rej")
        return len(frame)

    def clear_ingest_rejects(self, uids: Iterable[str]) -> None:
        """Drop the ingest rejects of uids that are accepted now (their input was fixed and ingested again)."""
        if not self.scalar("SELECT count(*) FROM rejects WHERE stage = 'ingest' AND uid IS NOT NULL"):
            return   # nothing to clear (a first ingest): no probe of every new uid
        frame = _uid_table(uids)
        if not frame.num_rows:
            return
        cur = self.cursor()
        cur.register("_fixed", frame)
        try:
            cur.execute("DELETE FROM rejects WHERE stage = 'ingest' AND uid IN (SELECT uid FROM _fixed)")
        finally:
            cur.unregister("_fixed")

    def replace_stage_rejects(self, stage: str, detail_prefix: str, frame: pd.DataFrame) -> None:
        """The rejects of a later stage (embed) for the uids in ``frame``, replacing the earlier rows of the same
        stage whose detail starts with ``detail_prefix`` (the model), so a retried sample is rejected once."""
        if frame.empty:
            return
        probe = pd.DataFrame({"uid": pd.Series(frame["uid"].tolist(), dtype="string")})
        cur = self.cursor()
        cur.register("_again", probe)
        try:
            cur.execute("DELETE FROM rejects WHERE stage = ? AND starts_with(detail, ?) "
                        "AND uid IN (SELECT uid FROM _again)", [stage, detail_prefix])
        finally:
            cur.unregister("_again")
        self.add_rejects(frame)

    def record_input(self, path: str, fingerprint: str, fmt: str, source: str, rows_in: int,
                     accepted: int, rejected: int, run_id: int) -> None:
        self.cursor().execute("INSERT INTO ingested_inputs VALUES (?,?,?,?,?,?,?,?)",
                              [path, fingerprint, fmt, source, rows_in, accepted, rejected, run_id])

    def count(self, table: str) -> int:
        if table not in ("samples", "rejects", "scores", "annotations", "runs", "embeddings"):
            raise StoreError(f"unknown table {table}")
        return int(self.scalar(f"SELECT count(*) FROM {table}"))

    def download_failures(self) -> pd.DataFrame:
        """uid, url, caption, detail of every ``download_failed`` reject (img2dataset's failed rows), by uid."""
        return self.df("SELECT uid, url, caption, detail FROM rejects WHERE reason = 'download_failed' "
                       "ORDER BY uid NULLS LAST, source_ref")

    def count_download_failures(self) -> int:
        return int(self.scalar("SELECT count(*) FROM rejects WHERE reason = 'download_failed'"))

    def rejects_by_reason(self) -> pd.DataFrame:
        return self.df("SELECT stage, reason, count(*) AS n FROM rejects GROUP BY ALL ORDER BY n DESC, reason")

    def sources(self) -> pd.DataFrame:
        return self.df(
            "SELECT source, count(*) AS n, bool_or(simulated) AS simulated FROM samples "
            "GROUP BY source ORDER BY n DESC")

    def samples_page(self, uids: Sequence[str]) -> pd.DataFrame:
        frame = pd.DataFrame({"uid": pd.Series(list(uids), dtype="string")})
        cur = self.cursor()
        cur.register("_want", frame)
        try:
            return cur.execute("SELECT s.* FROM _want w JOIN samples s USING (uid)").df()
        finally:
            cur.unregister("_want")

    def samples_at(self, rows: Sequence[int], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The samples at these row positions of ``samples ORDER BY uid``, in the order given: uid, then
        ``columns`` (default: every sample column). Meant for a page of samples (up to a few thousand rows).

        Each row is read by its row number from the part that holds it (``columns.locate``): a join by uid
        (``samples_page``) reads the uid column of every part, ~3 s at 12.8M rows however few rows are wanted;
        this reads only the parts that hold them and the columns asked for (16 rows: ~0.2 s at 12.8M)."""
        cols = [c for c in dict.fromkeys(columns or SAMPLE_COLUMNS) if c != "uid"]
        for c in cols:
            if c not in SAMPLE_COLUMNS:
                raise StoreError(f"unknown sample column {c!r}; samples has: {', '.join(SAMPLE_COLUMNS)}")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        uids = self.uids_at(rows)
        loc = pool_columns.locate(self) if len(rows) else None
        if loc is None:   # a store of the older one-file layout, or nothing asked
            found = self.samples_page(sorted(set(uids))).set_index("uid")
            return found.loc[uids, cols].reset_index()
        import pyarrow as pa
        import pyarrow.compute as pc

        files, part, prow = loc
        p, r = np.asarray(part)[rows], np.asarray(prow)[rows].astype(np.int64)
        cur, pieces = self.cursor(), []
        select = ", ".join(["file_row_number AS _r", *([parts.select_list("samples", cols)] if cols else [])])
        for k in np.unique(p):
            at = np.flatnonzero(p == k)
            want = np.unique(r[at])
            tab = cur.sql(
                f"SELECT {select} FROM read_parquet({parts.sql_files([files[int(k)]])}, file_row_number = true) "
                f"WHERE file_row_number IN ({', '.join(str(int(x)) for x in want)})").to_arrow_table()
            got = tab.column("_r").to_numpy()
            if len(got) != len(want):
                raise StoreError(f"part {files[int(k)]} lacks rows that the store's locator names; delete the "
                                 f"folder {self.parts_dir() / pool_columns.ROOT / 'locate'} to rebuild it")
            order = np.argsort(got)
            pieces.append(tab.take(pa.array(order[np.searchsorted(got, r[at], sorter=order)]))
                          .append_column("_pos", pa.array(at)))
        tab = pa.concat_tables(pieces)
        tab = tab.take(pc.sort_indices(tab.column("_pos"))).select(cols)
        tab = tab.add_column(0, "uid", pa.array(uids, pa.string()))
        return cur.from_arrow(tab).df()

    def sample_uids(self) -> list[str]:
        """Every uid, ORDER BY uid (the row order of every per-sample frame of the store)."""
        return [r[0] for r in self.cursor().execute("SELECT uid FROM samples ORDER BY uid").fetchall()]

    def sample_frame(self, columns: Sequence[str], *, not_null: Sequence[str] = (),
                     non_blank: Sequence[str] = ()) -> pd.DataFrame:
        """uid plus the given ``samples`` columns, ORDER BY uid; only rows whose ``not_null`` columns are set and
        whose ``non_blank`` columns hold more than whitespace. Column names are checked against SAMPLE_COLUMNS."""
        for c in (*columns, *not_null, *non_blank):
            if c not in SAMPLE_COLUMNS:
                raise StoreError(f"unknown sample column {c!r}; samples has: {', '.join(SAMPLE_COLUMNS)}")
        cols = ", ".join(ident(c) for c in dict.fromkeys(["uid", *columns]))
        where = [f"{ident(c)} IS NOT NULL" for c in (*not_null, *non_blank)]
        where += [f"length(trim({ident(c)})) > 0" for c in non_blank]
        sql = f"SELECT {cols} FROM samples" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY uid"
        return self.df(sql)

    def uid_problems(self, uids) -> dict[str, int]:
        """Among ``uids`` (strings, or a pyarrow string array): how many were made up at ingest (the input had
        none) and how many the input repeats (a duplicate_uid reject exists), the two things a DataComp uid
        subset cannot express."""
        import pyarrow as pa

        frame = pa.table({"uid": uids if isinstance(uids, (pa.Array, pa.ChunkedArray))
                          else pa.array(list(uids), pa.string())})
        if not self.scalar("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'samples' "
                           "AND column_name = 'uid_given'"):
            return {"generated_uids": 0, "repeated_in_input": 0}   # a store from before uid_given was recorded
        cur = self.cursor()
        cur.register("_ask", frame)
        try:
            made_up = cur.execute("SELECT count(*) FROM _ask JOIN samples s USING (uid) "
                                  "WHERE s.uid_given = false").fetchall()[0][0]
            repeated = cur.execute("SELECT count(DISTINCT a.uid) FROM _ask a JOIN rejects r ON r.uid = a.uid "
                                   "AND r.reason = 'duplicate_uid'").fetchall()[0][0]
        finally:
            cur.unregister("_ask")
        return {"generated_uids": int(made_up), "repeated_in_input": int(repeated)}


    # ---- embeddings -----------------------------------------------------------------------------
    def vectors_dir(self) -> Path:
        return self.vectors_root or vectors_dir(self.path)

    def model_dir(self, model: str) -> Path:
        return self.vectors_dir() / slug(model)

    def register_model(self, model: str, *, dim: int, backend: str, arch: str, pretrained: str | None,
                       random_weights: bool, run_id: int, simulated: bool = False) -> None:
        """``simulated``: the vectors come from the simulator, not from the model the key names."""
        folder = self.model_dir(model)
        self.cursor().execute(
            "INSERT OR REPLACE INTO embedding_models (model, dim, backend, arch, pretrained, random_weights, run_id, "
            "folder, simulated) VALUES (?,?,?,?,?,?,?,?,?)",
            [model, dim, backend, arch, pretrained, random_weights, run_id, folder.name, simulated])
        self.refresh_embeddings_view()

    def refresh_embeddings_view(self) -> None:
        """Point the ``embeddings`` view at every registered model's Parquet parts."""
        cur = self.cursor()
        models = cur.execute("SELECT model, folder FROM embedding_models ORDER BY model").fetchall()
        parts = []
        for model, folder in models:
            d = self.vectors_dir() / folder
            if not self.read_only and self.vectors_root is None and d.is_dir():
                from audit.store.vectors import migrate_parts

                migrate_parts(d)   # parts of the older list layout, once
            if any(d.glob("part-*.parquet")):
                glob = str((d / "part-*.parquet").resolve()).replace("'", "''")
                m = model.replace("'", "''")
                parts.append(
                    f"SELECT uid, '{m}' AS model, audit_half_vector(img) AS img, audit_half_vector(txt) AS txt "
                    f"FROM read_parquet('{glob}')")
        cur.execute("CREATE OR REPLACE VIEW embeddings AS " + " UNION ALL ".join(parts)
                    if parts else _EMPTY_EMBEDDINGS_VIEW)

    def models(self) -> pd.DataFrame:
        return self.df("SELECT * FROM embedding_models ORDER BY model")

    def model_info(self, model: str) -> dict:
        got = self.df("SELECT * FROM embedding_models WHERE model = ?", [model])
        if got.empty:
            known = ", ".join(self.models()["model"]) or "none yet"
            raise StoreError(f"no embeddings for model {model!r} in this store (known: {known})")
        return got.iloc[0].to_dict()

    # ---- scores -----------------------------------------------------------------------------
    def write_scores(self, name: str, uids: Sequence[str], values: np.ndarray, *, run_id: int, kind: str,
                     model: str | None = None, random_weights: bool = False, simulated: bool = False,
                     description: str = "", replace: bool = True) -> None:
        """Replace the score ``name`` (one value per uid) in one transaction; with ``replace=False`` add values for
        new uids to it instead (ingest writes a file at a time, inside its own write)."""
        import pyarrow as pa

        ident(name)
        frame = score_table(name, uids, values)
        with self.transaction():
            if frame.num_rows or replace:
                parts.write_part(self, "scores", name, frame, run_id=run_id, replace=replace)
            self._catalog_score(name, run_id, kind, model, random_weights, simulated, description, replace=replace)

    def register_scores(self, name: str, staged: list[tuple[str, int]], *, run_id: int, kind: str,
                        model: str | None = None, random_weights: bool = False, simulated: bool = False,
                        description: str = "") -> None:
        """Replace the score ``name`` with its staged part files (parts.stage_part), in one transaction."""
        with self.transaction():
            parts.register_parts(self, "scores", name, staged, run_id=run_id, replace=True)
            self._catalog_score(name, run_id, kind, model, random_weights, simulated, description, replace=True)

    def _catalog_score(self, name, run_id, kind, model, random_weights, simulated, description, *, replace: bool):
        self.cursor().execute(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO score_catalog VALUES "
                              "(?,?,?,?,?,?,?)", [name, run_id, kind, model, random_weights, simulated, description])

    def append_scores(self, name: str, uids: Sequence[str], values: np.ndarray, **catalog) -> None:
        """Add values of score ``name`` for new uids (``write_scores(..., replace=False)``)."""
        self.write_scores(name, uids, values, replace=False, **catalog)

    def score_names(self) -> list[str]:
        return [r[0] for r in self.cursor().execute("SELECT name FROM score_catalog ORDER BY name").fetchall()]

    def score_values(self, name: str) -> np.ndarray:
        """The stored values of one score (samples that have it; no order promised)."""
        return self.df("SELECT value FROM scores WHERE name = ?", [name])["value"].to_numpy()

    def score_histogram(self, name: str, bins: int = pool_columns.HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of a score's finite values in ``bins`` equal bins between its min and max (np.histogram
        of the score's pool-order column, kept beside it: nothing from the scores table)."""
        self.check_score(name)
        return pool_columns.score_histogram(self, name, bins)

    def score_catalog(self) -> pd.DataFrame:
        return self.df("SELECT * FROM score_catalog ORDER BY name")

    def check_score(self, name: str) -> str:
        names = self.score_names()
        if name not in names:
            raise StoreError(f"unknown score {name!r}; this store has: {', '.join(names) or 'none'}")
        return name

    def score_frame(self, names: Sequence[str]) -> pd.DataFrame:
        """uid plus one column per score (pivoted), for every sample; missing values are NaN."""
        cols = ["s.uid"]
        for n in names:
            self.check_score(n)
            cols.append(f"max(CASE WHEN sc.name = '{n}' THEN sc.value END) AS {ident(n)}")
        if not names:
            return self.df("SELECT uid FROM samples ORDER BY uid")
        name_list = ", ".join(f"'{n}'" for n in names)  # names are checked identifiers
        return self.df(
            f"SELECT {', '.join(cols)} FROM samples s LEFT JOIN scores sc "
            f"ON sc.uid = s.uid AND sc.name IN ({name_list}) GROUP BY s.uid ORDER BY s.uid")

    # ---- annotations ------------------------------------------------------------------------------
    def write_annotations(self, frame: pd.DataFrame, *, run_id: int, method: str,
                          descriptions: dict[str, str] | None = None, imputed: bool = True,
                          random_weights: bool = False) -> None:
        """Replace the attributes present in ``frame`` (uid, attribute, label, confidence, method)."""
        cols = ["uid", "attribute", "label", "confidence", "method"]
        staged = {a: [parts.stage_part(self.parts_dir(), "annotations", a, frame.loc[frame["attribute"] == a, cols],
                                       run_id=run_id)] for a in sorted(frame["attribute"].unique())}
        self.register_annotations(staged, run_id=run_id, method=method, descriptions=descriptions, imputed=imputed,
                                  random_weights=random_weights)

    def register_annotations(self, staged: dict[str, list[tuple[str, int]]], *, run_id: int, method: str,
                             descriptions: dict[str, str] | None = None, imputed: bool = True,
                             random_weights: bool = False) -> None:
        """Replace each attribute with its staged part files (parts.stage_part), in one transaction."""
        with self.transaction():
            cur = self.cursor()
            for a in sorted(staged):
                parts.register_parts(self, "annotations", a, staged[a], run_id=run_id, replace=True)
                cur.execute("INSERT OR REPLACE INTO attribute_catalog VALUES (?,?,?,?,?,?)",
                            [a, run_id, method, imputed, random_weights, (descriptions or {}).get(a, "")])

    def unknown_uids(self, uids: Sequence[str]) -> list[str]:
        """The given uids that are not samples of this store, in the given order."""
        found = self.existing_uids(uids)
        return [u for u in uids if u not in found]

    def annotated_uids(self, attribute: str) -> list[str]:
        return [r[0] for r in self.cursor().execute(
            "SELECT DISTINCT uid FROM annotations WHERE attribute = ? ORDER BY uid", [attribute]).fetchall()]

    def attribute_labels(self, attribute: str) -> list[str]:
        """The distinct labels an attribute has in this store."""
        return [r[0] for r in self.cursor().execute(
            "SELECT DISTINCT label FROM annotations WHERE attribute = ? ORDER BY label", [attribute]).fetchall()]

    def attributes(self) -> list[str]:
        return [r[0] for r in self.cursor().execute(
            "SELECT attribute FROM attribute_catalog ORDER BY attribute").fetchall()]

    def attribute_catalog(self) -> pd.DataFrame:
        return self.df("SELECT * FROM attribute_catalog ORDER BY attribute")

    # ---- preview columns -------------------------------------------------------------------------
    def group_columns(self) -> list[str]:
        """Every categorical column the dashboard can group by: sample columns then attributes."""
        return list(SAMPLE_GROUP_COLUMNS) + self.attributes()

    def score_and_groups(self, score: str, group: str) -> pd.DataFrame:
        """One row per sample: uid, score value (NaN if missing) and group label ('unknown' if none)."""
        self.check_score(score)
        gexpr, join, params = self._group_sql(group)
        params = params + [score]
        return self.df(
            f"SELECT s.uid, sc.value AS score, {gexpr} AS grp FROM samples s {join} "
            f"LEFT JOIN scores sc ON sc.uid = s.uid AND sc.name = ? ORDER BY s.uid", params)

    def _group_sql(self, group: str) -> tuple[str, str, list]:
        """(label expression, join, params) of one group column over ``samples s``: 'unknown' where there is no
        label; an attribute's most confident label when an annotator wrote several."""
        if group in SAMPLE_GROUP_COLUMNS:
            return f"coalesce(CAST(s.{ident(group)} AS VARCHAR), 'unknown')", "", []
        if group in self.attributes():
            return ("coalesce(a.label, 'unknown')",
                    "LEFT JOIN (SELECT uid, arg_max(label, confidence) AS label FROM annotations WHERE attribute = ? "
                    "GROUP BY uid) a ON a.uid = s.uid", [group])
        raise StoreError(f"unknown attribute or group column {group!r}; this store has: "
                         f"{', '.join(self.group_columns())}")

    def score_group_arrays(self, score: str | None, group: str) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(values, codes, labels) of every sample in uid order: the score's value (float64, NaN if missing; None
        when ``score`` is None), the group code and the sorted labels ('unknown' where there is none). Read from
        the pool-order columns (audit/store/columns.py): read-only, memory-mapped, no Python object per sample."""
        codes, labels = pool_columns.group_codes(self, group)
        values = None if score is None else pool_columns.score_values(self, score)
        return values, codes, labels

    def score_array(self, name: str) -> np.ndarray:
        """float64 value of one score for every sample in uid order (NaN where missing). Read-only."""
        return pool_columns.score_values(self, name)

    def score_order(self, name: str) -> np.ndarray:
        """Rows (uid order) of the score's finite values, value descending, equal values in row order."""
        return pool_columns.score_order(self, name)

    def group_examples(self, score: str, group: str, per_group: int, *, label: str | None = None,
                       tau: float | None = None, kept: bool = True, seed: int = 0) -> pd.DataFrame:
        """uid, value, grp, row (the position in pool order): a seeded uniform draw of up to ``per_group`` scored
        samples of each group, in random order; with ``label``/``tau`` only that group's samples on one side of τ
        (kept: value ≥ τ). From the pool-order columns, then the drawn uids by position: no join over the pool."""
        values = self.score_array(score)
        codes, labels = pool_columns.group_codes(self, group)
        rng = np.random.default_rng(seed)
        finite = ~np.isnan(values)
        if label is not None:
            hit = np.flatnonzero(labels == label)
            if not len(hit):
                return pd.DataFrame({"uid": [], "value": [], "grp": []})
            side = (values >= float(tau)) if kept else (values < float(tau))
            rows = np.flatnonzero((np.asarray(codes) == hit[0]) & finite & side)
            rows = rows[rng.permutation(len(rows))[:int(per_group)]]
        else:
            # the scored rows grouped (a radix sort of the small codes, pool order within a group), then up to
            # per_group of each group drawn without replacement in random order: O(N) once, not a permutation and
            # a gather of the whole pool (1.7 s of the first render at 12.8M rows)
            rows = np.flatnonzero(finite)
            grp = np.asarray(codes)[rows]
            by = np.argsort(grp, kind="stable")
            counts = np.bincount(grp, minlength=len(labels))
            start = np.concatenate([[0], np.cumsum(counts)[:-1]])
            take = [by[a + rng.choice(c, size=min(c, int(per_group)), replace=False)] for a, c in zip(start, counts)
                    if c]
            rows = rows[np.concatenate(take)] if take else rows[:0]
        rows = rows.astype(np.int64)
        return pd.DataFrame({"uid": self.uids_at(rows), "value": np.asarray(values)[rows],
                             "grp": np.asarray(labels, dtype=object)[np.asarray(codes)[rows]], "row": rows})

    def uids_at(self, rows: Sequence[int]) -> list[str]:
        """The uids at these row positions of ``samples ORDER BY uid`` (the order of every per-sample array)."""
        import pyarrow as pa

        return pool_columns.uids(self).take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def non_hex_uid_rows(self) -> np.ndarray:
        """Row positions (``samples ORDER BY uid``) of uids that are not 32 hex digits."""
        import pyarrow.compute as pc

        ok = pc.match_substring_regex(pool_columns.uids(self), "^[0-9a-fA-F]{32}$")
        return np.flatnonzero(~ok.to_numpy(zero_copy_only=False)).astype(np.int64)

    def uid_row(self, uid: str) -> int | None:
        """The row position of ``uid`` in ``samples ORDER BY uid``; None if there is no such sample."""
        return pool_columns.uid_positions(self, [uid])[0]

    def overview(self) -> dict:
        return {
            "samples": self.count("samples"),
            "rejects": self.count("rejects"),
            "simulated": int(self.scalar("SELECT count(*) FROM samples WHERE simulated") or 0),
            "scores": len(self.score_names()),
            "models": len(self.models()),
            "attributes": len(self.attributes()),
        }


@dataclass
class _DetachedStore(Store):
    wait_s: float = 60.0
    memory_limit: str | None = None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        # a connection of its own per query: the file is released as soon as the result is dropped
        con = connect(self.path, read_only=True, wait_s=self.wait_s)
        self._configure(con, self.memory_limit)
        return con

    def close(self) -> None:
        pass


@contextlib.contextmanager
def failed_run_guard(store_path: str, run_id: int) -> Iterator[None]:
    """Mark the run 'failed' (with the error) if the block raises, so no run is left 'running' by an error."""
    try:
        yield
    except Exception as exc:
        with contextlib.suppress(Exception), Store.writer(store_path) as st:
            st.end_run(run_id, status="failed", note=f"{type(exc).__name__}: {exc}"[:500])
        raise


def param_key(params: dict) -> str:
    """Stable key of a parameter dict, used to make re-runs with the same parameters a no-op."""
    import hashlib

    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def snapshot(path: str | os.PathLike, dest_dir: str | os.PathLike, *, wait_s: float = 30.0) -> Path:
    """Copy the store to ``dest_dir`` while holding a read lock, so the copy is consistent.

    The dashboard reads the copy, never the live file, so a CLI stage can write meanwhile. The file holds the
    catalogue, not the rows (those are immutable Parquet parts): the copy costs the same at 10k and 12.8M rows, and
    ``<copy>.home`` names the live store whose parts and vectors it reads. The copy's name carries the source's
    mtime; an existing copy of the same version is reused.
    """
    src = Path(path)
    if not src.exists():
        raise StoreError(f"store not found: {src} (build one with `python -m audit demo`)")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    con = connect(src, read_only=True, wait_s=wait_s)  # blocks writers while we copy
    try:
        stamp = src.stat().st_mtime_ns
        dest = dest_dir / f"{src.stem}-{stamp}.duckdb"
        if not dest.exists():
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(src, tmp)
            wal = Path(str(src) + ".wal")
            if wal.exists():
                shutil.copyfile(wal, Path(str(tmp) + ".wal"))
                os.replace(Path(str(tmp) + ".wal"), Path(str(dest) + ".wal"))
            Path(str(dest) + ".home").write_text(str(src.resolve()))   # before the copy appears: readers need it
            os.replace(tmp, dest)
            for old in dest_dir.glob(f"{src.stem}-*.duckdb"):
                if old != dest:
                    with contextlib.suppress(OSError):
                        old.unlink()
                        Path(str(old) + ".wal").unlink(missing_ok=True)
                        Path(str(old) + ".home").unlink(missing_ok=True)
    finally:
        con.close()
    return dest


def copy_store(src: str | os.PathLike, dst: str | os.PathLike, *, wait_s: float = 30.0) -> Path:
    """A whole store (the DuckDB file, its parts and its vectors) copied to ``dst`` under a read lock, so the copy
    is consistent; the copy is a store of its own (its views name parts relative to its own folder)."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise StoreError(f"store not found: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    con = connect(src, read_only=True, wait_s=wait_s)
    try:
        shutil.copyfile(src, dst)
        if Path(str(src) + ".wal").exists():
            shutil.copyfile(Path(str(src) + ".wal"), Path(str(dst) + ".wal"))
        for folder in (vectors_dir, parts.parts_dir):
            if folder(src).is_dir():
                shutil.copytree(folder(src), folder(dst), dirs_exist_ok=True)
    finally:
        con.close()
    return dst


def prune_orphan_snapshots(root: str | os.PathLike, keep: str | os.PathLike | None = None) -> int:
    """Remove the snapshot folders under ``root`` whose live stores are all gone; returns how many.

    Each folder holds the copies of one live store (snapshot()), each copy beside a ``.home`` file naming it. A
    copy whose live store was deleted can never be read again (its parts and vectors went with the store), yet
    without this every store a user or a test suite ever opened would leave a folder behind in the temp dir.
    A folder with no ``.home`` yet (a copy being made) and the folder ``keep`` are left alone.
    """
    removed = 0
    keep = Path(keep).resolve() if keep is not None else None
    for folder in Path(root).glob("*"):
        if not folder.is_dir() or (keep is not None and folder.resolve() == keep):
            continue
        homes = [_snapshot_home(str(side.with_suffix(""))) for side in folder.glob("*.home")]   # <copy>.home
        if not homes or any(h is None or h.exists() for h in homes):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += not folder.exists()
    return removed


def _snapshot_home(path: str) -> Path | None:
    """The live store a snapshot copies (snapshot() writes ``<copy>.home``), else None."""
    side = Path(path + ".home")
    try:
        return Path(side.read_text().strip())
    except OSError:
        return None


def store_version(path: str | os.PathLike) -> int:
    """The version a snapshot is taken of (the file's mtime in ns); 0 if missing."""
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0


def _uid_table(uids: Iterable[str]):
    """An Arrow table of one string column ``uid`` to register as a probe: from a Series or an Arrow array without
    a Python loop (iterating pandas' Arrow-backed strings costs ~1 µs a value), from anything else as a list."""
    import pyarrow as pa

    if isinstance(uids, pd.Series):
        arr = pa.Array.from_pandas(uids)
    elif isinstance(uids, (pa.Array, pa.ChunkedArray)):
        arr = uids
    else:
        arr = pa.array(list(uids), type=pa.string())
    return pa.table({"uid": arr.cast(pa.string())})


def score_table(name: str, uids, values: np.ndarray):
    """The Arrow table of one score's part: uid, name (dictionary-encoded: no list of N strings), value."""
    import pyarrow as pa

    uid_arr = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(uids), type=pa.string())
    name_col = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(uid_arr), dtype=np.int32)),
                                              pa.array([name], type=pa.string()))
    return pa.table({"uid": uid_arr, "name": name_col, "value": pa.array(np.asarray(values, dtype=np.float64))})
