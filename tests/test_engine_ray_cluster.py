"""A Ray cluster of two nodes on this machine (`ray start --head` plus one `ray start --address` worker): a stage
whose driver is killed mid-way leaves the store as it was, and the rerun on the cluster computes only the slices
the killed job had not finished and equals the local run."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from audit.store import Store, copy_store

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}   # a test cluster without tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
                       env=ENV, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", "--address", address, *common], env=ENV, check=True, capture_output=True,
                       timeout=120)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def _annotations(path):
    with Store.reader(path) as st:
        return (st.df("SELECT uid, attribute, label, confidence, method FROM annotations "
                      "WHERE attribute LIKE 'caption_%' ORDER BY uid, attribute"),
                st.df("SELECT table_name, key, file FROM parts ORDER BY ALL"), st.runs())


def test_a_killed_ray_run_resumes_to_the_local_result_on_two_nodes(two_nodes, demo_store, tmp_path):
    from audit.annotators.base import run_annotator
    from audit.engine import Engine

    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, log_to_driver=False); "
                            "print(sorted(n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']))"
                            % two_nodes], env=ENV, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "[1.0, 1.0]", probe.stderr[-2000:]

    local, on_ray = tmp_path / "local" / "s.duckdb", tmp_path / "ray" / "s.duckdb"
    copy_store(demo_store, local)
    copy_store(demo_store, on_ray)
    run_annotator("caption", str(local), force=True, echo=lambda s: None, engine=Engine("local", batch_rows=300))
    want, _, _ = _annotations(str(local))
    before, before_parts, _ = _annotations(str(on_ray))

    cmd = [sys.executable, "-m", "audit", "annotate", "caption", "--store", str(on_ray), "--force", "--engine", "ray",
           "--address", two_nodes, "--batch-rows", "300"]
    killed = subprocess.run(cmd, cwd=ROOT, env={**ENV, "AUDIT_KILL_AT": "ray.batch_collected:3"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    after, after_parts, runs = _annotations(str(on_ray))
    assert after.equals(before) and after_parts.equals(before_parts)      # nothing registered, nothing replaced
    assert runs.iloc[-1]["status"] in ("running", "interrupted")
    staged = {p.relative_to(on_ray.with_name("s.parts")).as_posix()
              for p in on_ray.with_name("s.parts").rglob("annotations/caption_*/*.parquet")}
    assert staged - set(after_parts["file"])      # the killed run did stage whole parts, which no view names

    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = re.search(r"resuming: (\d+) of (\d+) slices", done.stdout)   # only what the killed job had not done
    assert resumed and 3 <= int(resumed[1]) < int(resumed[2]), done.stdout[-2000:]
    got, _, runs = _annotations(str(on_ray))
    assert len(got) == len(want) > 3900 * 4
    assert got.equals(want)
    last = runs.iloc[-1]
    assert last["status"] == "done" and f"cluster {two_nodes}" in last["note"]


def test_embed_killed_on_the_cluster_resumes_to_the_local_vectors(two_nodes, photo_store, tmp_path):
    """`embed --engine ray --address`: each worker writes whole vector parts into the model's folder; the driver
    killed after two slices leaves only whole parts, and the rerun embeds just the samples no part holds, ending
    with the vectors a local run computes (same uids, same float16 values, each uid once)."""
    import time

    import numpy as np
    import pyarrow.parquet as pq

    from audit.embed.runner import embed
    from test_engine_ray import _vectors

    tiny = str(ROOT / "tests" / "data" / "tiny-clip.json")
    local, on_ray = tmp_path / "local" / "s.duckdb", tmp_path / "ray" / "s.duckdb"
    copy_store(photo_store, local)
    copy_store(photo_store, on_ray)
    embed(str(local), model=tiny, pretrained="none", precision="fp32", batch_size=2, workers=0, progress=False,
          echo=lambda s: None)
    want_u, want, _, _, _ = _vectors(str(local))

    cmd = [sys.executable, "-m", "audit", "embed", "--store", str(on_ray), "--model", tiny, "--pretrained", "none",
           "--precision", "fp32", "--batch-size", "2", "--engine", "ray", "--address", two_nodes, "--batch-rows", "3"]
    killed = subprocess.run(cmd, cwd=ROOT, env={**ENV, "AUDIT_KILL_AT": "ray.batch_collected:2"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    folder = on_ray.with_name("s.vectors") / "tiny_clip_random"
    seen, deadline = None, time.time() + 60      # Ray ends the dead driver's workers; wait till no part lands
    while time.time() < deadline:
        now = sorted(folder.glob("part-*.parquet"))
        if now == seen:
            break
        seen = now
        time.sleep(2)
    kept = [u for f in seen for u in pq.read_table(f, columns=["uid"]).column("uid").to_pylist()]  # whole parts
    assert 2 * 3 <= len(kept) < len(want_u) and len(set(kept)) == len(kept)
    with Store.reader(str(on_ray)) as st:
        assert st.runs().iloc[-1]["status"] in ("running", "interrupted")

    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"already embedded: {len(kept)}" in done.stdout
    got_u, got, _, last, _ = _vectors(str(on_ray))
    assert got_u.tolist() == want_u.tolist() and len(set(got_u)) == len(got_u)
    np.testing.assert_allclose(got["img"], want["img"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(got["txt"], want["txt"], atol=1e-3, rtol=0)
    assert last["status"] == "done" and f"cluster {two_nodes}" in last["note"]
