"""Embedder backends side by side: open_clip vs transformers on the same model size, same images, same batch.

    .venv/bin/python bench/bench_embed_backends.py [--images 64] [--batch-size 32] [--repeats 3] [--siglip]

Models (random weights, no hub): open_clip ``ViT-B-32`` (pretrained none) and a transformers ``CLIPModel`` with
the default ``CLIPConfig`` (the ViT-B/32 sizes: vision 768x12 layers, patch 32, 224 px; text 512x12; 512-d
projection), saved with save_pretrained and loaded by the transformers backend exactly as a user's folder.
Images: the demo's 25 real photos, repeated to --images. fp32 on both sides. Stages:

* preprocess   PIL image -> tensor with each backend's own transform (one process)
* image fwd    encode_images on the preprocessed images in batches
* text fwd     encode_texts on a batch of the photos' captions
* embed e2e    audit.embed.embed on a fresh store: decode + preprocess (2 workers) + both encoders + Parquet

--siglip adds the image forward of a SigLIP B/16-224 pair (open_clip ``ViT-B-16-SigLIP`` built with timm vs
transformers ``SiglipModel``); open_clip's SigLIP tokenizer needs the hub, so that pair is image-only.
Every stage runs --repeats times, the two backends interleaved, so load from other processes hits both
alike; the table shows the median and the min-max. Nothing here is a pass/fail test; ratios are
transformers / open_clip medians, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TQDM_DISABLE", "1")


def photo_store(work: Path, n: int) -> tuple[str, list, list[str]]:
    """A folder store of n images: the demo's 25 real photos repeated (distinct files, same pixels)."""
    from PIL import Image

    from audit.demo.builder import write_photos
    from audit.ingest.run import ingest

    src = work / "src"
    write_photos(src)
    caps = pd.read_csv(src / "captions.csv")
    caps = caps[[(src / f).exists() and f not in ("corrupt.jpg", "blank_caption.png") for f in caps["file"]]]
    folder = work / "photos"
    folder.mkdir()
    rows = []
    for i in range(n):
        r = caps.iloc[i % len(caps)]
        name = f"{i:04d}-{r['file']}"
        shutil.copy(src / r["file"], folder / name)
        rows.append({"file": name, "caption": r["caption"]})
    pd.DataFrame(rows).to_csv(folder / "captions.csv", index=False)
    store = str(work / "bench.duckdb")
    ingest("folder", [str(folder)], store_path=store, source="bench", progress=False, echo=lambda s: None)
    images = [Image.open(folder / r["file"]).convert("RGB") for r in rows]
    return store, images, [r["caption"] for r in rows]


def hf_vit_b32(folder: Path) -> Path:
    """transformers CLIPModel with the default (ViT-B/32) config, random weights, saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from hf_fixtures import clip_bpe_files

    tok = CLIPTokenizer.from_pretrained(str(clip_bpe_files(folder / "_bpe")))
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(audit_random_weights=True)).save_pretrained(str(folder))
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(str(folder))
    shutil.rmtree(folder / "_bpe")
    return folder


def n_params(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--siglip", action="store_true")
    a = ap.parse_args()

    import torch

    from audit.embed.runner import embed, make_embedder
    from audit.store import copy_store

    work = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    try:
        store, images, captions = photo_store(work, a.images)
        t = time.perf_counter()
        folder = hf_vit_b32(work / "hf-clip-vit-b-32")
        print(f"built + saved the transformers ViT-B/32 in {time.perf_counter() - t:.1f}s", flush=True)
        emb = {"open_clip": make_embedder("open_clip", "ViT-B-32", "none", precision="fp32"),
               "transformers": make_embedder("transformers", str(folder), None, precision="fp32")}
        for name, e in emb.items():
            print(f"{name}: {e.key}  dim {e.dim}  {n_params(e.model):.1f}M parameters  "
                  f"torch threads {torch.get_num_threads()}", flush=True)
        res: dict[tuple[str, str], list[float]] = {}

        def add(stage: str, name: str, rate: float) -> None:
            res.setdefault((stage, name), []).append(rate)

        b = a.batch_size
        caps = [captions[i:i + b] for i in range(0, len(captions), b)]
        tensors = {name: torch.stack([e.preprocess(im) for im in images[:b]]) for name, e in emb.items()}
        for name, e in emb.items():  # warm-up
            e.encode_images(tensors[name])
            e.encode_texts(caps[0])
        for r in range(a.repeats):  # every stage interleaved: load from other processes hits both backends alike
            for name, e in emb.items():
                t = time.perf_counter()
                x = torch.stack([e.preprocess(im) for im in images])
                add("preprocess", name, len(images) / (time.perf_counter() - t))
                add("image fwd", name, len(images) / timed(lambda: [e.encode_images(x[i:i + b])
                                                                    for i in range(0, len(x), b)]))
                add("text fwd", name, len(images) / timed(lambda: [e.encode_texts(c) for c in caps]))
                fresh = str(work / f"e2e-{name}-{r}.duckdb")
                copy_store(store, fresh)
                rep = embed(fresh, embedder=e, batch_size=b, progress=False, echo=lambda s: None)
                assert rep.embedded == len(images), rep
                add("embed e2e", name, rep.embedded / rep.seconds)
        if a.siglip:
            siglip_pair(add, b, a.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def cell(stage: str, name: str) -> str:
        v = res.get((stage, name))
        return f"{statistics.median(v):7.2f} ({min(v):.1f}-{max(v):.1f})" if v else ""

    def ratio(stage: str) -> str:
        return f"{statistics.median(res[(stage, 'transformers')]) / statistics.median(res[(stage, 'open_clip')]):.2f}"

    table = pd.DataFrame([{"stage": s, "open_clip /s (min-max)": cell(s, "open_clip"),
                           "transformers /s (min-max)": cell(s, "transformers"), "ratio hf/oc": ratio(s)}
                          for s in dict.fromkeys(k for k, _ in res)])
    print(f"\nimages={a.images} batch={a.batch_size} repeats={a.repeats} fp32 CPU, cores={os.cpu_count()} "
          f"(median of repeats; text fwd: captions/s; others: images/s)")
    print(table.to_string(index=False))


def siglip_pair(add, b: int, repeats: int) -> None:
    """SigLIP B/16-224 image forward: open_clip (timm tower) vs transformers SiglipModel, random weights."""
    import open_clip
    import torch
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).eval()
    hf = SiglipModel(SiglipConfig(text_config={"vocab_size": 32000}, vision_config={"image_size": 224,
                                                                                    "patch_size": 16})).eval()
    x = torch.randn(b, 3, 224, 224)
    runs = {"open_clip": lambda: oc.encode_image(x), "transformers": lambda: hf.get_image_features(pixel_values=x)}
    times = {n: [] for n in runs}
    with torch.no_grad():
        for f in runs.values():
            f()
        for _ in range(repeats):
            for n, f in runs.items():
                times[n].append(timed(f))
    for n in runs:
        for v in times[n]:
            add("SigLIP B/16 image fwd", n, b / v)
    print(f"SigLIP B/16: open_clip {n_params(oc.visual):.1f}M vs transformers {n_params(hf.vision_model):.1f}M "
          "vision parameters", flush=True)


if __name__ == "__main__":
    main()
