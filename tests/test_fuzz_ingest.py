"""Property tests (hypothesis) for the ingest parsers: whatever the captions file, tar, parquet or npz holds, ingest
never raises, and the rows counted from the generated input equal samples + rejects."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from audit.ingest.run import ingest
from audit.store import Store

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PNG = io.BytesIO()
Image.new("RGB", (4, 4), (1, 2, 3)).save(PNG, format="PNG")
PNG = PNG.getvalue()

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=12)
junk = st.binary(max_size=24)


def counts(store: str) -> tuple[int, int, int]:
    with Store.reader(store) as s:
        return s.count("samples"), s.count("rejects"), int(s.scalar("SELECT coalesce(sum(rows_in), 0) FROM ingested_inputs"))


def run(fmt: str, path: Path, tmp: Path) -> tuple[int, int, int]:
    store = str(tmp / "s.duckdb")
    ingest(fmt, [str(path)], store_path=store, progress=False, echo=lambda s: None)
    n_s, n_r, rows_in = counts(store)
    assert n_s + n_r == rows_in
    return n_s, n_r, rows_in


# ---- captions files ------------------------------------------------------------------------------------
line = st.one_of(
    st.tuples(st.sampled_from(["a.png", "b.png", "missing.png", "../x.png", "/etc/hostname", ""]), text).map(
        lambda t: f"{t[0]},{t[1].replace(chr(34), '')}".encode("utf-8")),        # file,caption (no quotes)
    st.tuples(text, text, text).map(lambda t: ",".join(t).replace('"', "").encode("utf-8")),   # wrong field counts
    junk.map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ").replace(b'"', b"'")),      # raw bytes
)


@SETTINGS
@given(st.lists(line, min_size=0, max_size=12))
def test_captions_csv_any_bytes(lines):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folder = tmp / "in"
        folder.mkdir()
        (folder / "a.png").write_bytes(PNG)
        (folder / "b.png").write_bytes(b"not an image")
        (folder / "captions.csv").write_bytes(b"file,caption\n" + b"\n".join(lines) + b"\n")
        data_lines = sum(1 for l in lines if l.strip())
        n_s, n_r, rows_in = run("folder", folder, tmp)
        assert rows_in == data_lines


json_line = st.one_of(
    st.fixed_dictionaries({"file": st.sampled_from(["a.png", "b.png", "../a.png", 3]), "caption": st.one_of(text, st.none(), st.integers()),
                           "uid": st.one_of(st.none(), text, st.integers(), st.lists(st.integers(), max_size=2))}).map(
        lambda d: json.dumps(d).encode()),
    st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5)).map(lambda v: json.dumps(v).encode()),
    junk.map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
)


@SETTINGS
@given(st.lists(json_line, min_size=0, max_size=12))
def test_captions_jsonl_any_lines(lines):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folder = tmp / "in"
        folder.mkdir()
        (folder / "a.png").write_bytes(PNG)
        (folder / "b.png").write_bytes(b"\x89PNG broken")
        (folder / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        n_s, n_r, rows_in = run("folder", folder, tmp)
        assert rows_in == sum(1 for l in lines if l.strip())


# ---- tars -------------------------------------------------------------------------------------------------
member = st.tuples(
    st.sampled_from(["jpg", "png", "txt", "json", "seg.png", "cls"]),
    st.one_of(st.just(PNG), junk, text.map(str.encode), st.just(b'{"uid": 5}'), st.just(b"[1]"),
              st.just(b'{"uid": "u", "original_width": "x"}')))


@SETTINGS
@given(st.lists(st.lists(member, min_size=1, max_size=4), min_size=1, max_size=6), st.booleans())
def test_tar_any_members(samples, gzip):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shard = tmp / ("s.tar.gz" if gzip else "s.tar")
        expected = 0
        with tarfile.open(shard, "w:gz" if gzip else "w") as tf:
            for k, members in enumerate(samples):
                seen = set()
                for ext, data in members:
                    info = tarfile.TarInfo(f"key{k:03d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                    expected += ext in seen         # a repeated extension in a sample is its own reject
                    seen.add(ext)
                expected += 1                       # one row per key
        n_s, n_r, rows_in = run("webdataset", shard, tmp)
        assert rows_in == expected


@SETTINGS
@given(st.integers(min_value=1, max_value=400))
def test_truncated_tar_anywhere(cut):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shard = tmp / "s.tar"
        with tarfile.open(shard, "w") as tf:
            for k in range(3):
                for ext, data in (("jpg", PNG), ("txt", b"caption")):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        raw = shard.read_bytes()
        shard.write_bytes(raw[: max(0, len(raw) - cut * 16)])
        run("webdataset", shard, tmp)   # never raises; accounted (the broken tail is one reject)


# ---- parquet schemas and npz shapes -------------------------------------------------------------------------
cell = st.one_of(st.none(), st.integers(-3, 2**40), st.floats(allow_nan=True), text, st.just("0.5"))


@SETTINGS
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.just(n), st.dictionaries(st.sampled_from(["url", "text", "caption", "uid", "width", "height", "sha256",
                                                 "status", "jpg"]),
                                st.lists(cell, min_size=n, max_size=n), max_size=7))))
def test_parquet_any_schema(spec):
    n, cols = spec
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        frame = pd.DataFrame({k: pd.Series(v, dtype=object).map(lambda x: None if x is None else str(x))
                              for k, v in cols.items()}, index=range(n))
        if frame.shape[1] == 0:
            frame["other"] = ["x"] * n
        p = tmp / "m.parquet"
        frame.to_parquet(p)
        n_s, n_r, rows_in = run("parquet", p, tmp)
        assert rows_in == n


@SETTINGS
@given(st.integers(1, 30), st.sampled_from(["float16", "float32", "float64", "int8", "object"]),
       st.sampled_from([None, (0,), (1,), (-1, 1)]), st.sampled_from([None, "b32_img", "l14_txt"]),
       st.booleans())
def test_npz_any_shape_and_dtype(n, dtype, dim_change, drop, nans):
    from audit.demo.simulate import SimConfig, write_pool

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_pool(tmp / "pool", SimConfig(rows=max(60, n * 3), seed=n))
        shard = sorted((tmp / "pool").glob("*.parquet"))[0]
        rows = len(pd.read_parquet(shard))
        npz = dict(np.load(shard.with_suffix(".npz")))
        for key in list(npz):
            a = npz[key]
            if dim_change == (0,):
                a = a[:-1]                          # length mismatch
            elif dim_change == (1,):
                a = a[:, :-1]                       # wrong dimension
            elif dim_change == (-1, 1):
                a = a.reshape(-1)                   # 1-d
            if nans and a.ndim == 2 and len(a):
                a = a.astype(np.float32)
                a[0, 0] = np.nan
            npz[key] = a.astype(dtype) if dtype != "object" else a.astype(object)
        if drop:
            npz.pop(drop)
        np.savez(shard.with_suffix(".npz"), **npz)
        (tmp / "pool" / "truth.parquet").unlink(missing_ok=True)
        shutil.rmtree(tmp / "pool" / "other", ignore_errors=True)
        n_s, n_r, rows_in = run("datacomp", shard, tmp)
        assert rows_in == rows
