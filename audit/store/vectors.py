"""The only vector file I/O: float16 Parquet parts beside the DuckDB file, written atomically, read in chunks.

Layout: ``<store>.vectors/<model>/part-<name>.parquet`` with columns uid, img, txt (FixedSizeList<float16>).
Readers never hold the whole pool: ``iter_vectors`` yields one part at a time, ``iter_embedding_rows`` streams the
``embeddings`` view.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from audit.store.schema import StoreError
from audit.store.store import Store


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_vectors(store: Store, model: str, name: str, uids: list[str], img: np.ndarray, txt: np.ndarray) -> Path:
    """Write one float16 Parquet part atomically (tmp file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = store.model_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    d = img.shape[1]

    def col(x: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, dtype=np.float16).ravel()), d)

    table = pa.table({"uid": pa.array(uids, type=pa.string()), "img": col(img), "txt": col(txt)})
    dest = folder / f"part-{name}.parquet"
    tmp = folder / f".tmp-{name}.parquet"
    # float16 vectors barely compress; dictionary pages and statistics triple the write time
    pq.write_table(table, tmp, compression="none", use_dictionary=["uid"], write_statistics=["uid"])
    os.replace(tmp, dest)
    return dest



def parts(store: Store, model: str) -> list[Path]:
    store.model_info(model)  # raises a clear error for an unknown model
    return sorted(store.model_dir(model).glob("part-*.parquet"))


def _to_matrix(column) -> np.ndarray:
    arr = column.combine_chunks()
    d = arr.type.list_size
    return arr.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32)


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
