"""``webdataset``: tar shards as img2dataset writes them (key.jpg + key.txt + key.json), plain or gzipped.

Members are grouped into samples as webdataset does: the key is the member path up to the first dot of its file
name (``a/b.seg.png`` → key ``a/b``, extension ``seg.png``), and a sample's members are contiguous; a member
whose key and extension repeat inside a sample is a ``duplicate_key`` reject, a key that comes back later is
another sample (then a ``duplicate_uid`` reject). Width and height are img2dataset's ``original_width`` /
``original_height`` from the .json (the decoded, resized size is kept as stored_width/stored_height).

img2dataset writes a parquet beside each tar with one row per input url, ``status`` and ``error_message``:
every row that is not ``success`` becomes a ``download_failed`` reject with its url, caption and uid, so the
pool's availability is part of the audit.
"""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from audit import images
from audit.ingest.accounting import Batch, image_row, make_uid, uid_of

IMAGE_MEMBER_EXTS = ("jpg", "jpeg", "png", "webp")
_BASE_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")   # webdataset's base_plus_ext


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member as webdataset groups them, None for a member without an extension."""
    m = _BASE_EXT.match(name)
    return (m.group(1), m.group(2)) if m else None


def companion_parquet(path: Path) -> Path:
    """img2dataset's per-shard parquet: ``00000.tar`` / ``00000.tar.gz`` → ``00000.parquet``."""
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".parquet")
    return path.with_suffix(".parquet")


def fill_webdataset(batch: Batch, path: Path) -> None:
    """Read the shard member by member; a truncated or unreadable tail becomes rejects, not an abort."""
    mode = "r:*" if images.is_compressed_tar(path) else "r:"
    try:
        tf = tarfile.open(path, mode)
    except (tarfile.TarError, OSError, EOFError) as exc:
        batch.reject(str(path), "broken_tar", f"not a readable tar: {exc}")
        _download_failures(batch, path)
        return
    n_keys = 0
    group: dict[str, bytes | None] = {}
    key: str | None = None
    with tf:
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                if key is not None:
                    _sample(batch, path, key, group)
                batch.reject(f"{path}#tail", "truncated_tar", f"tar stops being readable after {n_keys} keys: {exc}")
                break
            if info is None:
                if key is not None:
                    _sample(batch, path, key, group)
                break
            if not info.isfile():
                continue
            parts = split_key(info.name)
            if parts is None:
                continue  # webdataset ignores members without an extension too
            k, ext = parts
            if k != key:
                if key is not None:
                    _sample(batch, path, key, group)
                key, group = k, {}
                n_keys += 1
            ext = ext.lower()
            if ext in group:
                batch.reject(images.tar_ref(path, info.name), "duplicate_key",
                             f"member {info.name} repeats key {k!r} with extension {ext!r} in this sample")
                continue
            try:
                fh = tf.extractfile(info)
                data = fh.read() if fh is not None else b""
                if len(data) != info.size:
                    raise EOFError("member cut short")
            except (tarfile.TarError, EOFError, OSError):
                data = None   # cut short: the sample is rejected below
            group[ext] = data
            group.setdefault("_names", {})[ext] = info.name  # type: ignore[index]
    _download_failures(batch, path)


def _sample(batch: Batch, path: Path, key: str, group: dict) -> None:
    names: dict[str, str] = group.pop("_names", {})
    ref = images.tar_ref(path, key)
    meta: dict = {}
    if "json" in group:
        raw = group["json"]
        try:
            meta = json.loads(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError) as exc:
            batch.reject(ref, "bad_metadata", f"{names['json']} is not valid JSON: {exc}"[:300])
            return
        if raw is None:
            batch.reject(ref, "truncated_tar", f"member {names['json']} is cut short")
            return
        if not isinstance(meta, dict):
            batch.reject(ref, "bad_metadata", f"{names['json']} holds a JSON {type(meta).__name__}, not an object")
            return
    uid, err, given = uid_of(meta.get("uid"), make_uid(batch.source, path.name, key))
    if err:
        batch.reject(ref, "bad_uid", err)
        return
    caption = meta.get("caption")
    if "txt" in group:
        raw = group["txt"]
        if raw is None:
            batch.reject(ref, "truncated_tar", f"member {names['txt']} is cut short", uid)
            return
        try:
            caption = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            batch.reject(ref, "bad_encoding", f"{names['txt']} is not UTF-8: {exc.reason} at byte {exc.start}", uid)
            return
    img_ext = next((e for e in IMAGE_MEMBER_EXTS if e in group), None)
    if img_ext is None:
        img_ext = next((e for e in group if e.rsplit(".", 1)[-1] in IMAGE_MEMBER_EXTS), None)
    if img_ext is None:
        batch.reject(ref, "missing_image", f"key {key} has no image member", uid)
        return
    data = group[img_ext]
    if data is None:
        batch.reject(ref, "truncated_tar", f"member {names[img_ext]} is cut short", uid)
        return
    original = (meta.get("original_width"), meta.get("original_height")) \
        if ("original_width" in meta or "original_height" in meta) else None
    url = meta.get("url") if isinstance(meta.get("url"), str) else None
    image_row(batch, images.tar_ref(path, names[img_ext]), data, caption, uid, url, original=original,
              uid_given=given)


def _download_failures(batch: Batch, path: Path) -> None:
    """Rows of img2dataset's parquet beside the shard whose download failed: one reject each."""
    pq_path = companion_parquet(path)
    if not pq_path.exists():
        _stats_failures(batch, path)
        return
    import pandas as pd

    try:
        frame = pd.read_parquet(pq_path)
    except Exception as exc:  # pyarrow raises many kinds
        batch.reject(str(pq_path), "corrupt_parquet", f"cannot read img2dataset's parquet: {exc}")
        return
    if "status" not in frame.columns:
        return
    failed = frame[frame["status"].astype(str) != "success"]
    for i, rec in zip(failed.index, failed.to_dict("records")):
        batch.reject(f"{pq_path}#row={i}", "download_failed",
                     f"{rec.get('status')}: {rec.get('error_message') or ''}".strip()[:500],
                     rec.get("uid") if isinstance(rec.get("uid"), str) else None,
                     url=rec.get("url") if isinstance(rec.get("url"), str) else None,
                     caption=rec.get("caption") if isinstance(rec.get("caption"), str) else None)


def _stats_failures(batch: Batch, path: Path) -> None:
    """Without the per-shard parquet, img2dataset's ``_stats.json`` still says how many downloads failed: one
    ``download_failed`` reject each (no url or uid is known), so the shard's input rows are all accounted."""
    stats = companion_parquet(path).with_name(companion_parquet(path).stem + "_stats.json")
    if not stats.exists():
        return
    try:
        st = json.loads(stats.read_text())
        failed = int(st.get("count", 0)) - int(st.get("successes", 0))
        statuses = {k: v for k, v in (st.get("status_dict") or {}).items() if k != "success"}
    except (ValueError, TypeError, AttributeError) as exc:
        batch.reject(str(stats), "bad_metadata", f"{stats.name} is not img2dataset's stats JSON: {exc}"[:300])
        return
    for i in range(max(0, failed)):
        batch.reject(f"{stats}#failed={i}", "download_failed",
                     f"counted in {stats.name} (no per-shard parquet beside the tar): {statuses}"[:500])
