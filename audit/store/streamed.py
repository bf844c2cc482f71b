"""Row-local stages streamed over the samples' Parquet parts: each part read a batch at a time, the batch's
results staged as part files of the output table (unregistered), several slices of the parts (``slices``) at once
in worker processes.

A plug-in whose result for a sample depends on that sample's own columns alone (the caption and domain
annotators, the basic score) never needs the pool in memory: ``run_over_files`` (``engine.over_samples``
for the samples' parts) hands ``fn(payload, frame)``
one batch of ``uid`` plus the columns it asked for and stages what it returns; the caller registers the staged
parts in one short transaction (``parts.register_parts``), so a killed stage leaves only orphans, which
``parts.collect_garbage`` removes. ``fn`` must be a module-level function (it is sent to spawned workers); kill points are its own.

``run_batch`` is the one step both engines run per batch (this module's processes, and the Ray engine's actors in
audit/engine/ray_data.py): call ``fn``, stage its outputs; a batch that raises is split in halves down to single
rows, so a sample the plug-in cannot handle becomes a reject ``(uid, message)`` and the others still go through.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from audit.store import journal, parts

BATCH_ROWS = 200_000
PARALLEL_MIN_ROWS = 400_000    # below this, one process (starting workers costs more than it saves)

# fn(payload, frame) -> ({key: frame of the output table's columns}, info); info is returned per batch
BatchFn = Callable[[Any, Any], tuple[dict, Any]]
# what one batch (or file) yields: (staged parts per key, infos, rows read, rejects [(uid, message)])
Staged = tuple[dict[str, list[tuple[str, int]]], list, int, list[tuple[str, str]]]


def _halves(sub):
    half = len(sub) // 2
    if hasattr(sub, "iloc"):
        return [sub.iloc[half:], sub.iloc[:half]]
    return [sub.slice(half), sub.slice(0, half)]          # an Arrow table or record batch


def _uids(sub) -> list[str]:
    return [str(u) for u in (sub["uid"] if hasattr(sub, "iloc") else sub.column("uid").to_pylist())]


def run_batch(fn: BatchFn, payload, frame, root, table: str, run_id: int) -> Staged:
    """``fn`` over one batch (a pandas frame, or an Arrow table for ``arrow=True`` callers), its outputs staged as
    parts of ``table``; rows whose computation raises are rejects."""
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
                rejects += [(u, f"{type(exc).__name__}: {exc}") for u in _uids(sub)]
            else:
                pending += _halves(sub)
            continue
        for key, out in outputs.items():
            staged.setdefault(key, []).append(parts.stage_part(root, table, key, out, run_id=run_id))
        infos.append(info)
    return staged, infos, len(frame), rejects


def merge(results) -> Staged:
    """One Staged from many (batches or files, or a stage's passes): one reject per uid, its first message (a sample
    two passes rejected counts once)."""
    staged: dict[str, list[tuple[str, int]]] = {}
    infos, rows, rejects, seen = [], 0, [], set()
    for st_files, inf, n, rej in results:
        for k, v in st_files.items():
            staged.setdefault(k, []).extend(v)
        infos.extend(inf)
        rows += n
        for u, m in rej:
            if u not in seen:
                seen.add(u)
                rejects.append((u, m))
    return staged, infos, rows, rejects


def slices(files: list[str], batch_rows: int) -> list[tuple]:
    """The unit of work of both engines: (path, row groups, rows, first row, end row). Each file's row groups in
    runs of about ``batch_rows`` rows (first/end None: all their rows), and a row group larger than ``batch_rows``
    in row ranges of it, so one big file still keeps every worker busy."""
    import pyarrow.parquet as pq

    out = []
    for path in files:
        md = pq.ParquetFile(path).metadata
        groups, rows = [], 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if n > batch_rows:
                if groups:
                    out.append((str(path), tuple(groups), rows, None, None))
                    groups, rows = [], 0
                out += [(str(path), (g,), min(batch_rows, n - lo), lo, min(lo + batch_rows, n))
                        for lo in range(0, n, batch_rows)]
                continue
            groups.append(g)
            rows += n
            if rows >= batch_rows:
                out.append((str(path), tuple(groups), rows, None, None))
                groups, rows = [], 0
        if groups or not md.num_row_groups:
            out.append((str(path), tuple(groups), rows, None, None))
    return out


def blocks(files: list[str], block_rows: int) -> list[tuple]:
    """Pieces of whole files for computations over a block of rows at once (negCLIPLoss batches): consecutive
    files until a block holds the balanced target ``ceil(N / ceil(N / block_rows))`` rows, as
    (paths, (), rows, None, None). Computed from the files' row counts alone, so both engines make the same
    blocks."""
    import math

    import pyarrow.parquet as pq

    counts = [(str(f), pq.ParquetFile(f).metadata.num_rows) for f in files]
    total = sum(n for _, n in counts)
    if not total:
        return []
    target = math.ceil(total / math.ceil(total / max(1, block_rows)))
    out, paths, rows = [], [], 0
    for path, n in counts:
        paths.append(path)
        rows += n
        if rows >= target:
            out.append((tuple(paths), (), rows, None, None))
            paths, rows = [], 0
    if paths:
        out.append((tuple(paths), (), rows, None, None))
    return out


def run_slice(fn: BatchFn, payload, piece: tuple, *, columns, root, table: str, run_id: int, batch_rows: int,
              arrow: bool) -> Staged:
    """``fn`` over one slice (``slices``), a batch of at most ``batch_rows`` rows at a time; or over one block
    (``blocks``) as a single batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, groups, _, lo, hi = piece
    cols = ["uid", *columns]
    if isinstance(path, tuple):     # a block: its files' rows as one table
        block = pa.concat_tables([pq.read_table(p, columns=cols) for p in path])
        return run_batch(fn, payload, block if arrow else block.to_pandas(), root, table, run_id)
    f = pq.ParquetFile(path)
    if lo is not None:      # a range of one row group
        batches = f.read_row_group(groups[0], columns=cols).slice(lo, hi - lo).to_batches(max_chunksize=batch_rows)
    else:
        batches = f.iter_batches(batch_size=batch_rows, row_groups=list(groups), columns=cols) if groups else []
    return merge(run_batch(fn, payload, batch if arrow else batch.to_pandas(), root, table, run_id)
                 for batch in batches)


def run_piece(fn: BatchFn, payload, piece: tuple, kw: dict, entry: str | None) -> Staged:
    """``run_slice``, then the slice's journal entry (``journal.record``): the step both engines' workers run."""
    out = run_slice(fn, payload, piece, **kw)
    journal.record(entry, out)
    return out


def _one_slice(task: tuple) -> Staged:
    return run_piece(*task)


def groups_of_files(groups: list[list[str]]) -> list[tuple]:
    """Pieces given by the caller: each group of files read as one block (``blocks``'s form), e.g. one SemDeDup
    bucket of clusters gathered from every slice."""
    import pyarrow.parquet as pq

    return [(tuple(map(str, g)), (), sum(pq.ParquetFile(f).metadata.num_rows for f in g), None, None)
            for g in groups if g]


def pieces_to_run(files: list[str], fn: BatchFn, payload, kw: dict, block_rows: int | None,
                  groups: list[list[str]] | None = None):
    """(the Staged of the pieces a killed run with the same inputs finished, [(piece, journal entry)] to compute, the
    journal or None) for ``files`` cut as ``run_slice``'s ``kw`` says (or for the given ``groups`` of files, one
    piece each): the same cut and journal on both engines."""
    pieces = (groups_of_files(groups) if groups is not None else blocks(files, block_rows) if block_rows
              else slices(files, kw["batch_rows"]))
    shape = {k: kw[k] for k in ("columns", "table", "batch_rows", "arrow")}   # with fn and payload: the stage key
    jr = journal.Journal.open(kw["root"], fn, payload, **shape, block_rows=block_rows) if pieces else None
    if jr is None:
        return [], [(p, None) for p in pieces], None
    done, todo = jr.split(pieces, kw["root"])
    if done:
        print(f"resuming: {len(done):,} of {len(pieces):,} slices were computed by an interrupted run with the same "
              "inputs; computing the rest", flush=True)
    return done, todo, jr


def finish(jr: "journal.Journal | None", done: list, results: list) -> Staged:
    """Every piece is done: drop the journal, merge the resumed and the computed pieces."""
    if jr is not None:
        jr.close()
    return merge(done + results)


def check_rows(rows: int, n_samples: int) -> None:
    if rows != n_samples:
        raise RuntimeError(f"read {rows:,} rows of {n_samples:,} samples (a part changed while the stage ran); "
                           "run it again")


_POOLS: list = []    # the pools of the open ``stage_pool`` blocks (None until a pass needs one)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


@contextlib.contextmanager
def stage_pool():
    """One process pool for every pass of a stage on the local engine, started by the first pass that runs in
    parallel: a stage of many passes (vas-d: two per iteration) pays the workers' start-up (spawn, imports) once."""
    _POOLS.append(None)
    try:
        yield
    finally:
        ex = _POOLS.pop()
        if ex is not None:
            ex.shutdown(cancel_futures=True)


def run_over_files(files: list[str], fn: BatchFn, payload, *, columns, root, table: str, run_id: int,
                   batch_rows: int | None = None, arrow: bool = False, block_rows: int | None = None,
                   groups: list[list[str]] | None = None, on_result: Callable[[], None] | None = None) -> Staged:
    """``fn`` over every row of these Parquet files (any layout with a ``uid`` column: samples parts, vector
    parts), a batch at a time, as a pandas frame (or, with ``arrow``, the Arrow record batch); outputs staged as
    parts of ``table`` under ``root``. Returns (staged parts per key, the infos of every batch, rows read, rejects).
    The slices a killed run with the same inputs finished are taken from its journal (audit/store/journal.py), not
    computed again; ``on_result`` is called after each slice the driver collects (the engine's kill point).
    ``groups``: instead of ``files``, these groups of files, each one block (``groups_of_files``)."""
    batch_rows = batch_rows or BATCH_ROWS
    kw = {"columns": tuple(columns), "root": root, "table": table, "run_id": run_id, "batch_rows": batch_rows,
          "arrow": arrow}
    done, todo, jr = pieces_to_run(files, fn, payload, kw, block_rows, groups)
    tasks = [(fn, payload, piece, kw, entry) for piece, entry in todo]
    workers = min(len(tasks), os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        if workers > 1 and sum(piece[2] for piece, _ in todo) >= PARALLEL_MIN_ROWS:
            if _POOLS:      # a stage's pool (``stage_pool``): its workers started once for all of its passes
                if _POOLS[-1] is None:
                    _POOLS[-1] = _pool(os.cpu_count() or 1)
                ex = _POOLS[-1]
            else:
                ex = stack.enter_context(_pool(workers))
            computed = ex.map(_one_slice, tasks)
        else:
            computed = map(_one_slice, tasks)
        results = []
        for res in computed:
            results.append(res)
            if on_result:
                on_result()
    return finish(jr, done, results)


@contextlib.contextmanager
def joined_samples(store, columns: list[str], scores: dict[str, str], run_id: int, batch_rows: int | None,
                   staged: dict[str, tuple[list[str], str]] | None = None):
    """One Parquet file of every sample's uid + ``columns`` + each stored score of ``scores`` ({column: score name})
    and each staged column of ``staged`` ({column: (part files, their column)}, e.g. an earlier pass's labels or
    values) as a column (null where a sample has none), in row groups of ``batch_rows``: for row-local plug-ins that read more than the
    samples. DuckDB streams the join to disk; nothing of the pool is held here. The file is under the parts folder
    (every Ray node reads it there) and removed afterwards, or collected as an orphan if the stage is killed.

    On a store of parts the file is named by what it is made of (``_joined_key``: the registered parts it reads,
    the staged files, the columns and the row groups) and written under a temporary name first: the rerun of a
    killed stage finds the same file, so its slices match the killed run's journal and only the rest are computed."""
    from audit.store.parts import sql_files

    key = _joined_key(store, columns, scores, staged, batch_rows)
    dest = store.parts_dir() / "inputs" / (f"joined-{key}.parquet" if key else
                                           f"{run_id:06d}-{uuid.uuid4().hex[:12]}.parquet")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sources = [("(SELECT uid, value FROM scores WHERE name = ?)", a, [n]) for a, n in scores.items()]
    sources += [(f'(SELECT uid, "{col}" AS value FROM read_parquet({sql_files(f)}))', a, [])
                for a, (f, col) in (staged or {}).items()]
    sel = ", ".join([*(f's."{c}"' for c in ["uid", *columns]), *(f'j{i}.value AS "{a}"' for i, (_, a, _) in enumerate(sources))])
    joins = " ".join(f"LEFT JOIN {rel} j{i} USING (uid)" for i, (rel, _, _) in enumerate(sources))
    try:
        if dest.exists():       # a killed run's (whole: renamed into place): renewed, so it is not collected
            os.utime(dest)
        else:
            tmp = dest.with_name(f"{dest.stem}.{uuid.uuid4().hex[:8]}.tmp")
            target = "'" + str(tmp).replace("'", "''") + "'"
            try:
                store.cursor().execute(f"COPY (SELECT {sel} FROM samples s {joins}) TO {target} "
                                       f"(FORMAT parquet, ROW_GROUP_SIZE {batch_rows or BATCH_ROWS})",
                                       [v for _, _, args in sources for v in args])
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        yield [str(dest)]
    finally:
        dest.unlink(missing_ok=True)


def _joined_key(store, columns, scores, staged, batch_rows) -> str | None:
    """A digest of everything ``joined_samples``'s file holds, or None on a store of the older layout (its tables
    have no immutable files to name)."""
    import hashlib

    if not (parts.is_parts_table(store, "samples") and parts.is_parts_table(store, "scores")):
        return None
    files = parts.part_files(store, "samples")
    if scores:
        files += [r[0] for r in store.cursor().execute(
            "SELECT file FROM parts WHERE table_name = 'scores' AND list_contains(?, key) ORDER BY key, created, file",
            [sorted(set(scores.values()))]).fetchall()]
    h = hashlib.sha256(repr((list(columns), sorted(scores.items()), sorted((a, sorted(f), c) for a, (f, c) in
                                                                           (staged or {}).items()),
                             batch_rows or BATCH_ROWS, files)).encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def score_uids(store, name: str, at_least: float, run_id: int):
    """One Parquet file of the uids (sorted, in row groups of 100,000) whose stored score ``name`` is finite and at
    least ``at_least``: a candidate set that workers look up by uid range (``uids_in_file``), never the pool's
    values in memory. Under the parts folder like ``joined_samples``'s file, removed afterwards."""
    dest = store.parts_dir() / "inputs" / f"{run_id:06d}-{uuid.uuid4().hex[:12]}.parquet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = "'" + str(dest).replace("'", "''") + "'"
    try:
        store.cursor().execute(f"COPY (SELECT uid FROM scores WHERE name = ? AND NOT isnan(value) AND value >= ? "
                               f"ORDER BY uid) TO {target} (FORMAT parquet, ROW_GROUP_SIZE 100000)",
                               [name, float(at_least)])
        yield str(dest)
    finally:
        dest.unlink(missing_ok=True)


def uids_in_file(path: str, uids) -> "np.ndarray":
    """Whether each of ``uids`` (an Arrow string array) is in the sorted uid file ``path`` (``score_uids``): only
    the file's row groups within the batch's uid range are read."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not len(uids):
        return np.zeros(0, bool)
    mm = pc.min_max(uids)
    got = pq.read_table(path, columns=["uid"], filters=[("uid", ">=", mm["min"].as_py()), ("uid", "<=", mm["max"].as_py())])
    return pc.is_in(uids, value_set=got.column("uid")).to_numpy(zero_copy_only=False).astype(bool)
