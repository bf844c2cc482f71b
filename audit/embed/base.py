"""The embedder interface (``Embedder``), the backend table and helpers shared by the backends.

Backends: open_clip (open_clip_backend.py, the default) and transformers (transformers_backend.py).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np



DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM_SEED = 0


class Embedder(Protocol):
    key: str                 # store model key, e.g. "ViT-B-32:laion2b_s34b_b79k" or "ViT-B-32:random"
    arch: str
    pretrained: str | None
    random_weights: bool
    backend: str
    dim: int

    def preprocess(self, image) -> "object": ...
    def encode_images(self, batch) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def pretrained_label(pretrained: str | None) -> tuple[str | None, str, bool]:
    """(value for open_clip, label for the model key, random weights?) from the CLI's --pretrained."""
    if pretrained is None or str(pretrained).lower() in ("none", "random", ""):
        return None, "random", True
    p = Path(pretrained)
    if p.exists():
        return str(p), f"file-{p.stem}", False
    return pretrained, pretrained, False


def file_digest(path: str, limit: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(limit))
    h.update(str(os.path.getsize(path)).encode())
    return h.hexdigest()[:16]


def l2_rows(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


