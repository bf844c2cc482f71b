"""Cost of the embedding-only scores: LAION NSFW (L/14), LAION aesthetic, SemDeDup, at N rows, beside a bare matmul.

    .venv/bin/python bench/bench_embedding_scores.py [--rows 1000000] [--clusters N]

Synthetic unit vectors (768-d, float16-rounded as the store holds them; seeded). Times the maths each score runs
(the store's vector reads are bench/bench_vectors.py's). GFLOP/s counts the multiply-adds each computation does;
the bare matmul (N × 768 @ 768 × 1024, float32) is measured in the same run, so the ratio says how close each
gets to this machine's BLAS. The last column projects the time for a 12.8M-row DataComp small pool: linear in N
for the two MLPs; for SemDeDup also linear at a fixed cluster size (~5,000 rows per cluster, the default).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.scores.laion_models import AESTHETIC_FILE, MODELS_DIR, load_aesthetic, load_nsfw  # noqa: E402
from audit.scores.semdedup import BLOCK, dedup_cluster, default_clusters, fit_centroids  # noqa: E402

SMALL_POOL = 12_800_000


def mlp_flops(layers) -> int:
    return 2 * sum(k.shape[0] * k.shape[1] for k in layers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=None, help="SemDeDup clusters (default: one per 5,000 rows)")
    a = ap.parse_args()
    n, d = a.rows, 768
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        blk = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        x[s:s + len(blk)] = blk.astype(np.float16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    print(f"{n:,} × {d} vectors made in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []

    def run(name, fn, flops):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rows.append((name, dt, n / dt, flops / dt / 1e9, dt * SMALL_POOL / n))
        print(f"  {name}: {dt:.1f} s", flush=True)

    w = np.random.default_rng(1).standard_normal((d, 1024)).astype(np.float32)
    run("bare matmul N×768 @ 768×1024", lambda: [x[s:s + 65_536] @ w for s in range(0, n, 65_536)], 2 * n * d * 1024)
    nsfw = load_nsfw(768)
    run("laion-nsfw (L/14)", lambda: nsfw.predict(x), n * mlp_flops([k for k, _, _ in nsfw.dense]))
    aes = load_aesthetic(MODELS_DIR / AESTHETIC_FILE)
    run("aesthetic (L/14)", lambda: aes.predict(x), n * mlp_flops([k for k, _ in aes.layers]))

    k = a.clusters or default_clusters(n)
    state = {}

    def semdedup():
        fit = x[np.random.default_rng(0).choice(n, size=min(n, max(20_000, 50 * k)), replace=False)]
        c = fit_centroids(fit, k, 0)
        assign = np.concatenate([np.argmax(x[s:s + 65_536] @ c.T, axis=1) for s in range(0, n, 65_536)])
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(len(c) + 1))
        pairs = 0
        for j in range(len(c)):
            idx = order[bounds[j]:bounds[j + 1]]
            m = len(idx)
            dedup_cluster(x[idx], c[j], [0.01, 0.05])
            pairs += sum(min(BLOCK, m - s) * (s + min(BLOCK, m - s)) for s in range(0, m, BLOCK))
        state["pairs"], state["sizes"] = pairs, np.diff(bounds)

    t0 = time.perf_counter()
    semdedup()
    dt = time.perf_counter() - t0
    flops = 2 * d * state["pairs"]
    rows.append((f"semdedup ({k} clusters, 2 ε)", dt, n / dt, flops / dt / 1e9, dt * SMALL_POOL / n))
    sizes = state["sizes"]
    print(f"\n{n:,} rows, 768-d; this machine; 12.8M projection linear in N "
          f"(SemDeDup: clusters of median {int(np.median(sizes)):,}, max {int(sizes.max()):,} rows)\n")
    print("| computation | time s | rows/s | GFLOP/s | ÷ bare matmul | projected 12.8M |\n|---|---|---|---|---|---|")
    base = rows[0][3]
    for name, dt, rps, gf, proj in rows:
        print(f"| {name} | {dt:.1f} | {rps:,.0f} | {gf:.1f} | {gf / base:.2f} | {proj / 60:.1f} min |")


if __name__ == "__main__":
    main()
