"""``parquet``: one row per sample with a url and a caption (``text`` or ``caption``), metadata only, or
img2dataset's parquet output (``output_format parquet``): its ``status`` column turns failed downloads into
``download_failed`` rejects, and the image bytes in its ``jpg``/``png``/``webp`` column are decoded and kept
(the reference points at the cell), with ``original_width``/``original_height`` as the sample's size.

Each row is checked on its own: a width that is not a number, a uid that is not text, a blank caption reject
that row only.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from audit import images
from audit.ingest.accounting import Batch, caption_ok, dimension, image_row, make_uid, uid_of

TEXT_COLUMNS = ("text", "caption")
IMAGE_COLUMNS = ("jpg", "png", "webp", "image")


def fill_parquet(batch: Batch, path: Path) -> None:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many kinds
        batch.reject(str(path), "corrupt_parquet", f"cannot read parquet: {exc}")
        return
    text_col = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
    image_col = next((c for c in IMAGE_COLUMNS if c in frame.columns), None)
    missing = [name for name, ok in (("url", "url" in frame.columns), ("text or caption", text_col)) if not ok]
    size_cols = ("original_width", "original_height") if "original_width" in frame.columns else ("width", "height")
    for i, rec in enumerate(frame.to_dict("records")):
        ref = f"{path}#row={i}"
        if missing:
            batch.reject(ref, "missing_column", f"parquet lacks column(s) {', '.join(missing)}")
            continue
        text, url = rec.get(text_col), rec.get("url")
        uid, err, given = uid_of(rec.get("uid"), make_uid(str(url), str(text)))
        if err:
            batch.reject(ref, "bad_uid", err)
            continue
        status = rec.get("status")
        if status is not None and str(status) != "success":
            batch.reject(ref, "download_failed", f"{status}: {rec.get('error_message') or ''}".strip()[:500], uid,
                         url=url if isinstance(url, str) else None, caption=text if isinstance(text, str) else None)
            continue
        if not isinstance(url, str) or not url.strip():
            batch.reject(ref, "missing_url", "row has no url", uid)
            continue
        if image_col is not None and isinstance(rec.get(image_col), (bytes, bytearray)):
            image_row(batch, images.parquet_ref(path, image_col, i), bytes(rec[image_col]), text, uid, url,
                      original=(rec.get(size_cols[0]), rec.get(size_cols[1])), uid_given=given)
            continue
        if not caption_ok(text):
            batch.reject(ref, "empty_caption", "caption is missing or blank", uid)
            continue
        (w, e1), (h, e2) = dimension(rec.get(size_cols[0])), dimension(rec.get(size_cols[1]))
        if e1 or e2:
            batch.reject(ref, "bad_value", e1 or e2, uid)
            continue
        sha = rec.get("sha256")
        batch.accept({"uid": uid, "caption": text, "url": url, "width": w, "height": h, "image_ref": None,
                      "sha256": sha if isinstance(sha, str) else None, "uid_given": given})
