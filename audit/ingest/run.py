"""Ingest: turn a source into `samples` rows, and every row that cannot be used into a `rejects` row.

Formats: ``folder`` (images + captions CSV/JSONL), ``webdataset`` (img2dataset tars), ``parquet``
(url, text), ``datacomp`` (CommonPool parquet + paired npz; methods.md §1.2).

Invariant, per input file: rows read = rows accepted + rows rejected. An input file already ingested
(same path and fingerprint) is skipped, so ingesting the same input twice adds nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from audit.store import Store
from audit.store.vectors import l2_normalise, write_vectors
from audit.ingest.accounting import Batch, FORMATS, IngestReport, domains_of, fingerprint
from audit.ingest.datacomp import fill_datacomp
from audit.ingest.folder import fill_folder
from audit.ingest.parquet import fill_parquet
from audit.ingest.webdataset import fill_webdataset


VECTOR_CHUNK = 50_000


FILLERS: dict[str, Callable] = {"folder": fill_folder, "webdataset": fill_webdataset,
                                "parquet": fill_parquet, "datacomp": fill_datacomp}


def expand_inputs(fmt: str, paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if fmt == "folder":
            out.append(p)
        elif p.is_dir():
            pattern = {"webdataset": "*.tar", "parquet": "*.parquet", "datacomp": "*.parquet"}[fmt]
            out += sorted(p.glob(pattern))
        else:
            out.append(p)
    return out



def ingest(fmt: str, paths: Iterable[str], *, store_path: str, source: str | None = None,
           simulated: bool = False, progress: bool = True, echo: Callable[[str], None] = print) -> IngestReport:
    """Ingest every input file; one short write transaction per file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    inputs = expand_inputs(fmt, paths)
    if not inputs:
        raise FileNotFoundError(f"no {fmt} inputs found in {', '.join(map(str, paths))}")
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
    total = IngestReport()
    params = {"format": fmt, "inputs": [str(p.resolve()) for p in inputs], "source": source}
    from tqdm import tqdm

    bar = tqdm(inputs, desc=f"ingest {fmt}", unit="file", disable=not progress)
    with Store.writer(store_path) as st:
        run_id = st.start_run("ingest", fmt, params=params)
    for p in bar:
        src = source or (p.name if fmt == "folder" else p.parent.name or p.stem)
        fp_paths = [p] + ([p.with_suffix(".npz")] if fmt == "datacomp" else [])
        fp = fingerprint(*fp_paths) if p.is_file() else fingerprint(*sorted(x for x in p.iterdir() if x.is_file()))
        with Store.writer(store_path) as st:
            done = st.input_done(str(p.resolve()), fp)
        if done:
            total.skipped_inputs.append(str(p))
            continue
        total.add(_ingest_one(fmt, p, fp, src, store_path, run_id, simulated))
    with Store.writer(store_path) as st:
        st.end_run(run_id, rows_in=total.rows_in, rows_out=total.accepted,
                   rows_rejected=sum(total.rejected.values()))
    for line in total.lines():
        echo(line)
    return total


def _ingest_one(fmt: str, path: Path, fp: str, source: str, store_path: str, run_id: int,
                simulated: bool) -> IngestReport:
    batch = Batch(source, fmt)
    vectors = FILLERS[fmt](batch, path) or {}
    rep = IngestReport()
    with Store.writer(store_path) as st:
        # duplicate uids: repeated inside this input, or already in the store
        cols = ["uid", "caption", "url", "width", "height", "image_ref", "sha256", "_row"]
        parts = [pd.DataFrame(batch.rows, columns=cols)] + [f[cols] for f in batch.frames]
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
        frame["width"] = pd.array(frame["width"], dtype="Int64")
        frame["height"] = pd.array(frame["height"], dtype="Int64")
        if vectors:
            part = f"{run_id:05d}-{fp[:12]}"
            for model, (_, img, txt) in vectors.items():
                # align: vectors rows are parquet rows; keep the accepted ones in frame order
                pos = rows_idx.astype(np.int64)
                for start in range(0, len(pos), VECTOR_CHUNK):
                    sel = pos[start:start + VECTOR_CHUNK]
                    write_vectors(st, model, f"{part}-{start // VECTOR_CHUNK:04d}",
                                  frame["uid"].iloc[start:start + VECTOR_CHUNK].tolist(),
                                  l2_normalise(img[sel]), l2_normalise(txt[sel]))
                st.register_model(model, dim=img.shape[1], backend="datacomp-npz", arch=model,
                                  pretrained="openai" if model.endswith(("b32", "l14")) else None,
                                  random_weights=False, run_id=run_id)
            for name, values in batch.scores.items():
                st.append_scores(name, frame["uid"].tolist(), values[rows_idx.astype(np.int64)], run_id=run_id,
                                 kind="datacomp", model=f"datacomp_{name.split('_')[1]}", simulated=simulated,
                                 description="CLIP similarity from the DataComp parquet (OpenAI CLIP)")
        st.add_samples(frame.drop(columns=["_row"]))
        rej = pd.DataFrame(batch.rejects)
        if not rej.empty:
            rej["run_id"] = run_id
        st.add_rejects(rej)
        rows_in = len(frame) + len(batch.rejects)
        st.record_input(str(path.resolve()), fp, fmt, source, rows_in, len(frame), len(batch.rejects), run_id)
    rep.accepted = len(frame)
    rep.rows_in = rows_in
    rep.rejected.update(r["reason"] for r in batch.rejects)
    return rep
