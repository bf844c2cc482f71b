"""Streamlit AppTest runs of the Dataset origin and Embedding map pages (no tracebacks, honest labels)."""
from pathlib import Path

import numpy as np

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _page(monkeypatch, store, page, session=None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("AUDIT_STORE", store)
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_origin_page_on_the_demo_store(monkeypatch, demo_store):
    at = _page(monkeypatch, demo_store, "pages/origin.py")
    infos = " ".join(i.value for i in at.info)
    assert "Linear probes on frozen features" in infos and "not comparable to its 82–85%" in infos
    table = at.dataframe[0].value
    assert {"accuracy", "ci_low", "ci_high", "chance", "control_accuracy"} <= set(table.columns)
    assert "datacomp_l14 · image" in set(table["key"])
    assert any("shuffled-label control sits at" in s.value for s in at.success)
    # another family in detail: the concept family has readable coefficients
    at.selectbox(key="origin_family").set_value("datacomp_l14 · concepts").run()
    assert not at.exception
    assert any("simulated text encoder" in c.value for c in at.caption)


def test_origin_page_without_a_probe_says_how_to_run_it(monkeypatch, make_store):
    path = make_store([{"uid": f"u{i}", "caption": "a photo", "source": "a"} for i in range(5)])
    at = _page(monkeypatch, path, "pages/origin.py")
    assert any("python -m audit origin" in w.value for w in at.warning)


def test_origin_page_with_one_source_shows_the_message(monkeypatch, make_store):
    from audit.analyses.origin.run import OriginParams, run_origin

    path = make_store([{"uid": f"u{i}", "caption": "a photo of a cat", "source": "only"} for i in range(30)])
    run_origin(path, OriginParams(families=("caption_stats",)), echo=lambda s: None)
    at = _page(monkeypatch, path, "pages/origin.py")
    assert any("at least two source classes" in w.value for w in at.warning)


def test_embedding_map_page_colours_and_views(monkeypatch, demo_store):
    at = _page(monkeypatch, demo_store, "pages/embedding_map.py")
    assert any("UMAP of **datacomp_l14**" in c.value for c in at.caption)
    assert any("Nothing selected yet" in c.value for c in at.caption)
    # the current filter from the Filter preview page colours the points kept / excluded
    at = _page(monkeypatch, demo_store, "pages/embedding_map.py",
               session={"keep_specs": ["clip_datacomp_l14:top=0.5"], "map_colour": "kept / excluded (current filter)"})
    assert any("`clip_datacomp_l14:top=0.5`" in c.value for c in at.caption)
    # a bad rule is a message, not a traceback
    at.text_area(key="map_rules").set_value("clip_datacomp_l14>>0.3").run()
    assert not at.exception and at.error
    # density of every row, and a score as a continuous colour
    at = _page(monkeypatch, demo_store, "pages/embedding_map.py",
               session={"map_view": "density (every row)", "map_colour": "clip_datacomp_l14"})
    assert any("Density of all" in c.value for c in at.caption)


def test_embedding_map_page_without_a_map(monkeypatch, make_store):
    path = make_store([{"uid": "u1", "caption": "a photo"}], vectors={"m": (["u1"], np.ones((1, 4)), np.ones((1, 4)))})
    at = _page(monkeypatch, path, "pages/embedding_map.py")
    assert any("python -m audit map" in w.value for w in at.warning)
