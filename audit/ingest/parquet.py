"""``parquet``: url + text rows (metadata only; no images).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from audit.ingest.accounting import Batch, caption_ok, make_uid
from audit.ingest.datacomp import to_int


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
        if not caption_ok(text):
            batch.reject(ref, "empty_caption", "caption is missing or blank", uid)
            continue
        if not isinstance(url, str) or not url.strip():
            batch.reject(ref, "missing_url", "row has no url", uid)
            continue
        batch.accept({"uid": uid, "caption": text.strip(), "url": url, "width": to_int(rec.get("width")),
                      "height": to_int(rec.get("height")), "image_ref": None, "sha256": rec.get("sha256")})
