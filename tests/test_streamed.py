"""The unit of work of both engines (streamed.slices / run_slice): every row of every file exactly once, in file
order, in batches of at most batch_rows rows, for any row-group layout."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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
