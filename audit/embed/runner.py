"""Embed: image and text embeddings of every sample that has an image, L2-normalised, resumable.

Backends live behind one small interface (``Embedder``: ``encode_images``, ``encode_texts``, ``preprocess``,
``dim``, ``key``); ``open_clip`` is the default. Vectors are written as float16 Parquet parts, one per
flush, each written atomically; a killed run leaves only whole parts behind, and the next run embeds
exactly the samples that are not in a part yet. The store is locked only to read the work list and to
register the model at the end.

Both engines run the same decode-and-encode code (``_encoded``) over the same work list (the samples joined
with the uids the model's parts hold, one file that DuckDB streams to disk). Locally a DataLoader streams it
through chunk by chunk, a part per ``flush_rows``; on Ray (``engine=Engine("ray")``) every worker loads the model once
(``_worker_embedder``) and embeds one slice of the samples (``--batch-rows``, default ``flush_rows``, rows each)
into one part of the same folder, skipping the samples a part already holds, so a killed Ray job also resumes
where it stopped.
"""
from __future__ import annotations

import functools
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from audit.embed.transformers_backend import transformers_embedder
from audit.engine import LOCAL, Engine, require_local
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


def _encoded(emb: Embedder, refs: list[str], captions: list, batch_size: int, workers: int):
    """Decode and encode ``refs`` (and their captions) a batch at a time: yields (positions embedded, image
    vectors, text vectors, [(position, decode error)]); the one embedding loop of both engines."""
    import torch

    loader = torch.utils.data.DataLoader(
        _ImageSet(refs, emb.preprocess), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, prefetch_factor=2 if workers else None)
    for pos, batch, bad in loader:
        if batch is None:
            yield pos, None, None, bad
        else:
            yield pos, emb.encode_images(batch), emb.encode_texts([captions[i] for i in pos]), bad


def _reject(emb_key: str, ref: str, uid: str, err: str, run_id: int) -> dict:
    return {"source_ref": ref, "stage": "embed", "reason": "corrupt_image", "detail": f"{emb_key}: {err}",
            "source": None, "uid": uid, "run_id": run_id}


@dataclass(frozen=True)
class EmbedderSpec:
    """What a Ray worker needs to build the driver's embedder itself (the model is not shipped): backend, the
    CLI's --model and --pretrained, and the precision the driver chose (or the first run's, when resuming)."""
    backend: str
    model: str
    pretrained: str | None
    autocast: bool

    def make(self) -> Embedder:
        return make_embedder(self.backend, self.model, self.pretrained, precision="bf16" if self.autocast else "fp32")


@functools.lru_cache(maxsize=2)
def _worker_embedder(spec: EmbedderSpec) -> Embedder:
    return spec.make()


def _embed_slice(payload: tuple, frame):
    """One slice of the samples on a Ray worker (``engine.over_samples``): the rows with an image that no part
    holds yet (``done`` null) embedded into one vector part. Decode failures are returned as rejects in the
    info (reason corrupt_image, as locally); any other failure raises, so those rows become plugin rejects."""
    spec, key, folder, run_id, batch_size, workers = payload
    has_image = frame["image_ref"].notna()
    done = frame["done"].notna() if "done" in frame else has_image & False
    todo = frame[has_image & ~done]
    info = {"no_image": int((~has_image).sum()), "done": int(done.sum()), "todo": len(todo), "embedded": 0,
            "rejects": []}
    if todo.empty:
        return {}, info
    emb = _worker_embedder(spec)
    refs, uids = todo["image_ref"].tolist(), todo["uid"].tolist()
    got_u, got_i, got_t = [], [], []
    for pos, img, txt, bad in _encoded(emb, refs, todo["caption"].tolist(), batch_size, workers):
        info["rejects"] += [_reject(key, refs[i], uids[i], err, run_id) for i, err in bad]
        if img is not None:
            got_u += [uids[i] for i in pos]
            got_i.append(img)
            got_t.append(txt)
    if got_u:
        from audit.store.vectors import write_vectors

        write_vectors(_FolderStore(Path(folder)), key, f"r{run_id:05d}-{uuid.uuid4().hex[:12]}", got_u,
                      np.concatenate(got_i), np.concatenate(got_t))
        checkpoint("embed.part_written")
    info["embedded"] = len(got_u)
    return {}, info


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
          embedder: Embedder | None = None, progress: bool = True, engine: Engine | None = None,
          echo: Callable[[str], None] = print) -> EmbedReport:
    """Embed every sample with an image that this model has not embedded yet, on ``engine`` (local by default;
    on Ray the workers build the model from ``backend``/``model``/``pretrained``, so ``embedder`` and ``limit``
    are local only)."""
    import pandas as pd

    from audit.store import Store, parts
    from audit.store.store import failed_run_guard

    engine = engine or LOCAL
    if engine.is_ray and (embedder is not None or limit is not None):
        raise ValueError("embed on Ray builds its model in every worker from backend/model/pretrained; "
                         "an embedder object or a limit is for --engine local")
    t_load = time.perf_counter()
    emb = embedder or make_embedder(backend, model, pretrained, precision=precision)
    load_s = time.perf_counter() - t_load
    if engine.is_ray and engine.num_gpus_per_worker and precision == "auto" and embedder is None:
        emb.autocast = True    # the workers run on CUDA, where auto means bf16 (the driver may have no GPU)
    with Store.reader(store_path) as rd:
        folder = rd.model_dir(emb.key)
        if engine.is_ray and not parts.is_parts_table(rd, "samples"):
            require_local(engine, "embed on a store of the older layout")
    settings = folder / "embedder.json"   # how the parts already written were computed
    if settings.exists() and any(folder.glob("part-*.parquet")):
        before = json.loads(settings.read_text())
        if bool(before.get("autocast_bf16")) != bool(emb.autocast):
            echo(f"resuming {emb.key} with the precision of its first run "
                 f"({'bf16 autocast' if before.get('autocast_bf16') else 'fp32'}), so every vector is computed alike")
            emb.autocast = bool(before.get("autocast_bf16"))
    params = {"backend": emb.backend, "arch": emb.arch, "pretrained": emb.pretrained,
              "digest": getattr(emb, "digest", None), "batch_size": batch_size, "autocast_bf16": emb.autocast,
              "revision": getattr(emb, "revision", None)}
    with Store.writer(store_path) as st:
        run_id = st.start_run("embed", emb.key, params=params, model=emb.key, pretrained=emb.pretrained or "none",
                              random_weights=emb.random_weights)
    if emb.random_weights:
        echo(f"note: {emb.key} has RANDOM weights (seed {RANDOM_SEED}); results are labelled as such")
    t0 = time.perf_counter()  # the rate counts the embedding loop only, not loading the model
    with failed_run_guard(store_path, run_id):
        if engine.is_ray:
            tally, rejects = _embed_on_ray(store_path, emb, EmbedderSpec(backend, model, pretrained, emb.autocast),
                                           folder, run_id, batch_size, workers or 0, flush_rows, engine, echo)
        else:
            workers = min(2, os.cpu_count() or 1) if workers is None else workers
            tally, rejects = _embed_local(store_path, emb, folder, run_id, batch_size, workers, flush_rows, limit,
                                          progress)
    with Store.writer(store_path) as st, st.transaction():
        # one reject per sample and model, however often the embedding is retried
        st.replace_stage_rejects("embed", f"{emb.key}: ", pd.DataFrame(rejects))
        st.register_model(emb.key, dim=emb.dim, backend=emb.backend, arch=emb.arch, pretrained=emb.pretrained,
                          random_weights=emb.random_weights, run_id=run_id)
        st.end_run(run_id, rows_in=tally["todo"], rows_out=tally["embedded"], rows_rejected=len(rejects),
                   note=f"engine {engine.describe()}")
    rep = EmbedReport(emb.key, tally["embedded"], tally["done"], tally["failed"], tally["no_image"],
                      time.perf_counter() - t0, load_s, emb.random_weights, emb.autocast)
    for line in rep.lines():
        echo(line)
    return rep


WORK_ROWS = 50_000   # rows of the local work list read at once (each chunk through one DataLoader)


def _embed_local(store_path: str, emb: Embedder, folder: Path, run_id: int, batch_size: int, workers: int,
                 flush_rows: int, limit: int | None, progress: bool) -> tuple[dict, list[dict]]:
    """This machine: the work list streamed from one file of the samples joined with the uids the model's parts
    already hold (``streamed.joined_samples``, as on Ray: nothing of the pool is held here), each chunk of
    ``WORK_ROWS`` through a DataLoader of ``workers`` decoding processes, a part per flush."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from audit.store import Store
    from audit.store.streamed import joined_samples
    from audit.store.vectors import write_vectors

    files = [str(f) for f in sorted(folder.glob("part-*.parquet"))] if folder.exists() else []
    buf_u: list[str] = []
    buf_i: list[np.ndarray] = []
    buf_t: list[np.ndarray] = []
    rejects: list[dict] = []
    seq = 0
    embedded = 0

    def flush() -> None:
        nonlocal seq, buf_u, buf_i, buf_t
        if buf_u:
            _record_settings(folder, emb)
            write_vectors(_FolderStore(folder), emb.key, f"r{run_id:05d}-{seq:06d}", buf_u,
                          np.concatenate(buf_i), np.concatenate(buf_t))
            checkpoint("embed.part_written")
            seq += 1
            buf_u, buf_i, buf_t = [], [], []

    with Store.detached(store_path) as rd, joined_samples(rd, ["caption", "image_ref"], {}, run_id, WORK_ROWS,
                                                          {"done": (files, "uid")} if files else None) as (work,):
        no_image = n_done = n_todo = 0
        for b in pq.ParquetFile(work).iter_batches(batch_size=WORK_ROWS, columns=["image_ref", *(["done"] if files else [])]):
            has = b.column("image_ref").is_valid().to_numpy(zero_copy_only=False)
            done = b.column("done").is_valid().to_numpy(zero_copy_only=False) if files else np.zeros(len(has), bool)
            no_image, n_done, n_todo = no_image + int((~has).sum()), n_done + int(done.sum()), n_todo + int((has & ~done).sum())
        if limit is not None:
            n_todo = min(n_todo, limit)
        left = n_todo
        bar = tqdm(total=n_todo, desc=f"embed {emb.key}", unit="img", disable=not progress)
        try:
            for chunk in pq.ParquetFile(work).iter_batches(batch_size=WORK_ROWS):
                if left <= 0:
                    break
                todo = chunk.to_pandas()
                todo = todo[todo["image_ref"].notna() & (todo["done"].isna() if files else True)].iloc[:left]
                left -= len(todo)
                refs, uids, captions = todo["image_ref"].tolist(), todo["uid"].tolist(), todo["caption"].tolist()
                for pos, img, txt, bad in _encoded(emb, refs, captions, batch_size, workers):
                    rejects += [_reject(emb.key, refs[i], uids[i], err, run_id) for i, err in bad]
                    if img is not None:
                        buf_i.append(img)
                        buf_t.append(txt)
                        buf_u += [uids[i] for i in pos]
                        embedded += len(pos)
                    bar.update(len(pos) + len(bad))
                    if len(buf_u) >= flush_rows:
                        flush()
            flush()
        finally:
            bar.close()
    return {"todo": n_todo, "embedded": embedded, "done": n_done, "failed": len(rejects),
            "no_image": no_image}, rejects


def _record_settings(folder: Path, emb: Embedder) -> None:
    """embedder.json beside the model's first parts: the precision they were computed with (a resumed run keeps it)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "embedder.json"
    if not settings.exists():
        settings.write_text(json.dumps({"autocast_bf16": bool(emb.autocast), "key": emb.key}))


RAY_MIN_SLICES = 16


def _embed_on_ray(store_path: str, emb: Embedder, spec: EmbedderSpec, folder: Path, run_id: int, batch_size: int,
                  workers: int, flush_rows: int, engine: Engine, echo) -> tuple[dict, list[dict]]:
    """Ray Data: the samples in slices of --batch-rows rows (default: ``flush_rows``, fewer for small pools), joined with the uids the
    model's parts already hold; each slice embedded by ``_embed_slice`` on a worker into one part."""
    from dataclasses import replace

    from audit.engine import over_samples, plugin_rejects
    from audit.store import Store

    _record_settings(folder, emb)
    with Store.detached(store_path) as rd:
        # default: a part per flush_rows samples, but at least RAY_MIN_SLICES slices, so a small pool still
        # keeps every worker of a small cluster busy
        n = int(rd.count("samples"))
        engine = replace(engine, batch_rows=engine.batch_rows or min(flush_rows, max(32, -(-n // RAY_MIN_SLICES))))
        files = [str(f) for f in sorted(folder.glob("part-*.parquet"))]   # the model is registered at the end
        echo(f"embedding on {engine.describe()}: parts of at most {engine.batch_rows:,} samples, "
             f"{workers} decoding processes per worker")
        _, infos, _, raised = over_samples(engine, rd, _embed_slice,
                                           (spec, emb.key, str(folder), run_id, batch_size, workers),
                                           columns=["caption", "image_ref"], table="embeddings", run_id=run_id,
                                           staged={"done": (files, "uid")} if files else None)
    tally = {k: sum(i[k] for i in infos) for k in ("todo", "embedded", "done", "no_image")}
    rejects = [r for i in infos for r in i["rejects"]]
    tally["failed"] = len(rejects)
    if raised:   # rows the model itself failed on (not a decode error): plugin rejects, the job goes on
        rejects += plugin_rejects("embed", emb.key, raised, run_id).to_dict("records")
        tally["failed"] += len(raised)
        tally["todo"] += len(raised)
    return tally, rejects


class _FolderStore:
    """Adapter so write_vectors can write into a model folder without holding the store open."""

    def __init__(self, folder: Path):
        self.folder = folder

    def model_dir(self, model: str) -> Path:
        return self.folder
