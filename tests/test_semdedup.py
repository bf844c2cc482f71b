"""SemDeDup: planted near-duplicate sets are found exactly, one sample per set is kept (the one farthest from its
centroid), a pool without duplicates loses nothing, and batching clusters changes nothing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.scores.semdedup import column_names, dedup_cluster, fit_centroids, parse_eps


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_pool(seed=0, d=64, n_sets=30, n_single=300, noise=0.05):
    """n_sets sets of 2-5 near-copies (cosine ≈ 1/sqrt(1+noise²) ≈ 0.9988) plus n_single unrelated vectors."""
    rng = np.random.default_rng(seed)
    rows, set_id = [], []
    for s in range(n_sets):
        base = rng.standard_normal(d)
        base /= np.linalg.norm(base)
        for _ in range(int(rng.integers(2, 6))):
            rows.append(base + noise * rng.standard_normal(d) / np.sqrt(d))
            set_id.append(s + 1)
    for _ in range(n_single):
        rows.append(rng.standard_normal(d))
        set_id.append(0)
    perm = rng.permutation(len(rows))
    return _unit(np.array(rows))[perm], np.array(set_id)[perm]


def brute_force(x, centroid, eps):
    """The paper's rule written plainly: rank by similarity to the centroid (lowest first); drop a row if any row
    ranked before it is within ε."""
    order = sorted(range(len(x)), key=lambda i: (float(x[i] @ centroid), i))
    keep = np.ones(len(x), bool)
    for r, i in enumerate(order):
        for j in order[:r]:
            if float(x[i] @ x[j]) > 1 - eps:
                keep[i] = False
                break
    return keep


def same_partition(a, b):
    """Whether two labelings (0 = no group) define the same groups."""
    pairs_a = {(int(x), int(y)) for x, y in zip(a, b) if x > 0}
    return len(pairs_a) == len({x for x, _ in pairs_a}) == len({y for _, y in pairs_a}) and ((a > 0) == (b > 0)).all()


def test_planted_sets_found_exactly_and_one_kept_per_set():
    x, truth = planted_pool()
    centroid = _unit(x.mean(axis=0, keepdims=True))[0]
    keep, comp = dedup_cluster(x, centroid, [0.01], block=37)   # a small block exercises the block edges
    keep, comp = keep[0], comp[0]
    assert same_partition(comp, truth)                            # precision = recall = 1 for the planted sets
    for s in range(1, truth.max() + 1):
        members = np.flatnonzero(truth == s)
        assert keep[members].sum() == 1
        kept = members[keep[members]][0]
        assert kept == members[np.argmin(x[members] @ centroid)]   # the one farthest from the centroid
    assert keep[truth == 0].all()
    np.testing.assert_array_equal(keep, brute_force(x, centroid, 0.01))


def test_no_duplicates_removes_nothing_and_too_tight_eps_finds_nothing():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((400, 64)))
    keep, comp = dedup_cluster(x, _unit(x.mean(0, keepdims=True))[0], [0.01, 0.05])
    assert keep.all() and (comp == 0).all()
    x, truth = planted_pool(noise=0.05)   # 1 − cosine ≈ 0.0012: ε = 0.0001 is too tight
    keep, comp = dedup_cluster(x, _unit(x.mean(0, keepdims=True))[0], [0.0001])
    assert keep.all() and (comp == 0).all()


def test_chains_follow_the_paper_rule():
    # a ≈ b and b ≈ c but a ≉ c: the component is {a, b, c}; the paper's rule compares with every earlier row
    c = np.array([1.0, 0.0, 0.0])
    a = np.array([0.0, 1.0, 0.0])
    t = 0.0995   # angle step: cos(t) > 0.99 > cos(2t)
    v = lambda ang: np.array([0.0, np.cos(ang), np.sin(ang)])  # noqa: E731
    x = np.stack([v(0), v(t), v(2 * t)]).astype(np.float32) + np.float32(1e-9) * a
    centroid = _unit(np.array([[0.3, 1.0, 0.0]]))[0]
    keep, comp = dedup_cluster(x, centroid, [0.01])
    assert (comp[0] > 0).all() and len(set(comp[0])) == 1
    np.testing.assert_array_equal(keep[0], brute_force(x, centroid, 0.01))


def test_parse_eps_and_names():
    assert parse_eps("0.05, 0.01") == (0.01, 0.05)
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_eps("0")
    with pytest.raises(ValueError, match="commas"):
        parse_eps("a")
    names = column_names("datacomp_l14", [0.05])
    assert names["keep"] == ["semdedup_keep_datacomp_l14_eps0_05"]


def test_spherical_kmeans_separates_far_apart_blobs():
    rng = np.random.default_rng(2)
    centres = _unit(rng.standard_normal((4, 32)))
    x = _unit(np.repeat(centres, 50, axis=0) + 0.05 * rng.standard_normal((200, 32)))
    c = fit_centroids(x, 4, seed=0)
    assign = np.argmax(x @ c.T, axis=1)
    # every blob lands in one cluster (random starts can merge two blobs; 4 random starts from 4 blobs of 50
    # rows in this seed do not)
    assert all(len(set(assign[i * 50:(i + 1) * 50])) == 1 for i in range(4))


def test_score_run_through_the_store_in_bounded_batches(make_store):
    from audit.scores.base import run_score
    from audit.store import Store

    x, truth = planted_pool(d=64, n_sets=20, n_single=150)
    uids = [f"u{i:04d}" for i in range(len(x))]   # sorted = row order
    path = make_store([{"uid": u, "caption": "c"} for u in uids], vectors={"m": (uids, x, x)})
    got = {}
    for max_rows in (10_000, 40):   # one batch of clusters, then many
        names = run_score("semdedup", path, model="m", params={"clusters": 6, "eps": [0.01], "max_rows": max_rows},
                          force=True, echo=lambda s: None)
        with Store.reader(path) as st:
            got[max_rows] = st.score_frame(names).set_index("uid").loc[uids]
    a, b = got[10_000], got[40]
    keep = a["semdedup_keep_m_eps0_01"].to_numpy()
    np.testing.assert_array_equal(keep, b["semdedup_keep_m_eps0_01"].to_numpy())
    # float16 storage moves vectors by ~1e-3 relative: the planted sets (1 − cos ≈ 0.0012) still sit far inside ε
    assert same_partition(a["semdedup_group_m_eps0_01"].to_numpy().astype(int), truth)
    assert int((keep == 0).sum()) == int(sum((truth == s).sum() - 1 for s in range(1, truth.max() + 1)))
    # a set split across clusters would keep two members; with far-apart sets each lands in one cluster
    cl = a["semdedup_cluster_m"].to_numpy()
    assert all(len(set(cl[truth == s])) == 1 for s in range(1, truth.max() + 1))


def test_duplicates_page_counts_match_the_store(demo_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from audit.store import Store
    from audit.store.labels import label_frame
    from conftest import APP

    monkeypatch.setenv("AUDIT_STORE", demo_store)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/duplicates.py").run()
    assert not at.exception and not at.error
    summary = at.dataframe[0].value
    with Store.reader(demo_store) as st:
        names = [n for n in st.score_names() if n.startswith("semdedup_keep_datacomp_l14_eps")]
        frame = st.score_frame(names)
        labels = label_frame(st, ["caption_gender"])
    removed = {float(n.rsplit("eps", 1)[1].replace("_", ".", 1)): int((frame[n] == 0).sum()) for n in names}
    assert dict(zip(summary["ε"], summary["removed"])) == removed
    assert max(removed.values()) > 0   # the demo pool has planted near-duplicates
    # the group table at the selected (largest) ε: removed per group, recomputed here from the stored columns
    eps = max(removed)
    name = next(n for n in names if n.endswith(str(eps).replace(".", "_")))
    table = at.dataframe[1].value.set_index("group")
    merged = frame.merge(labels, on="uid")
    want = merged.groupby("caption_gender")[name].apply(lambda v: int((v == 0).sum()))
    assert table["removed"].to_dict() == want.to_dict()
    assert int(table["removed"].sum()) == removed[eps]


def test_streamed_semdedup_equals_the_plan_by_hand_whatever_the_batches_and_buckets(make_store):
    """Version 2 (passes over the vector parts): the fit sample is the keyed draw of (seed, uid), k-means runs on it
    in uid order, every row goes to its nearest centroid, and each cluster keeps what the paper's rule (written
    plainly in ``brute_force``) keeps. Recomputed here from the stored float16 vectors, and the same for engine
    batches of 37 rows and buckets of ~20 rows."""
    from audit.engine import Engine
    from audit.scores.base import keyed_uniforms, run_score
    from audit.store import Store

    x, truth = planted_pool(seed=3, d=32, n_sets=25, n_single=200)
    uids = [f"u{i:04d}" for i in range(len(x))]
    path = make_store([{"uid": u, "caption": "c"} for u in uids], vectors={"m": (uids, x, x)})
    got = []
    for max_rows, batch_rows in ((10_000, None), (40, 37)):
        names = run_score("semdedup", path, model="m", engine=Engine("local", batch_rows=batch_rows), force=True,
                          params={"clusters": 5, "eps": [0.01, 0.3], "max_rows": max_rows, "fit_sample": 150},
                          echo=lambda s: None)
        with Store.reader(path) as st:
            got.append(st.score_frame(names).set_index("uid").loc[uids])
    pd.testing.assert_frame_equal(got[0], got[1])
    frame = got[0]
    # by hand: the stored float16 rows, normalised; the keyed fit draw (150 of 275 rows on average)
    f = x.astype(np.float16).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    n = len(uids)
    pick = keyed_uniforms(np.array(uids, dtype=object), np.arange(n), np.zeros(n, np.int64), 0) < 150 / n
    centroids = fit_centroids(f[pick], 5, 0)
    cluster = np.argmax(f @ centroids.T, axis=1)
    np.testing.assert_array_equal(frame["semdedup_cluster_m"].to_numpy(), cluster)
    for eps, tag in ((0.01, "0_01"), (0.3, "0_3")):
        want = np.ones(len(f), bool)
        for c in np.unique(cluster):
            idx = np.flatnonzero(cluster == c)
            want[idx] = brute_force(f[idx], centroids[c], eps)
        np.testing.assert_array_equal(frame[f"semdedup_keep_m_eps{tag}"].to_numpy() == 1, want)
        group = frame[f"semdedup_group_m_eps{tag}"].to_numpy().astype(int)
        # a group id never spans two clusters, and ids are offset per cluster: above the rows of earlier clusters
        sizes = np.bincount(cluster)
        for g in np.unique(group[group > 0]):
            c = np.unique(cluster[group == g])
            assert len(c) == 1 and sizes[:c[0]].sum() < g <= sizes[:c[0] + 1].sum()
    assert same_partition(frame["semdedup_group_m_eps0_01"].to_numpy().astype(int), truth)
    # ε = 0.3 (cosine > 0.7) joins nothing of the unrelated 32-d rows but every planted set: the same removals
    assert int((frame["semdedup_keep_m_eps0_3"] == 0).sum()) >= int((frame["semdedup_keep_m_eps0_01"] == 0).sum())
