"""Row-local stages streamed over the samples' Parquet parts: each part read a batch at a time, the batch's
results staged as part files of the output table (unregistered), several parts at once in worker processes.

A plug-in whose result for a sample depends on that sample's own columns alone (the caption and domain
annotators, the basic score) never needs the pool in memory: ``run_over_samples`` hands ``fn(payload, frame)``
one batch of ``uid`` plus the columns it asked for and stages what it returns; the caller registers the staged
parts in one short transaction (``parts.register_parts``), so a killed stage leaves only orphans, which
``parts.collect_garbage`` removes. ``fn`` must be a module-level function (it is sent to spawned workers); kill points are its own.

``run_batch`` is the one step both engines run per batch (this module's processes, and the Ray engine's actors in
audit/engine/ray_data.py): call ``fn``, stage its outputs; a batch that raises is split in halves down to single
rows, so a sample the plug-in cannot handle becomes a reject ``(uid, message)`` and the others still go through.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from audit.store import parts

BATCH_ROWS = 200_000
PARALLEL_MIN_ROWS = 400_000    # below this, one process (starting workers costs more than it saves)

# fn(payload, frame) -> ({key: frame of the output table's columns}, info); info is returned per batch
BatchFn = Callable[[Any, Any], tuple[dict, Any]]
# what one batch (or file) yields: (staged parts per key, infos, rows read, rejects [(uid, message)])
Staged = tuple[dict[str, list[tuple[str, int]]], list, int, list[tuple[str, str]]]


def run_batch(fn: BatchFn, payload, frame, root, table: str, run_id: int) -> Staged:
    """``fn`` over one batch, its outputs staged as parts of ``table``; rows whose computation raises are rejects."""
    staged: dict[str, list[tuple[str, int]]] = {}
    infos: list = []
    rejects: list[tuple[str, str]] = []
    pending = [frame]
    while pending:
        sub = pending.pop()
        try:
            outputs, info = fn(payload, sub)
        except Exception as exc:   # noqa: BLE001 (any failure of a plug-in on its input is that input's reject)
            if len(sub) <= 1:
                rejects += [(str(u), f"{type(exc).__name__}: {exc}") for u in sub["uid"]]
            else:
                half = len(sub) // 2
                pending += [sub.iloc[half:], sub.iloc[:half]]
            continue
        for key, out in outputs.items():
            staged.setdefault(key, []).append(parts.stage_part(root, table, key, out, run_id=run_id))
        infos.append(info)
    return staged, infos, len(frame), rejects


def merge(results) -> Staged:
    """One Staged from many (batches or files)."""
    staged: dict[str, list[tuple[str, int]]] = {}
    infos, rows, rejects = [], 0, []
    for st_files, inf, n, rej in results:
        for k, v in st_files.items():
            staged.setdefault(k, []).extend(v)
        infos.extend(inf)
        rows += n
        rejects.extend(rej)
    return staged, infos, rows, rejects


def _one_file(task: tuple) -> Staged:
    import pyarrow.parquet as pq

    fn, payload, path, root, table, columns, run_id, batch_rows = task
    return merge(run_batch(fn, payload, batch.to_pandas(), root, table, run_id)
                 for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["uid", *columns]))


def check_rows(rows: int, n_samples: int) -> None:
    if rows != n_samples:
        raise RuntimeError(f"read {rows:,} rows of {n_samples:,} samples (a part changed while the stage ran); "
                           "run it again")


def run_over_samples(store, fn: BatchFn, payload, *, columns, table: str, run_id: int,
                     batch_rows: int | None = None) -> Staged:
    """Run ``fn`` over every sample (``store``: a read-only Store of a parts-layout store) and stage its outputs
    as parts of ``table``. Returns (staged parts per key, the infos of every batch, samples read, rejects). Raises
    when the rows read are not the store's samples (a part changed meanwhile)."""
    batch_rows = batch_rows or BATCH_ROWS
    files = parts.part_files(store, "samples")
    root, n_samples = store.parts_dir(), int(store.count("samples"))
    tasks = [(fn, payload, f, root, table, tuple(columns), run_id, batch_rows) for f in files]
    workers = min(len(tasks), os.cpu_count() or 1)
    if workers > 1 and n_samples >= PARALLEL_MIN_ROWS:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_one_file, tasks))
    else:
        results = [_one_file(t) for t in tasks]
    out = merge(results)
    check_rows(out[2], n_samples)
    return out
