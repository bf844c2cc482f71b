"""CLIP-filter audit dashboard: `streamlit run app.py` (store from $AUDIT_STORE, default the demo store)."""
from pathlib import Path

import streamlit as st

from audit import ui

# the favicon is drawn here and served by this server (a material-icon favicon is fetched from a font CDN)
st.set_page_config(page_title="CLIP filter audit", page_icon=ui.favicon(), layout="wide")

# Every file in pages/ is listed here (tests/test_architecture.py checks it); order = sidebar order.
# URL paths differ from the file names on purpose: on a fresh server Streamlit serves /<file stem> as a legacy
# stand-alone page (wrong sidebar, narrow layout) until app.py has run once; these paths always go through here.
PAGES = [
    ("pages/overview.py", "Overview", ":material/dashboard:", "overview"),
    ("pages/filter_preview.py", "Filter preview", ":material/tune:", "preview"),
    ("pages/fairness.py", "Who's in, who's out", ":material/groups:", "who"),
    ("pages/duplicates.py", "Duplicates", ":material/content_copy:", "duplicates"),
    ("pages/origin.py", "Dataset origin", ":material/fingerprint:", "dataset-origin"),
    ("pages/embedding_map.py", "Embedding map", ":material/scatter_plot:", "map"),
    ("pages/balancing.py", "Balancing", ":material/balance:", "balance"),
    ("pages/export.py", "Export", ":material/download:", "download"),
]

here = Path(__file__).parent
pages = [st.Page(path, title=title, icon=icon, url_path=url, default=(i == 0))
         for i, (path, title, icon, url) in enumerate(PAGES) if (here / path).exists()]
st.navigation(pages).run()
