"""--engine ray equals --engine local, row for row, for every plug-in that runs on Ray (a local Ray, 2 CPUs);
a plug-in that raises on some samples makes those samples rejects on both engines, not a failed job."""
import sys

import numpy as np
import pandas as pd
import pytest

from audit.annotators import ANNOTATORS
from audit.engine import Engine
from audit.scores import SCORES
from audit.store import Store, copy_store

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RAY = Engine("ray", batch_rows=333)       # many batches per part, batches that end mid-part
LOCAL = Engine("local", batch_rows=333)
ON_RAY = [("score", c.name) for c in SCORES if c.row_columns or c.vector_columns] + [
    ("annotate", c.name) for c in ANNOTATORS if c.row_columns or c.vector_columns]
# a plug-in runs as the demo runs it: its first (model, params) on the demo's two models
DEMO_RUN = {n: SCORES.get(n).demo_runs(["datacomp_b32", "datacomp_l14"])[0] for k, n in ON_RAY if k == "score"}
# vas-d: 2 of the demo's 5 iterations (5 passes, not 11; Ray starts a dataset per pass), still Σ of a later set
DEMO_RUN["vas-d"] = (DEMO_RUN["vas-d"][0], {**DEMO_RUN["vas-d"][1], "iters": 2})
DEMO_ANNOTATE = {n: ANNOTATORS.get(n).demo_runs(["datacomp_b32", "datacomp_l14"])[0]
                 for k, n in ON_RAY if k == "annotate" and ANNOTATORS.get(n).vector_columns}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from audit.engine.ray_data import PROJECT_ROOT

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def base_store(demo_store, tmp_path_factory):
    """The demo store plus a second samples part of awkward rows (no caption, no url, no size, odd text)."""
    path = tmp_path_factory.mktemp("ray_base") / "s.duckdb"
    copy_store(demo_store, path)
    odd = pd.DataFrame({"uid": [f"zz{i:03d}" for i in range(9)], "source": "odd",
                        "caption": [None, "", "   ", "ünïcödé 写真 📷", "a" * 5000, "=1+1", "x", None, "dog on a beach"],
                        "url": [None, "", "not a url", "http://例え.jp/猫.png", "https://a.b.c.co.uk/x.jpg",
                                "ftp://x", "http://[::1]/i.png", "https://localhost/a", None],
                        "width": [None, 0, 1, 10**6, 640, None, 3, 200, 20],
                        "height": [None, 0, 1, 1, 480, 5, None, 100, 2000]})
    with Store.writer(str(path)) as st:
        st.add_samples(odd)
    return str(path)


def _copy(base, tmp_path, name):
    dst = tmp_path / name / "s.duckdb"
    copy_store(base, dst)
    return str(dst)


def _outputs(path, kind, name, outputs):
    with Store.reader(path) as st:
        if kind == "score":
            frame = st.df("SELECT uid, name, value FROM scores WHERE list_contains(?, name) ORDER BY uid, name",
                          [outputs])
        else:
            frame = st.df("SELECT uid, attribute, label, confidence, method FROM annotations "
                          "WHERE list_contains(?, attribute) ORDER BY uid, attribute", [outputs])
        runs = st.runs()
        rejects = st.df("SELECT uid, detail FROM rejects WHERE stage = ? ORDER BY uid", [kind])
    return frame, runs.iloc[-1], rejects


def _run(kind, name, path, engine):
    from audit.annotators.base import run_annotator
    from audit.scores.base import run_score

    quiet = {"force": True, "echo": lambda s: None, "engine": engine}
    if kind == "score":
        model, params = DEMO_RUN.get(name, (None, None))
        return run_score(name, path, model=model, params=params, **quiet)
    model, params = DEMO_ANNOTATE.get(name, (None, None))
    return sorted(run_annotator(name, path, model=model, params=params, **quiet)["attribute"].unique())


def test_the_row_and_vector_local_plug_ins_are_the_ones_on_ray():
    assert {("score", "basic"), ("score", "text-based"), ("annotate", "caption"), ("annotate", "domain"), ("score", "clip"),
            ("score", "laion-nsfw"), ("score", "aesthetic"), ("score", "normsim"), ("score", "vas"),
            ("annotate", "zeroshot"), ("score", "laion"), ("annotate", "nsfw"), ("annotate", "faces"),
            ("annotate", "copyright"), ("score", "metaclip"), ("score", "image-based"),
            ("score", "vas-d"), ("score", "semdedup")} <= set(ON_RAY)
    assert DEMO_ANNOTATE["copyright"][0] == "datacomp_l14"      # with its visual (vector) pass
    assert DEMO_RUN["normsim"][1]["classes"] and DEMO_RUN["clip"][0] == "datacomp_b32"


@pytest.mark.parametrize("kind,name", ON_RAY)
def test_ray_equals_local_row_for_row(local_ray, base_store, tmp_path, kind, name):
    a, b = _copy(base_store, tmp_path, "local"), _copy(base_store, tmp_path, "ray")
    out_a = _run(kind, name, a, LOCAL)
    out_b = _run(kind, name, b, RAY)
    assert out_a == out_b and out_a
    got_a, run_a, rej_a = _outputs(a, kind, name, out_a)
    got_b, run_b, rej_b = _outputs(b, kind, name, out_b)
    with Store.reader(a) as st:
        n = st.count("samples")
    assert n > 3900 and len(got_a) >= n                 # every sample (the odd ones too) has its rows
    assert {f"zz{i:03d}" for i in range(9)} <= set(got_a["uid"])
    assert got_a["uid"].tolist() == got_b["uid"].tolist()
    if kind == "score":
        assert got_a["name"].tolist() == got_b["name"].tolist()
        np.testing.assert_allclose(got_b["value"].to_numpy(float), got_a["value"].to_numpy(float), atol=1e-6, rtol=0)
        assert np.isnan(got_a["value"].to_numpy(float)).tolist() == np.isnan(got_b["value"].to_numpy(float)).tolist()
    else:
        pd.testing.assert_frame_equal(got_a, got_b)
    assert (run_a["rows_in"], run_a["rows_rejected"]) == (run_b["rows_in"], run_b["rows_rejected"]) == (n, 0)
    assert "engine ray" in run_b["note"] and "engine local" in run_a["note"]
    assert rej_a.empty and rej_b.empty
    with Store.reader(b) as st:   # the Ray run's parts are registered like the local run's, in the store's layout
        files = st.df("SELECT file FROM parts WHERE run_id = ?", [int(run_b["run_id"])])["file"]
    block = name in DEMO_RUN and SCORES.get(name).vector_block_rows(DEMO_RUN[name][1]) is not None
    assert len(files) >= (2 if block else 13)          # a batch per part each (a block score: one block here)
    assert all(f.startswith(("scores/", "annotations/")) for f in files)


# ---- bad input: a plug-in that raises on some samples ----------------------------------------------------------
def _fussy(payload, frame):
    """Raises on any batch that holds a uid ending in the payload's digit; otherwise one score row per sample."""
    bad = frame["uid"].str.endswith(payload)
    if bad.any():
        raise ValueError(f"cannot score {frame['uid'][bad].iloc[0]}")
    out = pd.DataFrame({"uid": frame["uid"], "name": "fussy", "value": frame["caption"].fillna("").str.len()})
    return {"fussy": out}, len(frame)


@pytest.mark.parametrize("engine", [LOCAL, RAY], ids=["local", "ray"])
def test_rows_a_plug_in_raises_on_become_rejects_not_a_failed_job(local_ray, base_store, engine):
    import ray.cloudpickle

    from audit.engine import over_samples
    from audit.store import parts

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import the test module
    with Store.reader(base_store) as st:
        staged, infos, rows, rejects = over_samples(engine, st, _fussy, "7", columns=["caption"], table="scores",
                                                    run_id=999)
        samples = st.df("SELECT uid, caption FROM samples ORDER BY uid")
    want_bad = sorted(u for u in samples["uid"] if u.endswith("7"))
    assert rows == len(samples) > 3900
    assert sorted(u for u, _ in rejects) == want_bad and len(want_bad) > 200
    assert all(msg == f"ValueError: cannot score {u}" for u, msg in rejects)
    assert sum(infos) == len(samples) - len(want_bad)           # input rows = accepted + rejected
    got = pd.concat([pd.read_parquet(base_store.replace("s.duckdb", "s.parts/") + f) for f, _ in staged["fussy"]])
    got = got.sort_values("uid").reset_index(drop=True)
    good = samples[~samples["uid"].str.endswith("7")].reset_index(drop=True)
    assert got["uid"].tolist() == good["uid"].tolist()
    np.testing.assert_array_equal(got["value"].to_numpy(), good["caption"].fillna("").str.len().to_numpy(float))
    assert parts.TABLES  # the staged files are orphans: nothing registered them
    with Store.reader(base_store) as st:
        assert not st.scalar("SELECT count(*) FROM parts WHERE run_id = 999")


def test_the_score_runner_records_plug_in_rejects(base_store, tmp_path, monkeypatch):
    """Through run_score (local engine, in this process): the raising samples are rejects of stage score, the
    run counts them, and the others are scored; a rerun that succeeds replaces nothing it should not."""
    from audit.scores import base
    from audit.scores.basic import Basic

    path = _copy(base_store, tmp_path, "rej")
    real = Basic.compute_rows

    def fussy(self, frame, params):
        if frame["uid"].str.startswith("zz00").any():
            raise RuntimeError("broken caption")
        return real(self, frame, params)

    monkeypatch.setattr(Basic, "compute_rows", fussy)
    base.run_score("basic", path, force=True, echo=lambda s: None)
    got, run, rejects = _outputs(path, "score", "basic", ["basic_words"])
    bad = [f"zz00{i}" for i in range(9)]
    assert rejects["uid"].tolist() == bad
    assert set(rejects["detail"]) == {"basic: RuntimeError: broken caption"}
    with Store.reader(path) as st:
        n = st.count("samples")
    assert (run["rows_in"], run["rows_out"], run["rows_rejected"]) == (n, n - 9, 9)
    assert len(got) == n - 9 and not set(bad) & set(got["uid"])


# ---- negCLIPLoss: a block-local score (batches drawn within blocks of whole vector parts) ------------------------
def _parted_store(make_store, n_parts=5, rows=300, d=16):
    from audit.store.vectors import write_vectors

    rng = np.random.default_rng(11)
    uids = [f"s{i:05d}" for i in range(n_parts * rows)]
    img, txt = rng.normal(size=(len(uids), d)), rng.normal(size=(len(uids), d))
    txt = 0.6 * img + 0.8 * txt                         # matched pairs are more similar than random ones
    img[7] = np.nan                                     # unscored, the rest of its block still scored
    path = make_store([{"uid": u, "caption": "c"} for u in uids] + [{"uid": "zz-no-vector", "caption": "c"}])
    with Store.writer(path) as st:
        run = st.start_run("test", "vectors", params={})
        for k in range(n_parts):
            sl = slice(k * rows, (k + 1) * rows)
            write_vectors(st, "m", f"{k}", uids[sl], img[sl].astype(np.float32), txt[sl].astype(np.float32))
        st.register_model("m", dim=d, backend="test", arch="m", pretrained=None, random_weights=False, run_id=run)
        st.end_run(run)
    return path, uids


def test_negclip_blocks_are_the_same_on_both_engines_and_equal_an_independent_computation(local_ray, make_store,
                                                                                          tmp_path):
    import torch

    from audit.scores.base import run_score
    from audit.scores.negclip import block_rng, negclip_scores
    from audit.store.vectors import half_to_float32

    path, uids = _parted_store(make_store)
    params = {"tau": 0.05, "batch_size": 128, "k": 3, "block_rows": 500}   # 1,500 rows: blocks of 2, 2, 1 parts
    got = {}
    for eng in (LOCAL, RAY):
        dst = _copy(path, tmp_path, eng.name)
        assert run_score("negclip", dst, model="m", params=params, seed=4, engine=eng, echo=lambda s: None) == ["negclip_m"]
        with Store.reader(dst) as st:
            got[eng.name] = st.df("SELECT uid, value FROM scores WHERE name = 'negclip_m' ORDER BY uid")
            desc = st.score_catalog().set_index("name").loc["negclip_m", "description"]
    a, b = got["local"], got["ray"]
    assert a["uid"].tolist() == b["uid"].tolist() == sorted(uids + ["zz-no-vector"])
    np.testing.assert_allclose(b["value"].to_numpy(float), a["value"].to_numpy(float), atol=1e-6, rtol=0)
    assert "3 block(s)" in desc and "seed 4" in desc

    # independently: each block (parts 0-1, 2-3, 4) through negclip_scores with its own generator
    import pyarrow.parquet as pq

    from audit.store.vectors import half_matrix, parts
    with Store.reader(path) as st:
        files = parts(st, "m")
    torch.manual_seed(0)
    want = {}
    for group in ([0, 1], [2, 3], [4]):
        tables = [pq.read_table(files[i]) for i in group]
        u = [x for tb in tables for x in tb.column("uid").to_pylist()]
        img = np.concatenate([half_to_float32(half_matrix(tb.column("img"))) for tb in tables])
        txt = np.concatenate([half_to_float32(half_matrix(tb.column("txt"))) for tb in tables])
        ok = np.isfinite(img).all(axis=1)
        vals = negclip_scores(img[ok], txt[ok], tau=0.05, batch_size=128, k=3, rng=block_rng(4, u[0]))
        want.update(dict(zip(np.array(u)[ok], vals)))
    value = a.set_index("uid")["value"]
    np.testing.assert_allclose(value.loc[list(want)].to_numpy(float), np.array(list(want.values())), atol=1e-6)
    assert np.isnan(value.loc["s00007"]) and np.isnan(value.loc["zz-no-vector"])
    assert np.isfinite(value.drop(["s00007", "zz-no-vector"])).all()


def test_a_stage_without_a_ray_form_refuses_it_clearly_before_any_work(demo_store, tmp_path, capsys, monkeypatch):
    """Every plug-in has a Ray form now (semdedup since its version 2); one that declares no columns and no passes
    (here semdedup with those taken away) is refused with a message, before any run starts."""
    from audit.cli import main

    cls = SCORES.get("semdedup")
    monkeypatch.setattr(cls, "multi_pass", False)
    monkeypatch.setattr(cls, "vector_columns", ())
    path = _copy(demo_store, tmp_path, "refuse")
    with Store.reader(path) as st:
        runs = len(st.runs())
    assert main(["score", "semdedup", "--model", "datacomp_l14", "--store", path, "--engine", "ray"]) != 0
    err = capsys.readouterr().err
    assert "score semdedup has no Ray form yet; run it with --engine local" in err and "Traceback" not in err
    with Store.reader(path) as st:
        assert len(st.runs()) == runs           # nothing started


# photo_store: tests/conftest.py


@pytest.mark.parametrize("name,params,attribute,read", [
    ("nsfw", {"high": 0.8, "low": 0.2, "adult_domains": [], "embedding_score": None}, "nsfw_image", "p_nsfw="),
    ("faces", {"detector": "haar", "min_gender_confidence": 80.0}, "face_count", "Haar")])
def test_image_annotators_read_the_stored_images_on_ray_workers_as_locally(local_ray, photo_store, tmp_path, name,
                                                                          params, attribute, read):
    """The image annotators (open_nsfw; the face detector and age/gender model) run in the Ray workers, which open
    the stored images themselves (absolute references, not the driver's working directory)."""
    from audit.annotators.base import run_annotator

    a, b = _copy(photo_store, tmp_path, "local"), _copy(photo_store, tmp_path, "ray")
    for path, engine in ((a, LOCAL), (b, RAY)):
        run_annotator(name, path, params=params, force=True, echo=lambda s: None, engine=engine)
    attrs = sorted(ANNOTATORS.get(name).attributes)
    got_a, _, _ = _outputs(a, "annotate", name, attrs)
    got_b, run_b, rej_b = _outputs(b, "annotate", name, attrs)
    pd.testing.assert_frame_equal(got_a, got_b)
    image = got_b[got_b["attribute"] == attribute]
    assert len(image) >= 5 and image["method"].str.contains(read).all()
    assert not image["method"].str.contains("unreadable|no stored image").any()   # every photo was read
    assert "engine ray" in run_b["note"] and rej_b.empty


def _vectors(path, key="tiny-clip:random"):
    """Every stored vector of ``key`` (uid order) and the embed rejects."""
    import pyarrow.parquet as pq

    from audit.store.vectors import half_matrix, half_to_float32

    with Store.reader(path) as st:
        folder = st.model_dir(key)
        rejects = st.df("SELECT uid, reason, detail FROM rejects WHERE stage = 'embed' ORDER BY uid")
        runs = st.runs()
    tables = [pq.read_table(f) for f in sorted(folder.glob("part-*.parquet"))]
    uids = np.concatenate([t.column("uid").to_numpy(zero_copy_only=False) for t in tables]) if tables else np.array([])
    order = np.argsort(uids, kind="stable")
    mats = {c: np.concatenate([half_to_float32(half_matrix(t.column(c))) for t in tables])[order] for c in ("img", "txt")}
    return uids[order], mats, rejects, runs.iloc[-1], len(tables)


def test_embed_on_ray_equals_local_vector_for_vector_and_resumes_what_is_missing(local_ray, photo_store, tmp_path):
    """embed --engine ray: the same vectors as locally (the same open_clip code on the same decoded images, in
    other batches), the same corrupt-image rejects, url-only samples skipped alike; with parts removed (what a
    killed job leaves: whole parts), the rerun embeds exactly the missing samples."""
    from pathlib import Path

    from audit.embed.runner import embed

    tiny = str(Path(__file__).with_name("data") / "tiny-clip.json")
    bad = tmp_path / "broken-after-ingest.png"
    bad.write_bytes(b"not a png at all")
    extra = pd.DataFrame({"uid": ["zz-bad", "zz-url-only"], "source": "odd", "caption": ["a broken file", "far away"],
                          "image_ref": [str(bad), None], "url": [None, "http://example.invalid/x.jpg"]})
    a, b = _copy(photo_store, tmp_path, "local"), _copy(photo_store, tmp_path, "ray")
    for path in (a, b):
        with Store.writer(path) as st:
            st.add_samples(extra)
    quiet = {"model": tiny, "pretrained": "none", "precision": "fp32", "batch_size": 3, "progress": False,
             "echo": lambda s: None}
    rep_a = embed(a, workers=0, **quiet)
    rep_b = embed(b, engine=Engine("ray", batch_rows=4), **quiet)
    ua, va, rej_a, _, _ = _vectors(a)
    ub, vb, rej_b, run_b, n_parts = _vectors(b)
    assert len(ua) >= 20 and ua.tolist() == ub.tolist() and "zz-bad" not in ua and "zz-url-only" not in ua
    for c in ("img", "txt"):     # float16 storage: one unit in the last place at most, where a batch's sums differ
        np.testing.assert_allclose(va[c], vb[c], atol=1e-3, rtol=0)
        assert np.allclose(np.linalg.norm(vb[c], axis=1), 1.0, atol=2e-3)
    pd.testing.assert_frame_equal(rej_a, rej_b)
    assert rej_b["uid"].tolist() == ["zz-bad"] and rej_b["reason"].tolist() == ["corrupt_image"]
    assert (rep_a.embedded, rep_a.failed, rep_a.no_image) == (rep_b.embedded, rep_b.failed, rep_b.no_image)
    assert rep_b.no_image == 1 and n_parts >= len(ub) // 4 and "engine ray" in run_b["note"]
    with Store.reader(b) as st:
        assert st.count("embeddings") == len(ub) and bool(st.model_info("tiny-clip:random")["random_weights"])

    parts_b = sorted(Path(b).with_name("s.vectors").rglob("part-*.parquet"))
    for f in parts_b[::2]:
        f.unlink()
    left, _, _, _, _ = _vectors(b)
    rep = embed(b, engine=Engine("ray", batch_rows=4), **quiet)
    assert rep.skipped_done == len(left) and rep.embedded == len(ub) - len(left) > 0
    uc, vc, rej_c, _, _ = _vectors(b)
    assert uc.tolist() == ua.tolist() and rej_c["uid"].tolist() == ["zz-bad"]
    np.testing.assert_allclose(vc["img"], va["img"], atol=1e-3, rtol=0)


GPU_SCRIPT = r'''
import json, sys
import pandas as pd
import ray
from audit.engine import Engine, over_samples
from audit.engine.ray_data import PROJECT_ROOT
from audit.scores.base import _score_batch
from audit.store import Store

path = sys.argv[1]
# one pretend GPU: Ray schedules by the resource, the work itself runs on the CPU
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})
out = {}
with Store.reader(path) as st:
    for name, engine in (("local", Engine("local", batch_rows=700)),
                         ("gpu", Engine("ray", num_gpus_per_worker=0.5, batch_rows=700))):
        staged, infos, rows, rejects = over_samples(engine, st, _score_batch, ("basic", {}),
                                                    columns=["caption", "url", "width", "height", "simulated"],
                                                    table="scores", run_id=990 + len(out))
        frames = [pd.read_parquet(st.parts_dir() / f) for files in staged.values() for f, _ in files]
        got = pd.concat(frames).sort_values(["name", "uid"])
        out[name] = {"rows": rows, "rejects": len(rejects), "files": sum(map(len, staged.values())),
                     "values": got.astype({"value": float}).fillna(-1).values.tolist()}
print(json.dumps(out))
'''


def test_gpu_workers_run_the_actor_pool_and_equal_local(base_store, tmp_path):
    """--num-gpus-per-worker maps the slices with a fixed pool of actors (``_Slices``; Ray would start a process per
    GPU task), not tasks: the same plug-in step, the same rows as the local engine. A Ray of its own with one
    pretend GPU (2 actors at 0.5 each), in a subprocess, since this module's Ray has none."""
    import json
    import os
    import subprocess

    from audit.engine.ray_data import PROJECT_ROOT

    path = _copy(base_store, tmp_path, "gpu")
    res = subprocess.run([sys.executable, "-c", GPU_SCRIPT, path], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    with Store.reader(path) as st:
        n = st.count("samples")
    assert out["local"]["rows"] == out["gpu"]["rows"] == n and out["gpu"]["rejects"] == 0
    assert out["gpu"]["files"] == out["local"]["files"] >= 6          # several slices, one part per slice and column
    assert out["gpu"]["values"] == out["local"]["values"] and len(out["local"]["values"]) >= n
