"""A Ray cluster of two nodes on this machine (`ray start --head` plus one `ray start --address` worker): a stage
whose driver is killed mid-way leaves the store as it was, and the rerun on the cluster equals the local run."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from audit.store import Store, copy_store

pytestmark = pytest.mark.slow
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
    got, _, runs = _annotations(str(on_ray))
    assert len(got) == len(want) > 3900 * 4
    assert got.equals(want)
    last = runs.iloc[-1]
    assert last["status"] == "done" and f"cluster {two_nodes}" in last["note"]
