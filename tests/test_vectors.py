"""Vector parts: binary float16 rows, read back exactly; the SQL view decodes the same numbers; parts of the older
list layout are still read and rewritten once by a writer."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from audit.store import Store
from audit.store.vectors import iter_vectors, migrate_parts, write_vectors

# every float16 class: zeros of both signs, the smallest subnormal, the largest subnormal, the smallest normal,
# the largest finite, infinities, NaN, and ordinary values
SPECIAL = np.array([0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 1023 * 2.0 ** -24, 2.0 ** -14, 65504.0, -65504.0,
                    np.inf, -np.inf, np.nan, 1.0, -1.5, 0.333251953125], dtype=np.float16)


def _store(tmp_path, d=16):
    path = str(tmp_path / "v.duckdb")
    with Store.writer(path) as st:
        st.register_model("m", dim=d, backend="test", arch="none", pretrained=None, random_weights=True, run_id=0)
    return path


def _values(n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float16)
    x.flat[:len(SPECIAL)] = SPECIAL
    return x


def test_binary_parts_round_trip_exactly_and_the_view_agrees(tmp_path):
    d = 16
    path = _store(tmp_path, d)
    img, txt = _values(5, d, 1), _values(5, d, 2)
    uids = [f"u{i}" for i in range(5)]
    with Store.writer(path) as st:
        p = write_vectors(st, "m", "a", uids, img, txt)
        st.refresh_embeddings_view()
    assert pq.read_schema(p).field("img").type == pa.binary(2 * d)
    with Store.reader(path) as st:
        (got_u, cols), = list(iter_vectors(st, "m"))
        view = st.df("SELECT uid, img, txt FROM embeddings ORDER BY uid")
    assert got_u == uids
    for got, want in ((cols["img"], img), (cols["txt"], txt)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float32))   # NaN positions equal too
    sql_img = np.array(view["img"].tolist(), dtype=np.float32)
    np.testing.assert_array_equal(sql_img, img.astype(np.float32))
    assert np.signbit(sql_img[0, 1]) and not np.signbit(sql_img[0, 0])   # -0.0 stays negative


def test_old_list_parts_are_read_and_migrated_by_a_writer(tmp_path):
    d = 8
    path = _store(tmp_path, d)
    img, txt = _values(4, d, 3), _values(4, d, 4)
    with Store.reader(path) as st:
        folder = st.model_dir("m")
    folder.mkdir(parents=True, exist_ok=True)

    def fsl(x):
        return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)

    old = folder / "part-old.parquet"
    pq.write_table(pa.table({"uid": ["a", "b", "c", "d"], "img": fsl(img), "txt": fsl(txt)}), old)
    with Store.reader(path) as st:   # a reader reads the old layout as it is
        (_, cols), = list(iter_vectors(st, "m"))
    np.testing.assert_array_equal(cols["img"], img.astype(np.float32))
    assert pa.types.is_fixed_size_list(pq.read_schema(old).field("img").type)
    with Store.writer(path) as st:   # a writer's open rewrites it
        st.refresh_embeddings_view()
        n = int(st.scalar("SELECT count(*) FROM embeddings"))
    assert n == 4 and pq.read_schema(old).field("img").type == pa.binary(2 * d)
    assert migrate_parts(folder) == 0   # nothing left to do
    with Store.reader(path) as st:
        (u, cols), = list(iter_vectors(st, "m"))
    assert u == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(cols["txt"], txt.astype(np.float32))


def test_row_norms_and_normalised_half_agree_on_both_paths(monkeypatch):
    """numpy below TORCH_MIN_ROWS, torch above: the same norms (float32 rounding) and the same float16 vectors as
    l2_normalise + a float16 cast."""
    import numpy as np

    from audit.store import vectors as v

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 64)).astype(np.float16)
    rows = np.sort(rng.choice(3000, 1000, replace=False))
    want = np.linalg.norm(x.astype(np.float32), axis=1)
    ref = v.l2_normalise(x[rows]).astype(np.float16)
    for threshold in (10**9, 0):   # numpy, then torch
        monkeypatch.setattr(v, "TORCH_MIN_ROWS", threshold)
        norms = v.row_norms(x, chunk=700)
        np.testing.assert_allclose(norms, want, rtol=1e-6)
        got = v.normalised_half(x, rows, norms)
        assert got.dtype == np.float16
        assert np.mean(got != ref) < 1e-3 and np.abs(got.astype(np.float32) - ref.astype(np.float32)).max() <= 1e-3


def test_unit_rows_are_kept_as_given_and_gather_rows_equals_fancy_indexing(tmp_path):
    """normalised_half keeps a float16 row whose norm is within 2^-11 of 1 bit for bit (dividing would move a number
    by less than one float16 step) and divides the others; gather_rows (run-by-run copies, or a view of a single
    run) equals x[rows], for a memmap as for an array."""
    import numpy as np

    from audit.store import vectors as v

    rng = np.random.default_rng(5)
    x32 = rng.normal(size=(400, 48)).astype(np.float32)
    # 3e-4 off unit: within the tolerance, yet dividing would change many numbers (the check below could fail)
    x = (x32 / np.linalg.norm(x32, axis=1, keepdims=True) * (1 + 3e-4)).astype(np.float16)
    x[7] *= 3                                    # far from unit
    x[9] = 0                                     # zero norm: divided (a NaN row, which ingest rejects)
    norms = v.row_norms(x)
    assert abs(norms[0] - 1) <= v.UNIT_TOL and norms[7] > 2.9
    rows = np.array([0, 1, 2, 7, 8, 10, 11, 12, 300])
    got = v.normalised_half(x, rows, norms)
    keep = rows != 7
    np.testing.assert_array_equal(got[keep], x[rows[keep]])
    divided = (x[rows[keep]].astype(np.float32) / norms[rows[keep]][:, None]).astype(np.float16)
    assert (divided != x[rows[keep]]).sum() > 20   # what the check above tells apart
    ref = v.l2_normalise(x[[7]]).astype(np.float16)
    assert np.abs(got[3].astype(np.float32) - ref[0].astype(np.float32)).max() <= 1e-3
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for r in (np.arange(400), np.arange(5, 9), np.array([4]), np.array([], int), rows,
              np.sort(rng.choice(400, 390, replace=False)), np.sort(rng.choice(400, 30, replace=False))):
        for src in (x, mm):
            for copy in (True, False):
                g = v.gather_rows(src, r, copy=copy)
                assert type(g) is np.ndarray and g.shape == (len(r), 48)
                np.testing.assert_array_equal(g, x[r])
    view = v.gather_rows(mm, np.arange(5, 9), copy=False)
    assert np.shares_memory(view, mm) and not np.shares_memory(v.gather_rows(mm, np.arange(5, 9)), mm)
