"""The ``transformers`` embedder backend: CLIP and SigLIP checkpoints from the Hugging Face hub or a local folder.

``python -m audit embed --backend transformers --model HUB_ID_OR_LOCAL_DIR`` loads the model with
``AutoModel`` + ``AutoProcessor`` and embeds through ``get_image_features`` / ``get_text_features``, with the
same interface as ``audit.embed.OpenClipEmbedder`` (so batching, resuming, rejects and the runs row are the
embed stage's). ``--pretrained`` does not apply: the checkpoint *is* the model argument.

* A local folder (written by ``save_pretrained``): loaded as it is; its files are hashed (sha256 over the
  weight, config, tokenizer and processor files) and the model key is ``hf:<folder name>@<hash[:8]>``.
* A hub id (``openai/clip-vit-base-patch32``, optionally ``@REVISION``): the snapshot is fetched once into
  the hub cache by ``huggingface_hub.snapshot_download`` (with ``HF_HUB_OFFLINE=1`` only the cache is used)
  and loaded from there; the key is ``hf:<hub id>@<commit[:8]>``, and the runs row records the full commit
  and the hash of the files.
* Supported model types: ``clip`` and ``siglip`` (SUPPORTED). Anything else is refused before weights load.
* SigLIP text is padded to the full ``max_length`` (64), as the model was trained and as its model card
  says; CLIP text is padded to the longest caption of the batch (its attention mask makes padding inert).
* Checkpoints whose config.json carries ``audit_random_weights: true`` (the tests' and the bench's random
  models) are flagged random-weight in the store, like ``ViT-B-32:random``.

This module imports only the standard library and numpy at import time; torch and transformers are
imported when a model is loaded (``audit.embed`` registers ``transformers_embedder`` without importing them).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.embed.base import l2_rows

# model_type (config.json) -> what it is. Other dual encoders need their own preprocessing (SigLIP 2's
# NaFlex patches, ALIGN's EfficientNet sizes) and are refused until tested here.
SUPPORTED = {"clip": "CLIP (OpenAI / LAION / DataComp checkpoints, e.g. openai/clip-vit-base-patch32)",
             "siglip": "SigLIP (e.g. google/siglip-base-patch16-224)"}
HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".pt", ".pth")
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HFModelError(ValueError):
    """A model argument the transformers backend cannot use (message says why and what to do)."""


def folder_digest(folder: str | os.PathLike) -> str:
    """sha256 (hex) over the files that determine the vectors: weights, config, tokenizer, processor.

    Files are taken in name order (top level, as save_pretrained writes them); each contributes its name,
    its size and its bytes. README and other files do not count.
    """
    h = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in HASHED_SUFFIXES)
    if not files:
        raise HFModelError(f"{folder} holds no weight/config files")
    for p in files:
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _hub_snapshot(spec: str) -> tuple[Path, str, str]:
    """(local snapshot folder, repo id, commit hash) of ``repo[@revision]`` via the hub cache."""
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    try:
        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS))
        if not any(folder.glob("*.safetensors")):  # older repos: PyTorch pickles only
            folder = Path(snapshot_download(repo, revision=revision or None,
                                            allow_patterns=HUB_PATTERNS + ["pytorch_model*.bin"]))
    except Exception as exc:  # network, auth, offline cache miss: all end here with one message
        raise HFModelError(
            f"cannot get {spec!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            f"There is no local folder of that name either. Give a folder written by save_pretrained, "
            f"or fetch the model once with network access (HF_HUB_OFFLINE=1 then uses the cache).") from exc
    commit = folder.name if folder.parent.name == "snapshots" else (revision or "unknown")
    return folder, repo, commit


def resolve(model: str) -> tuple[Path, str, str | None]:
    """(folder to load from, source to record, hub commit or None) for a local folder or a hub id."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p.resolve(), str(p.resolve()), None
    if p.exists():
        raise HFModelError(f"{model} is a file; the transformers backend needs a folder written by "
                           "save_pretrained (config.json + weights + processor files) or a hub id")
    repo = model.partition("@")[0]
    if not _HUB_ID.match(repo) or model.startswith((".", "/", "~")):
        raise HFModelError(f"no folder {model!r}, and it is not a hub id (like openai/clip-vit-base-patch32)")
    return _hub_snapshot(model)


def check_supported(folder: Path) -> dict:
    """config.json as a dict, after checking the model type is one this backend embeds with."""
    import json

    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise HFModelError(f"{folder} has no config.json: not a folder written by save_pretrained")
    cfg = json.loads(cfg_path.read_text())
    mtype = cfg.get("model_type", "?")
    if mtype not in SUPPORTED:
        arch = ", ".join(cfg.get("architectures") or []) or "unknown class"
        raise HFModelError(
            f"unsupported architecture: {folder} holds a {mtype!r} model ({arch}); the transformers backend "
            f"embeds images and texts with dual encoders of model type {', '.join(SUPPORTED)} "
            f"({'; '.join(SUPPORTED.values())})")
    return cfg


def features(out) -> "object":
    """The embedding tensor of get_image_features/get_text_features: a tensor (transformers 4.x) or, from
    transformers 5, an output object whose ``pooler_output`` holds the projected features."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    if isinstance(out, (tuple, list)) and len(out) > 1:  # return_dict=False: (last_hidden_state, pooler_output)
        return out[1]
    raise TypeError(f"cannot find the embedding in a {type(out).__name__}")


class _Preprocess:
    """PIL image -> (3, H, W) float tensor with the checkpoint's image processor (picklable for workers)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class TransformersEmbedder:
    """A CLIP or SigLIP checkpoint loaded with AutoModel + AutoProcessor (interface of OpenClipEmbedder)."""

    backend = "transformers"

    def __init__(self, model: str, pretrained: str | None = None, *, device: str | None = None,
                 precision: str = "auto"):
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the image workers
        from transformers import AutoModel, AutoProcessor

        del pretrained  # the checkpoint is the model argument; --pretrained applies to open_clip only
        folder, source, commit = resolve(str(model))
        cfg = check_supported(folder)
        self.family = cfg["model_type"]
        self.folder = folder
        self.digest = folder_digest(folder)
        self.revision = commit
        try:
            net = AutoModel.from_pretrained(str(folder))
            processor = AutoProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HFModelError(f"cannot load {model!r} with AutoModel + AutoProcessor: {exc}") from exc
        if not (hasattr(net, "get_image_features") and hasattr(net, "get_text_features")):
            raise HFModelError(f"{type(net).__name__} has no get_image_features/get_text_features")
        if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
            raise HFModelError(f"{folder} lacks the image processor or the tokenizer files (save both with "
                               f"processor.save_pretrained)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = net.eval().to(self.device)
        self.tokenizer = processor.tokenizer
        self.preprocess = _Preprocess(processor.image_processor)
        max_len = int(getattr(net.config.text_config, "max_position_embeddings", 0) or 77)
        # SigLIP was trained on text padded to max_length (pooling reads the last position); CLIP pools the
        # EOS token under an attention mask, so padding to the batch's longest caption gives the same vectors.
        self._text_kw = {"padding": "max_length" if self.family == "siglip" else True, "truncation": True,
                         "max_length": max_len, "return_tensors": "pt"}
        self.random_weights = bool(cfg.get("audit_random_weights", False))
        if commit:
            self.arch, self.pretrained = source, commit
            self.key = f"hf:{source}@{commit[:8]}"
        else:
            self.arch, self.pretrained = source, f"sha256:{self.digest[:16]}"
            self.key = f"hf:{folder.name}@{self.digest[:8]}"
        self.autocast = False
        self.dim = int(self.encode_texts(["a"]).shape[-1])
        self.autocast = self._choose_autocast(precision)

    # -- precision, as OpenClipEmbedder: bf16 autocast on CUDA; on CPU only if a timed trial is faster --
    def _choose_autocast(self, precision: str) -> bool:
        from PIL import Image

        from audit.embed.torchutil import choose_autocast

        one = self.preprocess(Image.new("RGB", (256, 256), (127, 127, 127)))
        return choose_autocast(precision, self.device, lambda x: self.model.get_image_features(pixel_values=x),
                               one.unsqueeze(0).repeat(4, 1, 1, 1))

    def _ctx(self):
        from audit.embed.torchutil import autocast

        return autocast(self.device, self.autocast)

    def encode_images(self, batch) -> np.ndarray:
        """(n, 3, H, W) tensor from ``preprocess`` -> (n, d) L2-normalised float32."""
        import torch

        with torch.no_grad(), self._ctx():
            out = self.model.get_image_features(pixel_values=batch.to(self.device))
            return l2_rows(features(out).float()).cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """n strings -> (n, d) L2-normalised float32 (truncated to the model's text length)."""
        import torch

        texts = [t if isinstance(t, str) else "" for t in texts]
        enc = self.tokenizer(texts, **self._text_kw)
        args = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad(), self._ctx():
            return l2_rows(features(self.model.get_text_features(**args)).float()).cpu().numpy()


def transformers_embedder(model: str, pretrained: str | None = None, **kw) -> TransformersEmbedder:
    """Factory registered as ``audit.embed.BACKENDS["transformers"]`` (keeps transformers out of imports)."""
    return TransformersEmbedder(model, pretrained, **kw)


def load_text_encoder(info: dict):
    """``audit.textenc.LOADERS["transformers"]``: (encode, label) for a stored transformers model.

    ``info`` is the model's embedding_models row. The checkpoint is loaded again from where it was embedded
    (hub id pinned to the recorded commit, or the local folder) and must give the same key: a folder whose
    files changed since would put prompts into a different space, so it is refused.
    """
    from audit.store import StoreError

    source, pinned = info["arch"], info.get("pretrained") or ""
    spec = f"{source}@{pinned}" if re.fullmatch(r"[0-9a-f]{40}", pinned) else source
    try:
        emb = TransformersEmbedder(spec, precision="fp32")
    except HFModelError as exc:
        raise StoreError(f"cannot load the text encoder of {info['model']}: {exc}") from exc
    if emb.key != info["model"]:
        raise StoreError(f"the checkpoint of {info['model']} changed since it was embedded ({source} now gives "
                         f"{emb.key}); prompts would land in a different space. Re-embed with the new files, "
                         f"or restore the old ones.")
    label = f"transformers {emb.key}" + (" (RANDOM weights)" if emb.random_weights else "")
    return (lambda texts: emb.encode_texts(list(texts))), label
