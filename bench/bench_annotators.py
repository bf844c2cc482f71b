"""Annotation throughput per annotator (rows/s), measured side by side in one run.

    .venv/bin/python bench/bench_annotators.py [--store DB] [--rows 20000] [--repeat 2]

Without --store it builds a demo store (simulated rows + the 25 wheel photos) under bench/out/. For each
annotator and each of its demo runs it times ``compute`` alone (best of --repeat) and the whole
``run_annotator`` (compute + the DuckDB write of one row per sample and attribute). The image models (faces,
the open_nsfw part of nsfw) only see samples with a stored image, so their image rate is printed as well.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="an existing store (default: build bench/out/annotators.duckdb)")
    ap.add_argument("--rows", type=int, default=20_000, help="simulated rows when building (default 20000)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from audit.annotators import ANNOTATORS
    from audit.annotators.base import AnnotatorContext, run_annotator
    from audit.store import Store

    store = args.store
    if not store:
        store = str(ROOT / "bench" / "out" / "annotators.duckdb")
        if not Path(store).exists():
            from audit.demo.builder import build_demo

            print(f"building {store} ({args.rows} simulated rows + 25 photos)…", flush=True)
            build_demo(store, rows=args.rows, seed=0, photos=True, echo=lambda s: None)
    with Store.reader(store) as st:
        models = st.models()["model"].tolist()
        n = st.count("samples")
        n_img = int(st.scalar("SELECT count(*) FROM samples WHERE image_ref IS NOT NULL"))
    print(f"store {store}: {n:,} samples, {n_img} with a stored image\n")
    head = f"{'annotator':10s} {'model':14s} {'attrs':>5s} {'compute s':>9s} {'rows/s':>10s} {'images/s':>9s} " \
           f"{'end-to-end s':>12s} {'rows/s':>10s}"
    print(head)
    print("-" * len(head))
    for cls in ANNOTATORS:
        for model, params in cls.demo_runs(models):
            full = {**params, "model": model, "seed": 0, "version": cls.version}
            best = np.inf
            for _ in range(args.repeat):
                with Store.reader(store) as rd:
                    ctx = AnnotatorContext(store=rd, params=full, rng=np.random.default_rng(0), model=model,
                                           echo=lambda s: None)
                    t = time.perf_counter()
                    cls().compute(ctx)
                    best = min(best, time.perf_counter() - t)
            t = time.perf_counter()
            run_annotator(cls.name, store, model=model, params=params, force=True, echo=lambda s: None)
            e2e = time.perf_counter() - t
            uses_images = cls.name in ("faces", "nsfw")
            print(f"{cls.name:10s} {str(model or '-'):14s} {len(cls.attributes):5d} {best:9.2f} {n / best:10,.0f} "
                  f"{(f'{n_img / best:9.1f}' if uses_images else '        -')} {e2e:12.2f} {n / e2e:10,.0f}",
                  flush=True)
    print("\nrows/s counts every sample (the image annotators label samples without an image `unknown`); "
          "images/s = stored images / compute time, text parts included, so the image models alone are faster.")


if __name__ == "__main__":
    main()
