"""Text encoders for prompts (zero-shot annotators, NormSim class-name targets), matched to a stored model.

``text_encoder(store, model)`` returns a function ``list[str] -> (n, d) float32`` (L2-normalised) that
embeds text into the same space as the stored embeddings of ``model``, plus a label saying what it is:

* open_clip models embedded by `audit embed`: the same architecture and weights are loaded again;
* other backends register a loader in LOADERS (key: the backend name in ``embedding_models``);
* the simulated DataComp models (``datacomp_b32``/``datacomp_l14`` of the demo pool): the simulator's latent
  directions, looked up by keyword (labelled "simulated text encoder"; meaningful only for simulated rows);
* real DataComp npz embeddings come from OpenAI CLIP; pass ``text_model`` (e.g. ``ViT-L-14:openai``) to embed
  prompts with that open_clip model.
"""
from __future__ import annotations

import json
import zlib
from typing import Callable

import numpy as np

from audit.store import Store, StoreError
from audit.store.results import meta_get

Encoder = Callable[[list[str]], np.ndarray]
LOADERS: dict[str, Callable[[dict], tuple[Encoder, str]]] = {}


def _open_clip_loader(info: dict) -> tuple[Encoder, str]:
    from audit.embed.open_clip_backend import OpenClipEmbedder

    emb = OpenClipEmbedder(info["arch"], info["pretrained"] or "none", precision="fp32")
    label = f"open_clip {emb.key}" + (" (RANDOM weights)" if emb.random_weights else "")
    return (lambda texts: emb.encode_texts(texts)), label


LOADERS["open_clip"] = _open_clip_loader


def _transformers_loader(info: dict) -> tuple[Encoder, str]:
    from audit.embed.transformers_backend import load_text_encoder  # CLIP / SigLIP reloaded from the hub cache or folder

    return load_text_encoder(info)


LOADERS["transformers"] = _transformers_loader


def simulator_meta(store: Store) -> dict | None:
    raw = meta_get(store, "simulator")
    return json.loads(raw) if raw else None


def simulated_directions(sim: dict, dim: int) -> dict[str, np.ndarray]:
    """The simulator's latent directions of one space, as the demo recorded them in meta 'simulator'."""
    import base64

    space = (sim.get("text_directions") or {}).get(str(dim))
    if space is None:
        raise StoreError(f"this simulated store records no text directions for {dim}-d vectors; rebuild it with "
                         f"`python -m audit demo`")
    data = np.frombuffer(base64.b64decode(space["float64_b64"]), dtype="<f8").reshape(len(space["keys"]), dim)
    return dict(zip(space["keys"], data))


def simulated_encoder(dirs: dict[str, np.ndarray]) -> Encoder:
    """Keyword lookup into the simulator's latent directions (recorded by audit/demo/builder.record_simulator)."""
    dim = len(next(iter(dirs.values())))
    words = {k.split(":", 1)[-1]: v for k, v in dirs.items()}
    synonyms = {"female": "woman", "women": "woman", "girl": "woman", "male": "man", "men": "man", "boy": "man",
                "old": "older", "elderly": "older", "kid": "child", "asian": "east asian", "indian": "south asian",
                "nude": "nsfw", "explicit": "nsfw", "sexy": "nsfw", "watermarked": "watermark"}

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim), np.float32)
        for i, t in enumerate(texts):
            low = t.lower()
            v = np.zeros(dim, np.float32)
            for w, d in words.items():
                if w in low:
                    v += d
            for s, w in synonyms.items():
                if f" {s} " in f" {low} " and w in words:
                    v += words[w]
            if not v.any():  # an unknown prompt: a fixed random direction per text
                # zlib.crc32, not hash(): str hashes are salted per process, prompts must embed the same everywhere
                v = np.random.default_rng([zlib.crc32(low.encode()), dim]).standard_normal(dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out

    return encode


def text_encoder(store: Store, model: str, *, text_model: str | None = None) -> tuple[Encoder, str]:
    """(encoder, label) for prompts in the space of ``model``'s stored embeddings."""
    if text_model:
        from audit.embed.open_clip_backend import OpenClipEmbedder

        arch, _, tag = text_model.partition(":")
        emb = OpenClipEmbedder(arch, tag or "none", precision="fp32")
        label = f"open_clip {emb.key}" + (" (RANDOM weights)" if emb.random_weights else "")
        return (lambda texts: emb.encode_texts(texts)), label
    info = store.model_info(model)
    backend = info["backend"]
    if backend == "datacomp-npz":
        sim = simulator_meta(store)
        if sim is None:
            raise StoreError(f"{model} holds DataComp npz vectors from OpenAI CLIP; give --text-model "
                             f"(e.g. ViT-L-14:openai for l14, ViT-B-32:openai for b32) to embed prompts")
        dim = int(info["dim"])
        return simulated_encoder(simulated_directions(sim, dim)), "simulated text encoder (latent directions of the demo pool)"
    if backend not in LOADERS:
        raise StoreError(f"no text encoder for backend {backend!r} (model {model})")
    return LOADERS[backend](info)
