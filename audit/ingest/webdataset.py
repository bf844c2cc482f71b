"""``webdataset``: tar shards as img2dataset writes them (key.jpg + key.txt/.json).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path


from audit import images
from audit.ingest.accounting import Batch, image_row, make_uid


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
            image_row(batch, images.tar_ref(path, info.name), data, caption, uid, meta.get("url"))
    if error:
        batch.reject(f"{path}#tail", "truncated_tar", error)


class _Truncated(Exception):
    pass


def _member_bytes(fh, info: tarfile.TarInfo, file_size: int) -> bytes:
    if info.offset_data + info.size > file_size:
        raise _Truncated(info.name)
    fh.seek(info.offset_data)
    return fh.read(info.size)
