"""open_clip embedder: an architecture name or local config, pretrained tag, local checkpoint or random weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from audit.embed.torchutil import autocast, choose_autocast
from audit.embed.base import DEFAULT_MODEL, DEFAULT_PRETRAINED, RANDOM_SEED, l2_rows, file_digest, pretrained_label


class OpenClipEmbedder:
    """open_clip model: a pretrained tag (needs the hub once), a local checkpoint file, or random weights."""

    backend = "open_clip"

    def __init__(self, arch: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED, *,
                 device: str | None = None, precision: str = "auto"):
        import open_clip
        import torch

        value, label, random_weights = pretrained_label(pretrained)
        if arch.endswith(".json") and Path(arch).exists():  # a local architecture config (open_clip format)
            open_clip.add_model_config(arch)
            arch = Path(arch).stem
        if random_weights:
            torch.manual_seed(RANDOM_SEED)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=value)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot load open_clip {arch} with pretrained={pretrained!r}: {exc}. "
                               "Use a local checkpoint path, or --pretrained none for random weights.") from exc
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.preprocess = preprocess
        self.arch, self.pretrained, self.random_weights = arch, value, random_weights
        self.key = f"{arch}:{label}"
        self.digest = file_digest(value) if value and Path(value).exists() else None
        with torch.no_grad():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])
        self.autocast = self._choose_autocast(precision)

    def _choose_autocast(self, precision: str) -> bool:
        import torch
        from PIL import Image

        # the trial input goes through the model's own preprocessing, so its size is the model's (not always 224)
        one = self.preprocess(Image.new("RGB", (256, 256), (127, 127, 127)))
        return choose_autocast(precision, self.device, self.model.encode_image, torch.stack([one] * 4))

    def _ctx(self):
        return autocast(self.device, self.autocast)

    def encode_images(self, batch) -> np.ndarray:
        import torch

        with torch.no_grad(), self._ctx():
            return l2_rows(self.model.encode_image(batch.to(self.device)).float()).cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad(), self._ctx():
            return l2_rows(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float()).cpu().numpy()
