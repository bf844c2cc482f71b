"""Shared fixtures: a small simulated demo store (built once per session) and a store factory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

from audit.store import Store  # noqa: E402

DEMO_ROWS = 4000
# Debian's Chromium, as the browser tests launch it (headless; no background connections on a closed network)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
APP = str(ROOT / "app.py")  # AppTest resolves relative paths against the calling file


def vega_charts(at) -> list[tuple[dict, "pd.DataFrame"]]:
    """(spec, data) of every st.vega_lite_chart an AppTest run drew, the data decoded from its Arrow bytes."""
    import json

    import pyarrow as pa

    return [(json.loads(c.proto.spec), pa.ipc.open_stream(c.proto.data.data).read_all().to_pandas())
            for c in at.get("vega_lite_chart")]


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> str:
    """A demo store of DEMO_ROWS simulated rows (no photos, no model): every score/annotator demo run."""
    from audit.demo.builder import build_demo

    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    build_demo(str(path), rows=DEMO_ROWS, seed=0, photos=False, echo=lambda s: None)
    return str(path)


@pytest.fixture
def make_store(tmp_path):
    """Factory: make_store(samples=[...], vectors={model: (uids, img, txt)}, scores={name: values}) -> path.

    ``samples`` are dicts with at least uid and caption; vectors are written as the embed stage does;
    scores align with the samples' uid order (sorted by uid).
    """
    from audit.store.vectors import write_vectors

    def make(samples: list[dict], vectors: dict | None = None, scores: dict | None = None,
             name: str = "t.duckdb") -> str:
        path = str(tmp_path / name)
        frame = pd.DataFrame(samples)
        frame.setdefault("source", "test") if hasattr(frame, "setdefault") else None
        if "source" not in frame:
            frame["source"] = "test"
        with Store.writer(path) as st:
            run = st.start_run("test", "fixture", params={})
            st.add_samples(frame)
            for model, (uids, img, txt) in (vectors or {}).items():
                write_vectors(st, model, "0", list(uids), np.asarray(img, np.float32), np.asarray(txt, np.float32))
                st.register_model(model, dim=np.asarray(img).shape[1], backend="test", arch=model, pretrained=None,
                                  random_weights=False, run_id=run)
            uids_sorted = sorted(frame["uid"])
            for sname, values in (scores or {}).items():
                st.write_scores(sname, uids_sorted, np.asarray(values, float), run_id=run, kind="test")
            st.end_run(run)
        return path

    return make


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory) -> str:
    """A store of the real photos that ship in wheels (scikit-image, matplotlib, ...), ingested as a folder."""
    from audit.demo.builder import write_photos
    from audit.ingest.run import ingest

    d = tmp_path_factory.mktemp("photos")
    cap = write_photos(d / "photos")
    store = str(d / "photos.duckdb")
    ingest("folder", [str(cap.parent)], store_path=store, source="sample-photos", progress=False, echo=lambda s: None)
    return store
