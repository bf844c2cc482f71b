"""Vector part layouts side by side: write and read time of one part, the older FixedSizeList<float16> against the
binary float16 rows the store writes now (audit/store/vectors.py), plus float16 -> float32 by numpy and torch.

    .venv/bin/python bench/bench_vectors.py [--rows 100000] [--dim 768]

One part of --rows rows with img and txt columns; best of three of each, same data, same run. Prints a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.store.vectors import half_matrix, half_binary, half_to_float32  # noqa: E402


def best(fn, k=3) -> float:
    out = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.rows, a.dim), dtype=np.float32).astype(np.float16)
    uids = pa.array([f"{i:032x}" for i in range(a.rows)])
    mib = 2 * x.nbytes / 2 ** 20
    layouts = {
        "FixedSizeList<float16> (before)": lambda: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), a.dim),
        "fixed_size_binary float16 (now)": lambda: half_binary(x),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in layouts.items():
            path = Path(tmp) / "part.parquet"

            def write():
                col = make()
                pq.write_table(pa.table({"uid": uids, "img": col, "txt": col}), path, compression="none",
                               use_dictionary=["uid"], write_statistics=["uid"])

            def read():
                t = pq.read_table(path)
                half_matrix(t.column("img")), half_matrix(t.column("txt"))

            w, r = best(write), best(read)
            rows.append((name, w, r))
    h = x[: min(len(x), 100_000)]
    t_np, t_torch = best(lambda: h.astype(np.float32)), best(lambda: half_to_float32(h))
    print(f"\n{a.rows:,} rows × 2 columns × {a.dim} float16 = {mib:,.0f} MiB per part\n")
    print(f"| layout | write s | write MiB/s | read s | read MiB/s |\n|---|---|---|---|---|")
    for name, w, r in rows:
        print(f"| {name} | {w:.3f} | {mib / w:,.0f} | {r:.3f} | {mib / r:,.0f} |")
    base_w, base_r = rows[0][1], rows[0][2]
    print(f"| ratio before/now | {base_w / rows[1][1]:.1f}× | | {base_r / rows[1][2]:.1f}× | |")
    print(f"\nfloat16 -> float32 of {len(h):,} × {a.dim}: numpy astype {t_np:.3f} s, torch {t_torch:.3f} s "
          f"({t_np / t_torch:.1f}×)")


if __name__ == "__main__":
    main()
