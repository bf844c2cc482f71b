"""The only vector file I/O: float16 Parquet parts beside the DuckDB file, written atomically, read in chunks.

Layout: ``<store>.vectors/<model>/part-<name>.parquet`` with columns uid, img, txt. Each vector is one
``fixed_size_binary(2·d)`` value: the d float16 numbers, little-endian, back to back (field metadata
``audit.encoding = float16-le``). Parquet stores a list of float16 with a repetition level per number, which
pyarrow decodes value by value: a 100k-row part of two 768-d columns reads in 1.21 s as a list and 0.16 s as
binary, and writes in 3.2 s vs 0.57 s (bench/bench_vectors.py, 2-core machine). Parts written before this layout
(FixedSizeList<float16>) are still read, and a writer rewrites them once (``migrate_parts``).

Readers never hold the whole pool: ``iter_vectors`` yields one part at a time. The ``embeddings`` SQL view
decodes the binary back to FLOAT[] with the ``audit_half_vector`` macro (schema.py): fine for a look at a
few rows, a few thousand rows/s; use ``iter_vectors`` for bulk reads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from audit.store.parts import sql_files
from audit.store.schema import StoreError
from audit.store.store import Store


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TORCH_MIN_ROWS = 100_000   # row_norms / normalised_half: numpy below this many rows, torch above


def row_norms(x: np.ndarray, chunk: int = 8_192) -> np.ndarray:
    """(n,) float32 L2 norm of each row of a float16/float32 matrix, in chunks (no full-size float32 copy), through
    torch (F16C conversion, both cores): the ingest check (NaN/inf/zero) and the normalisation share it. Chunks of
    8,192 rows keep the float32 copy in cache: 0.04 s for a 250k × 768 float16 array here, 0.26 s in chunks of
    65,536 (a fresh 200 MB buffer per chunk), 0.4 s through numpy."""
    out = np.empty(len(x), dtype=np.float32)
    if len(x) < TORCH_MIN_ROWS:   # importing torch (~3 s) costs more than it saves on a small input
        for s in range(0, len(x), chunk):
            c = np.asarray(x[s:s + chunk], dtype=np.float32)
            out[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", c, c))
        return out
    import torch

    for s in range(0, len(x), chunk):
        t = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk])).float()
        out[s:s + chunk] = torch.linalg.vector_norm(t, dim=1).numpy()
    return out


UNIT_TOL = 2.0 ** -11   # a float16 row whose norm is this close to 1 is already unit (see normalised_half)


def normalised_half(x: np.ndarray, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """x[rows] / norms[rows] as float16: what l2_normalise then the float16 write do, in one pass (the norms are
    the ones ingest checked).

    A float16 row already of unit norm within 2^-11 (DataComp's npz rows are: 1 ± 1e-5) is kept as given: dividing
    it would move each number by less than one float16 step (2^-11 to 2^-10 of its size), so the stored row
    differs from divide-then-round by at most one step in a number (99.95% of the numbers are bit-identical on
    the simulated pool) and ingest skips a float32 round trip of every vector. Other rows are divided."""
    n = norms[rows]
    if x.dtype == np.float16:
        off = np.flatnonzero(~(np.abs(n - 1) <= UNIT_TOL))   # NaN norms too (callers reject those rows)
        out = gather_rows(x, rows, copy=bool(len(off)))
        if len(off):
            out[off] = _divided_half(out[off], n[off])
        return out
    return _divided_half(x[rows], n)


def gather_rows(x: np.ndarray, rows: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """x[rows] for sorted ``rows``, copied run by run of consecutive rows: a slice copies at memory speed where
    fancy indexing goes row by row (0.06 s vs 0.31 s for 250k × 768 float16 rows of a memmap here). With
    ``copy=False`` a single run comes back as a read-only view (a memmap's pages, no copy)."""
    if len(rows) == 0:
        return np.empty((0,) + x.shape[1:], x.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if len(breaks) > len(rows) // 64:   # scattered rows: runs too short to pay
        out = x[rows]
        return out.view(np.ndarray) if isinstance(out, np.memmap) else out
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    if len(starts) == 1 and not copy:
        view = x[rows[0]:rows[0] + len(rows)]
        return view.view(np.ndarray) if isinstance(view, np.memmap) else view
    out = np.empty((len(rows),) + x.shape[1:], x.dtype)
    for a, b in zip(starts.tolist(), ends.tolist()):
        out[a:b] = x[rows[a]:rows[a] + (b - a)]
    return out


def _divided_half(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    if len(x) < TORCH_MIN_ROWS:
        return (np.asarray(x, dtype=np.float32) / n[:, None]).astype(np.float16)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t /= torch.from_numpy(np.ascontiguousarray(n)).unsqueeze(1)
    return t.half().numpy()


def write_vectors(store: Store, model: str, name: str, uids, img: np.ndarray, txt: np.ndarray) -> Path:
    """Write one float16 Parquet part atomically (tmp file, then rename). ``uids``: a list or an Arrow string array."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = store.model_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    uid_arr = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(uids, type=pa.string())
    table = pa.table({"uid": uid_arr, "img": half_binary(img), "txt": half_binary(txt)})
    table = table.cast(_schema(img.shape[1]))
    dest = folder / f"part-{name}.parquet"
    write_half_table(table, dest)
    return dest


ENCODING = b"float16-le"


def _schema(d: int):
    import pyarrow as pa

    meta = {b"audit.encoding": ENCODING, b"audit.dim": str(d).encode()}
    return pa.schema([pa.field("uid", pa.string()), pa.field("img", pa.binary(2 * d), metadata=meta),
                      pa.field("txt", pa.binary(2 * d), metadata=meta)])


def write_half_table(table, dest: Path) -> None:
    """A table of uids and float16 vector columns written to ``dest`` whole (a temporary name, then renamed)."""
    import pyarrow.parquet as pq

    tmp = dest.with_name(".tmp-" + dest.name.removeprefix("part-"))
    # float16 vectors barely compress; dictionary pages and statistics triple the write time
    pq.write_table(table, tmp, compression="none", use_dictionary=["uid"], write_statistics=["uid"])
    os.replace(tmp, dest)


def half_binary(x: np.ndarray):
    """(n, d) numbers -> a fixed_size_binary(2·d) Arrow array of little-endian float16 rows (no copy of the
    float16 buffer)."""
    import pyarrow as pa

    h = np.ascontiguousarray(x, dtype="<f2")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * h.shape[1]), len(h), [None, pa.py_buffer(h)])


def half_to_float32(h: np.ndarray) -> np.ndarray:
    """float16 -> float32. torch's conversion uses the CPU's F16C instructions: about 2× numpy's astype here."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        return h.astype(np.float32)
    import warnings

    h = np.ascontiguousarray(h)
    with warnings.catch_warnings():   # a part's read-only buffer: torch only reads it (.float() makes a new tensor)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(h).float().numpy()



def parts(store: Store, model: str) -> list[Path]:
    store.model_info(model)  # raises a clear error for an unknown model
    return sorted(store.model_dir(model).glob("part-*.parquet"))


def half_matrix(column) -> np.ndarray:
    """A vector column (binary float16 rows, or the older FixedSizeList<float16>) -> (n, d) float16."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column   # a table's or a batch's
    if pa.types.is_fixed_size_binary(arr.type):
        d = arr.type.byte_width // 2
        if arr.null_count:
            raise StoreError("a vector part holds nulls; rebuild it with `embed --force`")
        # a slice of a column (a batch of a part) starts arr.offset rows into the buffer
        return np.frombuffer(arr.buffers()[1], dtype="<f2", count=len(arr) * d,
                             offset=arr.offset * 2 * d).reshape(len(arr), d)
    d = arr.type.list_size
    return arr.values.to_numpy(zero_copy_only=False).astype("<f2", copy=False).reshape(-1, d)


def _to_matrix(column) -> np.ndarray:
    return half_to_float32(half_matrix(column))


def migrate_parts(folder: Path) -> int:
    """Rewrite parts of the older FixedSizeList layout in the binary one (same values; each file atomically
    replaced, so a kill leaves every part readable). Returns how many were rewritten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = 0
    for p in sorted(folder.glob("part-*.parquet")):
        if not pa.types.is_fixed_size_list(pq.read_schema(p).field("img").type):
            continue
        t = pq.read_table(p)
        img, txt = half_matrix(t.column("img")), half_matrix(t.column("txt"))
        table = pa.table({"uid": t.column("uid"), "img": half_binary(img), "txt": half_binary(txt)})
        write_half_table(table.cast(_schema(img.shape[1])), p)
        done += 1
    return done


def iter_vectors(store: Store, model: str, *, columns=("img", "txt")) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
    """Yield (uids, {"img": (n, d) float32, "txt": (n, d) float32}) one Parquet part at a time."""
    import pyarrow.parquet as pq

    for p in parts(store, model):
        table = pq.read_table(p, columns=["uid", *columns])
        yield table.column("uid").to_pylist(), {c: _to_matrix(table.column(c)) for c in columns}


def embedded_uids(folder: Path) -> set[str]:
    """uids already present in a model folder's finished parts (used to resume `embed`)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for p in sorted(folder.glob("part-*.parquet")):
        done.update(pq.read_table(p, columns=["uid"]).column("uid").to_pylist())
    return done


def load_matrix(store: Store, model: str, uids: list[str] | None = None, column: str = "img") -> tuple[list[str], np.ndarray]:
    """All (or the given) uids' vectors of one column as a dense float32 matrix (for small stores)."""
    want = None if uids is None else set(uids)
    got_u, got_x = [], []
    for u, cols in iter_vectors(store, model, columns=(column,)):
        x = cols[column]
        if want is not None:
            m = np.fromiter((v in want for v in u), dtype=bool, count=len(u))
            u = [v for v, k in zip(u, m) if k]
            x = x[m]
        got_u += u
        got_x.append(x)
    dim = int(store.model_info(model)["dim"])
    return got_u, (np.concatenate(got_x) if got_x else np.zeros((0, dim), np.float32))


def iter_embedding_rows(store: Store, model: str, column: str = "img",
                        batch_rows: int = 50_000) -> Iterator[tuple[list[str], np.ndarray]]:
    """(uids, float32 (n, d)) of one model's vectors, a part at a time, read from the vector files where the
    store is now (a moved store, or a dashboard snapshot whose vectors stay beside the live store)."""
    if column not in ("img", "txt"):
        raise StoreError(f"unknown vector column {column!r}")
    for uids, cols in iter_vectors(store, model, columns=(column,)):
        if uids:
            yield uids, cols[column]


# ---- what a vector-local score needs to know about the vectors it streams over (scores/base.py) ----------------
def vector_coverage(store: Store, model: str, files: list[str]) -> tuple[int, frozenset[str]]:
    """(vector rows in ``files``, the uids among them that are not samples). Raises for duplicate uids."""
    if not files:
        return 0, frozenset()
    vec = sql_files(files)
    n_vec, n_uids = store.cursor().execute(f"SELECT count(*), count(DISTINCT uid) FROM read_parquet({vec})").fetchone()
    if n_vec != n_uids:
        raise StoreError(f"the vectors of {model} hold {n_vec - n_uids:,} duplicate uids; rebuild them with "
                         f"`python -m audit embed --model {model} --force`")
    foreign = store.cursor().execute(f"SELECT uid FROM read_parquet({vec}) ANTI JOIN samples USING (uid)").fetchall()
    return int(n_vec), frozenset(r[0] for r in foreign)


def uids_with_value_one(store: Store, vector_file, value_files: list[str]):
    """The uids (an Arrow string array) of one vector part whose value in the staged score parts ``value_files`` is
    1 (e.g. the samples that pass image-based's caption rule): a per-part set, never the pool's."""
    import pyarrow as pa

    if not value_files:
        return pa.array([], pa.string())
    sql = (f"SELECT v.uid FROM read_parquet({sql_files([str(vector_file)])}) v SEMI JOIN "
           f"(SELECT uid FROM read_parquet({sql_files(value_files)}) WHERE value = 1) c USING (uid)")
    return store.cursor().sql(sql).to_arrow_table().column("uid").combine_chunks().cast(pa.string())


def samples_without_vectors(store: Store, files: list[str], batch_rows: int) -> Iterator:
    """The uids (Arrow string arrays of at most ``batch_rows``) of samples with no row in ``files``."""
    import pyarrow as pa

    sql = ("SELECT uid FROM samples" if not files else
           f"SELECT uid FROM samples ANTI JOIN (SELECT uid FROM read_parquet({sql_files(files)})) v USING (uid)")
    cur = store.cursor()      # held while the reader streams
    for batch in cur.sql(sql).to_arrow_reader(batch_rows):
        yield batch.column("uid").cast(pa.string())


def all_scored_simulated(store: Store, files: list) -> bool:
    """Whether every sample with a non-NaN value in these score part files is simulated (and there is one)."""
    if not files:
        return False
    return bool(store.scalar(
        f"SELECT count(*) > 0 AND bool_and(coalesce(s.simulated, false)) FROM read_parquet({sql_files(files)}) p "
        "JOIN samples s USING (uid) WHERE NOT isnan(p.value)"))
