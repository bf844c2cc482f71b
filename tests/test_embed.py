"""embed: real open_clip code path on a tiny random architecture; killed mid-run, the next run resumes."""
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from audit.ingest.run import ingest
from audit.store import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "tiny-clip.json")


def photo_folder(tmp_path, n):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
        rows.append({"file": f"{i:04d}.png", "caption": f"random picture number {i}"})
    pd.DataFrame(rows).to_csv(d / "captions.csv", index=False)
    store = str(tmp_path / "e.duckdb")
    ingest("folder", [str(d)], store_path=store, progress=False, echo=lambda s: None)
    return store


def part_uids(store, key="tiny-clip:random"):
    folder = Path(store).with_name(Path(store).stem + ".vectors") / "tiny_clip_random"
    uids = []
    for p in sorted(folder.glob("part-*.parquet")):
        uids += pq.read_table(p, columns=["uid"]).column("uid").to_pylist()
    return folder, uids


@pytest.mark.slow
def test_kill_and_resume_embeds_each_sample_exactly_once(tmp_path):
    n = 160
    store = photo_folder(tmp_path, n)
    cmd = [sys.executable, "-m", "audit", "embed", "--store", store, "--model", TINY, "--pretrained", "none",
           "--batch-size", "4", "--flush-rows", "8", "--workers", "0", "--precision", "fp32"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    folder = Path(store).with_name("e.vectors") / "tiny_clip_random"
    deadline = time.time() + 120
    while time.time() < deadline and not (folder.exists() and len(list(folder.glob("part-*.parquet"))) >= 2):
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.01)
    assert proc.poll() is None, "embed finished before it could be killed; the test needs a slower run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, first = part_uids(store)
    assert 0 < len(first) < n
    assert len(first) % 8 == 0  # only whole parts survive a kill
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"already embedded: {len(first)}" in res.stdout
    _, uids = part_uids(store)
    assert len(uids) == n and max(Counter(uids).values()) == 1
    with Store.reader(store) as st:
        assert set(uids) == set(st.df("SELECT uid FROM samples")["uid"])
        info = st.model_info("tiny-clip:random")
        assert bool(info["random_weights"]) and info["dim"] == 32
        runs = st.df("SELECT status, random_weights FROM runs WHERE stage='embed' ORDER BY run_id")
        # the killed run is marked interrupted when the next run starts (its process is gone), never left running
        assert runs["status"].tolist() == ["interrupted", "done"]
        assert runs["random_weights"].all()
        v = st.df("SELECT img FROM embeddings LIMIT 5")["img"]
        assert np.allclose([np.linalg.norm(np.asarray(x)) for x in v], 1.0, atol=2e-3)
    # a third run has nothing left to do
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "embedded now: 0" in again.stdout


@pytest.mark.slow
def test_embed_matches_direct_forward_and_rejects_bad_images(tmp_path):
    import torch

    from audit.embed.open_clip_backend import OpenClipEmbedder
    from audit.embed.runner import embed
    from audit.images import load_image
    from audit.store.vectors import load_matrix

    store = photo_folder(tmp_path, 6)
    with Store.reader(store) as st:
        ref = st.df("SELECT image_ref FROM samples ORDER BY uid LIMIT 1")["image_ref"].iloc[0]
    Path(ref).write_bytes(b"corrupted after ingest")  # decoding fails at embed time -> reject, not abort
    emb = OpenClipEmbedder(TINY, "none", precision="fp32")
    rep = embed(store, embedder=emb, batch_size=4, workers=0, progress=False, echo=lambda s: None)
    assert rep.embedded == 5 and rep.failed == 1
    with Store.reader(store) as st:
        assert st.df("SELECT reason, stage FROM rejects").values.tolist() == [["corrupt_image", "embed"]]
        rows = st.df("SELECT uid, caption, image_ref FROM samples ORDER BY uid").iloc[1:]
        uids, img = load_matrix(st, emb.key, rows["uid"].tolist(), "img")
        _, txt = load_matrix(st, emb.key, rows["uid"].tolist(), "txt")
    order = [rows["uid"].tolist().index(u) for u in uids]
    r = rows.iloc[order]
    with torch.no_grad():
        x = torch.stack([emb.preprocess(load_image(p)) for p in r["image_ref"]])
        di = emb.model.encode_image(x)
        dt = emb.model.encode_text(emb.tokenizer(r["caption"].tolist()))
    di = (di / di.norm(dim=-1, keepdim=True)).numpy()
    dt = (dt / dt.norm(dim=-1, keepdim=True)).numpy()
    assert np.allclose(img, di, atol=2e-3) and np.allclose(txt, dt, atol=2e-3)  # float16 storage


@pytest.mark.slow
def test_auto_precision_on_a_64px_model_resume_keeps_precision_and_rejects_once(tmp_path):
    from audit.embed.open_clip_backend import OpenClipEmbedder
    from audit.embed.runner import embed

    auto = OpenClipEmbedder(TINY, "none", precision="auto")   # the timed trial runs at the model's 64 px input
    assert isinstance(auto.autocast, bool)
    store = photo_folder(tmp_path, 6)
    with Store.reader(store) as st:
        ref = st.df("SELECT image_ref FROM samples ORDER BY uid LIMIT 1")["image_ref"].iloc[0]
    Path(ref).write_bytes(b"corrupted after ingest")
    quiet = dict(batch_size=2, workers=0, progress=False)
    embed(store, embedder=OpenClipEmbedder(TINY, "none", precision="fp32"), limit=3, echo=lambda s: None, **quiet)
    lines: list[str] = []
    resumed = OpenClipEmbedder(TINY, "none", precision="bf16")
    assert resumed.autocast is True
    embed(store, embedder=resumed, echo=lines.append, **quiet)
    assert resumed.autocast is False and any("precision of its first run (fp32)" in s for s in lines)
    embed(store, embedder=OpenClipEmbedder(TINY, "none", precision="fp32"), echo=lambda s: None, **quiet)
    with Store.reader(store) as st:   # the corrupt image was tried three times, rejected once
        assert st.df("SELECT reason, stage FROM rejects").values.tolist() == [["corrupt_image", "embed"]]
        assert st.count("embeddings") == 5


@pytest.mark.slow
def test_local_embed_streams_its_work_list_in_chunks_and_counts_what_it_skips(tmp_path, monkeypatch):
    """The local work list is the samples joined with the uids the parts hold, read WORK_ROWS rows at a time (not
    the pool in a frame and the embedded uids in a set): a limit spans chunks, a rerun embeds only the rest, and
    the samples without an image or already embedded are counted."""
    from audit.embed import runner
    from audit.embed.open_clip_backend import OpenClipEmbedder

    monkeypatch.setattr(runner, "WORK_ROWS", 3)
    store = photo_folder(tmp_path, 10)
    with Store.writer(store) as st:
        st.add_samples(pd.DataFrame({"uid": ["zz-no-image"], "caption": ["no picture"], "source": "test"}))
        with_image = st.df("SELECT uid FROM samples WHERE image_ref IS NOT NULL ORDER BY uid")["uid"].tolist()
        inputs = st.parts_dir() / "inputs"
    quiet = dict(batch_size=2, workers=0, flush_rows=2, progress=False, echo=lambda s: None)
    first = runner.embed(store, embedder=OpenClipEmbedder(TINY, "none", precision="fp32"), limit=4, **quiet)
    assert (first.embedded, first.skipped_done, first.no_image) == (4, 0, 1)
    _, uids = part_uids(store)
    assert len(uids) == len(set(uids)) == 4 and set(uids) <= set(with_image)   # a limit across chunks of 3
    rest = runner.embed(store, embedder=OpenClipEmbedder(TINY, "none", precision="fp32"), **quiet)
    assert (rest.embedded, rest.skipped_done, rest.no_image) == (6, 4, 1)
    _, uids = part_uids(store)
    assert sorted(uids) == with_image and len(uids) == len(set(uids)) == 10
    assert not inputs.exists() or not list(inputs.iterdir())   # the work-list file is removed afterwards
