"""Ingest: turn a source into `samples` rows, and every row that cannot be used into a `rejects` row.

Formats: ``folder`` (images + captions CSV/JSONL), ``webdataset`` (img2dataset tars), ``parquet``
(url, text), ``datacomp`` (CommonPool parquet + paired npz; methods.md §1.2).

Invariant, per input file: rows read = rows accepted + rows rejected. An input file already ingested
(same path and fingerprint) is skipped, so ingesting the same input twice adds nothing.
"""
from __future__ import annotations

import re
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from audit import images
from audit.killpoints import checkpoint
from audit.store import Store
from audit.store.vectors import l2_normalise, normalised_half, write_vectors
from audit.ingest.accounting import Batch, FORMATS, IngestReport, domains_of, fingerprint
from audit.ingest.datacomp import fill_datacomp, release_pages
from audit.ingest.folder import fill_folder
from audit.ingest.parquet import fill_parquet
from audit.ingest.webdataset import fill_webdataset


VECTOR_CHUNK = 50_000


FILLERS: dict[str, Callable] = {"folder": fill_folder, "webdataset": fill_webdataset,
                                "parquet": fill_parquet, "datacomp": fill_datacomp}


SHARD_PATTERNS = {"webdataset": ("*.tar", "*.tar.gz", "*.tgz"), "parquet": ("*.parquet",), "datacomp": ("*.parquet",)}
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset and the shell do it: ``{00000..00009}`` (zero-padded ranges) and ``{a,b}``."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = _RANGE.match(body)
    if r:
        lo, hi, width = int(r.group(1)), int(r.group(2)), len(r.group(1))
        step = 1 if hi >= lo else -1
        items = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand_braces(head + item + tail)]


def expand_inputs(fmt: str, paths: Iterable[str]) -> list[Path]:
    """Input files from paths as given (quoted brace patterns and globs included); folders of shards are
    listed. A remote URL is refused with a message naming it."""
    import glob

    out: list[Path] = []
    for given in paths:
        if re.match(r"^[a-z][a-z0-9+.-]*://", given):
            raise ValueError(f"remote inputs are not supported: {given} (copy or mount the files locally, then "
                             f"give the local path)")
        for spec in expand_braces(given):
            if any(ch in spec for ch in "*?["):
                hits = sorted(glob.glob(spec))
                if not hits:
                    raise FileNotFoundError(f"no input matches {spec}")
                candidates = [Path(h) for h in hits]
            else:
                candidates = [Path(spec)]
            for p in candidates:
                if fmt != "folder" and p.is_dir():
                    out += sorted({x for pat in SHARD_PATTERNS[fmt] for x in p.glob(pat)})
                else:
                    out.append(p)
    return out



def ingest(fmt: str, paths: Iterable[str], *, store_path: str, source: str | None = None,
           simulated: bool = False, progress: bool = True, echo: Callable[[str], None] = print,
           max_pixels: int = images.DEFAULT_MAX_PIXELS, vectors: bool = True) -> IngestReport:
    """Ingest every input file; one short write transaction per file. ``vectors=False`` (datacomp): the parquet's
    rows and similarity scores without the npz (no embeddings stored)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    inputs = expand_inputs(fmt, paths)
    if not inputs:
        raise FileNotFoundError(f"no {fmt} inputs found in {', '.join(map(str, paths))}")
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
    total = IngestReport()
    params = {"format": fmt, "inputs": [str(p.resolve()) for p in inputs], "source": source, "max_pixels": max_pixels}
    if not vectors:
        if fmt != "datacomp":
            raise ValueError("--no-vectors applies to the datacomp format (its npz files)")
        params["vectors"] = False
    from tqdm import tqdm

    bar = tqdm(total=len(inputs), desc=f"ingest {fmt}", unit="file", disable=not progress)
    with Store.writer(store_path) as st:
        run_id = st.start_run("ingest", fmt, params=params)

    def read(item: tuple[Path, str, str]) -> tuple[Batch, dict]:
        batch = Batch(item[2], fmt, max_pixels=max_pixels, vectors=vectors)
        return batch, FILLERS[fmt](batch, item[0]) or {}

    # One input is read ahead on a thread while the one before is written: parquet decoding, the norm check and
    # image decoding overlap the vector and sample writes (both release the GIL). Only the main thread writes.
    todo = _pending(fmt, inputs, store_path, source, total, bar)
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-read") as reader:
        item = next(todo, None)
        ahead = reader.submit(read, item) if item else None
        while ahead is not None:
            batch, vecs = ahead.result()
            path, fp, src = item
            item = next(todo, None)
            ahead = reader.submit(read, item) if item else None
            total.add(_ingest_one(batch, vecs, fmt, path, fp, src, store_path, run_id, simulated))
            bar.update(1)
    bar.close()
    with Store.writer(store_path) as st:
        st.end_run(run_id, rows_in=total.rows_in, rows_out=total.accepted,
                   rows_rejected=sum(total.rejected.values()))
    if total.accepted:
        from audit.store.columns import refresh

        refresh(store_path, samples=True, echo=echo if progress else None)   # pool-order columns (uids, scores)
    for line in total.lines():
        echo(line)
    return total


def _pending(fmt: str, inputs: list[Path], store_path: str, source: str | None, total: IngestReport,
             bar) -> Iterator[tuple[Path, str, str]]:
    """(path, fingerprint, source) of each input not ingested yet, in order, looked up only as the loop reaches
    it; an input already ingested (same path and bytes), or listed twice, is counted as skipped."""
    seen: set[tuple[str, str]] = set()
    for p in inputs:
        key = (str(p.resolve()), fingerprint(*_fingerprinted(fmt, p)))
        with Store.writer(store_path) as st:
            done = st.input_done(*key)
        if done or key in seen:
            total.skipped_inputs.append(str(p))
            bar.update(1)
            continue
        seen.add(key)
        yield p, key[1], source or (p.name if fmt == "folder" else p.parent.name or p.stem)


def _fingerprinted(fmt: str, p: Path) -> list[Path]:
    """The files whose bytes identify one input: the file and its companions (npz, img2dataset's parquet), or a
    folder's own regular files (symlinks are not followed)."""
    if p.is_dir():
        return sorted(x for x in p.iterdir() if x.is_file() and not x.is_symlink())
    if fmt == "datacomp":
        return [p, p.with_suffix(".npz")]
    if fmt == "webdataset":
        from audit.ingest.webdataset import companion_parquet

        return [p, companion_parquet(p)]
    return [p]


SAMPLE_FIELDS = ["uid", "caption", "url", "width", "height", "stored_width", "stored_height", "image_ref", "sha256",
                 "uid_given", "_row"]


def _ingest_one(batch: Batch, vectors: dict, fmt: str, path: Path, fp: str, source: str, store_path: str,
                run_id: int, simulated: bool) -> IngestReport:
    """Write one input file, read into ``batch`` (and its ``vectors``), in one transaction: a kill leaves the store
    as it was.

    Vector parts are written first, named by the input's content (``fp``), so a rerun rewrites the same files
    instead of adding copies. A model's first parts appear in the store when the transaction registers it; parts
    of a model already registered are read as soon as they are renamed into place (until the rerun, a kill can
    leave vectors whose samples were rolled back).
    """
    rep = IngestReport()
    checkpoint("ingest.read")
    with Store.writer(store_path) as st:
        # duplicate uids: repeated inside this input, or already in the store
        parts = [pd.DataFrame(batch.rows, columns=SAMPLE_FIELDS)] + [f.reindex(columns=SAMPLE_FIELDS)
                                                                    for f in batch.frames]
        frame = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
        existing = st.existing_uids(frame["uid"])
        in_store = frame["uid"].isin(existing).to_numpy()
        repeated = frame["uid"].duplicated().to_numpy() & ~in_store
        for i in np.flatnonzero(in_store | repeated):
            r = frame.iloc[i]
            where = "already in store" if in_store[i] else "repeated in this input"
            ref = r["image_ref"] if isinstance(r["image_ref"], str) else f"{path}#row={r['_row']}"
            batch.reject(ref, "duplicate_uid", f"uid {r['uid']} {where}", r["uid"])
        frame = frame[~(in_store | repeated)].reset_index(drop=True)
        frame["source"] = source
        frame["simulated"] = simulated
        frame["ingest_run"] = run_id
        frame["domain"], frame["tld"] = domains_of(frame["url"])
        rows_idx = frame["_row"].to_numpy()
        for col in ("width", "height", "stored_width", "stored_height"):
            frame[col] = pd.array(frame[col], dtype="Int64")
        uid_arr = pa.Array.from_pandas(frame["uid"].astype(object), type=pa.string())
        rej = pd.DataFrame(batch.rejects)
        if not rej.empty:
            rej["run_id"] = run_id
        rows_in = len(frame) + len(batch.rejects)
        # the vector parts are written on a thread while the transaction stages the samples and scores; it waits
        # for them before the samples count as written, so a kill before the commit still leaves no samples
        with ThreadPoolExecutor(1, thread_name_prefix="ingest-vectors") as writer, st.transaction():
            parts_done = writer.submit(_write_vector_parts, st, vectors, batch.norms, rows_idx, uid_arr, fp)
            for name, values in batch.scores.items():
                st.append_scores(name, uid_arr, values[rows_idx.astype(np.int64)], run_id=run_id,
                                 kind="datacomp", model=f"datacomp_{name.split('_')[1]}", simulated=simulated,
                                 description="CLIP similarity from the DataComp parquet (OpenAI CLIP)")
            st.add_samples(frame.drop(columns=["_row"]), run_id=run_id)
            parts_done.result()
            for model, (_, img, _txt) in vectors.items():   # after its parts: the view globs them
                st.register_model(model, dim=img.shape[1], backend="datacomp-npz", arch=model,
                                  pretrained=("simulated" if simulated else "openai")
                                  if model.endswith(("b32", "l14")) else None,
                                  random_weights=False, run_id=run_id, simulated=simulated)
            checkpoint("ingest.samples_written")
            # a uid accepted now (the input was fixed) leaves the rejects: never in both tables
            st.clear_ingest_rejects(frame["uid"])
            st.add_rejects(rej)
            st.record_input(str(path.resolve()), fp, fmt, source, rows_in, len(frame), len(batch.rejects), run_id)
            checkpoint("ingest.before_commit")
    rep.accepted = len(frame)
    rep.rows_in = rows_in
    rep.rejected.update(r["reason"] for r in batch.rejects)
    return rep


def _write_vector_parts(st: Store, vectors: dict, norms: dict, rows_idx: np.ndarray, uid_arr: pa.Array,
                        fp: str) -> None:
    """Each model's vectors of the accepted rows (``rows_idx``: their rows in the input, in frame order), unit
    length and float16, as parts of VECTOR_CHUNK rows named by the input's content. Touches only files."""
    if not vectors:   # inputs without vectors (webdataset, csv, ...) have no row numbers to cast (NaN)
        return
    pos = rows_idx.astype(np.int64)
    for model, (_, img, txt) in vectors.items():
        key = model.removeprefix("datacomp_")
        for start in range(0, len(pos), VECTOR_CHUNK):
            sel = pos[start:start + VECTOR_CHUNK]
            if f"{key}_img" in norms:   # norms computed once, at the check
                vi = normalised_half(img, sel, norms[f"{key}_img"])
                vt = normalised_half(txt, sel, norms[f"{key}_txt"])
            else:
                vi, vt = l2_normalise(img[sel]), l2_normalise(txt[sel])
            write_vectors(st, model, f"{fp[:20]}-{start // VECTOR_CHUNK:04d}", uid_arr[start:start + VECTOR_CHUNK],
                          vi, vt)
            checkpoint("ingest.vector_part")
        release_pages(img)
        release_pages(txt)
