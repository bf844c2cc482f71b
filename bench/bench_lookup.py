"""Reading the samples a page shows: a join by uid against reading by part and row number (``Store.samples_at``),
side by side on one store, the same random rows for both.

    .venv/bin/python bench/bench_lookup.py --store /work/scale/store-12800000/pool.duckdb [--repeats 3]

For 16 rows (a page of examples) and 2,000 rows (the Filter preview's draw of one group) it times: the join of the
wanted uids with ``samples`` (``Store.samples_page``: every column, reads the uid column of every part), then
``samples_at`` with the grid's columns (uid, image_ref, caption, domain) and with every column. The first call of
``samples_at`` on a store without a locator builds it (timed apart, once). Median of ``--repeats`` draws of rows;
the page cache is warm for all three after the first repeat. Nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from audit.store import Store, columns  # noqa: E402

logging.getLogger("streamlit").setLevel(logging.ERROR)   # audit.ui's caches outside a running app
from audit.ui import GRID_COLUMNS  # noqa: E402


def _time(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default="16,2000", help="comma-separated numbers of rows to read")
    args = ap.parse_args()
    with Store.reader(args.store) as st:
        n = int(st.count("samples"))
        build_s, loc = _time(lambda: columns.locate(st))
        print(f"store {args.store}: {n:,} samples; locator {'none (older layout)' if loc is None else f'{build_s:.2f} s to open or build'}")
        print("| rows | by uid (every column) | samples_at, grid columns | samples_at, every column | by uid / grid |")
        print("|---|---|---|---|---|")
        rng = np.random.default_rng(0)
        for k in (int(x) for x in args.rows.split(",")):
            t_uid, t_grid, t_all = [], [], []
            for _ in range(args.repeats):
                rows = rng.choice(n, size=min(k, n), replace=False)
                uids = st.uids_at(rows)
                s, by_uid = _time(lambda: st.samples_page(uids))
                t_uid.append(s)
                s, grid = _time(lambda: st.samples_at(rows, GRID_COLUMNS))
                t_grid.append(s)
                s, every = _time(lambda: st.samples_at(rows))
                t_all.append(s)
                assert sorted(by_uid["uid"]) == sorted(grid["uid"]) == sorted(every["uid"]) == sorted(uids)
            mu, mg, ma = (statistics.median(x) for x in (t_uid, t_grid, t_all))
            print(f"| {k:,} | {mu:.2f} s | {mg:.2f} s | {ma:.2f} s | {mu / mg:.1f}× |")


if __name__ == "__main__":
    main()
