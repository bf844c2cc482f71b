"""Reading and decoding images by reference, in one place for every stage and the dashboard.

References: a file path; a member of a webdataset tar (``tar://PATH#MEMBER``; plain tars are read by offset from a
per-tar index, compressed ones by streaming); a cell of a Parquet column (``parquet://PATH#COLUMN/ROW``, as
img2dataset's parquet output stores the image bytes).

Every decode goes through ``decode``: the pixel count is read from the header and checked against a cap
*before* any pixel is allocated (a 100 KB PNG may claim 30000 × 30000), and transparency is composited over
white, so logos and clip art are not black squares in thumbnails or in any model's input.
"""
from __future__ import annotations

import functools
import io
import tarfile
import warnings
from pathlib import Path

TAR_PREFIX = "tar://"
PARQUET_PREFIX = "parquet://"
DEFAULT_MAX_PIXELS = 89_478_485     # Pillow's own default cap (a quarter gigapixel of RGB: ~256 MB decoded)
MAX_FILE_BYTES = 256 << 20          # larger image files are refused unread
BACKGROUND = (255, 255, 255)        # transparent pixels are composited over white


class ImageError(ValueError):
    """An image that cannot be read or decoded; the message is the reject detail."""

    reason = "corrupt_image"


class ImageTooLarge(ImageError):
    """More pixels (or bytes) than the cap: refused before decoding."""

    reason = "too_large"


def tar_ref(tar_path: str | Path, member: str) -> str:
    return f"{TAR_PREFIX}{Path(tar_path).resolve()}#{member}"


def parquet_ref(path: str | Path, column: str, row: int) -> str:
    return f"{PARQUET_PREFIX}{Path(path).resolve()}#{column}/{row}"


def is_compressed_tar(path: str | Path) -> bool:
    return str(path).endswith((".tar.gz", ".tgz"))


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


def _tar_member(tar_path: str, member: str) -> bytes:
    if is_compressed_tar(tar_path):  # no random access into a gzip stream: read until the member
        try:
            with tarfile.open(tar_path, "r:*") as tf:
                fh = tf.extractfile(member)
                if fh is None:
                    raise KeyError(member)
                return fh.read()
        except (KeyError, OSError, EOFError, tarfile.TarError) as exc:
            raise ImageError(f"member {member} not readable in {tar_path}: {exc}") from exc
    try:
        offset, size = _tar_index(tar_path)[member]
    except (KeyError, OSError, tarfile.TarError) as exc:
        raise ImageError(f"member {member} not readable in {tar_path}: {exc}") from exc
    if size > MAX_FILE_BYTES:
        raise ImageTooLarge(f"member {member} has {size:,} bytes (cap {MAX_FILE_BYTES:,})")
    with open(tar_path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise ImageError(f"member {member} truncated in {tar_path}")
    return data


def _parquet_cell(path: str, spec: str) -> bytes:
    import pyarrow.parquet as pq

    column, _, row_s = spec.rpartition("/")
    try:
        row = int(row_s)
        pf = pq.ParquetFile(path)
        start = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < start + n:
                cell = pf.read_row_group(g, columns=[column]).column(0)[row - start].as_py()
                break
            start += n
        else:
            raise IndexError(f"row {row} of {start}")
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise ImageError(f"cell {spec} not readable in {path}: {exc}") from exc
    if not isinstance(cell, (bytes, bytearray)):
        raise ImageError(f"cell {spec} of {path} holds no image bytes")
    return bytes(cell)


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes; devices, fifos and folders are refused unread, as are files above ``max_bytes``."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ImageError(f"cannot read {p}: {exc.strerror or exc}") from exc
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{p} is not a regular file")
    if st.st_size > max_bytes:
        raise ImageTooLarge(f"{p} has {st.st_size:,} bytes (cap {max_bytes:,})")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {p}: {exc.strerror or exc}") from exc


def read_bytes(ref: str) -> bytes:
    """The raw bytes behind an image reference."""
    if ref.startswith(TAR_PREFIX):
        tar_path, _, member = ref[len(TAR_PREFIX):].partition("#")
        return _tar_member(tar_path, member)
    if ref.startswith(PARQUET_PREFIX):
        path, _, spec = ref[len(PARQUET_PREFIX):].partition("#")
        return _parquet_cell(path, spec)
    return read_file(ref)


def _plain(exc: Exception) -> str:
    """The error's message without object addresses, so a reject's detail is the same on every run."""
    import re

    return re.sub(r"<[^<>]* at 0x[0-9a-f]+>", "the image", str(exc))[:300]


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open (header only) and check the pixel count; raises ImageTooLarge before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our cap below replaces Pillow's, with the sizes in the message
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("undecodable image: not an image format Pillow can read") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"undecodable image: {_plain(exc)}") from exc
    if im.width == 0 or im.height == 0:
        raise ImageError("image has a zero side")
    if im.width * im.height > max_pixels:
        raise ImageTooLarge(f"image has {im.width} × {im.height} = {im.width * im.height:,} pixels "
                            f"(cap {max_pixels:,}; --max-pixels sets it)")
    return im


def to_rgb(im):
    """RGB, with any transparency (RGBA, LA, P with a transparent index, 1-bit masks) composited over white."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info) \
            or (im.mode in ("RGB", "L") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        back = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(back, rgba).convert("RGB")
    return im.convert("RGB")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode bytes to an RGB PIL image (transparency over white), fully loaded; raises ImageError (or
    ImageTooLarge, checked before decoding) when the image cannot be used."""
    from PIL import Image

    im = open_checked(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image too large: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"undecodable image: {_plain(exc)}") from exc
    return to_rgb(im)


def load_image(ref: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    return decode(read_bytes(ref), max_pixels)


def thumbnail(ref: str, size: int = 192, *, blur: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A small RGB thumbnail (the same pixel cap as ingest); blurred (for NSFW content) when asked."""
    im = load_image(ref, max_pixels)
    im.thumbnail((size, size))
    if blur:
        from PIL import ImageFilter

        im = im.filter(ImageFilter.GaussianBlur(radius=max(6, size // 12)))
    return im
