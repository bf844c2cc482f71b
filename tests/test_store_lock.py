"""DuckDB allows one writer process and then no reader at all: the dashboard must survive CLI writes."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from audit.store import Store, copy_store, prune_orphan_snapshots, snapshot
from conftest import APP, ROOT

HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from audit.store import Store\n"
        "with Store.writer({path!r}) as st:\n"
        "    print('locked', flush=True); time.sleep({secs})\n")


def test_snapshot_waits_for_a_short_writer(demo_store, tmp_path):
    live = tmp_path / "live.duckdb"
    copy_store(demo_store, live)
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), path=str(live), secs=2)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    snap = snapshot(live, tmp_path / "snaps", wait_s=30)
    waited = time.monotonic() - t0
    proc.wait()
    assert waited > 0.5  # it waited for the writer instead of failing
    with Store.reader(snap) as st:
        assert st.count("samples") > 0


def test_snapshots_of_deleted_stores_are_pruned(demo_store, tmp_path):
    """Every store the dashboard opened leaves a snapshot folder in the temp dir; those of deleted stores go."""
    root = tmp_path / "snapshots"
    lives = [copy_store(demo_store, tmp_path / f"live{i}.duckdb") for i in range(3)]
    for i, live in enumerate(lives):
        snapshot(live, root / f"s{i}")
    (root / "making").mkdir()            # a copy under way: no .home yet
    (root / "making" / "live9-1.tmp").write_bytes(b"")
    lives[0].unlink()
    lives[1].unlink()
    assert prune_orphan_snapshots(root, keep=root / "s1") == 1   # s0 only: s1 is kept, s2's store lives
    assert sorted(p.name for p in root.iterdir()) == ["making", "s1", "s2"]
    assert prune_orphan_snapshots(root) == 1 and sorted(p.name for p in root.iterdir()) == ["making", "s2"]
    with Store.reader(next((root / "s2").glob("*.duckdb"))) as st:   # the live store's copy is untouched
        assert st.count("samples") > 0


def test_cli_writes_while_the_dashboard_is_open(demo_store, tmp_path, monkeypatch):
    live = tmp_path / "live.duckdb"
    copy_store(demo_store, live)
    monkeypatch.setenv("AUDIT_STORE", str(live))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    time.sleep(0.05)  # mtime granularity
    # the dashboard holds its snapshot open; the CLI can still write the live store
    res = subprocess.run([sys.executable, "-m", "audit", "score", "clip", "--store", str(live), "--model",
                          "datacomp_l14", "--force"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    at.run()
    assert not at.exception
    assert any("newer data" in i.value for i in at.sidebar.info)
    at.sidebar.button[0].click().run()
    assert not at.exception and not any("newer data" in i.value for i in at.sidebar.info)


def test_snapshot_reads_the_live_stores_vectors(demo_store, tmp_path):
    """The dashboard's snapshot copy has no vectors folder of its own: it must read the live one."""
    from audit.store import parts_dir, vectors_dir
    from audit.store.vectors import iter_vectors

    snap = snapshot(demo_store, tmp_path / "snaps", wait_s=30)
    with Store.reader(demo_store) as live:
        n_live = sum(len(u) for u, _ in iter_vectors(live, "datacomp_l14"))
        live_samples = live.count("samples")
    st = Store.open(snap, read_only=True, vectors_root=vectors_dir(demo_store), parts_root=parts_dir(demo_store))
    try:
        assert sum(len(u) for u, _ in iter_vectors(st, "datacomp_l14")) == n_live > 0
        assert st.count("samples") == live_samples > 0   # and its parts
    finally:
        st.close()


def test_a_score_that_fails_marks_its_run_failed(make_store, monkeypatch):
    import numpy as np
    import pytest

    from audit.scores.base import run_score
    from audit.scores.clip_score import ClipScore

    u = ["a", "b"]
    path = make_store([{"uid": x, "caption": "c"} for x in u],
                      vectors={"m": (u, np.eye(2, 4), np.eye(2, 4))})

    def boom(self, store, model, params, echo):
        raise ValueError("target has the wrong dimension")

    monkeypatch.setattr(ClipScore, "prepare_vectors", boom)
    with pytest.raises(ValueError):
        run_score("clip", path, model="m", echo=lambda s: None)
    with Store.reader(path) as st:
        run = st.df("SELECT status, note FROM runs WHERE stage = 'score'").iloc[0]
    assert run["status"] == "failed" and "wrong dimension" in run["note"]


@pytest.mark.slow
def test_two_cli_stages_on_one_store_both_complete(tmp_path):
    """A score holds the store only to start and to commit: an ingest run while the score computes finishes
    first, instead of waiting for the score (or failing after 60 s)."""
    import os
    import subprocess
    import sys
    import time

    from audit.demo.simulate import SimConfig, write_pool

    write_pool(tmp_path / "a", SimConfig(rows=300, seed=1))
    write_pool(tmp_path / "b", SimConfig(rows=300, seed=2))
    store = str(tmp_path / "s.duckdb")
    root = Path(__file__).resolve().parents[1]
    run = lambda *a, env=None: subprocess.Popen([sys.executable, "-m", "audit", *a, "--store", store], cwd=root,  # noqa: E731
                                                env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert run("ingest", "datacomp", str(tmp_path / "a")).wait() == 0
    release = tmp_path / "release"
    score = run("score", "clip", "--model", "datacomp_b32", env={"AUDIT_PAUSE_AT": f"score.computing:@{release}"})
    deadline = time.monotonic() + 120
    while not Path(f"{release}.here").exists():   # the score has started its run and is computing (held)
        assert score.poll() is None and time.monotonic() < deadline, score.stdout.read()
        time.sleep(0.05)
    ingest = run("ingest", "datacomp", str(tmp_path / "b"))
    try:
        # the score is held mid-compute until `release` exists: an ingest that waited for it would never finish
        assert ingest.wait(timeout=90) == 0, ingest.stdout.read()
        assert score.poll() is None, "the score ended while held: the test did not overlap the two stages"
    finally:
        release.touch()
    assert score.wait(timeout=90) == 0, score.stdout.read()
    with Store.reader(store) as st:
        assert st.count("samples") > 300 and st.df("SELECT status FROM runs")["status"].eq("done").all()
