"""Origin probe and embedding-map benchmarks.

    .venv/bin/python bench/bench_origin.py [--quick] [--dim 256]

Rows:
* UMAP map (``audit.embedmap.build_map``: the CLI's chunked code path, vectors streamed from Parquet parts) on
  synthetic stores of 100,000 and 1,000,000 rows: fit and transform time, rows/s, peak memory (each run in
  its own process, so ru_maxrss is that run's). 100k uses the CLI defaults (fit on 50,000 rows); 1M fits on
  20,000 rows with 200 epochs and places the rest with 20 epochs, to stay within ~5 minutes on 2 cores.
  Also exact vs nndescent neighbour search side by side (100k rows, fit 10,000).
* Probe training: one family (real + shuffled control) on 3 sources × 5,000 samples (the CLI's default cap)
  of 768-d vectors; caption words on 15,000 captions; transformation features per image.

Synthetic vectors: 60 Gaussian clusters in ``--dim`` dimensions (default 256, float16 on disk like the real
store; 1M rows × 2 columns ≈ 1 GB), written with the ingest stage's writer, 100,000 rows per part.
Nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

ROWS: list[tuple[str, str, str]] = []


def row(what: str, value: str, note: str = "") -> None:
    ROWS.append((what, value, note))
    print(f"  {what}: {value} {note}", flush=True)


def synthetic_store(path: str, n: int, dim: int, seed: int = 0, part_rows: int = 100_000) -> float:
    """n samples from 3 sources with clustered unit vectors (float16 Parquet parts). Returns seconds."""
    from audit.store.vectors import write_vectors
    from audit.store import Store

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim)).astype(np.float32)
    with Store.writer(path) as st:
        run = st.start_run("bench", "synthetic", params={"n": n, "dim": dim})
        for j, s in enumerate(range(0, n, part_rows)):
            m = min(part_rows, n - s)
            uids = [f"{i:032x}" for i in range(s, s + m)]
            st.add_samples(pd.DataFrame({"uid": uids, "caption": "x", "simulated": True,
                                         "source": rng.choice(["a", "b", "c"], m)}))
            c = rng.integers(0, 60, m)
            v = centres[c] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            write_vectors(st, "synthetic", f"{j:06d}", uids, v, v)
        st.register_model("synthetic", dim=dim, backend="bench", arch="synthetic", pretrained=None,
                          random_weights=False, run_id=run)
        st.end_run(run)
    return time.perf_counter() - t0


def one_map(path: str, fit: int, n_epochs: int | None, transform_epochs: int | None, knn: str) -> dict:
    """Run in a child process: build the map, report timings and peak RSS."""
    from audit.analyses.embedmap.layout import MapParams
    from audit.analyses.embedmap.run import build_map

    t0 = time.perf_counter()
    out = build_map(path, "synthetic", MapParams(fit_sample=fit, n_epochs=n_epochs, transform_epochs=transform_epochs,
                                                 knn=knn), force=True, echo=lambda s: None)
    total = time.perf_counter() - t0
    return {"total_s": total, **out["timings"], "knn": out["knn"], "rows": out["rows"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(args: list[str]) -> dict:
    got = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if got.returncode != 0:
        raise RuntimeError(got.stderr[-3000:])
    return json.loads(got.stdout.strip().splitlines()[-1])


def bench_map(tmp: Path, n: int, dim: int, fit: int, n_epochs, transform_epochs, knn: str, label: str) -> None:
    path = str(tmp / f"map{n}.duckdb")
    if not Path(path).exists():
        s = synthetic_store(path, n, dim)
        row(f"write synthetic store, {n:,} rows × {dim}-d", f"{s:.1f} s", f"({n / s:,.0f} rows/s)")
    r = run_child(["map", path, str(fit), str(n_epochs), str(transform_epochs), knn])
    row(f"map {label}: fit {fit:,} rows ({r['knn']})", f"{r['fit_s']:.1f} s",
        f"read fit sample {r['read_fit_s']:.1f} s; epochs {n_epochs or 'umap default'}")
    row(f"map {label}: place {r['transform_rows']:,} rows", f"{r['transform_s']:.1f} s",
        f"({r['transform_rows'] / max(r['transform_s'], 1e-9):,.0f} rows/s; transform epochs "
        f"{transform_epochs or 'umap rule'})")
    row(f"map {label}: total (read, fit, place, store)", f"{r['total_s']:.1f} s",
        f"peak RSS {r['peak_rss_mb']:,.0f} MB (a dense float32 copy of all vectors would be "
        f"{n * dim * 4 / 2**20:,.0f} MB)")


def bench_probe() -> None:
    from audit.analyses.origin.features import image_features
    from audit.analyses.origin.probe import probe_family

    rng = np.random.default_rng(0)
    n_per, dim = 5000, 768
    X = rng.standard_normal((3 * n_per, dim)).astype(np.float32) / np.sqrt(dim)
    y = np.repeat(np.arange(3), n_per)
    X[y == 1, 0] += 0.05
    X[y == 2, 1] += 0.05
    warm = rng.choice(len(y), 300, replace=False)
    probe_family(X[warm], y[warm], ["a", "b", "c"], seed=0, control=False)   # imports and first-call costs
    t = time.perf_counter()
    rec, _ = probe_family(X, y, ["a", "b", "c"], seed=0, control=False)
    real = time.perf_counter() - t
    t = time.perf_counter()
    probe_family(X, y, ["a", "b", "c"], seed=0, control=True)
    both = time.perf_counter() - t
    row("probe: 15,000 × 768 (3 sources × 5,000), hold-out", f"{real:.1f} s",
        f"accuracy {rec['accuracy']:.3f}; with the shuffled control {both:.1f} s")
    from sklearn.feature_extraction.text import CountVectorizer

    vocab = np.array([f"w{i}" for i in range(5000)])
    zipf = 1.0 / np.arange(1, 5001)
    caps = [" ".join(rng.choice(vocab, 10, p=zipf / zipf.sum())) for _ in range(15_000)]
    t = time.perf_counter()
    Xw = CountVectorizer(binary=True, min_df=3).fit_transform(caps).tocsr()
    probe_family(Xw, y, ["a", "b", "c"], seed=0, scale=False, control=True)
    row("probe: caption words, 15,000 captions (+ control)", f"{time.perf_counter() - t:.1f} s",
        f"{Xw.shape[1]:,} words (Zipf-distributed vocabulary of 5,000)")
    from PIL import Image

    imgs = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(20)]
    image_features(imgs[0])
    t = time.perf_counter()
    for im in imgs:
        image_features(im)
    row("transformation features (6 families) per 640×480 image", f"{(time.perf_counter() - t) / 20 * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100k map only, no 1M run")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        kind, path, fit, ep, tep, knn = a.child
        print(json.dumps(one_map(path, int(fit), None if ep == "None" else int(ep),
                                 None if tep == "None" else int(tep), knn)))
        return
    print(f"bench_origin: {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_origin_") as d:
        tmp = Path(d)
        bench_probe()
        bench_map(tmp, 100_000, a.dim, 10_000, 200, None, "exact", "100k, fit 10k, exact")
        bench_map(tmp, 100_000, a.dim, 10_000, 200, None, "nndescent", "100k, fit 10k, nndescent")
        bench_map(tmp, 100_000, a.dim, 50_000, None, None, "auto", "100k, CLI defaults")
        if not a.quick:
            (tmp / "map100000.duckdb").unlink()
            import shutil

            shutil.rmtree(tmp / "map100000.vectors", ignore_errors=True)
            bench_map(tmp, 1_000_000, a.dim, 20_000, 200, 20, "auto", "1M, fit 20k")
    w = max(len(r[0]) for r in ROWS)
    print("\n| what | value | note |\n|---|---|---|")
    for what, value, note in ROWS:
        print(f"| {what:<{w}} | {value} | {note} |")


if __name__ == "__main__":
    main()
