"""Local engine vs Ray engine on the same store and the same CPUs, side by side in one run.

    python bench/bench_ray.py --store /work/scale/store-1000000/pool.duckdb --num-cpus 2

For each row-local plug-in (score basic, annotate caption, annotate domain; score laion and annotate nsfw,
which also read a stored score) and the vector-local ones (score clip, laion-nsfw and annotate zeroshot on the
L/14 vectors; score vas-d, 5 iterations; score semdedup, 200 clusters) the stage runs as a real `python -m audit`
process under /usr/bin/time three ways, alternating, --repeat times: `--engine local`; `--engine ray --num-cpus N`
(a fresh local Ray of N CPUs started by the stage: its start-up and shut-down are in the time); and `--engine ray --address A` on a one-node cluster of
N CPUs that `ray start --head` started before (how a cluster user runs it). Printed: rows/s, wall seconds, the
driver's peak RSS (Ray's workers are not its children), the Ray/local ratios of rows/s (target >= 0.8), and the
projected wall time of a DataComp *medium* pool (128M rows) on W workers of an existing cluster, assuming each
worker keeps the per-CPU rate measured here on the cluster (the stage is CPU-bound per slice; the shared
filesystem is not the limit; the fixed cost of a stage is in the measured rate, so the projection is pessimistic
for large pools).
The store is changed (each run replaces the plug-in's output): use a bench copy.

    python bench/bench_ray.py --embed-images 2000 --work /work/scale/embed --num-cpus 2

`embed` the same way, on a folder store of N distinct JPEGs (random crops of the photos that ship in wheels, at
256 px) with open_clip ViT-B-32 at random weights (the cost of the real architecture; no hub here): each run
starts from an empty model folder; the rate counts images embedded per wall second of the whole process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PLUGINS = [("score basic", ["score", "basic"]), ("annotate caption", ["annotate", "caption"]),
           ("annotate domain", ["annotate", "domain"]),
           # row-local plug-ins that read a stored score too (joined to the samples in one input file first)
           ("score laion (b32 score + caption)", ["score", "laion"]),
           ("annotate nsfw (caption, url + laion_nsfw score)", ["annotate", "nsfw"]),
           # pool passes: the pool's own n-grams, the entries' counts, then the columns
           ("score metaclip (pool n-grams, t=2,000)", ["score", "metaclip", "--t", "2000"]),
           # vector-local: read the model's float16 vector parts (1.5 KB per vector at 768-d)
           ("score clip (L/14)", ["score", "clip", "--model", "datacomp_l14"]),
           ("score laion-nsfw (L/14)", ["score", "laion-nsfw", "--model", "datacomp_l14"]),
           # several passes: 5 iterations of VAS-D = 11 passes over the vectors (start, 5 VAS, 4 Σ, the values)
           ("score vas-d (L/14, 5 iterations: 11 passes)", ["score", "vas-d", "--model", "datacomp_l14", "--iters", "5"]),
           # three passes with a shuffle: the keyed fit sample, each vector's cluster written to its bucket, a task
           # per bucket of clusters
           ("score semdedup (L/14, 200 clusters, 2 ε: 3 passes)", ["score", "semdedup", "--model", "datacomp_l14",
                                                                   "--clusters", "200", "--eps", "0.01,0.05"]),
           ("annotate zeroshot (L/14)", ["annotate", "zeroshot", "--model", "datacomp_l14",
                                                      # random text weights (no hub here): the rate, not the labels
                                                      "--text-model", "ViT-L-14:none"])]
MEDIUM = 128_000_000


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GB of the process and its waited-for children) of one `python -m audit` run."""
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", PY, "-m", "audit", *args], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "TQDM_DISABLE": "1", "RAY_AUTH_MODE": "disabled"})
    secs = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{res.stderr[-2000:]}")
    return secs, int(res.stderr.strip().splitlines()[-1]) / 1e6


def ray_startup(num_cpus: int) -> float:
    code = ("import time, ray; t = time.perf_counter(); ray.init(num_cpus=%d, include_dashboard=False, "
            "log_to_driver=False); ray.get(ray.remote(lambda: 1).remote()); print(time.perf_counter() - t); "
            "ray.shutdown()" % num_cpus)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env={**os.environ,
                                                                                "RAY_AUTH_MODE": "disabled"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="the store of the score/annotate stages")
    ap.add_argument("--embed-images", type=int, help="bench embed instead, on a folder store of this many images")
    ap.add_argument("--work", default="/tmp/bench-ray", help="where --embed-images writes its store")
    ap.add_argument("--embed-model", default="ViT-B-32", help="open_clip architecture of the embed bench")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", default="16,64,256", help="Ray worker counts of the 128M projection")
    ap.add_argument("--only", help="comma-separated plug-ins to run, e.g. basic,clip (default: all)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from audit.store import Store

    if a.embed_images:
        a.store = image_store(Path(a.work), a.embed_images)
    elif not a.store:
        ap.error("--store (or --embed-images) is required")
    with Store.reader(a.store) as st:
        n = int(st.count("samples"))
    start = ray_startup(a.num_cpus)
    workers = [int(w) for w in a.workers.split(",")]
    address = start_cluster(a.num_cpus)
    print(f"store {a.store}: {n:,} samples; {os.cpu_count()} CPUs on this machine, engines on {a.num_cpus}; "
          f"local Ray start-up {start:.1f} s; cluster: `ray start --head --num-cpus {a.num_cpus}` at {address}")
    head = ("| stage | local rows/s | ray, fresh local Ray rows/s | ray/local | ray, existing cluster rows/s | "
            "ray/local | local s | fresh s | cluster s | local peak RSS | ray driver peak RSS "
            + "".join(f"| 128M on {w} workers " for w in workers) + "|")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    try:
        stages = PLUGINS
        if a.embed_images:
            stages = [(f"embed ({a.embed_model}, random weights, {a.embed_images:,} JPEGs)",
                       ["embed", "--model", a.embed_model, "--pretrained", "none", "--precision", "fp32"])]
        for label, cmd in stages:
            if a.only and cmd[1] not in a.only.split(","):
                continue
            base = [*cmd, "--store", a.store] + ([] if cmd[0] == "embed" else ["--force"])
            fresh_start = (lambda: empty_model(a.store, f"{a.embed_model}:random")) if cmd[0] == "embed" else (lambda: None)
            loc, fresh, clus = [], [], []
            for _ in range(a.repeat):      # alternating, so a noisy minute hits all three
                for out, args in ((loc, base), (fresh, [*base, "--engine", "ray", "--num-cpus", str(a.num_cpus)]),
                                  (clus, [*base, "--engine", "ray", "--address", address])):
                    fresh_start()
                    out.append(run(args))
            ls, fs, cs = (statistics.median(s for s, _ in r) for r in (loc, fresh, clus))
            lm, rm = max(m for _, m in loc), max(m for _, m in fresh + clus)
            per_cpu = n / cs / a.num_cpus      # rows/s one worker sustains on a running cluster
            proj = "".join(f"| {duration(MEDIUM / (per_cpu * w))} " for w in workers)
            print(f"| {label} | {n / ls:,.0f} | {n / fs:,.0f} | {ls / fs:.2f} | {n / cs:,.0f} | {ls / cs:.2f} "
                  f"| {ls:.1f} | {fs:.1f} | {cs:.1f} | {lm:.2f} GB | {rm:.2f} GB {proj}|", flush=True)
    finally:
        subprocess.run([str(Path(PY).with_name("ray")), "stop", "--force"], capture_output=True,
                       env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return 0


def duration(seconds: float) -> str:
    return f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.0f} h"


def image_store(work: Path, n: int) -> str:
    """A folder store of ``n`` distinct 256 px JPEGs cut from the wheel photos (built once per size)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from audit.demo.builder import write_photos
    from audit.ingest.run import ingest

    store = work / f"images-{n}" / "pool.duckdb"
    if store.exists():
        return str(store)
    photos = work / f"images-{n}" / "wheel"
    cap = write_photos(photos)
    sources = [Image.open(f).convert("RGB") for f in sorted(photos.iterdir()) if f.suffix in (".png", ".jpg")
               and _opens(f)]
    folder = work / f"images-{n}" / "jpegs"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        im = sources[i % len(sources)]
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        im.crop((x, y, x + side, y + side)).resize((256, 256)).save(folder / f"{i:07d}.jpg", quality=90)
        rows.append({"file": f"{i:07d}.jpg", "caption": f"a crop of picture {i % len(sources)}, number {i}"})
    pd.DataFrame(rows).to_csv(folder / "captions.csv", index=False)
    del cap
    ingest("folder", [str(folder)], store_path=str(store), source="bench-jpegs", progress=False, echo=lambda s: None)
    return str(store)


def _opens(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:   # noqa: BLE001 (the wheel set holds deliberately broken files)
        return False


def empty_model(store: str, key: str) -> None:
    """Remove a model's vector folder, so the next embed run computes every vector again."""
    import shutil

    from audit.store import Store

    with Store.reader(store) as st:
        folder = st.model_dir(key)
    shutil.rmtree(folder, ignore_errors=True)


def start_cluster(num_cpus: int) -> str:
    """A one-node Ray cluster started with `ray start --head` (what a user of --address has running)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([str(Path(PY).with_name("ray")), "start", "--head", "--port", str(port), "--num-cpus",
                    str(num_cpus), "--include-dashboard=false", "--disable-usage-stats"], check=True,
                   capture_output=True, env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)})
    return f"127.0.0.1:{port}"


if __name__ == "__main__":
    raise SystemExit(main())
