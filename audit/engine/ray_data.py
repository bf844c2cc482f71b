"""The Ray Data engine: a Ray dataset of the input's *slices* (``streamed.slices``: a part file's row groups in runs
of about --batch-rows rows; the samples' registered parts, or a model's vector parts), mapped by Ray Data
``map_batches``; each map call reads its slice with pyarrow and runs the same step as the local engine on each
batch (``streamed.run_slice`` → ``run_batch``: the plug-in, then its outputs staged as parts of the store's
layout); the staged parts go back to the driver, which registers them.

How the slices are mapped: on CPUs, as Ray Data *tasks* (``_slices_task``) in Ray's worker processes, which Ray keeps
and reuses for the whole job: a plug-in's model (held in a per-process cache, e.g. ``embed.runner._worker_embedder``)
loads once per worker process and stays loaded for every later pass of the stage, and a pass costs ~0.1 s to start.
With ``--num-gpus-per-worker``, by a fixed pool of actors of the callable class ``_Slices`` (one per worker, a
model loads once per worker): Ray does not reuse a GPU task's process, so tasks would load the model per slice.
The actor pool was the form for CPUs too until 2026-12-07; it started new worker processes for every pass (~2.3 s
each on 2 CPUs, measured in bench/bench_ray.py), which multi-pass stages (vas-d: 11 passes) paid every pass.
Ray Data's operator resource reservation is turned off for these datasets: with it, a one-operator dataset on 2 CPUs
ran one task at a time for most of a pass.

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


def _run_rows(job: tuple, rows) -> "pd.DataFrame":
    """The slices ``rows`` (indices into the job's list of (slice, journal entry)) of one map call, run in turn;
    their staging records, pickled, one row each."""
    import pandas as pd

    fn, payload, pieces, kw = job
    done = []
    for i in rows:
        piece, entry = pieces[int(i)]
        done.append(pickle.dumps(run_piece(fn, payload, piece, kw, entry)))
    return pd.DataFrame({"staged": done})


_JOBS: dict = {}    # this worker process's last job (the pass's fn, payload and slices), by its object id


def _slices_task(batch, job_ref):
    """Ray Data task: the slices of one batch of the dataset. The pass (``fn``, payload, slices) comes once per
    pass through the object store and is decoded once per worker process, not once per slice."""
    import ray

    key = job_ref.hex()
    if key not in _JOBS:
        _JOBS.clear()
        _JOBS[key] = ray.get(job_ref)
    return _run_rows(_JOBS[key], batch["i"])


class _Slices:
    """Ray Data callable class for GPU workers: one per worker; ``__call__`` runs the slices of one batch of the
    dataset (each a row ``i`` of the list of (slice, journal entry)) and returns their staging records."""

    def __init__(self, fn, payload, pieces: list, kw: dict):
        self.job = (fn, payload, pieces, kw)

    def __call__(self, batch):
        return _run_rows(self.job, batch["i"])


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
                   groups: list[list[str]] | None = None, engine: Engine) -> tuple:
    """``streamed.run_over_files`` on Ray Data (same arguments, same result)."""
    batch_rows = batch_rows or BATCH_ROWS
    kw = {"columns": tuple(columns), "root": str(root), "table": table, "run_id": run_id, "batch_rows": batch_rows,
          "arrow": arrow}
    done, pieces, jr = pieces_to_run(files, fn, payload, kw, block_rows, groups)
    results = []
    if pieces:   # none: no input, or a killed run's journal holds every slice
        with session(engine) as ray:
            size = min(workers(ray, engine), len(pieces))
            ctx = ray.data.DataContext.get_current()
            ctx.op_resource_reservation_enabled = False     # else one task at a time on 2 CPUs (module docstring)
            ds = ray.data.from_items([{"i": i} for i in range(len(pieces))], override_num_blocks=len(pieces))
            if engine.num_gpus_per_worker:    # a fixed pool of actors (an autoscaling one started a single actor)
                out = ds.map_batches(_Slices, fn_constructor_args=(fn, payload, pieces, kw), batch_size=1,
                                     batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=size),
                                     num_cpus=1, num_gpus=engine.num_gpus_per_worker)
            else:   # tasks in Ray's reused worker processes, at most ``size`` at once; one slice per call
                out = ds.map_batches(_slices_task, fn_kwargs={"job_ref": ray.put((fn, payload, pieces, kw))},
                                     batch_size=1, batch_format="pandas", num_cpus=1, concurrency=size)
            for batch in out.iter_batches(batch_size=None, batch_format="pandas"):
                for blob in batch["staged"]:
                    results.append(pickle.loads(blob))
                    checkpoint("ray.batch_collected")
    return finish(jr, done, results)
