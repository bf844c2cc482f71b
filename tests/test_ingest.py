"""Ingest: every input row ends in exactly one of samples or rejects, with its reason; re-ingest adds nothing."""
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.ingest.run import ingest
from audit.store import Store


def png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def counts(path):
    with Store.reader(path) as st:
        return (st.count("samples"), st.df("SELECT reason, count(*) n FROM rejects GROUP BY reason")
                .set_index("reason")["n"].to_dict())


def test_folder_csv_and_bad_rows(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "ok1.png").write_bytes(png())
    (d / "ok2.png").write_bytes(png((0, 0, 255), (60, 20)))
    (d / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "blank.png").write_bytes(png())
    pd.DataFrame({"file": ["ok1.png", "ok2.png", "bad.jpg", "blank.png", "gone.png", "ok1.png", ""],
                  "caption": ["a red box", "a blue bar", "broken", "  ", "missing", "a red box", "no file"],
                  "url": ["https://a.example.com/x.png"] * 7}).to_csv(d / "captions.csv", index=False)
    store = str(tmp_path / "s.duckdb")
    rep = ingest("folder", [str(d)], store_path=store, progress=False, echo=lambda s: None)
    n, rej = counts(store)
    assert n == 2 and rep.accepted == 2
    assert rej == {"corrupt_image": 1, "empty_caption": 1, "missing_image": 1, "duplicate_uid": 1,
                   "missing_file_field": 1}
    assert rep.rows_in == 7 == n + sum(rej.values())
    with Store.reader(store) as st:
        s = st.df("SELECT * FROM samples ORDER BY width")
    assert s["width"].tolist() == [40, 60] and s["height"].tolist() == [30, 20]
    assert s["domain"].tolist() == ["example.com"] * 2
    # the same input again adds nothing
    ingest("folder", [str(d)], store_path=store, progress=False, echo=lambda s: None)
    assert counts(store) == (n, rej)


def test_folder_jsonl_with_broken_line(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    (d / "a.png").write_bytes(png())
    (d / "captions.jsonl").write_text('{"file": "a.png", "caption": "a box"}\n{oops not json\n')
    store = str(tmp_path / "s.duckdb")
    ingest("folder", [str(d)], store_path=store, progress=False, echo=lambda s: None)
    assert counts(store) == (1, {"bad_caption_record": 1})


def make_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_and_truncated_tar(tmp_path):
    good = tmp_path / "00000.tar"
    members = []
    for i in range(4):
        k = f"{i:09d}"
        members += [(f"{k}.jpg", png((i * 40, 10, 10))), (f"{k}.txt", f"caption {i} here".encode()),
                    (f"{k}.json", json.dumps({"url": f"https://img.shop.co.uk/{i}.jpg", "key": k}).encode())]
    members += [("000000004.txt", b"no image for this key"), ("000000005.jpg", b"garbage bytes"),
                ("000000005.txt", b"corrupt image key")]
    make_tar(good, members)
    store = str(tmp_path / "s.duckdb")
    rep = ingest("webdataset", [str(good)], store_path=store, progress=False, echo=lambda s: None)
    n, rej = counts(store)
    assert n == 4 and rej == {"missing_image": 1, "corrupt_image": 1}
    with Store.reader(store) as st:
        s = st.df("SELECT * FROM samples ORDER BY caption")
    assert s["domain"].iloc[0] == "shop.co.uk" and s["tld"].iloc[0] == "co.uk"
    from audit.images import load_image

    assert load_image(s["image_ref"].iloc[0]).size == (40, 30)  # read back from the tar by offset

    # a truncated copy: the tail is cut inside the 3rd image; whole keys before survive
    raw = good.read_bytes()
    cut = tmp_path / "00001.tar"
    cut.write_bytes(raw[: 512 * 11 + 100])
    store2 = str(tmp_path / "s2.duckdb")
    rep2 = ingest("webdataset", [str(cut)], store_path=store2, progress=False, echo=lambda s: None)
    n2, rej2 = counts(store2)
    assert n2 >= 1 and "truncated_tar" in rej2
    assert rep2.rows_in == n2 + sum(rej2.values())

    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00\x01 not a tar at all" * 10)
    store3 = str(tmp_path / "s3.duckdb")
    ingest("webdataset", [str(junk)], store_path=store3, progress=False, echo=lambda s: None)
    n3, rej3 = counts(store3)
    assert n3 == 0 and sum(rej3.values()) == 1


def test_parquet_rows(tmp_path):
    p = tmp_path / "urls.parquet"
    pd.DataFrame({"url": ["https://a.com/1.jpg", None, "https://b.de/3.jpg", "https://b.de/3.jpg"],
                  "text": ["one dog", "no url", "", "three cats"], "uid": ["u1", "u2", "u3", "u1"],
                  "width": [10, 20, 30, 40]}).to_parquet(p)
    store = str(tmp_path / "s.duckdb")
    ingest("parquet", [str(p)], store_path=store, progress=False, echo=lambda s: None)
    assert counts(store) == (1, {"missing_url": 1, "empty_caption": 1, "duplicate_uid": 1})
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    ingest("parquet", [str(bad)], store_path=store, progress=False, echo=lambda s: None)
    assert counts(store)[1]["corrupt_parquet"] == 1
    nocol = tmp_path / "nocol.parquet"
    pd.DataFrame({"link": ["x"], "text": ["y"]}).to_parquet(nocol)
    ingest("parquet", [str(nocol)], store_path=store, progress=False, echo=lambda s: None)
    assert counts(store)[1]["missing_column"] == 1


def datacomp_shard(folder, name, n, *, rng, dims=(512, 768), npz_rows=None, nan_row=None, empty_row=None,
                   dup_of=None):
    uids = [rng.bytes(16).hex() for _ in range(n)]
    if dup_of is not None:
        uids[dup_of[0]] = uids[dup_of[1]]
    text = [f"a photo of thing {i}" for i in range(n)]
    if empty_row is not None:
        text[empty_row] = ""
    arrays = {}
    for key, d in (("b32", dims[0]), ("l14", dims[1])):
        m = n if npz_rows is None else npz_rows
        img = rng.standard_normal((m, d)).astype(np.float16)
        txt = rng.standard_normal((m, d)).astype(np.float16)
        arrays[f"{key}_img"], arrays[f"{key}_txt"] = img, txt
    if nan_row is not None:
        arrays["l14_txt"][nan_row, 3] = np.nan
    f = lambda a, b: np.einsum("ij,ij->i", a.astype(np.float32) / np.linalg.norm(a.astype(np.float32), axis=1, keepdims=True),  # noqa: E731
                               b.astype(np.float32) / np.linalg.norm(b.astype(np.float32), axis=1, keepdims=True))
    k = min(n, len(arrays["l14_img"]))
    score = np.zeros(n, np.float32)
    score[:k] = f(arrays["l14_img"][:k], arrays["l14_txt"][:k])
    pd.DataFrame({"uid": uids, "url": [f"https://cdn{i}.example.org/{i}.jpg" for i in range(n)], "text": text,
                  "original_width": [300] * n, "original_height": [200] * n,
                  "clip_b32_similarity_score": np.zeros(n, np.float32), "clip_l14_similarity_score": score,
                  "face_bboxes": [[] for _ in range(n)], "sha256": ["0" * 64] * n}).to_parquet(folder / f"{name}.parquet")
    np.savez(folder / f"{name}.npz", **arrays)
    return uids


def test_datacomp_good_and_bad_shards(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "pool"
    d.mkdir()
    datacomp_shard(d, "00000000", 6, rng=rng, nan_row=1, empty_row=2, dup_of=(5, 0))
    datacomp_shard(d, "00000001", 4, rng=rng, npz_rows=3)            # npz shorter than parquet
    datacomp_shard(d, "00000002", 3, rng=rng, dims=(512, 700))        # wrong dimension
    datacomp_shard(d, "00000003", 2, rng=rng)
    (d / "00000003.npz").unlink()                                     # missing npz
    store = str(tmp_path / "dc.duckdb")
    rep = ingest("datacomp", [str(d)], store_path=store, progress=False, echo=lambda s: None)
    n, rej = counts(store)
    assert n == 3
    assert rej == {"nan_embedding": 1, "empty_caption": 1, "duplicate_uid": 1, "npz_length_mismatch": 4,
                   "wrong_dimension": 3, "missing_npz": 2}
    assert rep.rows_in == 6 + 4 + 3 + 2 == n + sum(rej.values())
    with Store.reader(store) as st:
        emb = st.df("SELECT model, count(*) n, min(len(img)) d FROM embeddings GROUP BY model ORDER BY model")
        assert emb.to_dict("list") == {"model": ["datacomp_b32", "datacomp_l14"], "n": [3, 3], "d": [512, 768]}
        assert set(st.score_names()) >= {"clip_b32_similarity_score", "clip_l14_similarity_score"}
        # stored vectors are unit norm, and dot(l14_img, l14_txt) reproduces the parquet's L/14 score
        from audit.store.vectors import iter_vectors

        sc = st.df("SELECT uid, value FROM scores WHERE name='clip_l14_similarity_score'").set_index("uid")["value"]
        for uids, cols in iter_vectors(st, "datacomp_l14"):
            assert np.allclose(np.linalg.norm(cols["img"], axis=1), 1, atol=2e-3)
            dots = np.einsum("ij,ij->i", cols["img"], cols["txt"])
            assert np.allclose(dots, sc.loc[uids].to_numpy(), atol=3e-3)
    again = ingest("datacomp", [str(d)], store_path=store, progress=False, echo=lambda s: None)
    assert again.accepted == 0 and len(again.skipped_inputs) == 4 and counts(store) == (n, rej)


def test_unknown_format_and_missing_path(tmp_path):
    with pytest.raises(ValueError):
        ingest("zip", [str(tmp_path)], store_path=str(tmp_path / "s.duckdb"), progress=False)
    with pytest.raises(FileNotFoundError):
        ingest("parquet", [str(tmp_path / "nope.parquet")], store_path=str(tmp_path / "s.duckdb"), progress=False)


def test_npz_members_are_memory_mapped_and_equal_np_load(tmp_path):
    """An uncompressed .npz (DataComp's np.savez) is read in place; compressed members, a missing key and a cut
    file behave as np.load does."""
    import numpy as np
    import pytest

    from audit.ingest.datacomp import npz_arrays

    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(50, 8)).astype(np.float16), "b": np.asfortranarray(rng.normal(size=(5, 3))),
              "c": np.zeros((0, 4), np.float32)}
    np.savez(tmp_path / "x.npz", **arrays)
    np.savez_compressed(tmp_path / "z.npz", **arrays)
    for name in ("x.npz", "z.npz"):
        got = npz_arrays(tmp_path / name, ("a", "b", "c"))
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
            np.testing.assert_array_equal(got[k], v)
    assert isinstance(npz_arrays(tmp_path / "x.npz", ("a",))["a"], np.memmap)
    with pytest.raises(KeyError):
        npz_arrays(tmp_path / "x.npz", ("a", "nope"))
    data = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        npz_arrays(tmp_path / "cut.npz", ("a", "b"))


def test_datacomp_read_ahead_keeps_cross_input_duplicates_repeats_and_unit_rows_exact(tmp_path):
    """Ingest reads the next shard on a thread while it writes the one before: a uid of shard 0 repeated in shard
    2 is still a duplicate (checked at write time), a shard listed twice is skipped once, and the accounting holds.
    Vectors already of unit norm (DataComp's) are stored bit for bit as given; the others are divided by their
    norm, as l2_normalise then a float16 cast would (within one float16 step)."""
    import pyarrow.parquet as pq

    from audit.store.vectors import iter_vectors

    rng = np.random.default_rng(3)
    d = tmp_path / "pool"
    d.mkdir()
    u0 = datacomp_shard(d, "00000000", 5, rng=rng)
    datacomp_shard(d, "00000001", 4, rng=rng)
    u2 = datacomp_shard(d, "00000002", 3, rng=rng)
    frame = pq.read_table(d / "00000002.parquet").to_pandas()
    frame.loc[1, "uid"] = u0[3]                    # repeats a uid of shard 0
    frame.to_parquet(d / "00000002.parquet")
    with np.load(d / "00000000.npz") as z:
        arrays = {k: z[k] for k in z.files}
    raw = arrays["l14_img"].astype(np.float32)
    unit = (raw / np.linalg.norm(raw, axis=1, keepdims=True) * (1 + 3e-4)).astype(np.float16)   # within 2^-11
    unit[4] = arrays["l14_img"][4]                 # one row left far from unit norm
    arrays["l14_img"] = unit
    np.savez(d / "00000000.npz", **arrays)
    store = str(tmp_path / "dc.duckdb")
    rep = ingest("datacomp", [str(d), str(d / "00000001.parquet")], store_path=store, progress=False,
                 echo=lambda s: None)
    n, rej = counts(store)
    assert rej == {"duplicate_uid": 1} and n == 5 + 4 + 2
    assert rep.rows_in == 12 == n + 1 and rep.skipped_inputs == [str(d / "00000001.parquet")]
    with Store.reader(store) as st:
        assert st.scalar("SELECT detail FROM rejects") == f"uid {u0[3]} already in store"
        got = {}
        for uids, cols in iter_vectors(st, "datacomp_l14"):
            got.update(zip(uids, cols["img"]))
    assert u2[1] not in got and len(got) == n
    for i in range(4):   # unit rows: exactly the given float16 numbers
        np.testing.assert_array_equal(got[u0[i]], unit[i].astype(np.float32))
    u = unit[:4].astype(np.float32)
    assert np.abs(np.linalg.norm(u, axis=1) - 1).max() <= 2.0 ** -11
    assert ((u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float16) != unit[:4]).sum() > 10   # dividing: not
    want = (raw[4] / np.linalg.norm(raw[4])).astype(np.float16).astype(np.float32)
    assert np.abs(got[u0[4]] - want).max() <= 1e-3 and abs(np.linalg.norm(got[u0[4]]) - 1) < 2e-3


def test_domains_of_equals_domain_of_per_url_and_memmap_pages_can_be_released(tmp_path):
    """domains_of looks each host up once; checked against domain_of called on every url by itself. Text that is
    not a url is looked up by its own value: "" must not take the domain of an earlier url whose host is ""."""
    from audit.ingest.accounting import domain_of, domains_of
    from audit.ingest.datacomp import npz_arrays, release_pages

    urls = ["https://a.b.co.uk/x", "http://Foo.com", "not a url", "a://b", None, "foo/bar://x/y",
            "https://a.b.co.uk/y", "", "ftp://x.org/1/2", "https://img1.etsystatic.com/p/1.jpg"]
    want = [domain_of(u) for u in urls]
    for given in (urls, pd.Series(urls, dtype=object), pd.Series(urls, dtype="str")):
        doms, tlds = domains_of(given)
        assert list(zip(doms, tlds)) == want
    assert want[7] == (None, None) and want[5] != (None, None)
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    np.savez(tmp_path / "v.npz", a=arr)
    mm = npz_arrays(tmp_path / "v.npz", ["a"])["a"]
    assert isinstance(mm, np.memmap)
    release_pages(mm)                     # the pages leave the resident set; the data reads back the same
    np.testing.assert_array_equal(mm, arr)
    release_pages(arr)                    # a plain array: nothing to do
