"""Benchmark of the scores area: negCLIPLoss throughput, NormSim_∞ against a 10k target, MetaCLIP matching.

    .venv/bin/python bench/bench_scores.py [--rows 1000000] [--dim 512] [--batch-size B] [--k 1]
                                           [--normsim-rows R] [--captions 200000]

Every ratio is measured side by side in the same run:

* negclip: rows/s, and achieved GFLOP/s (the 2·n·B·d multiply-adds of the similarity matrices divided by the
  whole time, logsumexp and gathers included) against a bare (B × d) @ (d × B) matmul of the same shape
  timed in the same process. Rows are processed in blocks of 262,144 as the score does (bounded memory).
* normsim_inf: rows/s and GFLOP/s of the tiled running max against a 10,000-row target, vs a bare matmul of
  one tile.
* metaclip: captions/s of the Aho-Corasick matcher (pyahocorasick) on simulated captions, with the pool's
  n-gram metadata and with 100,000 extra entries, vs the reference's naive substring loop.

Defaults keep a CPU run near 3 minutes (B = 1024 and 100k NormSim rows on CPU; B = 32768 and every row on
a GPU). Nothing is asserted: this prints a table.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def pair_block(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Image/text rows with CLIP-like similarity (~0.3) between each pair."""
    rng = np.random.default_rng(seed)
    img = unit_rows(rng, n, d)
    txt = img * 0.3 + unit_rows(rng, n, d) * 0.95
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt


def bare_matmul_gflops(b: int, d: int, device, repeat: int = 3) -> float:
    import torch

    a = torch.randn(b, d, device=device)
    c = torch.randn(b, d, device=device)
    (a @ c.T)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        (a @ c.T)
    sync(device)
    return 2 * b * b * d * repeat / (time.perf_counter() - t) / 1e9


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_negclip(rows: int, d: int, b: int, k: int, device) -> list[tuple]:
    from audit.scores.negclip import DEFAULT_BLOCK_ROWS, negclip_scores

    block = max(DEFAULT_BLOCK_ROWS, b)
    rng = np.random.default_rng(0)
    done, elapsed, flops = 0, 0.0, 0.0
    for i, s in enumerate(range(0, rows, block)):
        n = min(block, rows - s)
        img, txt = pair_block(i, n, d)
        t = time.perf_counter()
        out = negclip_scores(img, txt, batch_size=b, k=k, rng=rng, device=str(device), owned=True)
        sync(device)
        elapsed += time.perf_counter() - t
        bb = min(b, n)
        nb = -(-n // bb)
        flops += k * nb * 2.0 * (n / nb) ** 2 * d        # equal batches of n/nb rows
        done += n
        assert np.isfinite(out).all()
    bare = bare_matmul_gflops(b, d, device)
    got = flops / elapsed / 1e9
    return [("negclip", f"{done:,} × {d}, B={b}, K={k}", f"{done * k / elapsed:,.0f} rows·passes/s",
             f"{got:,.1f}", f"{bare:,.1f}", f"{got / bare:.2f}", f"{elapsed:.1f}")]


def bench_normsim(rows: int, d: int, m: int, device) -> list[tuple]:
    from audit.scores.normsim import normsim_inf

    rng = np.random.default_rng(1)
    target = unit_rows(rng, m, d)
    block = 131_072
    elapsed, done = 0.0, 0
    for s in range(0, rows, block):
        f = unit_rows(rng, min(block, rows - s), d)
        t = time.perf_counter()
        normsim_inf(f, target, device=str(device))
        sync(device)
        elapsed += time.perf_counter() - t
        done += len(f)
    got = 2.0 * done * m * d / elapsed / 1e9
    bare = bare_matmul_gflops(8192, d, device)
    return [("normsim_inf", f"{done:,} × {d} vs {m:,} targets", f"{done / elapsed:,.0f} rows/s", f"{got:,.1f}",
             f"{bare:,.1f}", f"{got / bare:.2f}", f"{elapsed:.1f}")]


def bench_metaclip(n_captions: int) -> list[tuple]:
    from audit.scores.metaclip import build_automaton, match, match_naive, pool_ngrams
    from audit.demo.simulate import SimConfig, simulate_truth

    caps = simulate_truth(SimConfig(rows=n_captions, seed=0))["caption"].tolist()
    entries = pool_ngrams(caps)
    rng = np.random.default_rng(2)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    extra = ["".join(rng.choice(letters, size=int(rng.integers(4, 12)))) for _ in range(100_000)]
    rows = []
    naive_cps = None
    for label, ents in ((f"{len(entries):,} pool n-grams", entries),
                        (f"{len(entries) + len(extra):,} entries (+100k)", entries + extra)):
        t = time.perf_counter()
        auto = build_automaton(ents)
        build = time.perf_counter() - t
        t = time.perf_counter()
        tids, _ = match(caps, ents, automaton=auto)
        el = time.perf_counter() - t
        cps = len(caps) / el
        if naive_cps is None:
            sub = caps[:2000]
            t = time.perf_counter()
            for c in sub:
                match_naive(c, ents)
            naive_cps = len(sub) / (time.perf_counter() - t)
            ratio = f"{cps / naive_cps:.0f}× naive"
        else:
            ratio = "—"
        rows.append(("metaclip match", f"{len(caps):,} captions, {label}", f"{cps:,.0f} captions/s",
                     f"{len(tids) / len(caps):.1f} matches/caption", f"automaton {build:.2f} s", ratio, f"{el:.1f}"))
    rows.append(("metaclip naive", f"2,000 captions, {len(entries):,} entries", f"{naive_cps:,.0f} captions/s",
                 "", "", "1", ""))
    return rows


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None, help="negclip B (default: 32768 on GPU, 1024 on CPU)")
    ap.add_argument("--k", type=int, default=1, help="negclip random batchings (default: %(default)s)")
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--normsim-rows", type=int, default=None, help="default: all rows on GPU, 100,000 on CPU")
    ap.add_argument("--captions", type=int, default=200_000)
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    b = a.batch_size or (32768 if gpu else 1024)
    ns_rows = a.normsim_rows or (a.rows if gpu else 100_000)
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} torch threads)"
    print(f"device: {name}; torch {torch.__version__}; python {platform.python_version()}")
    t0 = time.perf_counter()
    rows = bench_negclip(a.rows, a.dim, b, a.k, device)
    rows += bench_normsim(ns_rows, a.dim, a.targets, device)
    rows += bench_metaclip(a.captions)
    head = ("what", "shape", "throughput", "achieved GFLOP/s", "bare matmul GFLOP/s", "ratio", "seconds")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
