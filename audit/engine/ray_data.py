"""The Ray Data engine: a Ray dataset of the input's *slices* (``streamed.slices``: a part file's row groups in runs
of about --batch-rows rows; the samples' registered parts, or a model's vector parts), mapped by a callable class
(``_Slices``, one instance per Ray worker, so a plug-in's model loads once per worker) that reads its slice with
pyarrow and runs the same step as the local engine on each batch (``streamed.run_slice`` → ``run_batch``: the
plug-in, then its outputs staged as parts of the store's layout); the staged parts go back to the driver, which
registers them.

Why slices and not ``ray.data.read_parquet`` → ``map_batches``: on 2 CPUs the read tasks held a CPU beside the map
actors, and fractional read CPUs deadlocked the executor (Ray 2.60); the same 1M-row ``score basic`` took 12.0 s
from ``ray.init`` to the last result through read_parquet and 7.6 s through slices (docs/scale.md). A slice is
read by the worker that computes it, so no rows pass through the object store, and each batch holds the rows
the local engine's batch holds (same plug-in input on both engines).

Why the parts are written by ``stage_part`` inside the map step rather than by ``Dataset.write_parquet``: a part
must be sorted by uid (lookups prune row groups), typed by the table's schema, renamed into place atomically and
written without float statistics (DuckDB prunes NaN rows by pyarrow's min/max: audit/store/parts.py). The files
land in the store's parts folder, so the store (and every node) must be on a filesystem all of them reach.

A killed driver leaves staged files no catalogue names (removed later by ``parts.collect_garbage``) and the store
as it was; each finished slice's journal entry (audit/store/journal.py) lets the rerun compute only the rest; a
plug-in that raises on some rows makes those rows rejects, not a failed job (``run_batch``).
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

from audit.engine import Engine
from audit.killpoints import checkpoint
from audit.store.streamed import BATCH_ROWS, finish, pieces_to_run, run_piece

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # on PYTHONPATH of every worker (same path on every node)


class _Slices:
    """Ray Data callable class: one per worker; ``__call__`` runs the slices of one batch of the dataset (each a
    row ``i`` of the list of (slice, journal entry)) and returns their staging records."""

    def __init__(self, fn, payload, pieces: list, kw: dict):
        self.fn, self.payload, self.pieces, self.kw = fn, payload, pieces, kw

    def __call__(self, batch):
        import pandas as pd

        done = []
        for i in batch["i"]:
            piece, entry = self.pieces[int(i)]
            done.append(pickle.dumps(run_piece(self.fn, self.payload, piece, self.kw, entry)))
        return pd.DataFrame({"staged": done})


@contextlib.contextmanager
def session(engine: Engine):
    """Ray initialised for this stage: joins ``engine.address``, or starts a local Ray with ``num_cpus``; a Ray
    this call started is shut down after it (one already initialised, e.g. by a test, is left running)."""
    import ray

    started = False
    if not ray.is_initialized():
        path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        kw = {"runtime_env": {"env_vars": {"PYTHONPATH": path}}, "log_to_driver": False,
              "include_dashboard": False, "logging_level": "warning"}
        if engine.address:
            ray.init(address=engine.address, **kw)
        else:   # a Ray of its own, even where `ray start` left a cluster running (ray.init would join that)
            ray.init(address="local", num_cpus=engine.num_cpus, **kw)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def workers(ray, engine: Engine) -> int:
    """Ray workers the stage runs at once: the cluster's CPUs (at most --num-cpus), and no more than its GPUs
    allow at --num-gpus-per-worker (a fixed pool larger than the cluster would wait for ever)."""
    res = ray.cluster_resources()
    cpus = int(res.get("CPU", 1))
    n = max(1, min(cpus, engine.num_cpus or cpus))
    if engine.num_gpus_per_worker:
        gpus = int(res.get("GPU", 0) // engine.num_gpus_per_worker)
        if gpus < 1:
            raise ValueError(f"--num-gpus-per-worker {engine.num_gpus_per_worker:g}: the Ray cluster has "
                             f"{res.get('GPU', 0):g} GPUs")
        n = min(n, gpus)
    return n


def run_over_files(files: list[str], fn, payload, *, columns, root, table: str, run_id: int,
                   batch_rows: int | None = None, arrow: bool = False, block_rows: int | None = None,
                   engine: Engine) -> tuple:
    """``streamed.run_over_files`` on Ray Data (same arguments, same result)."""
    batch_rows = batch_rows or BATCH_ROWS
    kw = {"columns": tuple(columns), "root": str(root), "table": table, "run_id": run_id, "batch_rows": batch_rows,
          "arrow": arrow}
    done, pieces, jr = pieces_to_run(files, fn, payload, kw, block_rows)
    results = []
    if pieces:   # none: no input, or a killed run's journal holds every slice
        with session(engine) as ray:
            size = min(workers(ray, engine), len(pieces))
            ds = ray.data.from_items([{"i": i} for i in range(len(pieces))], override_num_blocks=len(pieces))
            # a fixed pool (an autoscaling one started a single actor for a few slices); one slice per call
            out = ds.map_batches(_Slices, fn_constructor_args=(fn, payload, pieces, kw), batch_size=1,
                                 batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=size),
                                 num_cpus=1, num_gpus=engine.num_gpus_per_worker or None)
            for batch in out.iter_batches(batch_size=None, batch_format="pandas"):
                for blob in batch["staged"]:
                    results.append(pickle.loads(blob))
                    checkpoint("ray.batch_collected")
    return finish(jr, done, results)
