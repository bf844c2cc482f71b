"""Reading stored embedding vectors in bounded chunks (never the whole pool at once)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from audit.store import Store


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
