"""VAS-D before and after it ran as passes over the vector parts: the same store, the same 2 CPUs, side by side.

    git worktree add /tmp/vasd-v1 ddd3be0          # the code before (VAS-D version 1: the candidates in memory)
    python bench/bench_vas_d.py --store /work/scale/store-1000000/pool.duckdb --before /tmp/vasd-v1 --iters 5

Each run is a real `python -m audit score vas-d --force` process under /usr/bin/time, the two codes alternating
--repeat times, run with this checkout's interpreter. Printed per code: wall seconds, seconds per iteration, rows
per second, the peak RSS of the largest process (the driver or one worker: /usr/bin/time) and of all its
processes together (sampled from /proc every 0.2 s), and the after/before ratios. Version 1 held every candidate's float16 vector
(N·d·2 bytes) plus a float16 copy of the alive rows each iteration; version 2 holds ~9 bytes a row on the driver
and reads the vector parts twice per iteration. The store is changed (each run replaces vas_d_<model>): use a copy.
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


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def run(tree: Path, args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS GB of the largest process, peak GB of the process tree's sum sampled every 0.2 s)
    of one `python -m audit` run of the code in ``tree``."""
    t = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "audit", *args], cwd=tree,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(tree)})
    peak_sum = 0
    while proc.poll() is None:
        peak_sum = max(peak_sum, tree_rss(proc.pid))
        time.sleep(0.2)
    out, err = proc.communicate()
    secs = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"failed in {tree}: {' '.join(args)}\n{err[-2000:]}")
    return secs, int(err.strip().splitlines()[-1]) / 1e6, peak_sum / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--before", required=True, help="a checkout of the code to compare with (git worktree)")
    ap.add_argument("--model", default="datacomp_l14")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from audit.store import Store

    with Store.reader(a.store) as st:
        n = int(st.count("samples"))
        dim = int(st.model_info(a.model)["dim"])
    args = ["score", "vas-d", "--store", a.store, "--model", a.model, "--iters", str(a.iters), "--force"]
    trees = {"before": Path(a.before).resolve(), "after": ROOT}
    got: dict[str, list] = {k: [] for k in trees}
    for _ in range(a.repeat):
        for k, tree in trees.items():
            got[k].append(run(tree, args))
    print(f"store {a.store}: {n:,} samples, {a.model} ({dim}-d); vas-d --iters {a.iters}; {os.cpu_count()} CPUs")
    print("| code | wall s | s / iteration | rows/s | peak RSS, largest process | peak RSS, all its processes |")
    print("|---|---|---|---|---|---|")
    med = {}
    for k, runs in got.items():
        secs, rss, tot = statistics.median(r[0] for r in runs), max(r[1] for r in runs), max(r[2] for r in runs)
        med[k] = (secs, rss, tot)
        print(f"| {k} ({trees[k].name}) | {secs:.1f} | {secs / a.iters:.1f} | {n / secs:,.0f} | {rss:.2f} GB "
              f"| {tot:.2f} GB |")
    (bs, bm, bt), (as_, am, at) = med["before"], med["after"]
    print(f"| after / before | {as_ / bs:.2f} | | {bs / as_:.2f} (rate) | {am / bm:.2f} | {at / bt:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
