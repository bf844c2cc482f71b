"""``folder``: images plus a captions CSV/JSONL (file, caption[, url][, uid]).

The captions file is read row by row with its line numbers: bytes that are not UTF-8, a JSON line that is not
an object, a CSV row with an unterminated quote or the wrong number of fields each become one reject and the
rest of the file is read. Image paths are confined to the input folder: ``../``, absolute paths and symlinks
that lead outside it are rejected (``outside_root``) and never opened; so are devices and fifos.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

from audit import images
from audit.ingest.accounting import Batch, image_row, make_uid, uid_of

MAX_RECORD_LINES = 1000   # a quoted CSV field may span lines; an unterminated quote is cut here


def _lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None when not UTF-8, error) of every physical line."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                yield i, raw.decode("utf-8-sig" if i == 1 else "utf-8"), ""
            except UnicodeDecodeError as exc:
                yield i, None, f"line {i} is not UTF-8: {exc.reason} at byte {exc.start}"


def read_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str, str]]:
    """(line, record or None, reject reason, detail) per non-blank line."""
    for i, text, err in _lines(path):
        if text is None:
            yield i, None, "bad_encoding", err
            continue
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield i, None, "bad_caption_record", f"line {i}: {exc.msg}"
            continue
        if not isinstance(rec, dict):
            yield i, None, "bad_caption_record", f"line {i}: a JSON {type(rec).__name__}, not an object"
            continue
        yield i, rec, "", ""


def read_csv(path: Path) -> Iterator[tuple[int, dict | None, str, str]]:
    """(first line, record or None, reject reason, detail) per CSV record; the first record is the header.

    A record whose quotes do not close within MAX_RECORD_LINES lines (or by the end of the file) is rejected at
    its first line, and reading goes on from the line after it.
    """
    from collections import deque

    header: list[str] | None = None
    todo = deque(_lines(path))
    while todo:
        i, text, err = todo.popleft()
        if text is None:
            yield i, None, "bad_encoding", err
            continue
        record = [(i, text)]
        while sum(t.count('"') for _, t in record) % 2 == 1 and todo and todo[0][1] is not None \
                and len(record) < MAX_RECORD_LINES:
            n, t2, _ = todo.popleft()
            record.append((n, t2))
        joined = "".join(t2 for _, t2 in record)
        if joined.count('"') % 2 == 1:   # never closed: reject its first line, read on after it
            yield i, None, "bad_caption_record", f"line {i}: unterminated quote"
            todo.extendleft(reversed([(n, t2, "") for n, t2 in record[1:]]))
            continue
        if not joined.strip():
            continue
        try:
            fields = next(csv.reader(io.StringIO(joined), strict=True), [])
        except csv.Error as exc:
            yield i, None, "bad_caption_record", f"line {i}: {exc}"
            continue
        if header is None:
            header = [h.strip() for h in fields]
            continue
        if len(fields) != len(header):
            yield i, None, "bad_caption_record", (f"line {i}: {len(fields)} fields, the header has "
                                                  f"{len(header)} (an unquoted comma?)")
            continue
        yield i, dict(zip(header, fields)), "", ""


def _find_captions(folder: Path) -> Path:
    for name in ("captions.csv", "captions.jsonl"):
        if (folder / name).exists():
            return folder / name
    found = sorted(list(folder.glob("*.csv")) + list(folder.glob("*.jsonl")))
    if not found:
        raise FileNotFoundError(f"no captions file (captions.csv or captions.jsonl) in {folder}")
    return found[0]


def confined(root: Path, name: str) -> tuple[Path | None, str]:
    """The file ``name`` inside ``root`` (symlinks resolved), or None and why it may not be read."""
    p = Path(name)
    if p.is_absolute():
        return None, f"absolute path {name!r} is outside the input folder"
    target = (root / p).resolve()
    try:
        target.relative_to(root)
    except ValueError:
        return None, f"{name!r} leads outside the input folder (to {target})"
    return target, ""


def fill_folder(batch: Batch, path: Path) -> None:
    folder = (path if path.is_dir() else path.parent).resolve()
    cap_file = _find_captions(folder) if path.is_dir() else path
    reader = read_jsonl if cap_file.suffix == ".jsonl" else read_csv
    for line, rec, reason, detail in reader(cap_file):
        ref0 = f"{cap_file}#line={line}"
        if rec is None:
            batch.reject(ref0, reason, detail)
            continue
        fname = rec.get("file")
        if not isinstance(fname, str) or not fname.strip():
            batch.reject(ref0, "missing_file_field", f"line {line} has no 'file' value")
            continue
        caption = rec.get("caption")
        uid, err, given = uid_of(rec.get("uid"), make_uid(batch.source, fname, str(caption)))
        if err:
            batch.reject(ref0, "bad_uid", f"line {line}: {err}")
            continue
        url = rec.get("url") if isinstance(rec.get("url"), str) and rec.get("url") else None
        img_path, why = confined(folder, fname)
        if img_path is None:
            batch.reject(ref0, "outside_root", why, uid)
            continue
        if not img_path.exists():
            image_row(batch, str(img_path), None, caption, uid, url, err=f"file not found: {fname}")
            continue
        try:
            data = images.read_file(img_path)
        except images.ImageError as exc:
            batch.reject(str(img_path), "not_a_file" if "not a regular file" in str(exc) else exc.reason,
                         str(exc), uid)
            continue
        image_row(batch, str(img_path), data, caption, uid, url, uid_given=given)
