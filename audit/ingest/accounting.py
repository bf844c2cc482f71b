"""The shared accounting of every ingest format: a Batch of accepted rows and rejects per input file.

Invariant, per input file: rows read = rows accepted + rows rejected.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from audit import images


FORMATS = ("folder", "webdataset", "parquet", "datacomp")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
INT32_MAX = 2**31 - 1

# Every reason an ingest reject can carry (README lists them; a test checks each reason used is here).
REASONS = {
    "bad_caption_record": "a captions-file row that cannot be parsed (bad JSON, unterminated quote, wrong field count)",
    "bad_encoding": "text that is not UTF-8 (a captions-file line, a .txt caption)",
    "bad_metadata": "a webdataset .json member that is not a JSON object",
    "bad_uid": "a uid that is not text (e.g. a number)",
    "bad_value": "a width, height or score that is not a number, or out of range",
    "broken_tar": "a shard that is not a readable tar",
    "corrupt_image": "image bytes that do not decode",
    "corrupt_npz": "an npz that cannot be read",
    "corrupt_parquet": "a parquet file that cannot be read",
    "download_failed": "img2dataset could not download the sample (its status and error message are kept)",
    "duplicate_key": "a second tar member with the same key and extension",
    "duplicate_uid": "a uid repeated in the input or already in the store",
    "empty_caption": "no caption, or only whitespace",
    "missing_column": "a required parquet column is absent (each row is rejected)",
    "missing_file_field": "a captions-file row without a file name",
    "missing_image": "the referenced image is not there",
    "missing_npz": "no npz beside a DataComp parquet (each row is rejected)",
    "missing_npz_key": "an npz without one of the four embedding arrays",
    "missing_uid": "a DataComp row without a uid",
    "missing_url": "a metadata row without a url",
    "nan_embedding": "a vector with NaN/inf values or zero norm",
    "not_a_file": "a referenced path that is a device, fifo or folder (never read)",
    "npz_length_mismatch": "npz arrays whose length differs from the parquet's rows",
    "outside_root": "a path (../, absolute, or a symlink) leading outside the input folder (never read)",
    "too_large": "an image above the pixel cap (--max-pixels) or the byte cap, refused before decoding",
    "truncated_tar": "a tar member, or the rest of a tar, cut short",
    "wrong_dimension": "npz vectors of another dimension than the model's",
}


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

    def __init__(self, source: str, fmt: str, *, max_pixels: int = images.DEFAULT_MAX_PIXELS, vectors: bool = True):
        self.source, self.fmt, self.max_pixels = source, fmt, max_pixels
        self.vectors = vectors   # datacomp: False reads the parquet alone (no npz needed, no vectors stored)
        self.rows: list[dict] = []
        self.frames: list[pd.DataFrame] = []   # accepted rows built column-wise (datacomp)
        self.rejects: list[dict] = []
        self.scores: dict[str, np.ndarray] = {}
        self.norms: dict[str, np.ndarray] = {}   # datacomp: row norms of each npz array ("b32_img" ...)

    def reject(self, ref: str, reason: str, detail: str = "", uid: str | None = None, *, url: str | None = None,
               caption: str | None = None) -> None:
        assert reason in REASONS, reason
        self.rejects.append({"source_ref": ref, "stage": "ingest", "reason": reason, "detail": detail,
                             "source": self.source, "uid": uid, "url": url, "caption": caption})

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


def domains_of(urls: Iterable) -> tuple[list, list]:
    """(domains, tlds) of each url: domain_of once per host (the text between a url's second and third slash), or
    once per distinct value for text that is not a url. Give an object array or a list: iterating pandas'
    Arrow-backed strings costs more than the lookups."""
    by_host: dict = {}
    by_value: dict = {}   # apart from the hosts: "" must not take the domain of a url whose host is ""
    doms, tlds = [], []
    for u in urls.to_numpy(dtype=object, na_value=None) if isinstance(urls, pd.Series) else urls:
        if isinstance(u, str) and "://" in u:
            cache, key = by_host, u.split("/", 3)[2]
        else:
            cache, key = by_value, u
        if key not in cache:
            cache[key] = domain_of(u)
        d, t = cache[key]
        doms.append(d)
        tlds.append(t)
    return doms, tlds


def fingerprint(*paths: str | Path) -> str:
    """Stable identity of input files from their bytes alone (never timestamps: a copy of the same bytes gets the
    same fingerprint, so vector parts, and every seeded sampler reading them, come out the same): the size, and
    the whole content up to 4 MiB, else 64 blocks of 64 KiB spread evenly from the first byte to the last."""
    block, blocks = 65536, 64
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        if not p.exists():
            h.update(b"missing")
            continue
        size = p.stat().st_size
        h.update(f"{size}:".encode())
        with open(p, "rb") as fh:
            if size <= block * blocks:
                h.update(fh.read())
                continue
            for i in range(blocks):
                fh.seek((size - block) * i // (blocks - 1))
                h.update(fh.read(block))
    return h.hexdigest()[:32]


def make_uid(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def caption_ok(text) -> bool:
    """A caption is usable when it is text with something besides whitespace. It is stored exactly as given
    (DataComp's rules measure the raw text); the dashboard strips it for display."""
    return isinstance(text, str) and text.strip() != ""


def image_row(batch: Batch, ref: str, data: bytes | None, caption, uid: str, url: str | None,
              err: str | None = None, *, original: tuple | None = None, uid_given: bool = True) -> None:
    """Decode (under the batch's pixel cap) and accept one image sample, or reject it with the reason.

    ``original``: (width, height) of the source image when the producer resized it (img2dataset's
    original_width/height); the decoded size is kept as stored_width/stored_height. ``uid_given``: False when
    the uid was made up here (no uid in the input), which a DataComp subset file cannot select.
    """
    if err:
        batch.reject(ref, "missing_image", err, uid)
        return
    try:
        im = images.decode(data, batch.max_pixels)
    except images.ImageError as exc:
        batch.reject(ref, exc.reason, str(exc), uid)
        return
    if not caption_ok(caption):
        batch.reject(ref, "empty_caption", "caption is missing or blank", uid)
        return
    width, height = im.width, im.height
    if original is not None:
        (w, e1), (h, e2) = dimension(original[0]), dimension(original[1])
        if e1 or e2:
            batch.reject(ref, "bad_value", e1 or e2, uid)
            return
        width, height = (w if w is not None else width), (h if h is not None else height)
    batch.accept({"uid": uid, "caption": caption, "url": url or None, "width": width, "height": height,
                  "stored_width": im.width, "stored_height": im.height, "image_ref": ref,
                  "sha256": hashlib.sha256(data).hexdigest(), "uid_given": uid_given})


def uid_of(value, fallback: str) -> tuple[str | None, str | None, bool]:
    """(uid, error, given): the given uid when it is text, the generated ``fallback`` when none is given (given
    False: a DataComp subset cannot select it), an error when a uid of another type is given (a number would
    silently become another sample's id)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return fallback, None, False
    if isinstance(value, str):
        return value, None, True
    return None, f"uid must be text, got {type(value).__name__} {value!r}"[:200], False


def dimension(value) -> tuple[int | None, str | None]:
    """(pixels, error) of a width or height: None when absent; an error when not a whole number in
    [0, 2^31 − 1] (DuckDB's INTEGER)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None, None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None, f"width/height {value!r} is not a number"[:200]
    if not np.isfinite(f) or f != int(f) or not 0 <= f <= INT32_MAX:
        return None, f"width/height {value!r} is not a whole number in [0, {INT32_MAX}]"[:200]
    return int(f), None
