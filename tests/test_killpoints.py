"""kill -9 at named points of ingest, embed, score, annotate and export (AUDIT_KILL_AT, audit/killpoints.py), then
the same command again: the store equals the one an uninterrupted run wrote, row for row, and no run is left
'running'. A stage starts from a copy of the reference store as it was before that stage."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from audit.store import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "tiny-clip.json")
pytestmark = pytest.mark.slow


def _inputs(root: Path) -> dict[str, Path]:
    from audit.demo.simulate import SimConfig, write_pool

    write_pool(root / "pool", SimConfig(rows=900, seed=5))
    for name in ("truth.parquet", "latent.json"):
        (root / "pool" / name).unlink(missing_ok=True)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i:03d}.png")
        rows.append({"file": f"{i:03d}.png", "caption": f"a person in picture {i}" if i % 3 else f"woman {i}"})
    (photos / "broken.png").write_bytes(b"not a png")
    rows.append({"file": "broken.png", "caption": "broken"})
    pd.DataFrame(rows).to_csv(photos / "captions.csv", index=False)
    return {"pool": root / "pool", "photos": photos}


def _steps(inp: dict[str, Path], out: Path) -> list[tuple[str, list[str]]]:
    return [
        ("ingest_pool", ["ingest", "datacomp", str(inp["pool"])]),
        ("ingest_photos", ["ingest", "folder", str(inp["photos"])]),
        ("embed", ["embed", "--model", TINY, "--pretrained", "none", "--batch-size", "4", "--flush-rows", "8",
                   "--workers", "0", "--precision", "fp32"]),
        ("score_clip", ["score", "clip", "--model", "datacomp_b32"]),
        ("score_basic", ["score", "basic"]),
        ("annotate_caption", ["annotate", "caption"]),
        ("annotate_domain", ["annotate", "domain"]),
        # the same two stages again in slices of 100 rows: a kill between slices, then a rerun that resumes
        ("score_basic_sliced", ["score", "basic", "--force", "--batch-rows", "100"]),
        ("annotate_caption_sliced", ["annotate", "caption", "--force", "--batch-rows", "100"]),
        # a stage that reads the samples joined with a stored score (one input file, named by its inputs)
        ("score_laion_sliced", ["score", "laion", "--force", "--batch-rows", "100"]),
        ("export", ["export", "--out", str(out), "--keep", "clip_l14_similarity_score:top=0.5"]),
    ]


# (step, kill point): 27 points; NAME:K is the K-th time the point is reached
KILLS = [
    ("ingest_pool", "ingest.read"), ("ingest_pool", "ingest.read:2"), ("ingest_pool", "ingest.read:3"),
    ("ingest_pool", "ingest.vector_part"), ("ingest_pool", "ingest.vector_part:3"),
    ("ingest_pool", "ingest.vector_part:6"), ("ingest_pool", "ingest.samples_written"),
    ("ingest_pool", "ingest.samples_written:2"), ("ingest_pool", "ingest.before_commit"),
    ("ingest_pool", "ingest.before_commit:3"),
    ("ingest_photos", "ingest.read"), ("ingest_photos", "ingest.samples_written"),
    ("ingest_photos", "ingest.before_commit"),
    ("embed", "embed.part_written"), ("embed", "embed.part_written:2"),
    ("score_clip", "score.computed"), ("score_clip", "score.written"),
    ("score_basic", "score.computed"), ("score_basic", "score.written"),
    ("annotate_caption", "annotate.computed"), ("annotate_caption", "annotate.written"),
    ("annotate_domain", "annotate.written"),
    ("score_basic_sliced", "local.slice_collected:5"), ("annotate_caption_sliced", "local.slice_collected:3"),
    ("score_laion_sliced", "local.slice_collected:4"),
    ("export", "export.before_rename"), ("export", "export.data_written"),
]


def _cli(store: str, args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("AUDIT_KILL_AT", None)
    if kill:
        env["AUDIT_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "audit", *args, "--store", store],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _copy_store(src: str, dst: str) -> None:
    from audit.store import copy_store

    copy_store(src, dst)


def state(store: str, export: Path | None = None) -> dict:
    """Everything a stage writes, without run ids and times (a rerun has new ones)."""
    out = {}
    with Store.reader(store) as st:
        q = {
            "samples": "SELECT * EXCLUDE (ingest_run) FROM samples ORDER BY uid",
            "rejects": "SELECT * EXCLUDE (run_id) FROM rejects ORDER BY stage, source_ref, reason, uid",
            "inputs": "SELECT * EXCLUDE (run_id) FROM ingested_inputs ORDER BY path",
            "scores": "SELECT * FROM scores ORDER BY name, uid",
            "score_catalog": "SELECT * EXCLUDE (run_id) FROM score_catalog ORDER BY name",
            "annotations": "SELECT * FROM annotations ORDER BY attribute, uid, label",
            "attribute_catalog": "SELECT * EXCLUDE (run_id) FROM attribute_catalog ORDER BY attribute",
            "models": "SELECT * EXCLUDE (run_id) FROM embedding_models ORDER BY model",
        }
        for k, sql in q.items():
            out[k] = st.df(sql)
        out["running"] = int(st.scalar("SELECT count(*) FROM runs WHERE status = 'running'"))
        from audit.store.vectors import half_matrix

        vecs = {}
        for model, folder in st.cursor().execute("SELECT model, folder FROM embedding_models").fetchall():
            rows = []
            for p in sorted((st.vectors_dir() / folder).glob("part-*.parquet")):
                t = pq.read_table(p)
                mat = half_matrix(t.column("img"))
                rows += list(zip(t.column("uid").to_pylist(), (r.tobytes() for r in mat)))
            vecs[model] = sorted(rows)   # every (uid, vector) once; which part holds it does not matter
        out["vectors"] = vecs
    if export is not None:
        out["export"] = export.read_bytes() if export.exists() else None
        man = Path(str(export) + ".manifest.json")
        if man.exists():
            m = json.loads(man.read_text())
            out["manifest"] = {k: m[k] for k in ("rules", "thresholds", "pool", "kept", "excluded_by_reason")}
            out["manifest"]["sha256"] = m["file"]["sha256"]
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got["running"] == 0, "a run was left 'running'"
    for k in want:
        if k == "running":
            continue
        if isinstance(want[k], pd.DataFrame):
            pd.testing.assert_frame_equal(got[k].reset_index(drop=True), want[k].reset_index(drop=True), obj=k)
        else:
            assert got[k] == want[k], k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    inp = _inputs(root)
    store = str(root / "ref" / "s.duckdb")
    Path(store).parent.mkdir()
    before, after = {}, {}
    steps = _steps(inp, root / "ref" / "kept.csv")
    for name, args in steps:
        snap = str(root / "ref" / f"before-{name}.duckdb")
        if Path(store).exists():
            _copy_store(store, snap)
        before[name] = snap if Path(store).exists() else None
        res = _cli(store, args)
        assert res.returncode == 0, (name, res.stderr[-3000:])
        after[name] = state(store, root / "ref" / "kept.csv" if name == "export" else None)
    return {"root": root, "inputs": inp, "before": before, "after": after}


@pytest.mark.parametrize("step, point", KILLS, ids=[f"{s}-{p}" for s, p in KILLS])
def test_killed_then_rerun_equals_uninterrupted(reference, step, point, tmp_path):
    out = tmp_path / "kept.csv"
    args = dict(_steps(reference["inputs"], out))[step]
    store = str(tmp_path / "s.duckdb")
    if reference["before"][step]:
        _copy_store(reference["before"][step], store)
    killed = _cli(store, args, kill=point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    if step == "export":   # nothing half-written at the final path: no file before the rename, the whole one after
        if point == "export.before_rename":
            assert not out.exists()
        else:
            assert out.read_bytes() == reference["after"]["export"]["export"]
    again = _cli(store, args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(tmp_path.glob(".kept.csv*tmp*")), "the killed export's temporary file is left behind"
    assert_same(state(store, out if step == "export" else None), reference["after"][step])
    if point.startswith("local.slice_collected"):   # the rerun computed only the slices the killed run had not
        done = int(point.split(":")[1])
        assert re.search(rf"resuming: {done} of \d+ slices", again.stdout), again.stdout[-2000:]
    with Store.reader(store) as st:
        statuses = st.df("SELECT status FROM runs ORDER BY run_id")["status"].tolist()
    if step != "export":   # export records no run
        assert "interrupted" in statuses and statuses[-1] == "done"
