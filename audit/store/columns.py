"""Pool-order columns: one array per score and per group column, in the order of ``samples ORDER BY uid``, kept
beside the parts so that no page joins the pool to draw a slider.

A 12.8M-row pool's Filter preview needs one score's values and one group's code for every sample, aligned. Joined
in SQL (samples ⋈ scores ⋈ most-confident annotation, sorted by uid) that is minutes on two cores; read from these
files it is a fraction of a second. They are written when a stage writes the table they derive from (the writer's
session ends with ``precompute``), and built on first use otherwise (older stores, a cache deleted)::

    <store>.parts/_columns/uids/<fp>/uids.arrow           every uid in pool order (Arrow IPC, memory-mapped)
    <store>.parts/_columns/locate/<fp>/files.json         the samples' part files (relative to the parts folder)
                                      part.npy, row.npy   per sample in pool order: the index of its part in
                                                          files.json and its row in that part (``samples_at``)
    <store>.parts/_columns/score/<name>/<fp>/values.npy   float64, NaN where the sample has no value
                                             order.npy    int32 rows of the finite values, value descending
                                                          (stable: equal values keep their row order)
                                             hist80.npz   the Overview's histogram of the finite values (counts,
                                                          edges), so opening the dashboard reads 161 numbers a
                                                          score, not the column
    <store>.parts/_columns/group/<name>/<fp>/codes.npy    uint8/uint16 code per sample; labels.json sorted,
                                                          'unknown' where there is no label

``<fp>`` is a digest of the part files the column derives from (the samples' parts, plus the score's or the
attribute's), so a column is never stale: a new ingest or a recomputed score names new parts and so a new folder.
Folders are written under a temporary name and renamed (a killed build leaves nothing a reader picks up);
``collect_garbage`` removes folders of a digest no longer current after the retired-part grace period.

Stores of the older one-file layout have no part list to digest: their columns are computed each time, not kept.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from audit.store import parts
from audit.store.schema import SAMPLE_GROUP_COLUMNS, slug

if TYPE_CHECKING:  # pragma: no cover
    from audit.store.store import Store

ROOT = "_columns"


# ---- where a column lives -------------------------------------------------------------------------------------
def _part_files(store: "Store", table: str, key: str | None = None) -> list[str]:
    sql, params = "SELECT file FROM parts WHERE table_name = ?", [table]
    if key is not None:
        sql, params = sql + " AND key = ?", params + [key]
    return sorted(r[0] for r in store.cursor().execute(sql, params).fetchall())


def fingerprint(store: "Store", kind: str, name: str = "") -> str | None:
    """Digest of the part files a column derives from; None for a store whose rows are not in parts."""
    if not parts.is_parts_table(store, "samples"):
        return None
    files = _part_files(store, "samples")
    if kind == "score":
        if not parts.is_parts_table(store, "scores"):
            return None
        files += ["|scores|"] + _part_files(store, "scores", name)
    elif kind == "group" and name not in SAMPLE_GROUP_COLUMNS:
        if not parts.is_parts_table(store, "annotations"):
            return None
        files += ["|annotations|"] + _part_files(store, "annotations", name)
    elif kind == "group":
        files += [f"|column|{name}"]
    return hashlib.sha256("\n".join([kind, name, *files]).encode()).hexdigest()[:20]


def _folder(store: "Store", kind: str, name: str, fp: str) -> Path:
    base = store.parts_dir() / ROOT / kind
    return (base / fp) if kind in ("uids", "locate") else (base / slug(name) / fp)


def _publish(dest: Path, write) -> Path:
    """Run ``write(tmp_folder)`` and rename the folder into place (atomic); a concurrent builder's copy wins."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:          # another process published the same digest first: same content
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _cached(store: "Store", kind: str, name: str, build, write, read):
    """The column from its folder; built, written and read back when missing (kept in memory when the parts folder
    cannot be written to, or the store has no part list)."""
    fp = fingerprint(store, kind, name)
    if fp is None:
        return build()
    folder = _folder(store, kind, name, fp)
    if not folder.is_dir():
        data = build()
        try:
            _publish(folder, lambda tmp: write(tmp, data))
        except OSError:
            return data
    return read(folder)


# ---- the columns ------------------------------------------------------------------------------------------------
def uids(store: "Store"):
    """Every uid in pool order, as an Arrow string array memory-mapped from its file (no Python str per row)."""
    import pyarrow as pa

    def build():
        tab = store.cursor().sql("SELECT uid FROM samples ORDER BY uid").to_arrow_table()
        return tab.column("uid").combine_chunks() if tab.num_rows else pa.array([], type=pa.string())

    def write(tmp: Path, arr) -> None:
        table = pa.table({"uid": arr})
        with pa.OSFile(str(tmp / "uids.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)

    def read(folder: Path):
        tab = pa.ipc.open_file(pa.memory_map(str(folder / "uids.arrow"), "r")).read_all()
        col = tab.column("uid")
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()

    return _cached(store, "uids", "", build, write, read)


def locate(store: "Store") -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """Where each sample of pool order is stored: (its part files relative to the parts folder, the index of each
    sample's part in that list, its row number in the part), or None for a store whose rows are not in parts.

    A page that shows a few samples reads them by row number from the parts that hold them
    (``Store.samples_at``) instead of joining their uids to the uid column of every part, which reads the whole
    pool's uids (~3 s at 12.8M rows, however few samples are wanted)."""
    if fingerprint(store, "locate") is None:
        return None

    def build():
        files = _part_files(store, "samples")
        if not files:
            return files, np.zeros(0, np.uint16), np.zeros(0, np.uint32)
        tab = store.cursor().sql(
            f"SELECT file_index AS p, file_row_number AS r FROM read_parquet({parts.sql_files(files)}, "
            "file_row_number = true) ORDER BY uid").to_arrow_table()
        kind = np.uint16 if len(files) <= np.iinfo(np.uint16).max + 1 else np.uint32
        return (files, tab.column("p").to_numpy().astype(kind),
                tab.column("r").to_numpy().astype(np.uint32))

    def write(tmp: Path, data) -> None:
        files, part, row = data
        (tmp / "files.json").write_text(json.dumps(files))
        np.save(tmp / "part.npy", part)
        np.save(tmp / "row.npy", row)

    def read(folder: Path):
        return (json.loads((folder / "files.json").read_text()), np.load(folder / "part.npy", mmap_mode="r"),
                np.load(folder / "row.npy", mmap_mode="r"))

    return _cached(store, "locate", "", build, write, read)


def uid_positions(store: "Store", wanted: Iterable[str]) -> list[int | None]:
    """Row position of each uid in pool order (None when absent): a binary search in the sorted uids."""
    arr = uids(store)
    n = len(arr)
    out = []
    for u in wanted:
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if arr[mid].as_py() < u:
                lo = mid + 1
            else:
                hi = mid
        out.append(lo if lo < n and arr[lo].as_py() == u else None)
    return out


def score_values(store: "Store", name: str) -> np.ndarray:
    """float64 value of the score for every sample in pool order (NaN where there is none). Read-only."""
    return _score(store, name)[0]


def score_order(store: "Store", name: str) -> np.ndarray:
    """int32 rows (pool order) of the score's finite values, value descending, equal values in row order."""
    return _score(store, name)[1]


def _score(store: "Store", name: str) -> tuple[np.ndarray, np.ndarray]:
    store.check_score(name)

    def build():
        tab = store.cursor().sql(
            "SELECT sc.value AS v FROM samples s LEFT JOIN scores sc ON sc.uid = s.uid AND sc.name = ? ORDER BY s.uid",
            params=[name]).to_arrow_table()
        values = tab.column("v").to_numpy().astype(np.float64) if tab.num_rows else np.zeros(0)
        return values, descending_order(values)

    def write(tmp: Path, data) -> None:
        np.save(tmp / "values.npy", data[0])
        np.save(tmp / "order.npy", data[1])
        _save_histogram(tmp / f"hist{HIST_BINS}.npz", *_histogram(data[0], HIST_BINS))

    def read(folder: Path):
        return np.load(folder / "values.npy", mmap_mode="r"), np.load(folder / "order.npy", mmap_mode="r")

    return _cached(store, "score", name, build, write, read)


HIST_BINS = 80   # the Overview's histograms: kept with the column when it is written


def score_histogram(store: "Store", name: str, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the score's finite values in ``bins`` equal bins between their min and max, as
    ``np.histogram``. Read from the column's folder where it was kept; otherwise computed from the column (one pass)
    and kept there for the next reader (added atomically; the folder's digest still names the same data). A kept
    histogram is read without opening the column."""
    fp = fingerprint(store, "score", name)
    path = _folder(store, "score", name, fp) / f"hist{bins}.npz" if fp is not None else None
    if path is not None and path.is_file():
        with np.load(path) as kept:
            return kept["counts"], kept["edges"]
    counts, edges = _histogram(score_values(store, name), bins)
    if path is not None and path.parent.is_dir():
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            _save_histogram(tmp, counts, edges)
            os.replace(tmp, path)
        except OSError:          # a read-only parts folder: computed each time, as for one-file stores
            with contextlib.suppress(OSError):
                tmp.unlink()
    return counts, edges


def _histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.zeros(0, dtype=np.int64), np.zeros(1)
    counts, edges = np.histogram(finite, bins=bins)
    return counts.astype(np.int64), edges


def _save_histogram(path: Path, counts: np.ndarray, edges: np.ndarray) -> None:
    with open(path, "wb") as f:       # a file object: np.savez would append .npz to a temporary name
        np.savez(f, counts=counts, edges=edges)


def descending_order(values: np.ndarray) -> np.ndarray:
    """Rows of the finite values, value descending; a stable sort, so equal values keep their row order."""
    finite = np.flatnonzero(~np.isnan(values))
    pos = np.argsort(-values[finite], kind="stable")
    return finite[pos].astype(np.int32 if len(values) < 2**31 else np.int64)


def group_codes(store: "Store", group: str) -> tuple[np.ndarray, np.ndarray]:
    """(code per sample in pool order, sorted labels) of a sample group column or an attribute; 'unknown' where a
    sample has no label, an attribute's most confident label where an annotator wrote several."""
    def build():
        import pyarrow.compute as pc

        gexpr, join, params = store._group_sql(group)
        tab = store.cursor().sql(f"SELECT {gexpr} AS g FROM samples s {join} ORDER BY s.uid",
                                 params=params).to_arrow_table()
        enc = pc.dictionary_encode(tab.column("g")).combine_chunks()
        dictionary = np.asarray(enc.dictionary.to_pylist(), dtype=object)
        order = np.argsort(dictionary.astype(str), kind="stable")          # labels sorted, codes remapped
        remap = np.empty(len(order), dtype=np.int64)
        remap[order] = np.arange(len(order))
        code_type = np.uint8 if len(order) <= 255 else (np.uint16 if len(order) <= 65535 else np.int32)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        codes = remap[idx].astype(code_type) if len(order) else np.zeros(len(idx), dtype=np.uint8)
        return codes, dictionary[order]

    def write(tmp: Path, data) -> None:
        np.save(tmp / "codes.npy", data[0])
        (tmp / "labels.json").write_text(json.dumps([str(x) for x in data[1]]))

    def read(folder: Path):
        labels = np.asarray(json.loads((folder / "labels.json").read_text()), dtype=object)
        return np.load(folder / "codes.npy", mmap_mode="r"), labels

    return _cached(store, "group", group, build, write, read)


# ---- written with the tables --------------------------------------------------------------------------------------
def precompute(store: "Store", touched: Iterable[tuple[str, str]], echo=None) -> list[str]:
    """Build the columns that derive from the touched (table, key) pairs of a writer's session: every column after
    a change to samples, else the score's or the attribute's own. Returns what was built."""
    touched = set(touched)
    if not touched or fingerprint(store, "uids") is None:
        return []
    todo: list[tuple[str, str]] = []
    if any(t == "samples" for t, _ in touched):
        todo = [("uids", ""), ("locate", "")] + [("score", n) for n in store.score_names()] + \
               [("group", g) for g in store.group_columns()]
    else:
        names = set(store.score_names())
        attrs = set(store.attributes())
        todo += [("score", k) for t, k in sorted(touched) if t == "scores" and k in names]
        todo += [("group", k) for t, k in sorted(touched) if t == "annotations" and k in attrs]
    built = []
    for kind, name in todo:
        fp = fingerprint(store, kind, name)
        if fp is None or _folder(store, kind, name, fp).is_dir():
            continue
        t = time.perf_counter()
        {"uids": lambda _: uids(store), "locate": lambda _: locate(store), "score": lambda n: _score(store, n),
         "group": lambda n: group_codes(store, n)}[kind](name)
        built.append(f"{kind} {name}".strip())
        if echo:
            echo(f"  pool-order column {kind} {name} in {time.perf_counter() - t:.1f} s".rstrip())
    return built


def refresh(store_path: str, *, scores: Iterable[str] = (), groups: Iterable[str] = (), samples: bool = False,
            echo=None) -> list[str]:
    """After a stage's commit: build the columns its writes changed (``samples``: all of them), reading through a
    detached store (no lock held between queries, so other stages write meanwhile; DuckDB spills past 1 GB)."""
    from audit.store.store import Store

    touched = {("samples", "")} if samples else set()
    touched |= {("scores", s) for s in scores} | {("annotations", g) for g in groups}
    with Store.detached(store_path, memory_limit="1GB") as st:
        return precompute(st, touched, echo=echo)


def collect_garbage(store: "Store", grace_s: float) -> int:
    """Remove column folders whose digest is no longer current, once older than ``grace_s`` (a dashboard may still
    read them), and temporary folders of a killed build. Returns the folders removed."""
    root = store.parts_dir() / ROOT
    if not root.is_dir() or fingerprint(store, "uids") is None:
        return 0
    names = {"score": set(store.score_names()), "group": set(store.group_columns())}
    current = {_folder(store, k, "", fingerprint(store, k)) for k in ("uids", "locate")}
    for kind, keys in names.items():
        current |= {_folder(store, kind, k, fingerprint(store, kind, k)) for k in keys}
    now, removed = time.time(), 0
    for folder in [*root.glob("uids/*"), *root.glob("locate/*"), *root.glob("score/*/*"), *root.glob("group/*/*")]:
        if folder in current or not folder.is_dir():
            continue
        if now - folder.stat().st_mtime > grace_s:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
                removed += 1
    return removed
