"""Hostile and malformed inputs: each case ends as samples and rejects with the expected reason, never a crash,
and every input row is accounted for (rows in = samples + rejects)."""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit import images
from audit.ingest.accounting import REASONS
from audit.ingest.run import expand_braces, expand_inputs, ingest
from audit.store import Store

quiet = dict(progress=False, echo=lambda s: None)


def png_bytes(size=(8, 8), color=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width=30_000, height=30_000) -> bytes:
    """A tiny PNG whose header claims width × height pixels (the pixel data is never reached)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)   # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tables(store: str):
    with Store.reader(store) as st:
        return (st.df("SELECT * FROM samples ORDER BY uid"), st.df("SELECT * FROM rejects ORDER BY source_ref"))


def reasons(store: str) -> list[str]:
    return sorted(tables(store)[1]["reason"])


def accounted(store: str) -> int:
    s, r = tables(store)
    with Store.reader(store) as st:
        rows_in = int(st.scalar("SELECT sum(rows_in) FROM ingested_inputs"))
    assert rows_in == len(s) + len(r), (rows_in, len(s), len(r))
    return rows_in


# ---- images ---------------------------------------------------------------------------------------------
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    data = bomb_png()
    assert len(data) < 2000
    with pytest.raises(images.ImageTooLarge, match="900,000,000 pixels"):
        images.decode(data)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(data)
    (folder / "ok.png").write_bytes(png_bytes())
    pd.DataFrame({"file": ["bomb.png", "ok.png"], "caption": ["a bomb", "a red square"]}).to_csv(
        folder / "captions.csv", index=False)
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(folder)], store_path=store, **quiet)
    assert reasons(store) == ["too_large"] and accounted(store) == 2
    # the cap is a flag: a smaller one refuses the 8 × 8 image too
    store2 = str(tmp_path / "s2.duckdb")
    ingest("folder", [str(folder)], store_path=store2, max_pixels=10, **quiet)
    assert reasons(store2) == ["too_large", "too_large"]


def test_the_dashboard_thumbnail_has_the_same_cap(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png())
    with pytest.raises(images.ImageTooLarge):
        images.thumbnail(str(p))


def test_transparency_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))          # fully transparent black
    rgba.putpixel((0, 0), (255, 0, 0, 255))                   # one opaque red pixel
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    rgb = images.decode(buf.getvalue())
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (255, 0, 0)
    # a palette image with a transparent index, as clip art often is
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.putpixel((1, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    assert images.decode(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


# ---- captions files ---------------------------------------------------------------------------------------
def _folder_with(tmp_path, captions: bytes, name="captions.csv", files=("a.png", "b.png", "c.png")) -> Path:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for f in files:
        (folder / f).write_bytes(png_bytes())
    (folder / name).write_bytes(captions)
    return folder


def test_captions_file_with_bad_bytes_rejects_only_that_line(tmp_path):
    folder = _folder_with(tmp_path, b"file,caption\na.png,a fine caption\nb.png,caf\xe9 latin-1\nc.png,ok too\n")
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(folder)], store_path=store, **quiet)
    s, r = tables(store)
    assert len(s) == 2 and r["reason"].tolist() == ["bad_encoding"] and "line 3" in r["detail"].iloc[0]
    assert accounted(store) == 3


@pytest.mark.parametrize("body, detail", [
    (b"file,caption\na.png,one, two, three\nb.png,fine\n", "line 2: 4 fields"),          # unquoted comma
    (b'file,caption\na.png,"never closed\nb.png,fine\nc.png,also fine\n', "line 2: unterminated quote"),
])
def test_captions_csv_bad_rows_are_rejects_with_line_numbers(tmp_path, body, detail):
    folder = _folder_with(tmp_path, body)
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(folder)], store_path=store, **quiet)
    s, r = tables(store)
    assert r["reason"].tolist() == ["bad_caption_record"] and detail in r["detail"].iloc[0]
    assert len(s) == body.count(b"\n") - 2     # every other row is read
    accounted(store)


def test_jsonl_list_line_and_integer_uid_are_rejects(tmp_path):
    body = (b'{"file": "a.png", "caption": "fine"}\n["not", "an", "object"]\n'
            b'{"file": "b.png", "caption": "numbered", "uid": 42}\n')
    folder = _folder_with(tmp_path, body, name="captions.jsonl")
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(folder)], store_path=store, **quiet)
    assert reasons(store) == ["bad_caption_record", "bad_uid"] and accounted(store) == 3


def test_paths_outside_the_input_folder_are_never_read(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png_bytes())
    os.symlink(outside, folder / "link.png")
    os.symlink("/dev/zero", folder / "zero.png")
    os.mkfifo(folder / "fifo.png")
    rows = [("ok.png", "fine"), ("../secret.png", "dot dot"), (str(outside), "absolute"), ("link.png", "symlink out"),
            ("/dev/zero", "a device"), ("zero.png", "a link to a device"), ("fifo.png", "a fifo")]
    pd.DataFrame(rows, columns=["file", "caption"]).to_csv(folder / "captions.csv", index=False)
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(folder)], store_path=store, **quiet)   # a fifo would block forever if it were opened
    s, r = tables(store)
    assert len(s) == 1 and s["caption"].iloc[0] == "fine"
    got = dict(zip(r["detail"].str.extract(r"'([^']+)'")[0].fillna(""), r["reason"]))
    assert sorted(r["reason"]) == ["not_a_file"] + ["outside_root"] * 5, r[["reason", "detail"]]
    assert got.get("../secret.png") == "outside_root"
    assert accounted(store) == 7


def test_captions_are_stored_exactly_as_given(tmp_path):
    folder = _folder_with(tmp_path, b'file,caption\na.png,"  two spaces before, one after "\n', files=("a.png",))
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(folder)], store_path=store, **quiet)
    assert tables(store)[0]["caption"].tolist() == ["  two spaces before, one after "]


# ---- tars -------------------------------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[str, bytes]], mode="w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_tar_keys_split_at_the_first_dot_as_webdataset_does(tmp_path):
    from audit.ingest.webdataset import split_key

    assert split_key("a/b.seg.png") == ("a/b", "seg.png") and split_key("x.1.jpg") == ("x", "1.jpg")
    assert split_key("dir.v2/k.txt") == ("dir.v2/k", "txt") and split_key("noext") is None
    shard = _tar(tmp_path / "s.tar", [("k1.jpg", png_bytes()), ("k1.txt", b"first"), ("k1.seg.png", png_bytes()),
                                       ("k2.jpg", png_bytes()), ("k2.txt", b"second")])
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(shard)], store_path=store, **quiet)
    s, r = tables(store)
    assert sorted(s["caption"]) == ["first", "second"] and r.empty   # no phantom empty_caption for k1.seg


def test_repeated_tar_keys_are_all_accounted(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("k.jpg", png_bytes()), ("k.txt", b"one"), ("k.txt", b"again"),
                                       ("j.jpg", png_bytes()), ("j.txt", b"other"),
                                       ("k.jpg", png_bytes()), ("k.txt", b"later copy")])
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(shard)], store_path=store, **quiet)
    s, r = tables(store)
    assert sorted(s["caption"]) == ["one", "other"]
    assert sorted(r["reason"]) == ["duplicate_key", "duplicate_uid"]


def test_bad_json_members_are_rejects_not_silent_uid_changes(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("a.jpg", png_bytes()), ("a.txt", b"x"), ("a.json", b"[1, 2]"),
                                       ("b.jpg", png_bytes()), ("b.txt", b"y"), ("b.json", b'{"uid": "u-b",'),
                                       ("c.jpg", png_bytes()), ("c.txt", b"z"), ("c.json", b'{"uid": 7}'),
                                       ("d.jpg", png_bytes()), ("d.txt", b"\xff\xfe bad"), ("d.json", b'{"uid": "u-d"}')])
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(shard)], store_path=store, **quiet)
    assert reasons(store) == ["bad_encoding", "bad_metadata", "bad_metadata", "bad_uid"]


def test_gzipped_shards_are_read(tmp_path):
    members = [(f"{i:04d}.{e}", png_bytes() if e == "jpg" else f"caption {i}".encode()) for i in range(5)
               for e in ("jpg", "txt")]
    shard = _tar(tmp_path / "s.tar.gz", members, mode="w:gz")
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(tmp_path)], store_path=store, **quiet)
    s, r = tables(store)
    assert len(s) == 5 and r.empty
    assert images.load_image(s["image_ref"].iloc[0]).size == (8, 8)   # thumbnails stream the gzip
    assert shard.exists()


def test_brace_patterns_globs_and_remote_urls(tmp_path):
    assert expand_braces("s/{00008..00010}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    for i in range(3):
        _tar(tmp_path / f"{i:05d}.tar", [(f"{i}.jpg", png_bytes()), (f"{i}.txt", b"c")])
    assert [p.name for p in expand_inputs("webdataset", [str(tmp_path / "{00000..00002}.tar")])] == \
        ["00000.tar", "00001.tar", "00002.tar"]
    assert len(expand_inputs("webdataset", [str(tmp_path / "0000[01].tar")])) == 2
    with pytest.raises(ValueError, match=r"s3://bucket/shards/\{0..9\}.tar"):
        expand_inputs("webdataset", ["s3://bucket/shards/{0..9}.tar"])
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(tmp_path / "*.tar")], store_path=store, **quiet)
    assert len(tables(store)[0]) == 3


# ---- parquet and datacomp -------------------------------------------------------------------------------
def test_parquet_rows_with_bad_values_are_rejected_one_by_one(tmp_path):
    p = tmp_path / "m.parquet"
    pd.DataFrame({"url": [f"https://e.org/{i}.jpg" for i in range(4)], "caption": ["a", "b", "c", "d"],
                  "width": ["640", "wide", "480", str(2**31)], "height": ["480", "480", "480", "10"]}).to_parquet(p)
    store = str(tmp_path / "s.duckdb")
    ingest("parquet", [str(p)], store_path=store, **quiet)
    s, r = tables(store)
    assert sorted(s["width"]) == [480, 640] and r["reason"].tolist() == ["bad_value", "bad_value"]
    assert sorted(r["detail"].str.slice(0, 20)) == ["width/height '214748", "width/height 'wide' "]


def test_datacomp_integer_uids_and_string_scores_are_rejects(tmp_path):
    from audit.demo.simulate import SimConfig, write_pool

    write_pool(tmp_path / "pool", SimConfig(rows=300, seed=1))
    shard = sorted((tmp_path / "pool").glob("*.parquet"))[0]
    frame = pd.read_parquet(shard)
    frame["clip_l14_similarity_score"] = frame["clip_l14_similarity_score"].astype(str)   # a column of text
    frame.loc[0, "clip_l14_similarity_score"] = "0.3x"
    frame.loc[1, "original_width"] = 2**40
    frame.to_parquet(shard)
    store = str(tmp_path / "s.duckdb")
    ingest("datacomp", [str(shard)], store_path=store, **quiet)
    assert reasons(store) == ["bad_value", "bad_value"] and accounted(store) == len(frame)
    frame["uid"] = np.arange(len(frame))   # integer uids: every row refused, none renamed
    frame.to_parquet(shard)
    store2 = str(tmp_path / "s2.duckdb")
    ingest("datacomp", [str(shard)], store_path=store2, **quiet)
    assert set(reasons(store2)) == {"bad_uid"} and accounted(store2) == len(frame)


def test_fixing_a_missing_npz_moves_its_rows_from_rejects_to_samples(tmp_path):
    from audit.demo.simulate import SimConfig, write_pool

    write_pool(tmp_path / "pool", SimConfig(rows=200, seed=2))
    shard = sorted((tmp_path / "pool").glob("*.parquet"))[0]
    npz = shard.with_suffix(".npz")
    hidden = tmp_path / "hidden.npz"
    npz.replace(hidden)
    store = str(tmp_path / "s.duckdb")
    ingest("datacomp", [str(shard)], store_path=store, **quiet)
    n = len(pd.read_parquet(shard))
    assert reasons(store) == ["missing_npz"] * n
    hidden.replace(npz)
    ingest("datacomp", [str(shard)], store_path=store, **quiet)
    s, r = tables(store)
    assert len(s) + len(r) == n and "missing_npz" not in set(r["reason"])
    # a uid is in both tables only when the input itself repeats it (the second row is the duplicate)
    both = set(s["uid"]) & set(r["uid"].dropna())
    assert both == set(r.loc[r["reason"] == "duplicate_uid", "uid"])


def test_datacomp_metadata_without_npz_with_no_vectors(tmp_path):
    """--no-vectors: the parquet alone gives the same samples and similarity scores as with its npz, no vectors."""
    from audit.demo.simulate import SimConfig, write_pool

    info = write_pool(tmp_path / "meta", SimConfig(rows=300, seed=4, vectors=False))
    assert not list((tmp_path / "meta").glob("*.npz"))
    full_info = write_pool(tmp_path / "full", SimConfig(rows=300, seed=4))
    meta, full = str(tmp_path / "m.duckdb"), str(tmp_path / "f.duckdb")
    ingest("datacomp", info["files"], store_path=meta, vectors=False, **quiet)
    ingest("datacomp", full_info["files"], store_path=full, **quiet)
    rows = sum(len(pd.read_parquet(f)) for f in info["files"])
    with Store.reader(meta) as a, Store.reader(full) as b:
        assert accounted(meta) == rows == accounted(full) and a.models().empty and not b.models().empty
        # rows rejected for their vectors in the full pool are samples here: every other row is the same
        nan_rows = set(b.df("SELECT uid FROM rejects WHERE reason = 'nan_embedding'")["uid"])
        assert nan_rows and nan_rows <= set(a.df("SELECT uid FROM samples")["uid"])
        for q in ("SELECT uid, name, value FROM scores ORDER BY uid, name",
                  "SELECT uid, caption, url, width, height FROM samples ORDER BY uid"):
            got = a.df(q)
            pd.testing.assert_frame_equal(got[~got["uid"].isin(nan_rows)].reset_index(drop=True), b.df(q))
    with pytest.raises(ValueError, match="datacomp"):
        ingest("parquet", info["files"], store_path=str(tmp_path / "x.duckdb"), vectors=False, **quiet)


def test_same_bytes_give_the_same_vector_parts_and_seeded_results(tmp_path):
    """Vector parts are named by content, not file times: a copy with other mtimes gives the same store."""
    import shutil

    from audit.demo.simulate import SimConfig, write_pool
    from audit.scores.base import run_score
    from audit.store.vectors import parts

    write_pool(tmp_path / "a", SimConfig(rows=600, seed=3))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for f in (tmp_path / "b").iterdir():
        os.utime(f, (1_000_000, 1_000_000))
    out = {}
    for name in ("a", "b"):
        store = str(tmp_path / f"{name}.duckdb")
        ingest("datacomp", [str(tmp_path / name)], store_path=store, **quiet)
        run_score("negclip", store, model="datacomp_b32", params={"tau": 0.01, "batch_size": 128, "k": 2},
                  echo=lambda s: None)
        with Store.reader(store) as st:
            out[name] = ([p.name for p in parts(st, "datacomp_b32")],
                         st.score_frame(["negclip_datacomp_b32"])["negclip_datacomp_b32"].to_numpy())
    assert out["a"][0] == out["b"][0]
    np.testing.assert_array_equal(out["a"][1], out["b"][1])


def test_every_reject_reason_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [r for r in REASONS if f"`{r}`" not in readme]
    assert missing == []


# ---- outputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", " =1+1", "\n=1+1", "\t=cmd", "  \n-1"])
def test_formula_cells_are_neutralised(cell):
    from audit.export.csvsafe import neutralise_cell, to_csv

    assert neutralise_cell(cell) == "'" + cell
    assert to_csv(pd.DataFrame({"c": [cell], "n": [-1.5]})).splitlines()[1].startswith(("'", '"\''))
    assert neutralise_cell("plain text") == "plain text" and neutralise_cell(-2) == -2


def test_text_from_the_data_is_inert_markdown():
    from audit.ui import md

    caption = "![x](http://evil.example/p.png) <img src=x onerror=alert(1)>.com $x$ :red[hi] **bold**"
    out = md(caption)
    import re

    assert re.search(r"(?<!\\)[<>\[\]!$*:()]", out) is None   # every markup character is escaped
    assert out.replace("\\", "") == caption


def test_manifest_is_strict_json_with_the_files_hash(demo_store, tmp_path):
    import hashlib

    from audit.export.writer import export

    out = tmp_path / "kept.csv"
    export(demo_store, str(out), ["clip_l14_similarity_score:top=0.3"], echo=lambda s: None)
    man = json.loads((tmp_path / "kept.csv.manifest.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert man["file"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert man["file"]["rows"] == man["kept"] == len(pd.read_csv(out))
    assert man["store"] == str(Path(demo_store).resolve())
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_html_and_markdown_in_the_data_are_shown_as_text(make_store, monkeypatch):
    """A domain like <img src=x onerror=…>.com and a caption with a markdown image render as text, never as
    HTML or a fetched image (Filter preview's sample cards)."""
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    evil_domain = "<img src=x onerror=alert(1)><h1>owned</h1>.com"
    samples = [{"uid": f"u{i:02d}", "caption": f"![pixel](http://tracker.example/{i}.png) caption {i}",
                "domain": evil_domain, "url": f"http://x.example/{i}"} for i in range(12)]
    path = make_store(samples, scores={"s": np.linspace(0, 1, 12)})
    monkeypatch.setenv("AUDIT_STORE", path)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/filter_preview.py")
    at.session_state["samples_open"] = True   # the examples section, opened
    at.run()
    assert not at.exception
    # the sample cards are one HTML grid (st.html: no Markdown is read there); every text from the data is escaped
    grids = [h.value for h in at.html if "no image stored" in h.value]
    assert grids and all("&lt;img src=x onerror=alert(1)&gt;&lt;h1&gt;owned&lt;/h1&gt;.com" in b for b in grids)
    assert not any("<img" in b or "<h1>" in b for b in grids)       # no tag from the data, and no image at all
    shown = [c for b in grids for c in range(12) if f"![pixel](http://tracker.example/{c}.png) caption {c}<" in b]
    assert sorted(shown) == list(range(12))                          # each caption shown as its text


def test_npy_export_warns_about_made_up_and_repeated_uids(tmp_path):
    from audit.export.writer import export
    from audit.scores.base import run_score

    shard = _tar(tmp_path / "s.tar", [("a.jpg", png_bytes()), ("a.txt", b"no uid here"),
                                       ("b.jpg", png_bytes()), ("b.txt", b"x"), ("b.json", b'{"uid": "%s"}' % (b"b" * 32)),
                                       ("c.jpg", png_bytes()), ("c.txt", b"y"), ("c.json", b'{"uid": "%s"}' % (b"b" * 32))])
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(shard)], store_path=store, **quiet)
    s, r = tables(store)
    assert s.set_index("caption")["uid_given"].to_dict() == {"no uid here": False, "x": True}
    run_score("basic", store, params={}, echo=lambda s: None)
    lines: list[str] = []
    man = export(store, str(tmp_path / "k.npy"), ["basic_chars>=0"], echo=lines.append)
    assert man["uid_warnings"] == {"generated_uids": 1, "repeated_in_input": 1}
    assert any("cannot select them" in line for line in lines) and any("every copy" in line for line in lines)


def test_a_moved_store_still_reads_its_vectors(make_store, tmp_path):
    import shutil

    from audit.store.vectors import iter_embedding_rows

    rng = np.random.default_rng(0)
    img = rng.standard_normal((5, 4)).astype(np.float32)
    uids = [f"u{i}" for i in range(5)]
    path = make_store([{"uid": u, "caption": "c"} for u in uids], vectors={"m": (uids, img, img)}, name="a.duckdb")
    new = tmp_path / "moved"
    new.mkdir()
    shutil.move(path, new / "a.duckdb")
    shutil.move(str(Path(path).with_name("a.vectors")), new / "a.vectors")
    with Store.reader(str(new / "a.duckdb")) as st:
        got = [u for batch, _ in iter_embedding_rows(st, "m") for u in batch]
    assert sorted(got) == uids
    with Store.writer(str(new / "a.duckdb")) as st:   # the next writer points the embeddings view here
        assert st.count("embeddings") == 5


def test_stats_json_accounts_for_failures_when_the_parquet_is_gone(tmp_path):
    shard = _tar(tmp_path / "00000.tar", [("0.jpg", png_bytes()), ("0.txt", b"ok")])
    (tmp_path / "00000_stats.json").write_text(json.dumps(
        {"count": 4, "successes": 1, "failed_to_download": 3, "status_dict": {"success": 1, "HTTP 404": 3}}))
    store = str(tmp_path / "s.duckdb")
    ingest("webdataset", [str(shard)], store_path=store, **quiet)
    assert reasons(store) == ["download_failed"] * 3 and accounted(store) == 4


def test_report_csv_neutralises_formula_labels(make_store, tmp_path, monkeypatch):
    import sys

    from audit.cli import main

    samples = [{"uid": f"u{i}", "caption": "c"} for i in range(4)]
    path = make_store(samples, scores={"s": np.array([1.0, 0.0, 1.0, 0.0])})
    with Store.writer(path) as st:
        run = st.start_run("annotate", "hand", params={})
        st.write_annotations(pd.DataFrame({"uid": [s["uid"] for s in samples], "attribute": "grp",
                                           "label": ['=HYPERLINK("http://x")', "  -1+2", "a", "a"],
                                           "confidence": 1.0, "method": "hand"}), run_id=run, method="hand")
    out = tmp_path / "r.csv"
    monkeypatch.setattr(sys, "argv", ["audit", "report"])
    assert main(["report", "--store", path, "--keep", "s>=0.5", "--by", "grp", "--min-n", "1", "--out", str(out)]) == 0
    groups = pd.read_csv(out)["group"].tolist()
    assert set(groups) == {"'=HYPERLINK(\"http://x\")", "'  -1+2", "a"}


def test_chart_labels_from_the_data_are_escaped_and_weights_csv_is_neutralised(tmp_path):
    from audit import charts
    from audit.analyses.balance.run import weights_writer
    from audit.measure.metrics import group_rates

    table = group_rates(np.array([True, False, True]), np.array(['<a href="http://x">click</a>', "b", "b"]), min_n=1)
    fig = charts.rate_chart(table, title="t")
    labels = list(fig.data[0].y)
    assert all("<a" not in s for s in labels) and any("&lt;a href" in s for s in labels)
    write, close = weights_writer(str(tmp_path / "w.csv"))
    write(pd.DataFrame({"uid": ["=1+1", "ok"], "q": [0.5, 1.0], "keep": [1, 0]}))
    close()
    assert (tmp_path / "w.csv").read_text().splitlines()[1].startswith("'=1+1")


def test_map_draws_the_smaller_class_on_top():
    from audit import charts

    n = 10
    points = pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.zeros(n), "pos": np.arange(n),
                           "caption": ["c"] * n, "source": ["s"] * n})
    vals = np.array(["kept"] * 3 + ["excluded"] * 7, dtype=object)
    fig = charts.map_points(points, vals, numeric=False, colour="f", keep_colours=True)
    assert [tr.name for tr in fig.data] == ["excluded (7)", "kept (3)"]   # the last trace is drawn on top


def test_ingest_without_store_refuses_to_write_into_the_demo_store(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_STORE"}
    res = subprocess.run([sys.executable, "-m", "audit", "ingest", "folder", str(tmp_path)], cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    assert res.returncode == 1 and "no --store given" in res.stderr
    assert not (tmp_path / "data").exists()
