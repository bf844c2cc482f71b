"""Embed: image and text embeddings of every sample that has an image, L2-normalised, resumable.

Backends live behind one small interface (``Embedder``: ``encode_images``, ``encode_texts``, ``preprocess``,
``dim``, ``key``); ``open_clip`` is the default. Vectors are written as float16 Parquet parts, one per
flush, each written atomically; a killed run leaves only whole parts behind, and the next run embeds
exactly the samples that are not in a part yet. The store is locked only to read the work list and to
register the model at the end.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from audit.embed.transformers_backend import transformers_embedder
from audit.killpoints import checkpoint
from audit.embed.base import DEFAULT_MODEL, DEFAULT_PRETRAINED, Embedder, RANDOM_SEED
from audit.embed.open_clip_backend import OpenClipEmbedder


# backend name -> factory(model, pretrained, **kw); transformers: CLIP / SigLIP via Hugging Face transformers
BACKENDS: dict[str, Callable[..., Embedder]] = {"open_clip": OpenClipEmbedder, "transformers": transformers_embedder}


def make_embedder(backend: str, model: str, pretrained: str | None, **kw) -> Embedder:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](model, pretrained, **kw)


class _ImageSet:
    """torch Dataset of (position, tensor or None, error) read from image references."""

    def __init__(self, refs: list[str], preprocess):
        self.refs, self.preprocess = refs, preprocess

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        from audit import images

        try:
            return i, self.preprocess(images.load_image(self.refs[i])), ""
        except images.ImageError as exc:
            return i, None, str(exc)


def _collate(items):
    import torch

    ok = [(i, t) for i, t, e in items if t is not None]
    bad = [(i, e) for i, t, e in items if t is None]
    pos = [i for i, _ in ok]
    return pos, (torch.stack([t for _, t in ok]) if ok else None), bad


@dataclass
class EmbedReport:
    model: str
    embedded: int
    skipped_done: int
    failed: int
    no_image: int
    seconds: float
    load_seconds: float
    random_weights: bool
    autocast_bf16: bool

    def lines(self) -> list[str]:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        out = [f"model: {self.model}" + ("  [RANDOM WEIGHTS: embeddings carry no meaning]" if self.random_weights else ""),
               f"embedded now: {self.embedded} ({rate:.1f} images/s; model loaded in {self.load_seconds:.1f} s)", f"already embedded: {self.skipped_done}",
               f"failed to decode (rejects): {self.failed}", f"no image (url only, not embedded): {self.no_image}",
               f"bf16 autocast: {'on' if self.autocast_bf16 else 'off'}"]
        return out


def embed(store_path: str, *, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
          backend: str = "open_clip", batch_size: int = 64, workers: int | None = None,
          flush_rows: int = 2048, precision: str = "auto", limit: int | None = None,
          embedder: Embedder | None = None, progress: bool = True,
          echo: Callable[[str], None] = print) -> EmbedReport:
    """Embed every sample with an image that this model has not embedded yet."""
    import pandas as pd
    import torch
    from tqdm import tqdm

    from audit.store.vectors import write_vectors
    from audit.store import Store
    from audit.store.vectors import embedded_uids

    t_load = time.perf_counter()
    emb = embedder or make_embedder(backend, model, pretrained, precision=precision)
    load_s = time.perf_counter() - t_load
    with Store.reader(store_path) as rd:
        work = rd.sample_frame(["caption", "image_ref"])
        folder = rd.model_dir(emb.key)
    no_image = int(work["image_ref"].isna().sum())
    work = work[work["image_ref"].notna()]
    done = embedded_uids(folder) if folder.exists() else set()
    settings = folder / "embedder.json"   # how the parts already written were computed
    if done and settings.exists():
        before = json.loads(settings.read_text())
        if bool(before.get("autocast_bf16")) != bool(emb.autocast):
            echo(f"resuming {emb.key} with the precision of its first run "
                 f"({'bf16 autocast' if before.get('autocast_bf16') else 'fp32'}), so every vector is computed alike")
            emb.autocast = bool(before.get("autocast_bf16"))
    todo = work[~work["uid"].isin(done)].reset_index(drop=True)
    if limit is not None:
        todo = todo.iloc[:limit]
    params = {"backend": emb.backend, "arch": emb.arch, "pretrained": emb.pretrained,
              "digest": getattr(emb, "digest", None), "batch_size": batch_size, "autocast_bf16": emb.autocast,
              "revision": getattr(emb, "revision", None)}
    with Store.writer(store_path) as st:
        run_id = st.start_run("embed", emb.key, params=params, model=emb.key, pretrained=emb.pretrained or "none",
                              random_weights=emb.random_weights)
    if emb.random_weights:
        echo(f"note: {emb.key} has RANDOM weights (seed {RANDOM_SEED}); results are labelled as such")
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _ImageSet(todo["image_ref"].tolist(), emb.preprocess), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, prefetch_factor=2 if workers else None)
    uids, captions = todo["uid"].tolist(), todo["caption"].tolist()
    buf_u: list[str] = []
    buf_i: list[np.ndarray] = []
    buf_t: list[np.ndarray] = []
    rejects: list[dict] = []
    seq = 0
    embedded = 0

    def flush() -> None:
        nonlocal seq, buf_u, buf_i, buf_t
        if buf_u:
            folder.mkdir(parents=True, exist_ok=True)
            if not settings.exists():
                settings.write_text(json.dumps({"autocast_bf16": bool(emb.autocast), "key": emb.key}))
            write_vectors(_FolderStore(folder), emb.key, f"r{run_id:05d}-{seq:06d}", buf_u,
                          np.concatenate(buf_i), np.concatenate(buf_t))
            checkpoint("embed.part_written")
            seq += 1
            buf_u, buf_i, buf_t = [], [], []

    t0 = time.perf_counter()  # the rate counts the embedding loop only, not loading the model
    bar = tqdm(total=len(todo), desc=f"embed {emb.key}", unit="img", disable=not progress)
    try:
        for pos, batch, bad in loader:
            for i, err in bad:
                rejects.append({"source_ref": todo["image_ref"].iat[i], "stage": "embed", "reason": "corrupt_image",
                                "detail": f"{emb.key}: {err}", "source": None, "uid": uids[i], "run_id": run_id})
            if batch is not None:
                buf_i.append(emb.encode_images(batch))
                buf_t.append(emb.encode_texts([captions[i] for i in pos]))
                buf_u += [uids[i] for i in pos]
                embedded += len(pos)
            bar.update(len(pos) + len(bad))
            if len(buf_u) >= flush_rows:
                flush()
        flush()
    finally:
        bar.close()
    with Store.writer(store_path) as st, st.transaction():
        # one reject per sample and model, however often the embedding is retried
        st.replace_stage_rejects("embed", f"{emb.key}: ", pd.DataFrame(rejects))
        st.register_model(emb.key, dim=emb.dim, backend=emb.backend, arch=emb.arch, pretrained=emb.pretrained,
                          random_weights=emb.random_weights, run_id=run_id)
        st.end_run(run_id, rows_in=len(todo), rows_out=embedded, rows_rejected=len(rejects))
    rep = EmbedReport(emb.key, embedded, len(done), len(rejects), no_image, time.perf_counter() - t0, load_s,
                      emb.random_weights, emb.autocast)
    for line in rep.lines():
        echo(line)
    return rep


class _FolderStore:
    """Adapter so write_vectors can write into a model folder without holding the store open."""

    def __init__(self, folder: Path):
        self.folder = folder

    def model_dir(self, model: str) -> Path:
        return self.folder
