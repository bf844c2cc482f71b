"""The unit of work of both engines (streamed.slices / run_slice): every row of every file exactly once, in file
order, in batches of at most batch_rows rows, for any row-group layout."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.store.streamed import run_slice, slices


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 900), min_size=1, max_size=3), group=st.integers(1, 400),
       batch_rows=st.integers(1, 1200))
def test_slices_cover_every_row_once_in_order(tmp_path_factory, rows, group, batch_rows):
    folder = tmp_path_factory.mktemp("slices")
    files, want = [], []
    for k, n in enumerate(rows):
        uids = [f"f{k}-{i:04d}" for i in range(n)]
        path = folder / f"{k}.parquet"
        pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), "x": np.arange(n)}), path, row_group_size=group)
        files.append(str(path))
        want += uids
    seen = []

    def fn(payload, batch):
        seen.append(batch.column("uid").to_pylist())
        return {}, len(batch)

    pieces = slices(files, batch_rows)
    for piece in pieces:
        staged, infos, n, rejects = run_slice(fn, None, piece, columns=["x"], root=folder, table="scores", run_id=0,
                                              batch_rows=batch_rows, arrow=True)
        assert n == sum(infos) == piece[2] and not rejects and not staged
    assert [u for b in seen for u in b] == want
    assert all(0 < len(b) <= batch_rows for b in seen)
    assert sum(p[2] for p in pieces) == sum(rows)
    # no slice is much larger than a batch, unless one row group is (then it is cut in row ranges)
    assert all(p[2] < batch_rows + group for p in pieces)


# ---- resume (audit/store/journal.py) ---------------------------------------------------------------------------
CALLS: list[str] = []      # first uid of every batch fn computed, in this process
STOP_AFTER = [None]        # raise KeyboardInterrupt (a kill, not a plug-in error) after this many batches


def _doubled(payload, batch):
    """A row-local score: value = x * payload, staged as a scores part."""
    if STOP_AFTER[0] is not None and len(CALLS) >= STOP_AFTER[0]:
        raise KeyboardInterrupt
    CALLS.append(batch["uid"].iloc[0])
    out = pa.table({"uid": pa.array(batch["uid"], pa.string()), "name": pa.array(["d"] * len(batch)),
                    "value": pa.array(batch["x"].to_numpy() * payload, pa.float64())})
    return {"d": out}, len(batch)


def _values(root, staged) -> dict:
    t = pa.concat_tables([pq.read_table(root / rel) for rel, _ in staged["d"]])
    return dict(zip(t.column("uid").to_pylist(), t.column("value").to_pylist()))


def _files(folder, n_files=4, rows=250):
    files = []
    for k in range(n_files):
        path = folder / f"in-{k}.parquet"
        pq.write_table(pa.table({"uid": [f"u{k}-{i:04d}" for i in range(rows)], "x": np.arange(rows) + 1000 * k}),
                       path, row_group_size=50)
        files.append(str(path))
    return files


def test_a_killed_streamed_stage_resumes_with_only_the_slices_it_had_not_finished(tmp_path, capsys):
    from audit.store.streamed import run_over_files

    files, root = _files(tmp_path), tmp_path / "parts"
    kw = {"columns": ["x"], "root": root, "table": "scores", "run_id": 7, "batch_rows": 100}
    CALLS.clear()
    STOP_AFTER[0] = 3
    try:
        run_over_files(files, _doubled, 2.0, **kw)
        raise AssertionError("the kill did not happen")
    except KeyboardInterrupt:
        pass
    killed = list(CALLS)
    assert len(killed) == 3 and len(list((root / "_journal").rglob("*.pkl"))) == 3
    CALLS.clear()
    STOP_AFTER[0] = None
    staged, infos, n, rejects = run_over_files(files, _doubled, 2.0, **kw)
    assert "resuming: 3 of 12 slices" in capsys.readouterr().out
    assert len(CALLS) == 9 and not set(CALLS) & set(killed)       # only the slices the killed run had not done
    assert n == sum(infos) == 1000 and not rejects
    got = _values(root, staged)
    want = {f"u{k}-{i:04d}": 2.0 * (i + 1000 * k) for k in range(4) for i in range(250)}
    assert got == want                                              # every row once, each its own value
    assert not (root / "_journal").exists() or not list((root / "_journal").rglob("*.pkl"))


def test_the_journal_is_keyed_by_the_inputs_and_never_reuses_a_missing_file(tmp_path):
    """Another payload (parameters) or another batch shape computes everything; a journal entry whose staged file
    was collected is computed again."""
    from audit.store.streamed import run_over_files

    files, root = _files(tmp_path, n_files=2), tmp_path / "parts"
    kw = {"columns": ["x"], "root": root, "table": "scores", "run_id": 1, "batch_rows": 100}
    CALLS.clear()
    STOP_AFTER[0] = 4
    try:
        run_over_files(files, _doubled, 2.0, **kw)
    except KeyboardInterrupt:
        pass
    STOP_AFTER[0] = None
    CALLS.clear()
    staged, *_ = run_over_files(files, _doubled, 3.0, **kw)         # other parameters: no reuse
    assert len(CALLS) == 6 and set(_values(root, staged).values()) == {3.0 * (i + 1000 * k)
                                                                        for k in range(2) for i in range(250)}
    CALLS.clear()
    staged, *_ = run_over_files(files, _doubled, 2.0, **{**kw, "batch_rows": 50})   # other batch shape: no reuse
    assert len(CALLS) == 10
    # the killed run's journal for (2.0, 100 rows) is still there: drop one staged file it names
    entries = sorted((root / "_journal").rglob("*.pkl"))
    assert len(entries) == 4
    import pickle
    first = pickle.loads(entries[0].read_bytes())
    (root / first[0]["d"][0][0]).unlink()
    CALLS.clear()
    staged, _, n, _ = run_over_files(files, _doubled, 2.0, **kw)
    assert len(CALLS) == 3 and n == 500                               # 6 - 4 done + the one whose file was gone
    assert _values(root, staged) == {f"u{k}-{i:04d}": 2.0 * (i + 1000 * k) for k in range(2) for i in range(250)}


def _pid(payload, batch):
    import os

    return {}, os.getpid()


def test_the_passes_of_one_stage_share_one_process_pool(tmp_path, monkeypatch):
    """In ``stage_pool`` every pass that runs in parallel uses the workers the first one started (vas-d runs two
    passes per iteration: starting workers each time cost ~2.6 s a pass at 1M rows); outside it each pass starts its
    own, and the stage's pool is shut down when the stage ends."""
    from audit.store import streamed

    monkeypatch.setattr(streamed, "PARALLEL_MIN_ROWS", 1)
    files = _files(tmp_path, n_files=2, rows=100)
    kw = {"columns": ["x"], "root": tmp_path / "parts", "table": "scores", "run_id": 1, "batch_rows": 50}

    def pids():
        _, infos, n, _ = streamed.run_over_files(files, _pid, None, **kw)
        assert n == 200 and len(infos) == 4
        return set(infos)

    with streamed.stage_pool():
        first, second = pids(), pids()
        pool = streamed._POOLS[-1]
    assert first and second <= first and os.getpid() not in first        # the same spawned workers
    assert not streamed._POOLS
    with pytest.raises(RuntimeError):                                     # shut down with the stage
        pool.submit(os.getpid)
    assert not (pids() & first)                                           # a pass of its own: new workers
