"""Row-local stages streamed over the samples' Parquet parts: each part read a batch at a time, the batch's
results staged as part files of the output table (unregistered), several parts at once in worker processes.

A plug-in whose result for a sample depends on that sample's own columns alone (the caption and domain
annotators, the basic score) never needs the pool in memory: ``run_over_samples`` hands ``fn(payload, frame)``
one batch of ``uid`` plus the columns it asked for and stages what it returns; the caller registers the staged
parts in one short transaction (``parts.register_parts``), so a killed stage leaves only orphans, which
``parts.collect_garbage`` removes. ``fn`` must be a module-level function (it is sent to spawned workers); kill points are its own.
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


def _one_file(task: tuple) -> tuple[dict[str, list[tuple[str, int]]], list, int]:
    import pyarrow.parquet as pq

    fn, payload, path, root, table, columns, run_id, batch_rows = task
    staged: dict[str, list[tuple[str, int]]] = {}
    infos, n = [], 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["uid", *columns]):
        frame = batch.to_pandas()
        outputs, info = fn(payload, frame)
        for key, sub in outputs.items():
            staged.setdefault(key, []).append(parts.stage_part(root, table, key, sub, run_id=run_id))
        infos.append(info)
        n += len(frame)
    return staged, infos, n


def run_over_samples(store, fn: BatchFn, payload, *, columns, table: str, run_id: int,
                     batch_rows: int | None = None) -> tuple[dict[str, list[tuple[str, int]]], list, int]:
    """Run ``fn`` over every sample (``store``: a read-only Store of a parts-layout store) and stage its outputs
    as parts of ``table``. Returns (staged parts per key, the infos of every batch, samples read). Raises when
    the rows read are not the store's samples (a part changed meanwhile)."""
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
    staged: dict[str, list[tuple[str, int]]] = {}
    infos, rows = [], 0
    for st_files, inf, n in results:
        for k, v in st_files.items():
            staged.setdefault(k, []).extend(v)
        infos.extend(inf)
        rows += n
    if rows != n_samples:
        raise RuntimeError(f"read {rows:,} rows of {n_samples:,} samples (a part changed while the stage ran); "
                           "run it again")
    return staged, infos, rows
