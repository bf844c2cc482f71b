"""Reading images by reference: a file path, or a member of a webdataset tar (``tar://PATH#MEMBER``).

Tar members are read by offset from a per-tar index built once, so thumbnails and the embedder can
fetch single images from large shards without extracting them.
"""
from __future__ import annotations

import functools
import io
import tarfile
from pathlib import Path

TAR_PREFIX = "tar://"


class ImageError(ValueError):
    """An image that cannot be read or decoded; the message is the reject detail."""


def tar_ref(tar_path: str | Path, member: str) -> str:
    return f"{TAR_PREFIX}{Path(tar_path).resolve()}#{member}"


@functools.lru_cache(maxsize=64)
def _tar_index(tar_path: str) -> dict[str, tuple[int, int]]:
    index: dict[str, tuple[int, int]] = {}
    with tarfile.open(tar_path, "r:") as tf:
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, EOFError, OSError):
                break
            if info is None:
                break
            if info.isfile():
                index[info.name] = (info.offset_data, info.size)
    return index


def read_bytes(ref: str) -> bytes:
    """The raw bytes behind an image reference."""
    if ref.startswith(TAR_PREFIX):
        tar_path, _, member = ref[len(TAR_PREFIX):].partition("#")
        try:
            offset, size = _tar_index(tar_path)[member]
        except (KeyError, OSError, tarfile.TarError) as exc:
            raise ImageError(f"member {member} not readable in {tar_path}: {exc}") from exc
        with open(tar_path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise ImageError(f"member {member} truncated in {tar_path}")
        return data
    try:
        return Path(ref).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {ref}: {exc.strerror or exc}") from exc


def decode(data: bytes):
    """Decode bytes to an RGB PIL image, fully loaded; raises ImageError when undecodable."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"undecodable image: {exc}") from exc
    if im.width == 0 or im.height == 0:
        raise ImageError("image has a zero side")
    return im.convert("RGB")


def load_image(ref: str):
    return decode(read_bytes(ref))


def thumbnail(ref: str, size: int = 192, *, blur: bool = False):
    """A small RGB thumbnail; blurred (for NSFW content) when asked."""
    im = load_image(ref)
    im.thumbnail((size, size))
    if blur:
        from PIL import ImageFilter

        im = im.filter(ImageFilter.GaussianBlur(radius=max(6, size // 12)))
    return im
