"""Benchmark of the balancing stage: M4 solve time at 1M rows with 2 groups × 20 proxies (target < 30 s here),
Newton vs L-BFGS-B on the same problem, the streaming (mini-batch) variant, and the demo step at 100k rows
(budget 15 s).

    .venv/bin/python bench/bench_balance.py [--rows 1000000] [--proxies 20] [--demo-rows 100000] [--skip-lbfgs]

Synthetic problem: 65% of rows belong to one of two groups with soft (imputed) confidences in [0.6, 1]; 20
soft proxies (a softmax over 20 concepts, like zero-shot memberships) whose distribution depends on the group
(an association M4 must remove); budget η = 0.9, ε_R = 0.01, ε_A = 0.005.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def problem(n: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = rng.choice(3, n, p=[0.35, 0.30, 0.35])          # 0, 1: groups; 2: unknown
    conf = rng.uniform(0.6, 1.0, n)
    S = np.zeros((n, 2))
    S[g == 0, 0] = conf[g == 0]
    S[g == 1, 1] = conf[g == 1]
    logits = rng.normal(size=(n, c)) + 0.5 * (g == 0)[:, None] * np.linspace(-1, 1, c)
    Y = np.exp(2 * logits)
    Y /= Y.sum(1, keepdims=True)
    return S, Y


def bench_solver(n: int, c: int, skip_lbfgs: bool) -> list[dict]:
    from audit.analyses.balance.m4 import solve_m4, solve_m4_streaming

    S, Y = problem(n, c)
    rows = []
    kw = dict(budget=0.9, eps_rep=0.01, eps_assoc=0.005)
    for method in (["newton"] if skip_lbfgs else ["newton", "lbfgs"]):
        t0 = time.perf_counter()
        r = solve_m4(S, Y, method=method, rng=np.random.default_rng(1), **kw)
        rows.append({"case": f"M4 in memory, {method}", "rows": n, "seconds": time.perf_counter() - t0,
                     "passes": r.evaluations, "status": r.status, "rb": (r.rb_before, r.rb), "ab": (r.ab_before, r.ab),
                     "q": r.q})
    batch = 200_000

    def chunks():
        for i in range(0, n, batch):
            yield S[i:i + batch], Y[i:i + batch], None

    t0 = time.perf_counter()
    s = solve_m4_streaming(chunks, rng=np.random.default_rng(2), **kw)
    q = np.concatenate([s.policy.weights(a, b) for a, b, _ in chunks()])
    rows.append({"case": f"M4 streamed, batches of {batch:,}", "rows": n, "seconds": time.perf_counter() - t0,
                 "passes": s.passes, "status": s.status, "rb": (s.rb_before, s.rb), "ab": (s.ab_before, s.ab), "q": q})
    return rows


def bench_demo_step(rows: int) -> dict:
    """Simulated pool → ingest → clip and metaclip scores → caption lexicon → demo_step (timed alone)."""
    from audit.annotators.base import run_annotator
    from audit.demo.builder import record_simulator
    from audit.demo.steps import balance_step as demo_step
    from audit.ingest.run import ingest
    from audit.scores.base import run_score
    from audit.demo.simulate import SOURCES, SimConfig, write_pool

    quiet = lambda s: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "demo.duckdb")
        pool = Path(tmp) / "pool"
        write_pool(pool, SimConfig(rows=rows, seed=0))
        for name in ("truth.parquet", "latent.json"):
            (pool / name).replace(Path(tmp) / name)
        record_simulator(store, SimConfig(rows=rows, seed=0))
        for name in SOURCES:
            ingest("datacomp", [str(pool / f"{name}.parquet")], store_path=store, source=name, simulated=True,
                   progress=False, echo=quiet)
        for model in ("datacomp_b32", "datacomp_l14"):
            run_score("clip", store, model=model, params={}, echo=quiet)
        run_score("metaclip", store, params={"t": 1000.0, "min_count": 3, "entries_out": None}, echo=quiet)
        run_annotator("caption", store, params={}, echo=quiet)
        t0 = time.perf_counter()
        lines: list[str] = []
        demo_step(store, seed=0, echo=lines.append)
        return {"seconds": time.perf_counter() - t0, "line": lines[-1] if lines else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--proxies", type=int, default=20)
    ap.add_argument("--demo-rows", type=int, default=100_000)
    ap.add_argument("--skip-lbfgs", action="store_true")
    a = ap.parse_args()
    import os

    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    res = bench_solver(a.rows, a.proxies, a.skip_lbfgs)
    ref = res[0]["q"]
    print(f"\nM4 solve, {a.rows:,} rows × 2 groups × {a.proxies} proxies, η=0.9, ε_R=0.01, ε_A=0.005 (target < 30 s)")
    print(f"{'case':36} {'seconds':>8} {'ratio':>6} {'passes':>7} {'status':>8} {'RB before→after':>18} "
          f"{'AB before→after':>18} {'max|Δq| vs 1st':>15}")
    for r in res:
        print(f"{r['case']:36} {r['seconds']:8.1f} {r['seconds'] / res[0]['seconds']:6.2f} {r['passes']:7d} "
              f"{r['status']:>8} {r['rb'][0]:8.4f}→{r['rb'][1]:.4f} {r['ab'][0]:8.4f}→{r['ab'][1]:.4f} "
              f"{float(np.max(np.abs(r['q'] - ref))):15.2e}")
    if a.demo_rows:
        d = bench_demo_step(a.demo_rows)
        print(f"\ndemo step (M4 + MetaCLIP at matched t + CLIP top-η, zero-shot proxies, stored) at {a.demo_rows:,} rows: "
              f"{d['seconds']:.1f} s (budget 15 s)\n  {d['line']}")


if __name__ == "__main__":
    main()
