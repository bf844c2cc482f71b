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


def domains_of(urls: Iterable) -> tuple[list, list]:
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


def caption_ok(text) -> bool:
    return isinstance(text, str) and text.strip() != ""


def image_row(batch: Batch, ref: str, data: bytes | None, caption, uid: str, url: str | None,
               err: str | None = None) -> None:
    if err:
        batch.reject(ref, "missing_image", err, uid)
        return
    try:
        im = images.decode(data)
    except images.ImageError as exc:
        batch.reject(ref, "corrupt_image", str(exc), uid)
        return
    if not caption_ok(caption):
        batch.reject(ref, "empty_caption", "caption is missing or blank", uid)
        return
    batch.accept({"uid": uid, "caption": str(caption).strip(), "url": url or None, "width": im.width,
                  "height": im.height, "image_ref": ref, "sha256": hashlib.sha256(data).hexdigest()})
