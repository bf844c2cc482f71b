"""Filter preview with recipes: presets, named filters, ordered steps, reasons, a sample's why, two-filter comparison."""
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from audit.decide.recipes import Recipe, spearman
from audit.decide.selection import Rule, select
from audit.store import Store
from conftest import APP, vega_charts


@pytest.fixture
def page(demo_store, monkeypatch):
    monkeypatch.setenv("AUDIT_STORE", demo_store)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/filter_preview.py").run()
    assert not at.exception
    return at


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def columns(store, names):
    with Store.reader(store) as st:
        f = st.score_frame(names)
    return {n: f[n].to_numpy(float) for n in names}


def test_paper_preset_ordered_steps(page, demo_store):
    label = next(o for o in page.selectbox(key="preset").options if o.startswith("negCLIPLoss"))
    page.selectbox(key="preset").set_value(label).run()
    assert not page.exception
    spec = "negclip_datacomp_l14:top=0.3 then normsim_inf_datacomp_l14:top=0.2"
    cols = columns(demo_store, ["negclip_datacomp_l14", "normsim_inf_datacomp_l14"])
    ev = Recipe.parse(spec).evaluate(cols)
    n = len(ev.keep)
    assert metric(page, "Kept") == f"{int(n * 0.2) + 1:,}" == f"{int(ev.keep.sum()):,}"
    specs = page.session_state["keep_specs"]
    assert specs[0] == "negclip_datacomp_l14:top=0.3" and specs[1].startswith("normsim_inf_datacomp_l14>=")
    assert (select([Rule.parse(s) for s in specs], cols).keep == ev.keep).all()   # what Export will apply
    assert page.session_state["keep_recipe"] == spec
    table = page.dataframe[1].value.set_index("reason")
    assert table.loc["negclip_datacomp_l14 not in top 0.3", "excluded"] == n - (int(n * 0.3) + 1)


def test_named_filter_reasons_and_a_samples_why(page, demo_store):
    page.radio(key="mode").set_value("off").run()
    page.multiselect(key="and_terms").set_value(["basic"]).run()
    assert not page.exception
    names = ["basic_words", "basic_chars", "basic_english", "basic_min_side", "basic_aspect", "basic"]
    cols = columns(demo_store, names)
    assert metric(page, "Kept") == f"{int(cols['basic'].sum()):,}"       # the recipe equals the stored decision
    reasons = page.dataframe[1].value.set_index("reason")
    assert reasons.loc["basic: caption has ≤ 2 words", "excluded"] == int((cols["basic_words"] <= 2).sum())
    uid = page.selectbox(key="why_pick").value
    with Store.reader(demo_store) as st:
        uids = st.df("SELECT uid FROM samples ORDER BY uid")["uid"].tolist()
    i = uids.index(uid)
    text = " ".join(m.value for m in page.markdown)
    assert "Excluded because" in text
    if cols["basic_words"][i] <= 2:
        assert "caption has ≤ 2 words" in text
    page.text_input(key="why_uid").set_value("no-such-uid").run()
    assert not page.exception and any("No sample with uid" in e.value for e in page.error)


def test_bad_recipe_is_a_message(page):
    page.text_input(key="recipe_text").set_value("negclip then").run()
    assert not page.exception
    assert page.error
    page.text_input(key="recipe_text").set_value("clip_l14_similarity_score:top=0.3 & laion").run()
    assert not page.exception and not page.error


def test_compare_two_filters(page, demo_store):
    page.session_state["cmp_open"] = True   # the section is closed until opened
    page.run()
    page.selectbox(key="cmp_score").set_value("negclip_datacomp_l14").run()
    page.slider(key="cmp_top").set_value(0.3).run()
    assert not page.exception
    cols = columns(demo_store, ["clip_l14_similarity_score", "negclip_datacomp_l14"])
    a = select([Rule.parse("clip_l14_similarity_score:top=0.3")], cols).keep
    b = select([Rule.parse("negclip_datacomp_l14:top=0.3")], cols).keep
    assert metric(page, "Both") == f"{int((a & b).sum()):,}"
    assert (metric(page, "A keeps"), metric(page, "B keeps")) == (f"{int(a.sum()):,}", f"{int(b.sum()):,}")
    rho, _ = spearman(cols["clip_l14_similarity_score"], cols["negclip_datacomp_l14"])
    got = next(m.value for m in page.metric if m.label.startswith("Spearman"))
    assert got == f"{rho:.3f}" and rho > 0.8             # B = 512, K = 1 in the demo: looser than the paper
    # the comparison's legend says what each filter keeps (not why it excludes); its points are each filter's rate
    # per group, recomputed here from the two kept sets
    spec, data = next((s, d) for s, d in vega_charts(page) if "filter" in d.columns)
    assert spec["title"].endswith(": A vs B")
    names = set(data["filter"])
    assert names == {"A keeps top 0.3 of clip_l14_similarity_score", "B keeps top 0.3 of negclip_datacomp_l14"}
    from audit.measure.report import load_frame

    with Store.reader(demo_store) as st:   # the same uid order as columns()
        g = load_frame(st, [], ["caption_gender"])["by:caption_gender"].astype(str).to_numpy()
    for name, keep in (("A keeps top 0.3 of clip_l14_similarity_score", a), ("B keeps top 0.3 of negclip_datacomp_l14", b)):
        got = data[data["filter"] == name].set_index("label")["rate"]
        for label, rate in got.items():
            group = label.rsplit(" (n=", 1)[0]
            assert rate == pytest.approx(keep[g == group].mean(), abs=1e-12), (name, group)
            assert label.endswith(f"(n={int((g == group).sum()):,})")
    page.text_input(key="cmp_recipe").set_value("basic & laion").run()
    assert not page.exception
    assert np.isfinite(float(metric(page, "Jaccard |A∩B| / |A∪B|")))
