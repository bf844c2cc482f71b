"""Every score through the CLI on hand-made stores, and the demo runs on the shared demo store."""
import json
import math

import numpy as np
import pytest

from audit.cli import main
from audit.store import Store

E = np.eye(4, dtype=np.float32)


@pytest.fixture
def tiny(make_store):
    """4 samples, a 4-d model 'm' with img = e_i, txt = e_i except sample d (txt = e1)."""
    samples = [
        {"uid": "a", "caption": "a brown dog running", "width": 200, "height": 600},
        {"uid": "b", "caption": "a brown dog running", "width": 199, "height": 199},
        {"uid": "c", "caption": "brown dog", "width": 800, "height": 800},
        {"uid": "d", "caption": "a dog on the beach.", "width": 640, "height": 480},
    ]
    img = E.copy()
    txt = E.copy()
    txt[3] = E[0]
    return make_store(samples, vectors={"m": (["a", "b", "c", "d"], img, txt)},
                      scores={"clip_b32_similarity_score": [0.30, 0.28, 0.27, 0.5]})


def values(store, name):
    with Store.reader(store) as st:
        return st.score_frame([name])[name].to_numpy(float)


def test_negclip_cli_by_hand(tiny):
    assert main(["score", "negclip", "--store", tiny, "--model", "m", "--tau", "0.5", "--k", "2"]) == 0
    got = values(tiny, "negclip_m")
    # S_ij = f_i·g_j with g_a = g_d = e1: S_aa = S_ad = S_bb = S_cc = 1, every other entry 0 (one batch: B ≥ N)
    tau = 0.5
    lse = lambda *v: math.log(sum(math.exp(x / tau) for x in v))  # noqa: E731
    r = {"a": 0.5 * tau * (lse(1, 0, 0, 1) + lse(1, 0, 0, 0)),   # row a: S_aa, S_ad = 1; column a: S_aa only
         "b": 0.5 * tau * (lse(0, 1, 0, 0) + lse(0, 1, 0, 0)),
         "c": 0.5 * tau * (lse(0, 0, 1, 0) + lse(0, 0, 1, 0)),
         "d": 0.5 * tau * (lse(0, 0, 0, 0) + lse(1, 0, 0, 0))}   # row d: f_d = e4 sees nothing; column d: S_ad = 1
    want = [1 - r["a"], 1 - r["b"], 1 - r["c"], 0 - r["d"]]
    assert got == pytest.approx(want, abs=1e-5)
    with Store.reader(tiny) as st:
        runs = st.runs()
    params = json.loads(runs[runs["name"] == "negclip"].iloc[-1]["params"])
    assert params["tau"] == 0.5 and params["k"] == 2 and params["batch_size"] == 32768


def test_normsim_and_vas_against_a_target_file(tiny, tmp_path):
    target = tmp_path / "target.npy"
    np.save(target, np.stack([E[0], E[1]]) * 3.0)             # rows are re-normalised on load
    for p in ("2", "inf"):
        assert main(["score", "normsim", "--store", tiny, "--model", "m", "--p", p, "--target", str(target)]) == 0
    assert values(tiny, "normsim_inf_m").tolist() == [1.0, 1.0, 0.0, 0.0]
    assert values(tiny, "normsim_2_m").tolist() == [1.0, 1.0, 0.0, 0.0]
    assert main(["score", "vas", "--store", tiny, "--model", "m", "--target", str(target),
                 "--target-fraction", "1"]) == 0
    assert values(tiny, "vas_m").tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])   # = normsim_2² / M
    with Store.reader(tiny) as st:
        cat = st.score_catalog().set_index("name")
    assert "target.npy" in cat.loc["normsim_inf_m", "description"]
    pq = tmp_path / "target.parquet"
    import pandas as pd

    pd.DataFrame({"embedding": [list(E[2])]}).to_parquet(pq)
    assert main(["score", "normsim", "--store", tiny, "--model", "m", "--p", "inf", "--target", str(pq),
                 "--tag", "third"]) == 0
    assert values(tiny, "normsim_inf_m_third").tolist() == [0.0, 0.0, 1.0, 0.0]


def test_vas_d_cli(tiny):
    assert main(["score", "vas-d", "--store", tiny, "--model", "m", "--iters", "1", "--fraction-vas", "0.5",
                 "--target-fraction", "1"]) == 0
    v = values(tiny, "vas_d_m")
    assert np.isfinite(v).all() and (v >= 1).sum() == 2        # int(0.5·4) = 2 survivors


def test_basic_laion_text_metaclip_cli(tiny, tmp_path, monkeypatch):
    from audit import lang

    monkeypatch.setattr(lang, "is_english", lambda texts: np.ones(len(texts), bool))  # stub the detector
    assert main(["score", "basic", "--store", tiny]) == 0
    assert values(tiny, "basic").tolist() == [1.0, 0.0, 0.0, 1.0]   # aspect 3.0 kept, 199 px, 2 words
    assert main(["score", "laion", "--store", tiny]) == 0
    assert values(tiny, "laion").tolist() == [1.0, 1.0, 0.0, 1.0]
    ents = tmp_path / "ents.txt"
    ents.write_text("beach\nBrown\n")
    assert main(["score", "text-based", "--store", tiny, "--entities", str(ents)]) == 0
    # tokens are lower-cased; "beach." keeps its period (the reference's whitespace split), so d has no entity
    assert values(tiny, "text_based").tolist() == [1.0, 1.0, 1.0, 0.0]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(["dog", "brown dog", "beach"]))
    assert main(["score", "metaclip", "--store", tiny, "--metadata", str(meta), "--t", "2"]) == 0
    # counts: dog 4, brown dog 3, beach 1 -> p = 0.5, 2/3, 1
    p = values(tiny, "metaclip_p")
    assert p == pytest.approx([1 - 0.5 / 3, 1 - 0.5 / 3, 1 - 0.5 / 3, 1.0])
    assert values(tiny, "metaclip_keep")[3] == 1.0


def test_image_based_cli(tiny, tmp_path, monkeypatch):
    from audit import lang

    monkeypatch.setattr(lang, "is_english", lambda texts: np.ones(len(texts), bool))
    target = tmp_path / "t.npy"
    np.save(target, E[:1])
    assert main(["score", "image-based", "--store", tiny, "--model", "m", "--target", str(target),
                 "--clusters", "4"]) == 0
    # 4 orthogonal points, 4 clusters: each its own centroid; the target e1 falls in a's cluster
    assert values(tiny, "image_based_target_m").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert values(tiny, "image_based_m").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert values(tiny, "image_based_caption_m").tolist() == [1.0, 1.0, 1.0, 1.0]


def test_clear_messages_for_bad_input(tiny, tmp_path, capsys):
    assert main(["score", "normsim", "--store", tiny, "--model", "m"]) == 1
    assert "--target FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((2, 3), np.float32))
    assert main(["score", "normsim", "--store", tiny, "--model", "m", "--target", str(bad)]) == 1
    assert "dimension 3 but m has 4" in capsys.readouterr().err
    assert main(["score", "text-based", "--store", tiny]) == 1
    assert "entity list" in capsys.readouterr().err
    assert main(["score", "metaclip", "--store", tiny, "--metadata", str(tmp_path / "none.txt")]) == 1
    assert "not found" in capsys.readouterr().err
    with Store.writer(tiny) as st:
        st.cursor().execute("DELETE FROM score_catalog WHERE name = 'clip_b32_similarity_score'")
    assert main(["score", "laion", "--store", tiny]) == 1
    assert "ViT-B/32 score" in capsys.readouterr().err


def test_demo_runs_every_score_with_its_contract_name(demo_store):
    with Store.reader(demo_store) as st:
        cat = st.score_catalog().set_index("name")
    for name in ["negclip_datacomp_l14", "normsim_2_datacomp_l14", "normsim_inf_datacomp_l14", "vas_datacomp_l14",
                 "vas_d_datacomp_b32", "basic", "basic_aspect", "laion", "laion_b32", "image_based_datacomp_l14",
                 "text_based", "metaclip_p", "metaclip_keep"]:
        assert name in cat.index, name
    assert "TEXT PROXY" in cat.loc["normsim_inf_datacomp_l14", "description"]
    assert "OWN unigrams" in cat.loc["metaclip_p", "description"]
    assert "py3langid" in cat.loc["basic", "description"]
    assert cat.loc["negclip_datacomp_l14", "simulated"]
    # negclip ranks like the CLIP score (the paper reports Spearman 0.93-0.98 on real data)
    from audit.decide.recipes import spearman

    with Store.reader(demo_store) as st:
        f = st.score_frame(["negclip_datacomp_l14", "clip_datacomp_l14", "metaclip_keep", "metaclip_p"])
    rho, n = spearman(f["negclip_datacomp_l14"].to_numpy(), f["clip_datacomp_l14"].to_numpy())
    assert rho > 0.85 and n > 3000
    assert f.loc[f["metaclip_p"] == 0, "metaclip_keep"].eq(0).all()


def test_export_accepts_recipes(demo_store, tmp_path):
    out = tmp_path / "sub.csv"
    spec = "negclip_datacomp_l14:top=0.3 then normsim_inf_datacomp_l14:top=0.2"
    assert main(["export", "--store", demo_store, "--out", str(out), "--keep", spec]) == 0
    man = json.loads((tmp_path / "sub.csv.manifest.json").read_text())
    with Store.reader(demo_store) as st:
        n = st.count("samples")
    assert man["kept"] == int(n * 0.2) + 1 and man["recipe"] == spec
    assert man["kept_after_step"] == [int(n * 0.3) + 1, int(n * 0.2) + 1]
    out2 = tmp_path / "same.csv"
    assert main(["export", "--store", demo_store, "--out", str(out2)] +
                sum((["--keep", r] for r in man["equivalent_rules"]), [])) == 0
    assert out2.read_bytes() == out.read_bytes()
    assert main(["export", "--store", demo_store, "--out", str(tmp_path / "b.csv"), "--keep", "basic",
                 "--keep", "clip_l14_similarity_score:top=0.3"]) == 0
    man = json.loads((tmp_path / "b.csv.manifest.json").read_text())
    assert "basic: caption has ≤ 2 words" in man["excluded_by_reason"]


def test_image_based_with_given_centroids(tiny, tmp_path, monkeypatch):
    from audit import lang

    monkeypatch.setattr(lang, "is_english", lambda texts: np.ones(len(texts), bool))
    cen = tmp_path / "c.npy"
    np.save(cen, np.array([[1, 0, 0, 0], [0, 2, 0, 0]], np.float32))   # unnormalised, as DataComp's
    target = tmp_path / "t.npy"
    np.save(target, E[1:2])
    assert main(["score", "image-based", "--store", tiny, "--model", "m", "--target", str(target),
                 "--centroids", str(cen)]) == 0
    # ip argmax: a=e1 -> 0 (1 vs 0), b=e2 -> 1, c=e3 and d=e4 -> ties at 0 -> 0; target e2 -> cluster 1
    assert values(tiny, "image_based_cluster_m").tolist() == [0.0, 1.0, 0.0, 0.0]
    assert values(tiny, "image_based_m").tolist() == [0.0, 1.0, 0.0, 0.0]


def test_a_score_computed_from_a_random_weight_score_is_flagged(make_store):
    """laion reads a B/32 CLIP score; when that score came from a random-weight model, laion says so too."""
    import numpy as np

    from audit.scores.base import run_score
    from audit.store import Store

    n = 6
    uids = [f"u{i}" for i in range(n)]
    path = make_store([{"uid": u, "caption": "a photo of a dog on the beach"} for u in uids],
                      scores={"clip_b32_similarity_score": np.linspace(0.2, 0.35, n)})
    with Store.writer(path) as st:   # the fixture's score, now marked as coming from random weights
        st.cursor().execute("UPDATE score_catalog SET random_weights = true")
    run_score("laion", path, params={"clip_score": "clip_b32_similarity_score"}, echo=lambda s: None)
    with Store.reader(path) as st:
        cat = st.score_catalog().set_index("name")
    assert bool(cat.loc["laion", "random_weights"]) and bool(cat.loc["laion_b32", "random_weights"])


def test_metaclip_warns_when_t_is_too_large_for_the_pool(make_store):
    from audit.scores.base import run_score

    path = make_store([{"uid": f"u{i}", "caption": f"a photo of a dog number {i}"} for i in range(20)])
    lines: list[str] = []
    run_score("metaclip", path, params={"t": 20_000.0, "min_count": 3, "entries_out": None}, echo=lines.append)
    assert any("balancing removes nothing" in s and "scale it to the pool" in s for s in lines)
    lines.clear()
    run_score("metaclip", path, params={"t": 5.0, "min_count": 3, "entries_out": None}, echo=lines.append, force=True)
    assert not any("balancing removes nothing" in s for s in lines)


def test_row_local_score_streams_over_parts_and_equals_the_whole_pool_computation(make_store, monkeypatch):
    """`score basic` reads the samples part by part, a batch at a time (several parts at once in worker processes
    on large pools); the stored values equal basic_columns on the whole pool, whatever the batches and workers."""
    import pandas as pd

    from audit.scores import base
    from audit.scores.basic import basic_columns
    from audit.store import streamed
    from audit import lang

    rng = np.random.default_rng(4)
    words = ["a", "dog", "on", "the", "beach", "Hund", "am", "Strand", "=", "photo"]
    rows = [{"uid": f"{i:04d}", "caption": " ".join(rng.choice(words, rng.integers(0, 7))),
             "width": None if i % 11 == 0 else int(rng.integers(0, 900)), "height": int(rng.integers(1, 900))}
            for i in range(60)]
    path = make_store(rows[:35])
    with Store.writer(path) as st:     # a second samples part
        st.add_samples(pd.DataFrame(rows[35:]).assign(source="test"))
    frame = pd.DataFrame(rows).sort_values("uid")
    want = basic_columns(frame["caption"].tolist(), frame["width"].to_numpy(float), frame["height"].to_numpy(float),
                         lang.is_english(frame["caption"].tolist()))
    monkeypatch.setattr(streamed, "BATCH_ROWS", 7)
    for parallel_min in (10**9, 1):      # one process, then spawned workers
        monkeypatch.setattr(streamed, "PARALLEL_MIN_ROWS", parallel_min)
        assert base.run_score("basic", path, force=True, echo=lambda s: None) == list(want)
        with Store.reader(path) as st:
            got = st.score_frame(list(want))
            cat = st.score_catalog().set_index("name")
            n_parts = st.scalar("SELECT count(*) FROM parts WHERE table_name = 'scores' AND key = 'basic'")
        assert got["uid"].tolist() == frame["uid"].tolist()
        for name, v in want.items():
            np.testing.assert_array_equal(got[name].to_numpy(float), v, err_msg=name)
        assert n_parts == 5 + 4          # ceil(35 / 7) + ceil(25 / 7) batches, one part each
        assert "language:" in cat.loc["basic", "description"] and not bool(cat.loc["basic", "simulated"])


def test_laion_streams_the_samples_joined_with_the_b32_score_and_equals_the_whole_pool_computation(make_store,
                                                                                                   monkeypatch):
    """laion reads captions and a stored score: the runner joins them into one input file, streams it in batches
    (several batches per part), and the values equal laion_columns on the whole pool; a sample without a B/32
    value is not kept (laion_b32 NaN), as before."""
    import pandas as pd

    from audit import lang
    from audit.scores import base
    from audit.scores.laion import laion_columns
    from audit.store import streamed

    rng = np.random.default_rng(7)
    words = ["a", "dog", "on", "the", "beach", "Hund", "am", "Strand", "photo"]
    rows = [{"uid": f"{i:04d}", "caption": None if i == 3 else " ".join(rng.choice(words, rng.integers(1, 7)))}
            for i in range(50)]
    b32 = rng.uniform(0.2, 0.36, 50)
    b32[5] = np.nan
    path = make_store(rows[:30])
    with Store.writer(path) as st:     # a second samples part; B/32 scores of every sample but the last
        run = st.start_run("test", "more", params={})
        st.add_samples(pd.DataFrame(rows[30:]).assign(source="test"))
        st.write_scores("clip_b32_similarity_score", [r["uid"] for r in rows[:49]], b32[:49], run_id=run, kind="test")
        st.end_run(run)
    b32[49] = np.nan                   # no value at all
    captions = [r["caption"] for r in rows]
    want = laion_columns(b32, lang.is_english(captions))
    monkeypatch.setattr(streamed, "BATCH_ROWS", 7)
    assert base.run_score("laion", path, params={"clip_score": None}, echo=lambda s: None) == list(want)
    with Store.reader(path) as st:
        got = st.score_frame(list(want))
        cat = st.score_catalog().set_index("name")
        run = st.runs().iloc[-1]
        n_parts = st.scalar("SELECT count(*) FROM parts WHERE table_name = 'scores' AND key = 'laion'")
        left = list(st.parts_dir().glob("inputs/*"))
    assert got["uid"].tolist() == [r["uid"] for r in rows]
    for name, v in want.items():
        np.testing.assert_array_equal(got[name].to_numpy(float), v, err_msg=name)
    assert got["laion"].iloc[[5, 49]].tolist() == [0.0, 0.0] and np.isnan(got["laion_b32"].iloc[[5, 49]]).all()
    assert n_parts == 8 and (run["rows_in"], run["rows_rejected"]) == (50, 0)   # ceil(50 / 7) batches of the one input file
    assert "clip_b32_similarity_score" in cat.loc["laion", "description"] and not left   # the input file is gone


@pytest.mark.parametrize("metadata", [False, True], ids=["pool-ngrams", "metadata"])
def test_metaclip_streams_in_pool_passes_and_equals_the_whole_pool_computation(make_store, monkeypatch, tmp_path,
                                                                              metadata):
    """MetaCLIP on the streamed runner (two samples parts, batches of 7): the pool passes (n-grams, entry counts)
    see every caption, so p, matches and min count equal metaclip_columns on the whole pool; keep equals the keyed
    draw on the whole pool."""
    import pandas as pd

    from audit.scores import base
    from audit.scores.metaclip import draw_keyed, entry_probability, match, metaclip_columns, pool_ngrams
    from audit.store import streamed

    rng = np.random.default_rng(3)
    words = ["a", "red", "car", "dog", "on", "the", "beach", "blue", "sky", ",", "."]
    rows = [{"uid": f"{i:04d}", "caption": None if i == 4 else " ".join(rng.choice(words, rng.integers(1, 6)))}
            for i in range(60)]
    path = make_store(rows[:33])
    with Store.writer(path) as st:
        st.add_samples(pd.DataFrame(rows[33:]).assign(source="test"))
    captions = [r["caption"] for r in rows]
    params = {"t": 4.0, "min_count": 3, "entries_out": None}
    entries = ["red car", "dog", "blue sky", "beach", "zebra"] if metadata else pool_ngrams(captions, min_count=3)
    if metadata:
        f = tmp_path / "meta.txt"
        f.write_text("\n".join(entries))
        params["metadata"] = str(f)
    want, counts = metaclip_columns(captions, entries, t=4.0, rng=np.random.default_rng(0))
    tids, eids = match(captions, entries)
    want["metaclip_keep"] = draw_keyed([r["uid"] for r in rows], tids, eids, entry_probability(counts, 4.0),
                                       seed=5).astype(float)
    monkeypatch.setattr(streamed, "BATCH_ROWS", 7)
    lines = []
    assert base.run_score("metaclip", path, params=params, seed=5, echo=lines.append) == list(want)
    with Store.reader(path) as st:
        got = st.score_frame(list(want))
        cat = st.score_catalog().set_index("name")
        n_parts = st.scalar("SELECT count(*) FROM parts WHERE table_name = 'scores' AND key = 'metaclip_p'")
    for name, v in want.items():
        np.testing.assert_array_equal(got[name].to_numpy(float), v, err_msg=name)
    assert n_parts == 5 + 4 and len(entries) > 4 and 0 < got["metaclip_keep"].sum() < 60
    assert f"{len(entries):,} entries" in cat.loc["metaclip_p", "description"]
    assert any(ln.startswith("head entries") for ln in lines)
    assert ("no --metadata given" in " ".join(lines)) is not metadata


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_image_based_streams_in_passes_and_equals_the_whole_pool_computation(make_store, monkeypatch, tmp_path, ratio):
    """image-based on the streamed runner (two vector parts, batches of 7; a NaN vector, a sample without one, a
    caption that fails the rule): k-means trained on the same points as the whole-pool computation (all the
    caption-passing finite vectors in part order, or their keyed sample), so every column equals it."""
    import pandas as pd

    from audit import lang
    from audit.scores import base
    from audit.scores.image_based import assign, caption_prefilter, kmeans, target_clusters
    from audit.store import streamed
    from audit.store.vectors import write_vectors

    rng = np.random.default_rng(9)
    n, d = 80, 6
    uids = [f"s{i:03d}" for i in range(n)]
    caps = ["a photo of a dog on the beach" if i % 5 else "dog" for i in range(n)]    # every 5th fails the rule
    centers = rng.normal(size=(4, d))
    img = (centers[rng.integers(0, 4, n)] + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    img[3] = np.nan
    path = make_store([{"uid": u, "caption": c} for u, c in zip(uids, caps)] + [{"uid": "zz", "caption": caps[1]}])
    with Store.writer(path) as st:
        run = st.start_run("test", "vectors", params={})
        for k, sl in enumerate((slice(0, 45), slice(45, n))):
            write_vectors(st, "m", str(k), uids[sl], img[sl], img[sl])
        st.register_model("m", dim=d, backend="test", arch="m", pretrained=None, random_weights=False, run_id=run)
        st.end_run(run)
    target = tmp_path / "t.npy"
    np.save(target, centers[:1])
    monkeypatch.setattr(lang, "is_english", lambda texts: np.ones(len(texts), bool))
    monkeypatch.setattr(streamed, "BATCH_ROWS", 7)
    params = {"target": str(target), "clusters": 3, "niter": 20, "sample_ratio": ratio, "assign": "ip"}
    out = base.run_score("image-based", path, model="m", params=params, seed=2, echo=lambda s: None)
    with Store.reader(path) as st:
        got = st.score_frame(out).set_index("uid")
    # the whole pool at once
    cap_ok = caption_prefilter(caps, np.ones(n, bool))
    finite = np.isfinite(img).all(axis=1)
    unit = img[finite] / np.linalg.norm(img[finite], axis=1, keepdims=True)
    train = unit[cap_ok[finite]]
    if ratio < 1:
        tu = np.array(uids)[finite][cap_ok[finite]]
        train = train[base.keyed_uniforms(tu, np.arange(len(tu)), np.zeros(len(tu), np.int64), 2) < ratio]
    centroids = kmeans(train, 3, niter=20, seed=2)
    t = np.load(target)
    cluster = np.full(n, np.nan)
    cluster[finite] = assign(unit, centroids)
    in_target = np.where(np.isnan(cluster), np.nan, np.isin(cluster, target_clusters(t / np.linalg.norm(t), centroids)))
    keep = np.where(np.isnan(in_target), np.nan, (in_target == 1) & cap_ok)
    np.testing.assert_array_equal(got.loc[uids, "image_based_cluster_m"].to_numpy(float), cluster)
    np.testing.assert_array_equal(got.loc[uids, "image_based_target_m"].to_numpy(float), in_target)
    np.testing.assert_array_equal(got.loc[uids, "image_based_m"].to_numpy(float), keep)
    np.testing.assert_array_equal(got.loc[uids, "image_based_caption_m"].to_numpy(float), cap_ok.astype(float))
    assert np.isnan(got.loc["zz", ["image_based_m", "image_based_target_m", "image_based_cluster_m"]].to_numpy(float)).all()
    assert got.loc["zz", "image_based_caption_m"] == 1.0 and 0 < np.nansum(keep) < n
    assert bool(len(train) < cap_ok[finite].sum()) is (ratio < 1)


# ---- vector-local scores stream over the vector parts -----------------------------------------------------------
def test_clip_streams_over_vector_parts_with_missing_foreign_and_nan_rows(make_store):
    """Samples without a vector get a NaN row, a NaN vector a NaN value, a vector whose uid is not a sample is
    left out; every value is img·txt of the float16-rounded stored vectors (numpy, independently)."""
    from audit.scores.base import run_score
    from audit.store.vectors import write_vectors

    rng = np.random.default_rng(3)
    uids = [f"u{i:02d}" for i in range(10)]
    img, txt = rng.normal(size=(9, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    img[2] = np.nan
    vec_uids = uids[:8] + ["ghost"]
    path = make_store([{"uid": u, "caption": "c"} for u in uids], vectors={"m": (vec_uids[:5], img[:5], txt[:5])})
    with Store.writer(path) as st:                       # a second part: several files, one score
        write_vectors(st, "m", "1", vec_uids[5:], img[5:], txt[5:])
    assert run_score("clip", path, model="m", echo=lambda s: None) == ["clip_m"]
    with Store.reader(path) as st:
        got = st.df("SELECT uid, value FROM scores WHERE name = 'clip_m' ORDER BY uid")
        run = st.runs().iloc[-1]
    assert got["uid"].tolist() == uids                   # every sample once; no ghost
    h_img, h_txt = img.astype(np.float16).astype(np.float64), txt.astype(np.float16).astype(np.float64)
    want = np.full(10, np.nan)
    want[:8] = (h_img[:8] * h_txt[:8]).sum(axis=1)
    np.testing.assert_allclose(got["value"].to_numpy(float), want, atol=1e-6)
    assert np.isnan(got["value"].to_numpy(float)).tolist() == [i in (2, 8, 9) for i in range(10)]
    assert (run["rows_in"], run["rows_out"], run["rows_rejected"]) == (10, 10, 0)
    assert run["note"].startswith("3 missing values")


def test_vectors_with_duplicate_uids_fail_the_run_with_the_fix(make_store):
    from audit.scores.base import run_score
    from audit.store import StoreError
    from audit.store.vectors import write_vectors

    path = make_store([{"uid": u, "caption": "c"} for u in "ab"], vectors={"m": (["a", "b"], E[:2], E[:2])})
    with Store.writer(path) as st:
        write_vectors(st, "m", "again", ["b"], E[1:2], E[1:2])
    with pytest.raises(StoreError, match="1 duplicate uids.*embed --model m --force"):
        run_score("clip", path, model="m", echo=lambda s: None)
    with Store.reader(path) as st:
        assert st.runs().iloc[-1]["status"] == "failed" and "clip_m" not in st.score_names()
