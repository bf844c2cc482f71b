"""Which engine runs a stage's per-batch work: ``local`` (this machine's processes, audit/store/streamed.py) or
``ray`` (Ray Data on a cluster or a local Ray, audit/engine/ray_data.py).

Both engines cut the input (the samples' parts, or a model's vector parts) into the same pieces
(``streamed.slices``, or ``streamed.blocks`` for negclip) and call the same plug-in code through the same batch
step (``streamed.run_batch``: the plug-in's ``compute_rows`` or ``compute_vectors`` on one batch, its outputs
staged as Parquet parts of the store's own layout); the stage then registers the staged parts in one short
transaction. No plug-in knows which engine runs it; the engine is not a
parameter of the run (a rerun with the other engine is a no-op), only a note on it.
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    name: str = "local"
    address: str | None = None          # an existing Ray cluster ("auto", "ray://host:10001", "host:6379")
    num_cpus: int | None = None         # local Ray: its CPUs; with --address: the most batches run at once
    num_gpus_per_worker: float = 0.0    # GPUs each Ray worker asks for (models that run on a GPU)
    batch_rows: int | None = None       # rows per batch (default: streamed.BATCH_ROWS)

    def __post_init__(self):
        if self.name not in ENGINES:
            raise ValueError(f"unknown engine {self.name!r}; choose one of {', '.join(ENGINES)}")
        if self.name == "local" and (self.address or self.num_gpus_per_worker):
            raise ValueError("--address and --num-gpus-per-worker need --engine ray")
        if self.batch_rows is not None and self.batch_rows < 1:
            raise ValueError("--batch-rows must be at least 1")

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"

    def describe(self) -> str:
        if not self.is_ray:
            return "local"
        where = f"cluster {self.address}" if self.address else f"local Ray ({self.num_cpus or 'all'} CPUs)"
        return f"ray, {where}"


LOCAL = Engine()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this machine's processes; ray: Ray Data (a local Ray, or --address)")
    g.add_argument("--address", help="Ray cluster to join (e.g. auto, after `ray start --head`)")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray it starts / at most this many batches at once")
    g.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    g.add_argument("--batch-rows", type=int, help="rows per batch (default 200,000)")


def from_args(a: argparse.Namespace) -> Engine:
    return Engine(a.engine, a.address, a.num_cpus, a.num_gpus_per_worker, a.batch_rows)


@contextlib.contextmanager
def stage(engine: Engine | None):
    """The engine for a whole stage: on Ray, one session (the connection, or a local Ray started once) shared by
    all of the stage's passes (metaclip has three, image-based four, vas-d two per iteration), instead of one per
    pass; locally, one process pool (``streamed.stage_pool``)."""
    if engine is None or not engine.is_ray:
        from audit.store.streamed import stage_pool

        with stage_pool():
            yield
        return
    from audit.engine.ray_data import session

    with session(engine):
        yield


def over_samples(engine: Engine | None, store, fn, payload, *, columns, table: str, run_id: int,
                 scores: dict[str, str] | None = None, staged: dict[str, tuple[list[str], str]] | None = None):
    """``fn`` over every sample (``store``: a read-only Store of a parts-layout store): ``over_files`` on the
    samples' registered parts; with ``scores`` ({column: stored score name}) or ``staged`` ({column: (staged
    part files, their column)}) on one file of the samples joined with them (``streamed.joined_samples``). Raises when the
    rows read are not the store's samples (a part changed meanwhile)."""
    from audit.store import parts
    from audit.store.streamed import check_rows, joined_samples

    with contextlib.ExitStack() as stack:
        if scores or staged:
            files = stack.enter_context(joined_samples(store, list(columns), scores or {}, run_id,
                                                       (engine or LOCAL).batch_rows, staged))
            columns = [*columns, *(scores or {}), *(staged or {})]
        else:
            files = parts.part_files(store, "samples")
        out = over_files(engine, files, fn, payload, columns=columns, root=store.parts_dir(), table=table,
                         run_id=run_id)
    check_rows(out[2], int(store.count("samples")))
    return out


def over_vectors(engine: Engine | None, store, model: str, fn, payload, *, columns, table: str, run_id: int,
                 block_rows: int | None = None):
    """``fn(payload, vectors)`` over every stored vector of ``model`` that belongs to a sample (``store``: a read-only
    Store), on either engine: ``vectors`` holds a float32 (n, d) matrix per name in ``columns`` and the batch's uids
    (an Arrow string array) under ``uid``. Vectors of uids that are not samples are left out. Returns
    ``over_files``'s (staged, infos, rows read, rejects) and the vector files read (for the caller's rows of the
    samples without a vector). Raises for duplicate uids and for rows that changed while the stage ran."""
    from audit.store.streamed import check_rows
    from audit.store.vectors import parts as vector_parts
    from audit.store.vectors import vector_coverage

    files = [str(f) for f in vector_parts(store, model)]
    n_vec, not_samples = vector_coverage(store, model, files)
    staged, infos, n, rejected = over_files(engine, files, _vector_step, (fn, tuple(columns), payload, not_samples),
                                            columns=list(columns), root=store.parts_dir(), table=table,
                                            run_id=run_id, arrow=True, block_rows=block_rows)
    check_rows(n, n_vec)
    return staged, infos, n, [(u, m) for u, m in rejected if u not in not_samples], files


def _vector_step(payload: tuple, batch):
    """One Arrow batch of a vector part: the non-samples dropped, the half-precision columns decoded, then ``fn``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from audit.store.vectors import half_matrix, half_to_float32

    fn, columns, inner, not_samples = payload
    if not_samples:
        batch = batch.filter(pc.invert(pc.is_in(batch.column("uid"), value_set=pa.array(sorted(not_samples)))))
    vectors = {c: half_to_float32(half_matrix(batch.column(c))) for c in columns}
    vectors["uid"] = batch.column("uid")
    return fn(inner, vectors)


def over_files(engine: Engine | None, files: list[str], fn, payload, *, columns, root, table: str, run_id: int,
               arrow: bool = False, block_rows: int | None = None, groups: list[list[str]] | None = None):
    """``streamed.run_over_files`` (any Parquet files with a uid column, e.g. a model's vector parts) on the
    chosen engine (same arguments, same result). ``block_rows``: hand ``fn`` blocks of whole files of about this
    many rows (``streamed.blocks``) instead of batches; ``groups``: hand ``fn`` each of these groups of files as
    one block (``files`` is then ignored)."""
    engine = engine or LOCAL
    if engine.is_ray:
        from audit.engine.ray_data import run_over_files

        extra = {"engine": engine}
    else:
        from audit.killpoints import checkpoint
        from audit.store.streamed import run_over_files

        extra = {"on_result": lambda: checkpoint("local.slice_collected")}
    return run_over_files(files, fn, payload, columns=columns, root=root, table=table, run_id=run_id,
                          batch_rows=engine.batch_rows, arrow=arrow, block_rows=block_rows, groups=groups, **extra)


def require_local(engine: Engine | None, what: str) -> None:
    """Refuse --engine ray for a plug-in that has no distributed form yet (a clear message, before any work)."""
    if engine is not None and engine.is_ray:
        raise ValueError(f"{what} has no Ray form yet; run it with --engine local (see README, 'On a cluster')")


def plugin_rejects(stage: str, name: str, rejected: list[tuple[str, str]], run_id: int):
    """The rejects frame of the samples a plug-in raised on (one row each; detail starts with the plug-in's name)."""
    import pandas as pd

    return pd.DataFrame({"source_ref": None, "stage": stage, "reason": "plugin_error",
                         "detail": [f"{name}: {msg}" for _, msg in rejected], "source": None,
                         "uid": [u for u, _ in rejected], "run_id": run_id})


def echo_rejects(name: str, rejected: list[tuple[str, str]], echo) -> None:
    if rejected:
        uid, msg = rejected[0]
        echo(f"{name}: {len(rejected):,} samples rejected (the plug-in raised on them; see rejects), e.g. {uid}: {msg}")
