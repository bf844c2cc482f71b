"""``folder``: images plus a captions CSV/JSONL (file, caption[, url][, uid]).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from audit.ingest.accounting import Batch, image_row, make_uid


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
            image_row(batch, str(img_path), None, caption, uid, url, err=f"file not found: {fname}")
            continue
        image_row(batch, str(img_path), img_path.read_bytes(), caption, uid, url)
