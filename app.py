"""CLIP-filter audit dashboard: `streamlit run app.py` (store from $AUDIT_STORE, default the demo store)."""
from pathlib import Path

import streamlit as st

st.set_page_config(page_title="CLIP filter audit", page_icon=":material/troubleshoot:", layout="wide")

# Every file in pages/ is listed here (tests/test_architecture.py checks it); order = sidebar order.
PAGES = [
    ("pages/overview.py", "Overview", ":material/dashboard:"),
    ("pages/filter_preview.py", "Filter preview", ":material/tune:"),
    ("pages/fairness.py", "Who's in, who's out", ":material/groups:"),
    ("pages/origin.py", "Dataset origin", ":material/fingerprint:"),
    ("pages/embedding_map.py", "Embedding map", ":material/scatter_plot:"),
    ("pages/balancing.py", "Balancing", ":material/balance:"),
    ("pages/export.py", "Export", ":material/download:"),
]

here = Path(__file__).parent
pages = [st.Page(path, title=title, icon=icon, default=(i == 0))
         for i, (path, title, icon) in enumerate(PAGES) if (here / path).exists()]
st.navigation(pages).run()
