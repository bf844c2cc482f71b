"""Pool-order columns (audit/store/columns.py): equal to the SQL join they replace, written with the stage that
changes their table, never stale, and a failed build leaves nothing behind."""
import numpy as np
import pandas as pd
import pytest

from audit.store import Store, columns


def _store(make_store, n=2_000, seed=0):
    rng = np.random.default_rng(seed)
    uids = [f"{rng.integers(1 << 62):032x}" for _ in range(n)]
    src = rng.choice(["a", "b", "c"], n)
    v = np.round(rng.normal(0.3, 0.05, n), 2)        # ties
    v[rng.random(n) < 0.05] = np.nan
    path = make_store([{"uid": u, "caption": "c", "source": s} for u, s in zip(uids, src)], scores={"s": v})
    order = np.argsort(uids)
    return path, np.asarray(uids)[order], src[order], v   # scores align with the sorted uids


def _sql_score(st, name):
    return st.df("SELECT sc.value FROM samples s LEFT JOIN scores sc ON sc.uid = s.uid AND sc.name = ? "
                 "ORDER BY s.uid", [name])["value"].to_numpy(dtype=float)


def test_columns_equal_the_join_they_replace(make_store):
    path, us, srcs, v = _store(make_store)
    with Store.writer(path) as st:
        run = st.start_run("test", "ann", params={})
        ann_uids = list(us[:1500]) + list(us[:200])       # 200 uids labelled twice: the more confident label wins
        labels = ["woman"] * 1500 + ["man"] * 200
        conf = [0.6] * 1500 + [0.9] * 100 + [0.1] * 100
        st.write_annotations(pd.DataFrame({"uid": ann_uids, "attribute": "g", "label": labels,
                                           "confidence": conf, "method": "m"}), run_id=run, method="m")
        st.end_run(run)
    with Store.reader(path) as st:
        values = columns.score_values(st, "s")
        np.testing.assert_array_equal(values, _sql_score(st, "s"))
        np.testing.assert_array_equal(values, v)
        order = columns.score_order(st, "s")
        finite = np.flatnonzero(~np.isnan(v))
        # descending, equal values in row order: a second, independent sort (lexsort on (row, -value))
        want = finite[np.lexsort((finite, -v[finite]))]
        np.testing.assert_array_equal(order, want)
        codes, labs = columns.group_codes(st, "g")
        got = np.asarray(labs, dtype=object)[np.asarray(codes)]
        want_g = np.full(len(us), "unknown", dtype=object)
        want_g[:100] = "man"                     # confidence 0.9 beats 0.6
        want_g[100:1500] = "woman"               # 0.6 beats 0.1 for rows 100..199
        assert list(labs) == sorted(set(want_g)) and (got == want_g).all()
        codes, labs = columns.group_codes(st, "source")
        assert (np.asarray(labs, dtype=object)[np.asarray(codes)] == srcs).all()
        assert columns.uids(st).to_pylist() == list(us)
        assert columns.uid_positions(st, [us[0], us[777], us[-1], "nope", ""]) == [0, 777, len(us) - 1, None, None]


def test_written_with_the_stage_and_never_stale(make_store, tmp_path):
    from audit.scores.base import run_score

    path, us, _, v = _store(make_store, n=500)
    with Store.reader(path) as st:
        assert columns.fingerprint(st, "score", "s") is not None
    run_score("basic", path, echo=lambda *_: None)           # a stage: its columns exist before any page reads
    with Store.reader(path) as st:
        names = [n for n in st.score_names() if n != "s"]
        assert names
        for n in names:
            fp = columns.fingerprint(st, "score", n)
            assert (st.parts_dir() / "_columns" / "score" / n / fp / "values.npy").is_file(), n
            # the Overview's histogram is kept with the column, and is np.histogram of the values read by SQL
            kept = st.parts_dir() / "_columns" / "score" / n / fp / f"hist{columns.HIST_BINS}.npz"
            assert kept.is_file(), n
            sql = _sql_score(st, n)
            counts, edges = st.score_histogram(n)
            if np.isfinite(sql).any():
                want, want_edges = np.histogram(sql[np.isfinite(sql)], bins=columns.HIST_BINS)
                assert np.array_equal(counts, want) and np.allclose(edges, want_edges), n
            else:                                 # no value (no image sizes in this pool): an empty histogram
                assert len(counts) == 0, n
        before = columns.fingerprint(st, "score", "s")
        np.testing.assert_array_equal(columns.score_values(st, "s"), v)   # built on first use (the fixture wrote it)
        folder = st.parts_dir() / "_columns" / "score" / "s" / before
        (folder / "hist80.npz").unlink()          # a column of an older build, without its histogram: added on read
        counts, _ = st.score_histogram("s")
        assert (folder / "hist80.npz").is_file() and counts.sum() == np.isfinite(v).sum()
        assert not list(folder.glob(".tmp-*"))
        assert np.array_equal(st.score_histogram("s", 7)[0], np.histogram(v[np.isfinite(v)], bins=7)[0])
    # the score written again with other values: a new digest, the new values, the old folder left for old readers
    with Store.writer(path) as st:
        run = st.start_run("test", "again", params={})
        st.write_scores("s", list(us), np.arange(len(us), dtype=float), run_id=run, kind="test")
        st.end_run(run)
    with Store.reader(path) as st:
        assert columns.fingerprint(st, "score", "s") != before
        np.testing.assert_array_equal(columns.score_values(st, "s"), np.arange(len(us), dtype=float))
        assert np.array_equal(st.score_histogram("s")[0], np.histogram(np.arange(len(us)), bins=80)[0])
        assert folder.is_dir()
        assert columns.collect_garbage(st, grace_s=3600) == 0 and folder.is_dir()   # within the grace period
        assert columns.collect_garbage(st, grace_s=-1) >= 1 and not folder.is_dir()
        np.testing.assert_array_equal(columns.score_values(st, "s"), np.arange(len(us), dtype=float))


def test_a_failed_build_leaves_nothing_and_a_read_only_folder_still_answers(make_store, monkeypatch):
    path, _, _, v = _store(make_store, n=300)
    with Store.reader(path) as st:
        fp = columns.fingerprint(st, "score", "s")
        dest = st.parts_dir() / "_columns" / "score" / "s" / fp

        def boom(*_a, **_k):
            raise KeyboardInterrupt   # killed half-way through writing
        monkeypatch.setattr(np, "save", boom)
        with pytest.raises(KeyboardInterrupt):
            columns.score_values(st, "s")
        monkeypatch.undo()
        assert not dest.exists() and not list(dest.parent.glob(".tmp-*"))
        monkeypatch.setattr(columns, "_publish", lambda *_a: (_ for _ in ()).throw(PermissionError("read-only")))
        np.testing.assert_array_equal(columns.score_values(st, "s"), v)   # computed, kept in memory
        assert not dest.exists()


def test_samples_at_reads_the_rows_by_their_part_and_row_number(make_store):
    """Store.samples_at (read by row number, through the locator) equals the join by uid it replaces, on a pool
    whose samples are in three parts with interleaved uids, for rows in any order, repeated, and column subsets."""
    rng = np.random.default_rng(3)
    uids = [f"{rng.integers(1 << 62):032x}" for _ in range(3000)]
    batch = lambda lo, hi: pd.DataFrame({"uid": uids[lo:hi], "caption": [f"caption {i}" for i in range(lo, hi)],
                                         "source": "s", "width": np.arange(lo, hi), "domain": None})
    path = make_store(batch(0, 1000).to_dict("records"))
    with Store.writer(path) as st:
        st.add_samples(batch(1000, 2200))
        st.add_samples(batch(2200, 3000))
    with Store.reader(path) as st:
        assert st.scalar("SELECT count(*) FROM parts WHERE table_name = 'samples'") == 3
        files, part, row = columns.locate(st)
        us = sorted(uids)
        assert len(files) == 3 and len(part) == len(row) == 3000
        # each file read whole, in file order (a second reading, without file_row_number): the uid at the row the
        # locator names is the uid at that position of the pool order
        in_file = {f: st.df(f"SELECT uid FROM read_parquet('{st.parts_dir() / f}')")["uid"].tolist() for f in files}
        assert sorted(u for f in files for u in in_file[f]) == us
        assert all(in_file[files[part[i]]][row[i]] == us[i] for i in range(len(us)))
        rows = [2999, 0, 17, 17, 1500, 2200, 999]
        want = st.samples_page(sorted({us[r] for r in rows})).set_index("uid").loc[[us[r] for r in rows]].reset_index()
        got = st.samples_at(rows)
        pd.testing.assert_frame_equal(got, want)
        assert got["caption"].tolist() == [f"caption {uids.index(us[r])}" for r in rows]
        sub = st.samples_at(rows, ["caption", "width"])
        assert list(sub.columns) == ["uid", "caption", "width"]
        pd.testing.assert_frame_equal(sub, want[["uid", "caption", "width"]])
        assert st.samples_at([]).empty and list(st.samples_at([], ["caption"]).columns) == ["uid", "caption"]
        assert st.samples_at(rows, ["uid"])["uid"].tolist() == [us[r] for r in rows]   # the uids alone
        with pytest.MonkeyPatch.context() as mp:   # a store of the older one-file layout has no locator: by uid
            mp.setattr(columns, "locate", lambda _st: None)
            pd.testing.assert_frame_equal(st.samples_at(rows), want)
            pd.testing.assert_frame_equal(st.samples_at(rows, ["caption", "width"]), want[["uid", "caption", "width"]])
        with pytest.raises(Exception, match="unknown sample column"):
            st.samples_at(rows, ["caption; DROP TABLE parts"])
    with Store.writer(path) as st:   # a fourth part: a new digest, so a new locator, never a stale one
        st.add_samples(pd.DataFrame({"uid": ["0" * 32], "caption": ["first"], "source": "s"}))
    with Store.reader(path) as st:
        assert st.samples_at([0, 1])["caption"].tolist() == ["first", f"caption {uids.index(us[0])}"]
