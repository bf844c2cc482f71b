"""Ingest: turn a source into `samples` rows, and every row that cannot be used into a `rejects` row.

Formats: ``folder`` (images + captions CSV/JSONL), ``webdataset`` (img2dataset tars), ``parquet``
(url, text), ``datacomp`` (CommonPool parquet + paired npz; methods.md §1.2).

Invariant, per input file: rows read = rows accepted + rows rejected. An input file already ingested
(same path and fingerprint) is skipped, so ingesting the same input twice adds nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from audit import images
from audit.store import Store

FORMATS = ("folder", "webdataset", "parquet", "datacomp")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
DATACOMP_DIMS = {"b32": 512, "l14": 768}
DATACOMP_COLUMNS = ("uid", "url", "text", "original_width", "original_height")
VECTOR_CHUNK = 50_000


@dataclass
class IngestReport:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    skipped_inputs: list[str] = field(default_factory=list)
    rows_in: int = 0

    def add(self, other: "IngestReport") -> None:
        self.accepted += other.accepted
        self.rejected.update(other.rejected)
        self.skipped_inputs += other.skipped_inputs
        self.rows_in += other.rows_in

    def lines(self) -> list[str]:
        out = [f"accepted: {self.accepted}", f"rejected: {sum(self.rejected.values())}"]
        out += [f"  {reason}: {n}" for reason, n in sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0]))]
        out += [f"skipped (already ingested): {p}" for p in self.skipped_inputs]
        return out


class Batch:
    """Accepted rows and rejects of one input file, checked for duplicate uids before writing."""

    def __init__(self, source: str, fmt: str):
        self.source, self.fmt = source, fmt
        self.rows: list[dict] = []
        self.frames: list[pd.DataFrame] = []   # accepted rows built column-wise (datacomp)
        self.rejects: list[dict] = []
        self.scores: dict[str, np.ndarray] = {}

    def reject(self, ref: str, reason: str, detail: str = "", uid: str | None = None) -> None:
        self.rejects.append({"source_ref": ref, "stage": "ingest", "reason": reason, "detail": detail,
                             "source": self.source, "uid": uid})

    def accept(self, row: dict) -> None:
        self.rows.append(row)


# ---------------------------------------------------------------------------------------------
# helpers

_tld = None


def domain_of(url: str | None) -> tuple[str | None, str | None]:
    """(registered domain, public suffix) from the bundled Public Suffix List; never fetches."""
    global _tld
    if not url or not isinstance(url, str):
        return None, None
    if _tld is None:
        import tldextract

        _tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    r = _tld(url)
    if not r.suffix:
        return (r.domain or None), None
    return f"{r.domain}.{r.suffix}" if r.domain else r.suffix, r.suffix


def _domains(urls: Iterable) -> tuple[list, list]:
    cache: dict = {}
    doms, tlds = [], []
    for u in urls:
        host = u.split("/")[2] if isinstance(u, str) and "://" in u else u
        if host not in cache:
            cache[host] = domain_of(u)
        d, t = cache[host]
        doms.append(d)
        tlds.append(t)
    return doms, tlds


def fingerprint(*paths: str | Path) -> str:
    """Cheap, stable identity of input files: size, mtime and the first and last 64 KiB."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        if not p.exists():
            h.update(b"missing")
            continue
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        with open(p, "rb") as fh:
            h.update(fh.read(65536))
            if st.st_size > 65536:
                fh.seek(max(0, st.st_size - 65536))
                h.update(fh.read())
    return h.hexdigest()[:32]


def make_uid(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _caption_ok(text) -> bool:
    return isinstance(text, str) and text.strip() != ""


# ---------------------------------------------------------------------------------------------
# readers: each yields (input_path, fingerprint, fill(batch) -> vectors or None)

def _read_captions_file(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append({"_bad_json": f"line {i + 1}: {exc.msg}"})
    return pd.DataFrame(rows)


def _find_captions(folder: Path) -> Path:
    for name in ("captions.csv", "captions.jsonl"):
        if (folder / name).exists():
            return folder / name
    found = sorted(list(folder.glob("*.csv")) + list(folder.glob("*.jsonl")))
    if not found:
        raise FileNotFoundError(f"no captions file (captions.csv or captions.jsonl) in {folder}")
    return found[0]


def _image_row(batch: Batch, ref: str, data: bytes | None, caption, uid: str, url: str | None,
               err: str | None = None) -> None:
    if err:
        batch.reject(ref, "missing_image", err, uid)
        return
    try:
        im = images.decode(data)
    except images.ImageError as exc:
        batch.reject(ref, "corrupt_image", str(exc), uid)
        return
    if not _caption_ok(caption):
        batch.reject(ref, "empty_caption", "caption is missing or blank", uid)
        return
    batch.accept({"uid": uid, "caption": str(caption).strip(), "url": url or None, "width": im.width,
                  "height": im.height, "image_ref": ref, "sha256": hashlib.sha256(data).hexdigest()})


def fill_folder(batch: Batch, path: Path) -> None:
    folder = path if path.is_dir() else path.parent
    cap_file = _find_captions(folder) if path.is_dir() else path
    table = _read_captions_file(cap_file)
    for i, rec in enumerate(table.to_dict("records")):
        ref0 = f"{cap_file}#row={i}"
        if rec.get("_bad_json") and not isinstance(rec.get("file"), str):
            batch.reject(ref0, "bad_caption_record", str(rec["_bad_json"]))
            continue
        fname = rec.get("file")
        if not isinstance(fname, str) or not fname.strip():
            batch.reject(ref0, "missing_file_field", "row has no 'file' value")
            continue
        img_path = (folder / fname).resolve()
        caption = rec.get("caption")
        uid = rec.get("uid") if isinstance(rec.get("uid"), str) and rec.get("uid") else make_uid(
            batch.source, fname, str(caption))
        url = rec.get("url") if isinstance(rec.get("url"), str) else None
        if not img_path.exists():
            _image_row(batch, str(img_path), None, caption, uid, url, err=f"file not found: {fname}")
            continue
        _image_row(batch, str(img_path), img_path.read_bytes(), caption, uid, url)


def fill_webdataset(batch: Batch, path: Path) -> None:
    """Group tar members by key; a truncated or unreadable tail becomes rejects, not an abort."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    error = None
    with open(path, "rb") as raw:
        try:
            tf = tarfile.open(fileobj=raw, mode="r:")
        except tarfile.TarError as exc:
            batch.reject(str(path), "broken_tar", f"not a readable tar: {exc}")
            return
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                error = f"tar stops being readable after {len(order)} keys: {exc}"
                break
            if info is None:
                break
            if not info.isfile():
                continue
            key, _, ext = info.name.rpartition(".")
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext.lower()] = info
        size = path.stat().st_size
        for key in order:
            members = groups[key]
            ref = images.tar_ref(path, key)
            meta: dict = {}
            if "json" in members:
                try:
                    meta = json.loads(_member_bytes(raw, members["json"], size))
                except (ValueError, _Truncated):
                    meta = {}
            caption = None
            if "txt" in members:
                try:
                    caption = _member_bytes(raw, members["txt"], size).decode("utf-8", "replace")
                except _Truncated:
                    caption = None
            uid = str(meta.get("uid") or make_uid(batch.source, path.name, key))
            img_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
            if img_ext is None:
                batch.reject(ref, "missing_image", f"key {key} has no image member", uid)
                continue
            info = members[img_ext]
            try:
                data = _member_bytes(raw, info, size)
            except _Truncated:
                batch.reject(ref, "truncated_tar", f"member {info.name} is cut short", uid)
                continue
            _image_row(batch, images.tar_ref(path, info.name), data, caption, uid, meta.get("url"))
    if error:
        batch.reject(f"{path}#tail", "truncated_tar", error)


class _Truncated(Exception):
    pass


def _member_bytes(fh, info: tarfile.TarInfo, file_size: int) -> bytes:
    if info.offset_data + info.size > file_size:
        raise _Truncated(info.name)
    fh.seek(info.offset_data)
    return fh.read(info.size)


def fill_parquet(batch: Batch, path: Path) -> None:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many kinds
        batch.reject(str(path), "corrupt_parquet", f"cannot read parquet: {exc}")
        return
    missing = [c for c in ("url", "text") if c not in frame.columns]
    for i, rec in enumerate(frame.to_dict("records")):
        ref = f"{path}#row={i}"
        if missing:
            batch.reject(ref, "missing_column", f"parquet lacks column(s) {', '.join(missing)}")
            continue
        text, url = rec.get("text"), rec.get("url")
        uid = rec.get("uid") if isinstance(rec.get("uid"), str) and rec.get("uid") else make_uid(str(url), str(text))
        if not _caption_ok(text):
            batch.reject(ref, "empty_caption", "caption is missing or blank", uid)
            continue
        if not isinstance(url, str) or not url.strip():
            batch.reject(ref, "missing_url", "row has no url", uid)
            continue
        batch.accept({"uid": uid, "caption": text.strip(), "url": url, "width": _int(rec.get("width")),
                      "height": _int(rec.get("height")), "image_ref": None, "sha256": rec.get("sha256")})


def _int(v) -> int | None:
    try:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None


def fill_datacomp(batch: Batch, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows from the parquet, vectors from the paired npz. Returns {model: (row_index, img, txt)}.

    Per-row rejects: empty caption, duplicate uid (later), NaN/inf/zero-norm vector. Whole-file rejects
    (each row gets one): missing or unreadable npz, npz length ≠ parquet rows, wrong vector dimension.
    """
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        batch.reject(str(path), "corrupt_parquet", f"cannot read parquet: {exc}")
        return {}
    n = len(frame)
    refs = [f"{path}#row={i}" for i in range(n)]
    uids = frame["uid"].astype(str).tolist() if "uid" in frame.columns else [None] * n

    def reject_all(reason: str, detail: str) -> dict:
        for ref, uid in zip(refs, uids):
            batch.reject(ref, reason, detail, uid)
        return {}

    missing = [c for c in DATACOMP_COLUMNS if c not in frame.columns]
    if missing:
        return reject_all("missing_column", f"parquet lacks column(s) {', '.join(missing)}")
    npz_path = path.with_suffix(".npz")
    if not npz_path.exists():
        return reject_all("missing_npz", f"no {npz_path.name} beside the parquet")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(npz_path) as npz:
            for key in ("b32_img", "b32_txt", "l14_img", "l14_txt"):
                if key not in npz.files:
                    return reject_all("missing_npz_key", f"{npz_path.name} has no array {key}")
                arrays[key] = npz[key]
    except Exception as exc:
        return reject_all("corrupt_npz", f"cannot read {npz_path.name}: {exc}")
    for key, arr in arrays.items():
        dim = DATACOMP_DIMS[key[:3]]
        if arr.ndim != 2 or arr.shape[0] != n:
            return reject_all("npz_length_mismatch",
                              f"{key} has shape {arr.shape}, parquet has {n} rows")
        if arr.shape[1] != dim:
            return reject_all("wrong_dimension", f"{key} has dimension {arr.shape[1]}, expected {dim}")
    bad = np.zeros(n, dtype=bool)
    for arr in arrays.values():
        a = arr.astype(np.float32, copy=False)
        norms = np.linalg.norm(a, axis=1)
        bad |= ~np.isfinite(norms) | (norms == 0)
    text = frame["text"]
    uid_s = pd.Series(uids, dtype=object)
    no_uid = ~uid_s.map(lambda u: isinstance(u, str) and u not in ("", "None")).to_numpy(bool)
    blank = ~text.map(_caption_ok).to_numpy(bool)
    for reason, mask, detail in (("missing_uid", no_uid, "row has no uid"),
                                 ("empty_caption", ~no_uid & blank, "caption is missing or blank"),
                                 ("nan_embedding", ~no_uid & ~blank & bad, "a vector has NaN/inf values or zero norm")):
        for i in np.flatnonzero(mask):
            batch.reject(refs[i], reason, detail, None if reason == "missing_uid" else uids[i])
    ok = ~(no_uid | blank | bad)
    keep_idx = np.flatnonzero(ok)
    accepted = pd.DataFrame({
        "uid": uid_s.to_numpy()[ok], "caption": text.to_numpy()[ok], "url": frame["url"].to_numpy()[ok],
        "width": pd.array(frame["original_width"].to_numpy()[ok], dtype="Int64"),
        "height": pd.array(frame["original_height"].to_numpy()[ok], dtype="Int64"),
        "image_ref": None, "sha256": frame["sha256"].to_numpy()[ok] if "sha256" in frame.columns else None,
        "_row": keep_idx})
    accepted["caption"] = accepted["caption"].str.strip()
    batch.frames.append(accepted)
    idx = keep_idx
    scores = {}
    for col in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
        if col in frame.columns:
            scores[col] = frame[col].to_numpy(np.float64)
    batch.scores = scores
    return {f"datacomp_{m}": (idx, arrays[f"{m}_img"], arrays[f"{m}_txt"]) for m in ("b32", "l14")}


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


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_vectors(store: Store, model: str, name: str, uids: list[str], img: np.ndarray, txt: np.ndarray) -> Path:
    """Write one float16 Parquet part atomically (tmp file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = store.model_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    d = img.shape[1]

    def col(x: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, dtype=np.float16).ravel()), d)

    table = pa.table({"uid": pa.array(uids, type=pa.string()), "img": col(img), "txt": col(txt)})
    dest = folder / f"part-{name}.parquet"
    tmp = folder / f".tmp-{name}.parquet"
    # float16 vectors barely compress; dictionary pages and statistics triple the write time
    pq.write_table(table, tmp, compression="none", use_dictionary=["uid"], write_statistics=["uid"])
    os.replace(tmp, dest)
    return dest


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
        frame["domain"], frame["tld"] = _domains(frame["url"])
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
