"""The UMAP embedding map (audit.analyses.embedmap): neighbour search, umap-learn equivalence, chunked stage, CLI."""
import warnings

import numpy as np
import pytest

from audit.analyses.embedmap import layout as E
from audit.analyses.embedmap import run as R
from audit.demo import steps as S
from audit.store import Store
from audit.store.results import map_catalog, map_coords


# ---- the demo store (its fixture runs demo_step, which also pays umap's one-off numba compilation) -----
def test_demo_store_map(demo_store):
    with Store.reader(demo_store) as st:
        cat = map_catalog(st)
        coords = map_coords(st, "datacomp_l14")
        n_embedded = int(st.scalar("SELECT count(*) FROM embeddings WHERE model = 'datacomp_l14'"))
        n_bad = int(st.scalar("SELECT count(*) FROM embeddings WHERE model = 'datacomp_l14' AND isnan(img[1])"))
    assert cat["model"].tolist() == ["datacomp_l14"]
    assert len(coords) == n_embedded - n_bad == int(cat.iloc[0]["n_rows"])
    assert int(cat.iloc[0]["fit_rows"]) == min(S.DEMO_PARAMS.fit_sample, n_embedded)
    assert np.isfinite(coords[["x", "y"]].to_numpy()).all()


# ---- pure pieces ---------------------------------------------------------------------------------------
def test_exact_knn_matches_sklearn():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    ref, q = rng.standard_normal((300, 12)).astype(np.float32), rng.standard_normal((70, 12)).astype(np.float32)
    idx, dist = E.exact_knn(q, ref, 7, block=16)
    d_sk, i_sk = NearestNeighbors(n_neighbors=7, algorithm="brute").fit(ref).kneighbors(q)
    assert np.array_equal(idx, i_sk)
    assert np.allclose(dist, d_sk, atol=1e-4)


def test_drop_self_and_self_graph_convention():
    idx = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 2]])   # row 1 has a duplicate (0) ahead of itself
    dist = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.5, 0.7]], np.float32)
    i2, d2 = E.drop_self(idx, dist, 2)
    assert i2.tolist() == [[1, 2], [0, 2], [1, 0]] and d2[1].tolist() == [0.0, 3.0]
    ref = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    gi, gd = E.KNNIndex(ref, "exact", 3, 0).self_graph()
    assert gi.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]]   # self first, then nearest others
    assert gd.tolist() == [[0, 1, 3], [0, 1, 2], [0, 2, 3], [0, 4, 6]]


def test_pca_projection_and_region_helpers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 10)).astype(np.float32)
    pca = E.fit_pca(x, 3, 0)
    z = E.project(x, pca)
    assert z.shape == (200, 3) and abs(float(z.mean())) < 1e-5   # centred on the fit rows' mean
    assert E.fit_pca(x, 0, 0) is None and E.fit_pca(x, 50, 0) is None
    xs, ys = np.array([0.0, 1.0, 2.0, 5.0]), np.array([0.0, 1.0, 2.0, 5.0])
    assert E.in_box(xs, ys, (2.5, 0.5), (0.5, 2.5)).tolist() == [False, True, True, False]
    assert E.in_lasso(xs, ys, [0.5, 2.5, 2.5, 0.5], [0.5, 0.5, 2.5, 2.5]).tolist() == [False, True, True, False]
    assert E.in_lasso(xs, ys, [0.5, 0.5, 1.5], [1.5, 2.5, 2.5]).tolist() == [False, False, False, False]
    assert E.display_sample(10, 20).tolist() == list(range(10))
    s = E.display_sample(1000, 50, seed=1)
    assert len(s) == 50 and len(set(s.tolist())) == 50 and np.all(np.diff(s) > 0)


def test_params_are_checked():
    E.MapParams(fit_sample=50_000).check()
    for bad in (dict(fit_sample=50_001), dict(column="both"), dict(knn="faiss"), dict(n_neighbors=1)):
        with pytest.raises(ValueError):
            E.MapParams(**bad).check()
    assert E.choose_knn("auto", 4000, 96_000) == "exact"
    assert E.choose_knn("auto", 50_000, 950_000) == "nndescent"


def test_init_positions_equals_umaps_loop():
    import scipy.sparse as sp
    from umap.umap_ import init_graph_transform

    rng = np.random.default_rng(0)
    g = sp.random(60, 40, density=0.15, format="lil", dtype=np.float32, random_state=1)
    g[7, :] = 0                           # a row without neighbours starts at NaN
    g = g.tocsr()
    g.data[:5] = 1.0                      # a membership of exactly 1 pins a row to that neighbour
    g.eliminate_zeros()
    emb = rng.standard_normal((40, 2)).astype(np.float32)
    ours, theirs = E.init_positions(g, emb), init_graph_transform(g, emb)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.array_equal(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)])   # bit for bit


@pytest.mark.slow  # umap-learn compiles its small-data path (~15 s of CPU)
def test_place_equals_umap_transform():
    """Our chunked placement reproduces UMAP.transform exactly when given the same neighbours and distances
    (umap computes them in float64 from float32 coordinates, summed in float32 squares as below)."""
    import umap

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 10))
    fit = (centres[rng.integers(0, 5, 300)] + 0.3 * rng.standard_normal((300, 10))).astype(np.float32)
    new = (centres[rng.integers(0, 5, 60)] + 0.3 * rng.standard_normal((60, 10))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        red = umap.UMAP(n_neighbors=10, random_state=0, n_epochs=60).fit(fit)
        expected = red.transform(new)
    sq = (new[:, None, :] - fit[None, :, :]) ** 2
    d = np.zeros(sq.shape[:2])
    for j in range(sq.shape[2]):
        d += sq[:, :, j]
    d = np.sqrt(d)
    idx = np.argsort(d, axis=1, kind="stable")[:, :10]
    got = E.place(red, idx, np.take_along_axis(d, idx, axis=1))
    assert np.allclose(got, expected, atol=1e-5)


# ---- the stage on hand-made stores -----------------------------------------------------------------------
def _clustered_store(make_store, n=600, dim=16, parts=3, name="m.duckdb", nan_rows=()):
    """Two well-separated clusters (sources a/b), vectors written as ``parts`` Parquet parts."""
    from audit.store.vectors import write_vectors

    rng = np.random.default_rng(0)
    src = np.where(np.arange(n) % 2 == 0, "a", "b")
    centre = np.zeros((2, dim))
    centre[0, 0], centre[1, 1] = 1.0, 1.0
    img = centre[(src == "b").astype(int)] + 0.15 * rng.standard_normal((n, dim))
    img = img.astype(np.float32)
    for r in nan_rows:
        img[r, 0] = np.nan
    uids = [f"u{i:05d}" for i in range(n)]
    samples = [{"uid": u, "caption": f"sample {i}", "source": s} for i, (u, s) in enumerate(zip(uids, src))]
    cut = np.array_split(np.arange(n), parts)
    path = make_store(samples, vectors={"m": ([uids[i] for i in cut[0]], img[cut[0]], img[cut[0]])}, name=name)
    with Store.writer(path) as st:
        for j, part in enumerate(cut[1:], start=1):
            write_vectors(st, "m", str(j), [uids[i] for i in part], img[part], img[part])
        st.refresh_embeddings_view()
    return path, dict(zip(uids, src))


def test_map_stores_every_row_with_a_chunked_transform(make_store, monkeypatch):
    path, src = _clustered_store(make_store, n=600, parts=3, nan_rows=(5,))
    calls = []
    real = E.transform_chunk

    def spy(reducer, index, z, **kw):
        calls.append(len(z))
        return real(reducer, index, z, **kw)

    monkeypatch.setattr(R, "transform_chunk", spy)
    import audit.store.vectors as V

    monkeypatch.setattr(V, "load_matrix", lambda *a, **k: pytest.fail("the map must stream vectors"))
    out = R.build_map(path, "m", E.MapParams(fit_sample=150, chunk=70, n_epochs=50, pca=4), echo=lambda s: None)
    assert out["fit_rows"] == 150 and out["skipped"] == 1 and out["knn"] == "exact"
    assert max(calls) <= 70 and sum(calls) == 600 - 150 - 1 and len(calls) >= 3 * 2
    with Store.reader(path) as st:
        coords = map_coords(st, "m")
        cat = map_catalog(st)
    assert len(coords) == 599 and coords["uid"].is_unique and int(coords["fit"].sum()) == 150
    assert np.isfinite(coords[["x", "y"]].to_numpy()).all() and "u00005" not in set(coords["uid"])
    assert coords["pos"].tolist() == [int(u[1:]) for u in coords["uid"]]     # row position among samples
    assert cat.iloc[0]["n_rows"] == 599 and cat.iloc[0]["skipped"] == 1
    # the layout keeps the two clusters apart: each point's nearest mapped neighbour shares its source
    xy = coords[["x", "y"]].to_numpy()
    lab = coords["uid"].map(src).to_numpy()
    nn = E.exact_knn(xy, xy, 2)[0][:, 1]
    assert (lab[nn] == lab).mean() > 0.95


def test_map_cli_and_rerun_is_a_noop(make_store, capsys):
    from audit.cli import main

    path, _ = _clustered_store(make_store, n=120, parts=1, name="c.duckdb")
    args = ["map", "--store", path, "--model", "m", "--fit-sample", "80", "--n-epochs", "30", "--pca", "0"]
    assert main(args) == 0
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["map", "--store", path, "--model", "nope"]) == 1
    assert main(["map", "--store", path, "--model", "m", "--fit-sample", "60000"]) == 1


@pytest.mark.slow  # pynndescent's numba compilation costs ~30 s of CPU
def test_nndescent_backend_finds_the_true_neighbours():
    pytest.importorskip("pynndescent")
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((400, 8)).astype(np.float32)
    q = rng.standard_normal((50, 8)).astype(np.float32)
    exact = E.exact_knn(q, ref, 5)[0]
    approx = E.KNNIndex(ref, "nndescent", 5, 0).query(q)[0]
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, approx)])
    assert recall >= 0.9
