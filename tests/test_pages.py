"""Streamlit AppTest for the foundation's pages: no exception, and moving the slider gives the expected counts."""
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from audit.decide.selection import Rule, apply_rule
from audit.store import Store
from conftest import APP


@pytest.fixture
def app(demo_store, monkeypatch):
    monkeypatch.setenv("AUDIT_STORE", demo_store)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def expected_kept(store, score, rule):
    with Store.reader(store) as st:
        v = st.score_frame([score])[score].to_numpy(float)
    return int(apply_rule(rule, v).sum()), len(v)


def test_overview(app, demo_store):
    from conftest import vega_charts

    with Store.reader(demo_store) as st:
        n = st.count("samples")
        n_rejects = st.count("rejects")
        names = st.score_names()
    assert metric(app, "Samples") == f"{n:,}"
    assert any("simulated" in i.value for i in app.info)
    charts_ = {spec["title"]: data for spec, data in vega_charts(app)}
    assert charts_["Samples by source"]["n"].sum() == n                  # every sample in one source bar
    assert charts_["Rejected inputs by reason"]["n"].sum() == n_rejects  # every reject in one reason bar
    hist = [t for t in charts_ if t in names]
    assert len(hist) == 3
    with Store.reader(demo_store) as st:                              # the bins, against the values read directly
        v = st.score_frame([hist[0]])[hist[0]].to_numpy(float)
    counts, _ = np.histogram(v[np.isfinite(v)], bins=80)
    assert charts_[hist[0]]["samples"].tolist() == counts.tolist()


def test_filter_preview_slider_changes_counts(app, demo_store):
    app.switch_page("pages/filter_preview.py").run()
    assert not app.exception
    score = "clip_l14_similarity_score"
    assert app.selectbox(key="score").value == score
    for frac in (0.3, 0.5, 0.1):
        app.slider(key="top_fraction").set_value(frac).run()
        assert not app.exception
        kept, n = expected_kept(demo_store, score, Rule(score, "top", frac))
        assert metric(app, "Kept") == f"{kept:,}" and metric(app, "Excluded") == f"{n - kept:,}"
        assert kept >= int(n * frac) + 1
    app.radio(key="mode").set_value("threshold").run()
    app.slider(key="threshold").set_value(0.25).run()
    assert not app.exception
    kept, n = expected_kept(demo_store, score, Rule(score, ">=", 0.25))
    assert metric(app, "Kept") == f"{kept:,}"
    assert app.session_state["keep_specs"] == [f"{score}>=0.25"]


def test_sliders_send_the_value_they_show_before_the_browser_draws_them(app):
    """A browser that reruns the page before it has drawn a slider sends the slider's default from the page (its
    proto's ``default``), not the session's value: a click within ~0.5 s of opening the Filter preview used to
    set the top fraction to 0.01 (the slider had no default). The default must be the value shown, always."""
    app.switch_page("pages/filter_preview.py").run()
    fallback = lambda key: list(app.slider(key=key).proto.default)   # noqa: E731
    assert fallback("top_fraction") == [0.3] and fallback("then_top") == [0.2]
    app.slider(key="top_fraction").set_value(0.45).run()
    assert fallback("top_fraction") == [0.45] and app.slider(key="top_fraction").value == 0.45
    app.radio(key="mode").set_value("threshold").run()
    app.slider(key="threshold").set_value(0.25).run()
    assert not app.exception and fallback("threshold") == [0.25]


def test_filter_preview_group_table_matches_store(app, demo_store):
    app.switch_page("pages/filter_preview.py").run()
    app.selectbox(key="group").set_value("source").run()
    assert not app.exception
    df = app.dataframe[0].value.set_index("group")
    with Store.reader(demo_store) as st:
        by_source = st.df("SELECT source, count(*) n FROM samples GROUP BY source").set_index("source")["n"]
    assert df["n"].to_dict() == by_source.to_dict()


def test_export_page(app, demo_store):
    app.switch_page("pages/filter_preview.py").run()
    app.slider(key="top_fraction").set_value(0.2).run()
    app.switch_page("pages/export.py").run()
    assert not app.exception
    kept, _ = expected_kept(demo_store, "clip_l14_similarity_score", Rule("clip_l14_similarity_score", "top", 0.2))
    assert metric(app, "Kept") == f"{kept:,}"
    # the preview shows the first kept samples in uid order, with their scores
    with Store.reader(demo_store) as st:
        frame = st.score_frame(["clip_l14_similarity_score"])
    keep = apply_rule(Rule("clip_l14_similarity_score", "top", 0.2), frame["clip_l14_similarity_score"].to_numpy(float))
    shown = app.dataframe[-1].value
    assert shown["uid"].tolist() == frame.loc[keep, "uid"].head(20).tolist()
    np.testing.assert_allclose(shown["clip_l14_similarity_score"].to_numpy(float),
                               frame.loc[keep, "clip_l14_similarity_score"].head(20).to_numpy(float))
    app.text_area(key="export_rules").set_value("clip_l14_similarity_score:top=0.2\nnot a rule").run()
    assert not app.exception and any("cannot read keep rule" in e.value for e in app.error)


def test_export_page_writes_the_cli_file_on_the_server(app, demo_store, tmp_path, monkeypatch):
    """Past LARGE_FILE_ROWS the page writes CSV/Parquet on the server (streamed) instead of a download; the file is
    the one `python -m audit export` writes for the same rules."""
    import json

    from audit.export.writer import export

    spec = "clip_l14_similarity_score:top=0.2"
    app.switch_page("pages/export.py").run()
    app.text_area(key="export_rules").set_value(spec).run()
    target = tmp_path / "page.parquet"
    app.text_input(key="export_target").set_value(str(target))
    app.button[-1].click().run()   # the form's Write button
    assert not app.exception and any("Wrote" in s.value for s in app.success), [e.value for e in app.error]
    export(demo_store, str(tmp_path / "cli.parquet"), [spec], echo=lambda s: None)
    assert target.read_bytes() == (tmp_path / "cli.parquet").read_bytes()
    man = json.loads((tmp_path / "page.parquet.manifest.json").read_text())
    kept, _ = expected_kept(demo_store, "clip_l14_similarity_score", Rule("clip_l14_similarity_score", "top", 0.2))
    assert man["kept"] == man["file"]["rows"] == kept


def test_missing_store_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIT_STORE", str(tmp_path / "nothing.duckdb"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and any("No store" in e.value for e in at.error)


def test_filter_preview_says_when_ties_keep_more_than_the_fraction(make_store, monkeypatch):
    """A 0/1-like score cannot keep 'the top 30%': the page says that ties at the cut-off keep 60%."""
    import numpy as np

    path = make_store([{"uid": f"u{i}", "caption": "c"} for i in range(10)],
                      scores={"flag": np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], float)})
    monkeypatch.setenv("AUDIT_STORE", path)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/filter_preview.py").run()
    assert not at.exception
    assert metric(at, "Kept") == "6"
    assert any("Ties at the threshold: 2 samples" in i.value and "keeps 6 (60.0%)" in i.value for i in at.info)


def test_comparison_and_examples_are_drawn_only_when_opened(app, monkeypatch):
    """The A-vs-B comparison (ρ over the pool, the density, B's mask) and the examples of a group are closed
    sections: nothing of them is computed or drawn until opened, and opened they show what they showed before."""
    from audit import ui

    calls = []
    for name in ("spearman", "recipe_keep", "group_gallery"):
        real = getattr(ui, name)
        monkeypatch.setattr(ui, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    app.switch_page("pages/filter_preview.py").run()
    assert not app.exception and [e.label for e in app.expander][-2:] == [
        "Compare two filters: overlap, Spearman ρ, inclusion rates under each",
        "Samples of a group: kept and excluded examples"]
    assert not any(m.label == "Spearman ρ of the scores" for m in app.metric)
    assert not any(h.value.startswith("<div style='display:grid") for h in app.html) and calls == []
    app.session_state["cmp_open"] = True
    app.run()
    assert not app.exception and {"spearman", "recipe_keep"} <= set(calls) and "group_gallery" not in calls
    assert any(m.label == "Spearman ρ of the scores" for m in app.metric)
    app.session_state["samples_open"] = True
    app.run()
    assert not app.exception and "group_gallery" in calls
    heads = [m.value for m in app.markdown if m.value.startswith(("**Kept** (", "**Excluded** ("))]
    assert len(heads) == 2 and sum(h.value.startswith("<div style='display:grid") for h in app.html) >= 1
