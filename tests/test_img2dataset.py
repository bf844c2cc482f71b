"""The real producer: img2dataset 1.47.0 downloads real photos (the wheels' sample images) from a local
http.server on 127.0.0.1, with broken URLs among them (404, refused connection, undecodable bytes, an
``X-Robots-Tag: noai`` header), writes webdataset and parquet shards, and the tool ingests them: every input
row is a sample or a reject, the fields are img2dataset's own, and the basic filter sees the original sizes."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.ingest.run import ingest
from audit.store import Store
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
IMG2DATASET = ROOT / ".venv-img2dataset" / "bin" / "img2dataset"
pytestmark = pytest.mark.slow

SERVER = """
import http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        if self.path.startswith("/noai/"):
            self.send_header("X-Robots-Tag", "noai")
        super().end_headers()
    def translate_path(self, path):
        return super().translate_path(path.replace("/noai/", "/", 1))
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    if not IMG2DATASET.exists():
        msg = "img2dataset is not installed: bash scripts/install-img2dataset.sh (make test does it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from audit.demo.builder import write_photos

    root = tmp_path_factory.mktemp("i2d")
    www = root / "www"
    cap = write_photos(www)   # 25 real photos + a corrupt jpg + a blank caption + a missing file
    photos = list(csv.DictReader(open(cap)))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=www)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    rows = [{"url": f"http://127.0.0.1:{port}/{r['file']}", "caption": r["caption"], "uid": f"{i:032x}",
             "file": r["file"]} for i, r in enumerate(photos)]
    n_ok = len(rows)
    rows += [{"url": f"http://127.0.0.1:{port}/no-such-file.jpg", "caption": "a 404", "uid": f"{900:032x}", "file": ""},
             {"url": f"http://127.0.0.1:{free_port()}/refused.jpg", "caption": "nobody listens", "uid": f"{901:032x}",
              "file": ""},
             {"url": f"http://127.0.0.1:{port}/noai/coffee.png", "caption": "opted out", "uid": f"{902:032x}",
              "file": ""}]
    urls = pd.DataFrame(rows)
    urls[["url", "caption", "uid"]].to_parquet(root / "urls.parquet")
    out = {}
    try:
        for fmt in ("webdataset", "parquet"):
            res = subprocess.run(
                [str(IMG2DATASET), "--url_list", str(root / "urls.parquet"), "--input_format", "parquet",
                 "--url_col", "url", "--caption_col", "caption", "--save_additional_columns", '["uid"]',
                 "--output_format", fmt, "--output_folder", str(root / fmt), "--processes_count", "1",
                 "--thread_count", "4", "--image_size", "256", "--number_sample_per_shard", "10",
                 "--enable_wandb", "False", "--retries", "0", "--timeout", "5"],
                capture_output=True, text=True, timeout=300, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
            assert res.returncode == 0, res.stderr[-3000:]
            out[fmt] = root / fmt
    finally:
        server.kill()
    sizes = {r["file"]: Image.open(www / r["file"]).size for r in rows[:n_ok] if (www / r["file"]).exists()
             and r["file"] != "corrupt.jpg"}
    return {"root": root, "urls": urls, "out": out, "sizes": sizes}


def _check_store(store: str, d: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store.reader(store) as st:
        s = st.df("SELECT * FROM samples ORDER BY uid")
        r = st.df("SELECT * FROM rejects ORDER BY uid")
    urls = d["urls"]
    # every input row accounted: exactly one of samples or rejects, by uid
    assert len(s) + len(r) == len(urls)
    assert sorted(s["uid"].tolist() + r["uid"].tolist()) == sorted(urls["uid"])
    failed = r[r["reason"] == "download_failed"]
    by_uid = failed.set_index("uid")
    assert {f"{900:032x}", f"{901:032x}", f"{902:032x}"} <= set(by_uid.index)
    assert "404" in by_uid.loc[f"{900:032x}", "detail"]
    assert "refused" in by_uid.loc[f"{901:032x}", "detail"].lower()
    assert "x-robots-tag" in by_uid.loc[f"{902:032x}", "detail"].lower()
    assert by_uid.loc[f"{902:032x}", "caption"] == "opted out" and by_uid.loc[f"{902:032x}", "url"].endswith(
        "/noai/coffee.png")
    # img2dataset's own failures for the broken photos: missing file (404) and undecodable bytes
    lost = urls.set_index("uid").loc[failed["uid"], "file"].tolist()
    assert {"missing.png", "corrupt.jpg"} <= set(lost)
    assert r.loc[r["reason"] != "download_failed", "reason"].tolist() == ["empty_caption"]   # blank_caption.png
    # fields exact: img2dataset's uid, url and caption; the original size, not the 256 × 256 it stored
    want = urls.set_index("uid")
    for row in s.itertuples():
        assert row.caption == want.loc[row.uid, "caption"] and row.url == want.loc[row.uid, "url"]
        assert (row.width, row.height) == d["sizes"][want.loc[row.uid, "file"]]
        assert max(row.stored_width, row.stored_height) == 256
    return s, r


def test_webdataset_output_every_row_accounted_fields_exact(downloads, tmp_path):
    store = str(tmp_path / "w.duckdb")
    shards = downloads["out"]["webdataset"]
    ingest("webdataset", [str(shards / "{00000..00003}.tar")], store_path=store, progress=False, echo=lambda s: None)
    s, _ = _check_store(store, downloads)
    # the basic filter's min-side rule sees the original sizes (several photos are under 200 px on a side)
    from audit.scores.base import run_score

    run_score("basic", store, params={}, echo=lambda s: None)
    with Store.reader(store) as st:
        got = st.score_frame(["basic_min_side"]).set_index("uid")["basic_min_side"]
    expect = np.minimum(s["width"].to_numpy(float), s["height"].to_numpy(float))
    np.testing.assert_array_equal(got.loc[s["uid"]].to_numpy(), expect)
    assert (expect < 200).any() and (expect >= 200).any()
    # thumbnails read the stored image back from the shard
    from audit import images

    assert images.load_image(s["image_ref"].iloc[0]).size[0] <= 256


def test_parquet_output_every_row_accounted_fields_exact(downloads, tmp_path):
    store = str(tmp_path / "p.duckdb")
    ingest("parquet", [str(downloads["out"]["parquet"])], store_path=store, progress=False, echo=lambda s: None)
    s, _ = _check_store(store, downloads)
    from audit import images

    assert s["image_ref"].str.startswith("parquet://").all()
    assert images.load_image(s["image_ref"].iloc[-1]).size[0] <= 256


def test_availability_is_the_first_filter_step(downloads, tmp_path, capsys):
    """Failed downloads join the pool as not downloaded: availability alone, and the chain availability -> filter,
    by URL- and caption-derived groups; the report's numbers recomputed here from samples and rejects."""
    from audit.annotators.caption import label_captions
    from audit.cli import main
    from audit.scores.base import run_score

    store = str(tmp_path / "a.duckdb")
    ingest("webdataset", [str(downloads["out"]["webdataset"] / "{00000..00003}.tar")], store_path=store,
           progress=False, echo=lambda s: None)
    run_score("basic", store, params={}, echo=lambda s: None)
    with Store.reader(store) as st:
        s = st.df("SELECT uid, caption FROM samples ORDER BY uid").merge(
            st.score_frame(["basic_min_side"]), on="uid")
        f = st.download_failures()
    n_ok, n_failed = len(s), len(f)
    assert n_failed >= 5   # 3 planted failures + img2dataset's own (missing file, undecodable bytes)
    out = tmp_path / "avail.csv"
    assert main(["report", "--store", store, "--include-failed", "--keep", "downloaded>=1",
                 "--by", "domain_registered", "--out", str(out)]) == 0
    t = pd.read_csv(out).set_index("group")
    # every url is on 127.0.0.1: one group, availability = downloaded / (downloaded + failed)
    assert t.loc["127.0.0.1", "n"] == n_ok + n_failed and t.loc["127.0.0.1", "kept"] == n_ok
    assert abs(t.loc["127.0.0.1", "rate"] - n_ok / (n_ok + n_failed)) < 1e-12
    # the chain availability -> basic_min_side >= 200 by caption_gender
    assert main(["report", "--store", store, "--include-failed", "--keep", "basic_min_side>=200",
                 "--by", "caption_gender", "--out", str(out)]) == 0
    t = pd.read_csv(out).set_index("group")
    lab_ok = label_captions(s["caption"], "caption_gender")
    lab_failed = label_captions(f["caption"], "caption_gender")
    for g in t.index:
        n = int((lab_ok == g).sum() + (lab_failed == g).sum())
        kept = int(((lab_ok == g) & (s["basic_min_side"].to_numpy() >= 200)).sum())
        assert (t.loc[g, "n"], t.loc[g, "kept"]) == (n, kept), g
    assert int(t["n"].sum()) == n_ok + n_failed
    # an attribute the failed rows cannot have is refused with a message
    assert main(["report", "--store", store, "--include-failed", "--keep", "downloaded>=1", "--by", "nsfw_image",
                 "--out", str(out)]) == 1
    assert "failed downloads have only a URL and a caption" in capsys.readouterr().err
    # the Who's in page shows the same availability step
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    os.environ["AUDIT_STORE"] = store
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.switch_page("pages/fairness.py").run()
        assert not at.exception, [e.value for e in at.exception]
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Input rows"] == f"{n_ok + n_failed:,}"
        assert metrics["Downloaded"] == f"{n_ok / (n_ok + n_failed):.1%}"
        assert any("failed to download" in m.value for m in at.markdown)
    finally:
        del os.environ["AUDIT_STORE"]
