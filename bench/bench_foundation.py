"""Foundation benchmarks: slider-preview latency, datacomp ingest rate, embed vs bare forward.

    .venv/bin/python bench/bench_foundation.py [--quick]

Prints one table. Ratios are measured side by side in the same run. Nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from audit.decide.preview import PreviewData  # noqa: E402
from audit.store import Store  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def row(what: str, value: str, note: str = "") -> None:
    ROWS.append((what, value, note))
    print(f"  {what}: {value} {note}", flush=True)


def synthetic_store(path: str, n: int, seed: int = 0) -> None:
    """n samples with a score and an imputed attribute, written through the store API (no vectors)."""
    rng = np.random.default_rng(seed)
    uids = [f"{i:032x}" for i in range(n)]
    frame = pd.DataFrame({"uid": uids, "source": rng.choice(["a", "b", "c"], n), "caption": "x",
                          "domain": rng.choice([f"d{i}.com" for i in range(200)], n), "simulated": True})
    with Store.writer(path) as st:
        run = st.start_run("bench", "synthetic", params={"n": n})
        st.add_samples(frame)
        st.write_scores("clip_l14_similarity_score", uids, rng.normal(0.2, 0.05, n), run_id=run, kind="bench")
        labels = rng.choice(["woman", "man", "unknown", "multiple"], n, p=[0.07, 0.07, 0.84, 0.02])
        st.write_annotations(pd.DataFrame({"uid": uids, "attribute": "caption_gender", "label": labels,
                                           "confidence": 1.0, "method": "bench"}), run_id=run, method="bench")
        st.end_run(run)


def preview_latency(path: str, n: int, repeats: int) -> None:
    with Store.reader(path) as st:
        t = time.perf_counter()
        frame = st.score_and_groups("clip_l14_similarity_score", "caption_gender")
        data = PreviewData.from_frame(frame)
        load = time.perf_counter() - t
        rng = np.random.default_rng(1)
        fr = rng.uniform(0.05, 0.95, repeats)
        lat = []
        for f in fr:
            t = time.perf_counter()
            data.table("top", float(f))
            lat.append(time.perf_counter() - t)
        # the same answer computed by DuckDB per slider move (aggregate SQL), for comparison
        sql_lat = []
        cur = st.cursor()
        q = ("WITH g AS (SELECT s.uid, coalesce(a.label,'unknown') grp FROM samples s LEFT JOIN annotations a "
             "ON a.uid=s.uid AND a.attribute='caption_gender'), v AS (SELECT uid, value FROM scores WHERE name=?) "
             "SELECT grp, count(*) n, count(*) FILTER (WHERE value >= ?) kept FROM g LEFT JOIN v USING (uid) GROUP BY grp")
        for f in fr[: max(5, repeats // 4)]:
            t = time.perf_counter()
            tau = data.threshold("top", float(f))
            cur.execute(q, ["clip_l14_similarity_score", tau]).fetchall()
            sql_lat.append(time.perf_counter() - t)
    lat_ms, sql_ms = np.array(lat) * 1e3, np.array(sql_lat) * 1e3
    row(f"preview {n:,} rows: slider move (numpy on cached columns)",
        f"median {np.median(lat_ms):.1f} ms, p95 {np.percentile(lat_ms, 95):.1f} ms", f"({repeats} moves)")
    row(f"preview {n:,} rows: same move as DuckDB aggregate SQL",
        f"median {np.median(sql_ms):.1f} ms, p95 {np.percentile(sql_ms, 95):.1f} ms",
        f"(numpy is {np.median(sql_ms) / np.median(lat_ms):.1f}x faster)")
    row(f"preview {n:,} rows: first load of score+groups (once per score/group)", f"{load * 1e3:.0f} ms")


def ingest_rate(tmp: Path, n: int) -> None:
    from audit.ingest.run import ingest
    from audit.demo.simulate import SimConfig, write_pool

    pool = tmp / "pool"
    write_pool(pool, SimConfig(rows=n, seed=5, shards=4))
    (pool / "truth.parquet").unlink()
    (pool / "latent.json").unlink()
    store = str(tmp / "ingest.duckdb")
    t = time.perf_counter()
    rep = ingest("datacomp", [str(pool)], store_path=store, progress=False, echo=lambda s: None)
    dt = time.perf_counter() - t
    row(f"ingest datacomp ({n:,} rows, 4 shards, b32+l14 vectors)", f"{rep.rows_in / dt:,.0f} rows/s",
        f"({dt:.1f} s; accepted {rep.accepted:,})")


def embed_ratio(tmp: Path, n_images: int, batch: int, repeats: int = 3) -> None:
    import torch

    from audit.demo.builder import write_photos
    from audit.embed.open_clip_backend import OpenClipEmbedder
    from audit.embed.runner import embed
    from audit.images import load_image
    from audit.ingest.run import ingest

    folder = tmp / "photos"
    cap = write_photos(folder)
    base = pd.read_csv(cap)
    base = base[base["file"].isin([p[0] for p in __import__("audit.demo", fromlist=["PHOTOS"]).PHOTOS])]
    reps = -(-n_images // len(base))
    rows = pd.concat([base.assign(caption=base["caption"] + f" (copy {i})") for i in range(reps)]).head(n_images)
    rows.to_csv(cap, index=False)
    store = str(tmp / "embed.duckdb")
    ingest("folder", [str(folder)], store_path=store, progress=False, echo=lambda s: None)
    emb = OpenClipEmbedder("ViT-B-32", "none", precision="auto")
    # bare forward on exactly the same inputs, preprocessed beforehand (no decode, no I/O)
    with Store.reader(store) as st:
        work = st.df("SELECT caption, image_ref FROM samples ORDER BY uid")
    x = torch.stack([emb.preprocess(load_image(r)) for r in work["image_ref"]])
    caps = work["caption"].tolist()
    emb.encode_images(x[:batch])
    emb.encode_texts(caps[:batch])  # warm-up

    def bare_run() -> float:
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            emb.encode_images(x[i:i + batch])
            emb.encode_texts(caps[i:i + batch])
        return len(x) / (time.perf_counter() - t)

    def stage_run() -> float:
        import shutil

        with Store.writer(store) as st:  # start from nothing each time (embed resumes otherwise)
            shutil.rmtree(st.model_dir(emb.key), ignore_errors=True)
        t = time.perf_counter()
        rep = embed(store, embedder=emb, batch_size=batch, progress=False, echo=lambda s: None)
        return rep.embedded / (time.perf_counter() - t)

    bares, fulls = [], []
    for _ in range(repeats):  # interleaved, so load on this shared machine hits both sides alike
        bares.append(bare_run())
        fulls.append(stage_run())
    bare, full = float(np.median(bares)), float(np.median(fulls))
    ratios = [f / b for f, b in zip(fulls, bares)]
    row(f"embed ViT-B-32 (random weights), {len(x)} images, batch {batch}: bare forward (img+txt)",
        f"{bare:.1f} images/s", f"median of {repeats}; bf16 autocast {'on' if emb.autocast else 'off'} (auto)")
    row("embed: full stage (decode in {} workers, forward, write)".format(min(2, os.cpu_count() or 1)),
        f"{full:.1f} images/s", f"= {full / bare:.0%} of bare forward (pairwise ratios {min(ratios):.0%}–{max(ratios):.0%})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", choices=["preview", "ingest", "embed"], help="run one part")
    a = ap.parse_args()
    sizes = [20_000] if a.quick else [100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in sizes if a.only in (None, "preview") else []:
            path = str(tmp / f"p{n}.duckdb")
            synthetic_store(path, n)
            preview_latency(path, n, repeats=40 if a.quick else 200)
        if a.only in (None, "ingest"):
            ingest_rate(tmp, 5_000 if a.quick else 50_000)
        if a.only in (None, "embed"):
            embed_ratio(tmp, 32 if a.quick else 96, 16 if a.quick else 32)
    print("\n| measure | value | note |\n|---|---|---|")
    for w, v, note in ROWS:
        print(f"| {w} | {v} | {note} |")
    print(f"\nmachine: {os.cpu_count()} cores; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
