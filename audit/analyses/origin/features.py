"""Features that may give a sample's origin away, for the dataset-origin probe (methods.md §7.3).

Zeng, Yin & Liu (2024) transform each image (keep only its mean colour, low/high frequencies, edges, ...)
and train a ConvNeXt from scratch on the transformed images. A linear probe needs a fixed-length vector,
so each transformation is applied as in their code and then summarised. All image features are computed on
the paper's evaluation view: resize the shorter side to 256 (bicubic), centre-crop 224×224.

====================  =======  ======================================================================
family                shape    what it keeps
====================  =======  ======================================================================
``mean_rgb``          (3,)     mean R, G, B in [0, 1] (the paper's "every pixel set to the mean RGB")
``color_hist``        (64,)    joint RGB histogram, 4 bins per channel, summing to 1
``lpf``               (256,)   ideal low-pass, radius 40, of the centred FFT of the 224×224 greyscale
                               image; min-max normalised as the paper; mean-pooled to 16×16
``hpf``               (256,)   ideal high-pass, radius 40, min-max normalised; per 16×16 cell the mean
                               absolute deviation from the image mean (local energy: the plain pooled
                               mean of a high-passed image is flat, so a linear probe could not use it)
``edges``             (65,)    Canny edge map (σ = 2): edge density in 8×8 cells, plus the overall density
``hog``               (1296,)  HOG of the greyscale image: 9 orientations, 32×32-pixel cells, 2×2 blocks
====================  =======  ======================================================================

Caption statistics (``caption_stats``, one row per caption, columns CAPTION_STATS) are computed from the
text alone. Everything here is pure numpy / scikit-image on arrays; reading images is the caller's job.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

SIZE = 224
RESIZE = 256
FREQ_RADIUS = 40
IMAGE_FAMILIES = ("mean_rgb", "color_hist", "lpf", "hpf", "edges", "hog")
IMAGE_FAMILY_DIMS = {"mean_rgb": 3, "color_hist": 64, "lpf": 256, "hpf": 256, "edges": 65, "hog": 1296}
CAPTION_STATS = ("n_chars", "n_words", "mean_word_len", "type_token_ratio", "frac_upper", "frac_digit",
                 "frac_punct", "frac_non_ascii", "filename_like")
_FILENAME = re.compile(r"(\.(jpe?g|png|gif|webp)\b|\bIMG_?\d|\bDSC_?\d|^\s*(image|photo|untitled)\s*\d*\s*$)",
                       re.IGNORECASE)


# ---- the evaluation view ------------------------------------------------------------------------
def eval_view(img) -> np.ndarray:
    """PIL image -> (224, 224, 3) uint8: shorter side resized to 256 (bicubic), centre crop 224."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = RESIZE / min(w, h)
    nw, nh = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    return np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w) float64 in [0, 1], ITU-R 601-2 luma (PIL's / torchvision's Grayscale)."""
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


# ---- colour -----------------------------------------------------------------------------------------
def mean_rgb(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3,) mean of each channel in [0, 1]."""
    return np.asarray(rgb, dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255.0


def color_histogram(rgb: np.ndarray, bins: int = 4) -> np.ndarray:
    """(h, w, 3) uint8 -> (bins**3,) joint RGB histogram summing to 1. Bin of a value v: v * bins // 256;
    the flat index is r_bin * bins² + g_bin * bins + b_bin."""
    q = (np.asarray(rgb, dtype=np.int64).reshape(-1, 3) * bins) // 256
    flat = q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2]
    hist = np.bincount(flat, minlength=bins ** 3).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


# ---- frequency filters (Zeng et al.: ideal circular filter on the centred spectrum) -----------------
def ideal_mask(h: int, w: int, radius: float, kind: str) -> np.ndarray:
    """(h, w) 0/1 mask on the fftshift-ed spectrum: distance d to (h//2, w//2); low keeps d <= radius,
    high keeps d > radius (so the two masks add up to 1 everywhere)."""
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    d = np.sqrt(xx * xx + yy * yy)
    if kind == "low":
        return (d <= radius).astype(np.float64)
    if kind == "high":
        return (d > radius).astype(np.float64)
    raise ValueError(f"filter kind must be 'low' or 'high', got {kind!r}")


def fft_filter(grey: np.ndarray, radius: float = FREQ_RADIUS, kind: str = "low", *,
               normalise: bool = True) -> np.ndarray:
    """(h, w) float -> (h, w) float: real part of the inverse FFT of the masked, centred spectrum.

    With ``normalise`` (the paper's output) the result is min-max scaled: (x − min) / (max − min + 1e-5).
    """
    g = np.asarray(grey, dtype=np.float64)
    spec = np.fft.fftshift(np.fft.fft2(g))
    back = np.real(np.fft.ifft2(np.fft.ifftshift(spec * ideal_mask(*g.shape, radius, kind))))
    if normalise:
        back = (back - back.min()) / (back.max() - back.min() + 1e-5)
    return back


def pool(x: np.ndarray, cells: int, *, stat: str = "mean") -> np.ndarray:
    """(h, w) -> (cells*cells,): the mean (or mean |x − mean(x)| for stat='mad') of each cell.

    h and w must be multiples of ``cells``."""
    h, w = x.shape
    if h % cells or w % cells:
        raise ValueError(f"image {h}x{w} is not divisible into {cells}x{cells} cells")
    if stat == "mad":
        x = np.abs(x - x.mean())
    elif stat != "mean":
        raise ValueError(f"unknown pooling statistic {stat!r}")
    return x.reshape(cells, h // cells, cells, w // cells).mean(axis=(1, 3)).ravel()


# ---- structure --------------------------------------------------------------------------------------
def edge_features(grey: np.ndarray, cells: int = 8, sigma: float = 2.0) -> np.ndarray:
    """(224, 224) float -> (cells² + 1,): Canny edge density per cell, then the overall density."""
    from skimage.feature import canny

    edges = canny(np.asarray(grey, dtype=np.float64), sigma=sigma).astype(np.float64)
    return np.concatenate([pool(edges, cells), [edges.mean()]])


def hog_features(grey: np.ndarray) -> np.ndarray:
    """(224, 224) float -> (1296,) HOG: 9 orientations, 32×32 cells (7×7), 2×2-cell blocks (6×6)."""
    from skimage.feature import hog

    return hog(np.asarray(grey, dtype=np.float64), orientations=9, pixels_per_cell=(32, 32),
               cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=True)


def image_features(img, families: Sequence[str] = IMAGE_FAMILIES) -> dict[str, np.ndarray]:
    """All requested transformation features of one PIL image: {family: float32 vector}."""
    rgb = eval_view(img)
    grey = to_grey(rgb)
    out: dict[str, np.ndarray] = {}
    for f in families:
        if f == "mean_rgb":
            v = mean_rgb(rgb)
        elif f == "color_hist":
            v = color_histogram(rgb)
        elif f == "lpf":
            v = pool(fft_filter(grey, FREQ_RADIUS, "low"), 16)
        elif f == "hpf":
            v = pool(fft_filter(grey, FREQ_RADIUS, "high"), 16, stat="mad")
        elif f == "edges":
            v = edge_features(grey)
        elif f == "hog":
            v = hog_features(grey)
        else:
            raise ValueError(f"unknown image feature family {f!r}; known: {', '.join(IMAGE_FAMILIES)}")
        out[f] = np.asarray(v, dtype=np.float32)
    return out


# ---- captions -----------------------------------------------------------------------------------------
def caption_stats(captions: Sequence[str]) -> np.ndarray:
    """(n,) captions -> (n, len(CAPTION_STATS)) float64.

    n_chars: characters after stripping; n_words: whitespace-separated tokens; mean_word_len: mean token
    length; type_token_ratio: distinct lower-cased tokens / tokens; frac_upper: upper-case letters / letters;
    frac_digit, frac_punct, frac_non_ascii: shares of all characters; filename_like: 1 when the caption
    looks like a camera file name or a placeholder (IMG_1234, DSC0001.JPG, "untitled"). Empty captions
    give zeros.
    """
    out = np.zeros((len(captions), len(CAPTION_STATS)), dtype=np.float64)
    for i, raw in enumerate(captions):
        c = (raw or "").strip()
        words = c.split()
        n_chars = len(c)
        if not n_chars:
            continue
        letters = sum(map(str.isalpha, c))
        out[i] = [
            n_chars,
            len(words),
            sum(map(len, words)) / len(words) if words else 0.0,
            len({w.lower() for w in words}) / len(words) if words else 0.0,
            sum(map(str.isupper, c)) / letters if letters else 0.0,
            sum(map(str.isdigit, c)) / n_chars,
            (n_chars - sum(map(str.isalnum, c)) - sum(map(str.isspace, c))) / n_chars,
            (n_chars - sum(map(str.isascii, c))) / n_chars,
            1.0 if _FILENAME.search(c) else 0.0,
        ]
    return out
