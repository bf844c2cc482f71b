"""The Ray Data engine: the samples' registered Parquet parts read by ``ray.data.read_parquet``, each batch
handed to a callable class (``_Batches``, one instance per Ray worker, so a plug-in's model loads once per worker)
that runs the same step as the local engine (``streamed.run_batch``: the plug-in, then its outputs staged as
parts of the store's layout), and the list of staged parts sent back to the driver, which registers them.

Why the parts are written by ``stage_part`` inside the map step rather than by ``Dataset.write_parquet``: a part
must be sorted by uid (lookups prune row groups), typed by the table's schema, renamed into place atomically and
written without float statistics (DuckDB prunes NaN rows by pyarrow's min/max: audit/store/parts.py). The files
land in the store's parts folder, so the store (and every node) must be on a filesystem all of them reach.

A killed driver leaves staged files no catalogue names (removed later by ``parts.collect_garbage``) and the store
as it was; a plug-in that raises on some rows makes those rows rejects, not a failed job (``run_batch``).
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

from audit.engine import Engine
from audit.killpoints import checkpoint
from audit.store import parts
from audit.store.streamed import BATCH_ROWS, check_rows, merge, run_batch

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # on PYTHONPATH of every worker (same path on every node)


class _Batches:
    """Ray Data callable class: one per worker; ``__call__`` runs one batch and returns its staging record."""

    def __init__(self, fn, payload, root: str, table: str, run_id: int):
        self.fn, self.payload, self.root, self.table, self.run_id = fn, payload, Path(root), table, run_id

    def __call__(self, batch):
        import pandas as pd

        # an Arrow batch converted here as the local engine converts it (Ray's own pandas batches turn a missing
        # string into NaN, where pyarrow gives None/NA: a plug-in must see the same frame on both engines)
        staged = run_batch(self.fn, self.payload, batch.to_pandas(), self.root, self.table, self.run_id)
        return pd.DataFrame({"staged": [pickle.dumps(staged)]})


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
        else:
            ray.init(num_cpus=engine.num_cpus, **kw)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def workers(ray, engine: Engine) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus, engine.num_cpus or cpus))


def run_over_samples(store, fn, payload, *, columns, table: str, run_id: int, batch_rows: int | None = None,
                     engine: Engine) -> tuple:
    """``streamed.run_over_samples`` on Ray Data: same arguments and the same (staged, infos, rows, rejects)."""
    files = parts.part_files(store, "samples")
    root, n_samples = str(store.parts_dir()), int(store.count("samples"))
    if not files:
        return merge([])
    with session(engine) as ray:
        n = workers(ray, engine)
        ds = ray.data.read_parquet(files, columns=["uid", *columns])
        out = ds.map_batches(_Batches, fn_constructor_args=(fn, payload, root, table, run_id),
                             batch_size=batch_rows or BATCH_ROWS, batch_format="pyarrow",
                             compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n),
                             num_cpus=1, num_gpus=engine.num_gpus_per_worker or None)
        results = []
        for batch in out.iter_batches(batch_size=None, batch_format="pandas"):
            for blob in batch["staged"]:
                results.append(pickle.loads(blob))
                checkpoint("ray.batch_collected")
    merged = merge(results)
    check_rows(merged[2], n_samples)
    return merged
