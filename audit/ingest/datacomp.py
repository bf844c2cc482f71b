"""``datacomp``: CommonPool metadata parquet + the paired npz of OpenAI CLIP embeddings (methods.md §1.2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.ingest.accounting import INT32_MAX, Batch, caption_ok


DATACOMP_DIMS = {"b32": 512, "l14": 768}
DATACOMP_COLUMNS = ("uid", "url", "text", "original_width", "original_height")
SCORE_COLUMNS = ("clip_b32_similarity_score", "clip_l14_similarity_score")


def _bad_numbers(col: pd.Series, *, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN where absent, mask of rows holding something that is not a usable number)."""
    num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    present = col.notna().to_numpy(bool)
    bad = present & np.isnan(num)
    if whole:
        with np.errstate(invalid="ignore"):
            bad |= present & ~np.isnan(num) & ((num != np.round(num)) | (num < 0) | (num > INT32_MAX))
    return num, bad


def to_int(v) -> int | None:
    try:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None


def npz_arrays(path: Path, keys) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz. An uncompressed member (DataComp writes np.savez) is memory-mapped in
    place: no copy of the 1.3 GB a 250k-row shard holds, pages read once by the norm check. A compressed,
    object-typed or inconsistent member is read with np.load. Raises KeyError for a missing key."""
    import struct
    import zipfile

    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
    for key in keys:
        if key not in infos:
            raise KeyError(key)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for key in keys:
            info = infos[key]
            try:
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    raise ValueError("compressed or encrypted member")
                fh.seek(info.header_offset)
                local = fh.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError("bad local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                fh.seek(start)
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                offset = fh.tell()
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if dtype.hasobject or offset - start + nbytes != info.file_size or offset + nbytes > size:
                    raise ValueError("member does not match its header")
                out[key] = (np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                      order="F" if fortran else "C") if nbytes else np.empty(shape, dtype))
            except ValueError:
                with np.load(path) as npz:     # the general reader (its errors are the caller's corrupt_npz)
                    out[key] = npz[key]
    return out


def release_pages(x: np.ndarray) -> None:
    """Drop the pages of a memory-mapped npz member (npz_arrays) from this process's resident set once it has been
    read through: they stay in the page cache, and a later read maps them again. Without it every shard read counts
    its 1.3 GB towards the stage's peak RSS. Anything but a memmap is left alone."""
    import mmap

    mm = getattr(x, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


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

    def ref(i: int) -> str:
        return f"{path}#row={i}"

    # string columns as object arrays once: iterating pandas' Arrow-backed strings costs ~1 µs a value
    def objects(col: str) -> np.ndarray:
        return frame[col].to_numpy(dtype=object, na_value=None) if col in frame.columns else np.full(n, None, object)

    uid_raw = objects("uid")
    text_uid = np.fromiter((isinstance(u, str) for u in uid_raw), bool, n)
    uids = np.where(text_uid, uid_raw, None)

    def reject_all(reason: str, detail: str) -> dict:
        for i, uid in enumerate(uids):
            batch.reject(ref(i), reason, detail, uid)
        return {}

    missing = [c for c in DATACOMP_COLUMNS if c not in frame.columns]
    if missing:
        return reject_all("missing_column", f"parquet lacks column(s) {', '.join(missing)}")
    npz_path = path.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    if not batch.vectors:
        pass
    elif not npz_path.exists():
        return reject_all("missing_npz", f"no {npz_path.name} beside the parquet (or ingest with --no-vectors)")
    else:
        try:
            arrays = npz_arrays(npz_path, ("b32_img", "b32_txt", "l14_img", "l14_txt"))
        except KeyError as exc:
            return reject_all("missing_npz_key", f"{npz_path.name} has no array {exc.args[0]}")
        except Exception as exc:
            return reject_all("corrupt_npz", f"cannot read {npz_path.name}: {exc}")
    for key, arr in arrays.items():
        dim = DATACOMP_DIMS[key[:3]]
        if arr.ndim != 2 or arr.shape[0] != n:
            return reject_all("npz_length_mismatch",
                              f"{key} has shape {arr.shape}, parquet has {n} rows")
        if arr.shape[1] != dim:
            return reject_all("wrong_dimension", f"{key} has dimension {arr.shape[1]}, expected {dim}")
    from audit.store.vectors import row_norms

    bad = np.zeros(n, dtype=bool)
    for key, arr in arrays.items():
        norms = row_norms(arr)
        release_pages(arr)
        batch.norms[key] = norms   # ingest normalises with these (computed once)
        bad |= ~np.isfinite(norms) | (norms == 0)
    text = objects("text")
    given = np.fromiter((u is not None and str(u) != "" for u in uid_raw), bool, n)
    not_text = given & ~text_uid
    no_uid = ~not_text & ~np.fromiter((isinstance(u, str) and u not in ("", "None") for u in uids), bool, n)
    blank = ~np.fromiter(map(caption_ok, text), bool, n)
    width, bad_w = _bad_numbers(frame["original_width"], whole=True)
    height, bad_h = _bad_numbers(frame["original_height"], whole=True)
    scores, bad_s = {}, np.zeros(n, bool)
    for col in SCORE_COLUMNS:
        if col in frame.columns:
            scores[col], b = _bad_numbers(frame[col], whole=False)
            bad_s |= b
    bad_value = bad_w | bad_h | bad_s
    prior = np.zeros(n, bool)
    for reason, mask, detail in (("bad_uid", not_text, "uid must be text"),
                                 ("missing_uid", no_uid, "row has no uid"),
                                 ("empty_caption", blank, "caption is missing or blank"),
                                 ("bad_value", bad_value, "original_width/height or a similarity score is not a "
                                                          f"usable number (sizes: whole, 0..{INT32_MAX})"),
                                 ("nan_embedding", bad, "a vector has NaN/inf values or zero norm")):
        mask = mask & ~prior
        prior |= mask
        for i in np.flatnonzero(mask):
            uid_i = uids[i]
            batch.reject(ref(i), reason, detail if reason != "bad_uid" else
                         f"uid must be text, got {type(uid_raw[i]).__name__} {uid_raw[i]!r}"[:200],
                         None if reason in ("missing_uid", "bad_uid") else uid_i)
    ok = ~prior
    keep_idx = np.flatnonzero(ok)
    accepted = pd.DataFrame({
        "uid": uids[ok], "caption": text[ok], "url": objects("url")[ok],
        "width": pd.array(np.where(np.isnan(width), np.nan, width)[ok], dtype="Int64"),
        "height": pd.array(np.where(np.isnan(height), np.nan, height)[ok], dtype="Int64"),
        "image_ref": None, "sha256": objects("sha256")[ok] if "sha256" in frame.columns else None,
        "uid_given": True, "_row": keep_idx})
    batch.frames.append(accepted)   # captions exactly as given: DataComp's rules measure the raw text
    idx = keep_idx
    batch.scores = scores
    if not arrays:
        return {}
    return {f"datacomp_{m}": (idx, arrays[f"{m}_img"], arrays[f"{m}_txt"]) for m in ("b32", "l14")}
