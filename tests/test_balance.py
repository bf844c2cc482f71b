"""The balance stage (audit.analyses.balance): CLI on a hand-made pool with an injected gender × concept association,
streaming = in-memory, bad input, MetaCLIP at a matched budget, the demo step and the Balancing page."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.store import Store


def _pool(make_store) -> str:
    """600 rows: 200 women (150 at a wedding, 50 athletes), 200 men (50 / 150), 200 cars (no gender).

    Caption gender comes from the caption lexicon; the concept attribute is the concept word of the caption
    (written here, not imputed). Before balancing (q ≡ 1): shares 1/2, 1/2 (RB = 0); ȳ_wedding = 1/3 and
    Σ a_woman (y − 1/3) = ½ (150·⅔ − 50·⅓) − ½ (50·⅔ − 150·⅓) = 50, so AB = 50 / 600 = 1/12.
    """
    rows = []
    spec = [("woman", "wedding", 150), ("woman", "athlete", 50), ("man", "wedding", 50), ("man", "athlete", 150)]
    i = 0
    for gender, concept, k in spec:
        for _ in range(k):
            rows.append({"uid": f"u{i:04d}", "caption": f"a {gender} at a {concept}", "concept": concept})
            i += 1
    for _ in range(200):
        rows.append({"uid": f"u{i:04d}", "caption": "a red car on the road", "concept": "car"})
        i += 1
    path = make_store([{k: v for k, v in r.items() if k != "concept"} for r in rows])
    from audit.annotators.base import run_annotator

    run_annotator("caption", path, params={}, echo=lambda s: None)
    frame = pd.DataFrame({"uid": [r["uid"] for r in rows], "attribute": "concept",
                          "label": [r["concept"] for r in rows], "confidence": 1.0, "method": "test: concept word"})
    with Store.writer(path) as st:
        run = st.start_run("test", "concept", params={})
        st.write_annotations(frame, run_id=run, method="test: concept word", imputed=False)
        st.end_run(run)
    return path


def _independent_ab(path: str, weights: pd.DataFrame) -> tuple[float, float]:
    """RB and AB of §5.1 recomputed with pandas from the output file and the stored labels."""
    with Store.reader(path) as st:
        lab = st.df("SELECT uid, attribute, label FROM annotations WHERE attribute IN ('caption_gender', 'concept')")
    wide = lab.pivot(index="uid", columns="attribute", values="label")
    d = weights.set_index("uid").join(wide)
    q = d["q"].to_numpy()
    total = q.sum()
    rb = max(abs(q[d["caption_gender"] == g].sum() / q[d["caption_gender"].isin(["woman", "man"])].sum() - 0.5)
             for g in ("woman", "man"))
    ab = 0.0
    for g in ("woman", "man"):
        a = np.where(d["caption_gender"] == g, 0.5, np.where(d["caption_gender"].isin(["woman", "man"]), -0.5, 0.0))
        for c in ("wedding", "athlete", "car"):
            y = (d["concept"] == c).to_numpy(float)
            ybar = (q * y).sum() / total
            ab = max(ab, abs((q * a * (y - ybar)).sum()) / total)
    return rb, ab


def test_m4_cli_removes_injected_association(make_store, tmp_path, capsys):
    path = _pool(make_store)
    out = tmp_path / "w.csv"
    rc = main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--proxies", "concept",
               "--budget", "0.6", "--eps-rep", "0.01", "--eps-assoc", "0.01", "--seed", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "status: met" in text
    w = pd.read_csv(out)
    assert len(w) == 600 and list(w.columns) == ["uid", "q", "keep"]
    assert w["q"].between(0, 1).all()
    assert w["q"].sum() == pytest.approx(0.6 * 600, abs=1e-6)
    rb0, ab0 = _independent_ab(path, w.assign(q=1.0))
    assert rb0 == pytest.approx(0.0) and ab0 == pytest.approx(1 / 12)
    assert "0.0833" in text                                    # AB before, as printed
    rb, ab = _independent_ab(path, w)
    assert ab <= 0.01 + 1e-6 and rb <= 0.01 + 1e-6
    # seeded Bernoulli draw: reproducible, and q = 0 / 1 rows are never / always kept
    assert ((w["q"] == 0) <= (w["keep"] == 0)).all() and ((w["q"] >= 1) <= (w["keep"] == 1)).all()
    rc = main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--proxies", "concept",
               "--budget", "0.6", "--eps-rep", "0.01", "--eps-assoc", "0.01", "--seed", "3", "--out",
               str(tmp_path / "w2.parquet")])
    assert rc == 0
    w2 = pd.read_parquet(tmp_path / "w2.parquet")
    assert (w2["keep"].to_numpy() == w["keep"].to_numpy()).all()
    np.testing.assert_allclose(w2["q"], w["q"], atol=1e-9)
    with Store.reader(path) as st:  # the run is recorded
        runs = st.runs()
    assert ((runs["stage"] == "balance") & (runs["name"] == "m4")).sum() == 2


def test_m4_cli_streaming_equals_in_memory(make_store, tmp_path, capsys):
    path = _pool(make_store)
    args = ["balance", "m4", "--store", path, "--attribute", "caption_gender", "--proxies", "concept",
            "--budget", "0.6", "--eps-rep", "0.01", "--eps-assoc", "0.01", "--seed", "9"]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.csv"), "--stream", "--batch-rows", "97"]) == 0
    text = capsys.readouterr().out
    assert "streamed in batches of 97" in text
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert (a["uid"] == b["uid"]).all()
    np.testing.assert_allclose(a["q"], b["q"], atol=1e-5)
    assert (a["keep"] == b["keep"]).mean() > 0.99   # same seeded uniforms; only q within 1e-5 of U may differ


def test_m4_cli_infeasible_is_reported(make_store, tmp_path, capsys):
    path = _pool(make_store)
    rc = main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--proxies", "concept",
               "--budget", "0.95", "--eps-rep", "0", "--eps-assoc", "0", "--out", str(tmp_path / "w.csv")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "status: infeasible" in text and "best achievable" in text
    w = pd.read_csv(tmp_path / "w.csv")
    assert w["q"].sum() == pytest.approx(0.95 * 600, abs=1e-6)
    rb, ab = _independent_ab(path, w)
    assert 0 < ab < 1 / 12                                    # reduced, though not to 0


@pytest.mark.parametrize("extra, message", [
    (["--attribute", "nope", "--proxies", "concept"], "unknown attribute"),
    (["--attribute", "caption_gender", "--proxies", "caption_gender"], "sensitive attribute itself"),
    (["--attribute", "caption_gender", "--proxies", "concept", "--target", "woman=2,cat=1"], "unknown groups"),
    (["--attribute", "caption_gender", "--proxies", "concept", "--target", "0.2,0.3,0.5"], "3 proportions"),
    (["--attribute", "caption_gender", "--proxies", "zs:wedding"], "at least two prompts"),
    (["--attribute", "caption_gender", "--proxies", "concept=boat"], "not found"),
    (["--attribute", "caption_gender", "--groups", "woman,alien"], "not found"),
    (["--attribute", "caption_age"], "at least two groups"),
    (["--attribute", "caption_gender", "--utility", "nosuchscore"], "unknown score"),
])
def test_m4_cli_bad_input_is_a_clear_error(make_store, tmp_path, capsys, extra, message):
    path = _pool(make_store)
    rc = main(["balance", "m4", "--store", path, "--budget", "0.8", "--out", str(tmp_path / "w.csv"), *extra])
    err = capsys.readouterr().err
    assert rc == 1
    assert message in err and "Traceback" not in err


def test_m4_cli_budget_and_suffix_are_checked(make_store, tmp_path, capsys):
    path = _pool(make_store)
    with pytest.raises(SystemExit):
        main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--budget", "1.5", "--out", "x.csv"])
    rc = main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--budget", "0.8",
               "--out", str(tmp_path / "w.txt")])
    assert rc == 1 and ".csv or .parquet" in capsys.readouterr().err


def test_m4_utility_weighting(make_store, tmp_path):
    path = _pool(make_store)
    with Store.writer(path) as st:  # utility 2 for the first half of the uids, 1 for the rest
        run = st.start_run("test", "u", params={})
        uids = st.sample_uids()
        st.write_scores("quality", uids, np.where(np.arange(600) < 300, 2.0, 1.0), run_id=run, kind="test")
    out = tmp_path / "w.csv"
    assert main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--budget", "0.5",
                 "--eps-rep", "off", "--eps-assoc", "off", "--utility", "quality", "--out", str(out)]) == 0
    w = pd.read_csv(out)
    # no constraints: q = clip(η u / ū) = 0.5 · u / 1.5 exactly
    np.testing.assert_allclose(w["q"], np.where(np.arange(600) < 300, 2 / 3, 1 / 3), atol=1e-9)


# ---- the demo store --------------------------------------------------------------------------------------------
def test_demo_step_stores_a_balancing(demo_store):
    from audit.store.results import meta_get

    with Store.reader(demo_store) as st:
        meta = json.loads(meta_get(st, "balance.m4"))
        q = st.score_frame(["m4_q"])["m4_q"].to_numpy()
        n = st.count("samples")
    assert meta["status"] == "met"
    assert meta["rb"] <= meta["params"]["eps_rep"] + 1e-6 and meta["ab"] <= meta["params"]["eps_assoc"] + 1e-6
    assert q.sum() == pytest.approx(0.9 * n, abs=1e-5)
    assert any(p.startswith("zs:") for p in meta["proxies"])          # zero-shot proxies through the text encoder
    methods = [r["method"] for r in meta["comparison"]]
    assert "M4" in methods and any(m.startswith("CLIP score") for m in methods) and "MetaCLIP" in methods
    clip_row = next(r for r in meta["comparison"] if r["method"].startswith("CLIP score"))
    assert clip_row["kept (Σq)"] >= int(0.9 * n)                          # DataComp fraction rule


def test_metaclip_cli_at_a_matched_budget(demo_store, tmp_path, capsys):
    out = tmp_path / "mc.csv"
    assert main(["balance", "metaclip", "--store", demo_store, "--budget", "0.5", "--attribute", "caption_gender",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    w = pd.read_csv(out)
    assert w["q"].sum() == pytest.approx(0.5 * len(w), rel=1e-6)
    assert "chosen so that" in text and "RB" in text
    # without --budget or --t: the metaclip score's stored probabilities
    assert main(["balance", "metaclip", "--store", demo_store, "--out", str(tmp_path / "stored.csv")]) == 0
    stored = pd.read_csv(tmp_path / "stored.csv")
    with Store.reader(demo_store) as st:
        ref = st.score_frame(["metaclip_p"])["metaclip_p"].to_numpy()
    np.testing.assert_allclose(stored["q"], np.nan_to_num(ref), atol=1e-12)


def test_embedding_view_reader_matches_parts(demo_store):
    from audit.store.vectors import iter_embedding_rows
    from audit.store.vectors import iter_vectors

    with Store.reader(demo_store) as st:
        uids, cols = next(iter_vectors(st, "datacomp_b32", columns=("img",)))
        got = {}
        for u, x in iter_embedding_rows(st, "datacomp_b32"):
            got.update(zip(u, x))
    np.testing.assert_allclose(np.stack([got[u] for u in uids[:50]]), cols["img"][:50], atol=1e-6)


def test_balancing_page(demo_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("AUDIT_STORE", demo_store)
    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "app.py"), default_timeout=90)
    at.run()
    at.switch_page("pages/balancing.py")
    at.run()
    assert not at.exception
    assert [m.label for m in at.metric][:3] == ["Kept (M4 draw)", "RB after", "AB after"]
    assert any("every tolerance is met" in s.value for s in at.success)
    assert any("imputed" in c.value for c in at.caption)
    at.slider(key="bal_budget").set_value(0.7).run()
    assert not at.exception
    at.number_input(key="bal_eps_assoc").set_value(0.0).run()
    at.number_input(key="bal_eps_rep").set_value(0.0).run()
    assert not at.exception


def test_balancing_page_without_attributes(make_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    path = make_store([{"uid": "a", "caption": "x"}])
    monkeypatch.setenv("AUDIT_STORE", path)
    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/balancing.py")
    at.run()
    assert not at.exception
    assert any("no attributes" in w.value for w in at.warning)


def test_balancing_page_gives_no_verdict_on_tiny_groups(make_store, monkeypatch):
    """Groups of n = 2 and n = 1 meet any tolerance by chance: the page warns instead of reporting success."""
    import pandas as pd
    from streamlit.testing.v1 import AppTest

    from audit.store import Store

    uids = [f"u{i}" for i in range(3)]
    path = make_store([{"uid": u, "caption": "x"} for u in uids])
    with Store.writer(path) as st:
        run = st.start_run("annotate", "hand", params={})
        st.write_annotations(pd.DataFrame({"uid": uids, "attribute": "caption_gender",
                                           "label": ["woman", "woman", "man"], "confidence": 1.0, "method": "hand"}),
                             run_id=run, method="hand")
    monkeypatch.setenv("AUDIT_STORE", path)
    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/balancing.py").run()
    at.multiselect(key="bal_groups_caption_gender").set_value(["woman", "man"]).run()
    assert not at.exception
    assert not at.success
    assert any("fewer than 30 samples" in w.value and "man (n=1)" in w.value for w in at.warning)


def test_large_pool_balancing_page_shows_the_stored_streamed_solve(make_store, tmp_path, monkeypatch, capsys):
    """Above ui.BALANCE_SOLVE_MAX_ROWS the page does not solve: it names the streamed command and shows what
    `balance m4 --stream --save` stored; the stored weights are the weights file's, uid for uid."""
    import json

    from streamlit.testing.v1 import AppTest

    from audit import ui
    from audit.store.results import meta_get

    path = _pool(make_store)
    monkeypatch.setattr(ui, "BALANCE_SOLVE_MAX_ROWS", 100)
    monkeypatch.setenv("AUDIT_STORE", path)
    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/balancing.py").run()
    assert not at.exception and any("No stored balancing result" in w.value for w in at.warning)
    assert "--stream --save" in at.code[0].value

    out = tmp_path / "w.parquet"
    assert main(["balance", "m4", "--store", path, "--attribute", "caption_gender", "--proxies", "concept",
                 "--budget", "0.6", "--eps-rep", "0.01", "--eps-assoc", "0.01", "--seed", "3", "--stream", "--save",
                 "--out", str(out)]) == 0
    w = pd.read_parquet(out)
    with Store.reader(path) as st:
        summary = json.loads(meta_get(st, "balance.m4"))
        q = st.score_frame(["m4_q", "m4_keep"]).set_index("uid")
    np.testing.assert_allclose(q.loc[w["uid"], "m4_q"].to_numpy(), w["q"].to_numpy())
    assert (q.loc[w["uid"], "m4_keep"].to_numpy() == w["keep"].to_numpy()).all()
    assert summary["kept"] == int(w["keep"].sum()) and summary["n"] == 600 and summary["streamed"]
    rb, ab = _independent_ab(path, w)                 # the stored figures are the weights' own
    assert summary["rb"] == pytest.approx(rb, abs=1e-6) and summary["ab"] == pytest.approx(ab, abs=1e-6)

    at = AppTest.from_file(os.path.join(os.path.dirname(__file__), "..", "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/balancing.py").run()
    assert not at.exception
    assert [m.label for m in at.metric][:3] == ["Kept (M4 draw)", "RB after", "AB after"]
    assert next(m.value for m in at.metric if m.label == "Kept (M4 draw)") == f"{int(w['keep'].sum()):,}"
    table = at.dataframe[0].value
    assert table["group"].tolist() == summary["groups"]
    np.testing.assert_allclose(table["share after M4"], summary["shares"])


def test_streamed_save_stages_the_weights_a_batch_at_a_time(make_store, tmp_path):
    """save_batches over iter_weights (Parquet and CSV, 97 rows a batch) stores the file's weights uid for uid, one
    part per batch and score, and the run's counts; a second save replaces the first."""
    from audit.analyses.balance.run import iter_weights, save_batches
    from audit.store.results import meta_get

    path = _pool(make_store)
    with Store.reader(path) as st:
        uids = sorted(st.df("SELECT uid FROM samples")["uid"])
    rng = np.random.default_rng(4)
    q = rng.random(len(uids))
    w = pd.DataFrame({"uid": uids, "q": q, "keep": rng.random(len(uids)) < q})
    for i, out in enumerate((tmp_path / "w.parquet", tmp_path / "w.csv")):
        (w.to_parquet if out.suffix == ".parquet" else lambda p: w.to_csv(p, index=False))(out)
        batches = list(iter_weights(str(out), batch_rows=97))
        assert [len(b[1]) for b in batches] == [97] * (len(uids) // 97) + [len(uids) % 97]
        run = save_batches(path, "m4", {"try": i}, iter(batches), {"kept": int(w["keep"].sum())}, description="t")
        with Store.reader(path) as st:
            got = st.score_frame(["m4_q", "m4_keep"]).set_index("uid").loc[uids]
            n_parts = st.scalar("SELECT count(*) FROM parts WHERE table_name = 'scores' AND key = 'm4_q'")
            r = st.df("SELECT rows_in, rows_out FROM runs WHERE run_id = ?", [run]).iloc[0]
            assert json.loads(meta_get(st, "balance.m4"))["params"] == {"try": i}
        np.testing.assert_allclose(got["m4_q"].to_numpy(), q, rtol=1e-15)
        assert (got["m4_keep"].to_numpy() == w["keep"].to_numpy()).all() and len(got) == len(uids)
        assert n_parts == len(batches) and (r["rows_in"], r["rows_out"]) == (len(uids), int(w["keep"].sum()))


def test_streamed_save_of_a_bad_weights_file_fails_its_run_and_stores_nothing(make_store, tmp_path):
    """A weights file whose q column is not numeric: the error reaches the caller, the run is marked failed, and
    no m4 score is registered."""
    from audit.analyses.balance.run import iter_weights, save_batches

    path = _pool(make_store)
    out = tmp_path / "w.csv"
    out.write_text("uid,q,keep\nabc,0.5,1\ndef,not-a-number,0\n")
    with pytest.raises(Exception):
        save_batches(path, "m4", {}, iter_weights(str(out)), {}, description="t")
    with Store.reader(path) as st:
        assert st.df("SELECT status FROM runs WHERE stage = 'balance'")["status"].tolist() == ["failed"]
        assert st.scalar("SELECT count(*) FROM parts WHERE table_name = 'scores' AND key LIKE 'm4%'") == 0
