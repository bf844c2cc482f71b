"""The per-row tables as Parquet parts (audit/store/parts.py): NaN kept, older stores migrated, a failed write
leaves nothing visible, a replaced part stays readable by an older snapshot, and the copied file stays small."""
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from audit.store import Store, parts_dir, snapshot
from audit.store import parts


def _store(path, n, seed=0):
    rng = np.random.default_rng(seed)
    uids = [f"{i:032x}" for i in rng.permutation(n)]
    with Store.writer(path) as st:
        run = st.start_run("test", "parts", params={"n": n})
        st.add_samples(pd.DataFrame({"uid": uids, "caption": "a photo", "source": "t", "simulated": True}),
                       run_id=run)
        vals = rng.normal(size=n)
        vals[::7] = np.nan
        st.write_scores("s", uids, vals, run_id=run, kind="test")
        st.end_run(run)
    return uids, vals


def test_nan_scores_stay_nan(tmp_path):
    """pyarrow leaves NaN out of a float column's min/max; with those statistics DuckDB folds isnan() to false."""
    path = str(tmp_path / "s.duckdb")
    uids, vals = _store(path, 700)
    with Store.reader(path) as st:
        assert st.scalar("SELECT count(*) FROM scores WHERE isnan(value)") == int(np.isnan(vals).sum()) == 100
        assert st.scalar("SELECT count(*) FROM scores WHERE isfinite(value)") == 600


def test_a_store_of_the_older_layout_moves_its_rows_into_parts(tmp_path):
    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)   # the layout-1 tables, as the previous version created them
    con.execute("CREATE TABLE samples (uid VARCHAR PRIMARY KEY, source VARCHAR, caption VARCHAR, url VARCHAR, "
                "domain VARCHAR, tld VARCHAR, width INTEGER, height INTEGER, image_ref VARCHAR, sha256 VARCHAR, "
                "simulated BOOLEAN, ingest_run INTEGER)")
    con.execute("CREATE TABLE scores (uid VARCHAR, name VARCHAR, value DOUBLE)")
    con.execute("CREATE TABLE annotations (uid VARCHAR, attribute VARCHAR, label VARCHAR, confidence DOUBLE, "
                "method VARCHAR)")
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO samples (uid, source, caption, width) SELECT 'u' || i, 'x', 'c' || i, i "
                "FROM range(1000) t(i)")
    con.execute("INSERT INTO scores SELECT 'u' || i, n, CASE WHEN i % 10 = 0 THEN 'nan'::DOUBLE ELSE i * 0.5 END "
                "FROM range(1000) t(i), (VALUES ('a'), ('b')) v(n)")
    con.execute("INSERT INTO annotations SELECT 'u' || i, 'g', CASE WHEN i % 2 = 0 THEN 'x' ELSE 'y' END, 1.0, 'm' "
                "FROM range(1000) t(i)")
    want = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").df() for t in ("scores", "annotations")}
    want_s = con.execute("SELECT uid, caption, width FROM samples ORDER BY uid").df()
    con.close()
    with Store.writer(path) as st:
        assert all(parts.is_parts_table(st, t) for t in parts.TABLES)
        assert st.scalar("SELECT value FROM meta WHERE key = 'schema_version'") == "2"
        for t, frame in want.items():
            pd.testing.assert_frame_equal(st.df(f"SELECT {', '.join(frame.columns)} FROM {t} ORDER BY ALL"), frame)
        got = st.df("SELECT uid, caption, width FROM samples ORDER BY uid")
        pd.testing.assert_frame_equal(got, want_s, check_dtype=False)
        assert st.scalar("SELECT count(*) FROM scores WHERE isnan(value)") == 200
        keys = st.df("SELECT table_name, key FROM parts ORDER BY 1, 2")
        assert keys.values.tolist() == [["annotations", "g"], ["samples", ""], ["scores", "a"], ["scores", "b"]]


def test_a_failed_write_leaves_the_store_as_it_was(tmp_path):
    path = str(tmp_path / "s.duckdb")
    uids, vals = _store(path, 300)
    with Store.writer(path) as st:
        before = st.df("SELECT * FROM scores ORDER BY uid")
        with pytest.raises(RuntimeError):
            with st.transaction():
                st.write_scores("s", uids, np.zeros(300), run_id=1, kind="test")
                raise RuntimeError("killed")
        pd.testing.assert_frame_equal(st.df("SELECT * FROM scores ORDER BY uid"), before)
        files = list(parts_dir(path).rglob("*.parquet"))
        assert len(files) == 3            # the orphan is on disk, not in any view
        inputs = parts_dir(path) / "inputs"      # a killed vas-d's state file and a join's temporary file
        inputs.mkdir(exist_ok=True)
        for name in ("000007-vasd-ab12.pkl", "joined-cd34.5678abcd.tmp"):
            (inputs / name).write_bytes(b"x")
        assert parts.collect_garbage(st, orphan_grace_s=3600) == 0   # a stage may still be writing them
        assert parts.collect_garbage(st, orphan_grace_s=0) == 3
        assert not list(inputs.iterdir())
        pd.testing.assert_frame_equal(st.df("SELECT * FROM scores ORDER BY uid"), before)


def test_a_replaced_part_stays_readable_by_an_older_snapshot(tmp_path):
    path = str(tmp_path / "s.duckdb")
    uids, vals = _store(path, 500)
    old = snapshot(path, tmp_path / "snaps")
    with Store.writer(path) as st:
        st.write_scores("s", uids, np.arange(500.0), run_id=2, kind="test")
    with Store.reader(old) as st:   # the older version: the retired part is still there
        got = st.df("SELECT uid, value FROM scores ORDER BY uid")
    want = pd.Series(vals, index=uids).sort_index()
    np.testing.assert_array_equal(got["value"].to_numpy(), want.to_numpy())
    new = snapshot(path, tmp_path / "snaps2")
    with Store.reader(new) as st:
        assert st.scalar("SELECT sum(value) FROM scores") == sum(range(500))
    with Store.writer(path) as st:
        assert parts.collect_garbage(st, retired_grace_s=0) == 1
        assert st.scalar("SELECT count(*) FROM retired_parts") == 0


def test_the_copied_file_does_not_grow_with_the_pool(tmp_path):
    small, large = str(tmp_path / "a.duckdb"), str(tmp_path / "b.duckdb")
    _store(small, 1_000)
    _store(large, 200_000)
    size = {p: os.path.getsize(snapshot(p, tmp_path / Path(p).stem)) for p in (small, large)}
    assert size[large] < 1.2 * size[small], size
