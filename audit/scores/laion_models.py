"""LAION's CLIP-embedding classifiers, computed from the weight files in data/models/ (maths only; no store I/O).

* NSFW detectors (LAION-AI/CLIP-based-NSFW-Detector, MIT): AutoKeras models exported to ``laion_nsfw_{l14,b32}.npz``
  plus a layer list (``.json``). Forward pass: a categorical encoding of a few columns (the value printed with C's
  ``%f``, looked up in a vocabulary: position + 1, else 0), per-feature standardisation, Dense/ReLU layers, a
  sigmoid. Input: the L2-normalised image embedding widened to float64, as Keras does.
* Aesthetic predictor (christophschuhmann/improved-aesthetic-predictor, Apache-2.0): the original torch state dict
  ``sac+logos+ava1-l14-linearMSE.pth``, five Linear layers with no activation between them (the dropouts are
  identity at inference), on the L2-normalised ViT-L/14 image embedding.

Every loader takes a local path; ``resolve_weights`` also accepts an http(s) URL for users with network (downloaded
once into the torch hub cache and checked against the expected sha256).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.files import sha256_of

MODELS_DIR = Path(__file__).resolve().parents[2] / "data" / "models"
NSFW_FILES = {768: "laion_nsfw_l14", 512: "laion_nsfw_b32"}
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/"
                 "6934dd81792f086e613a121dbce43082cb8be85e/sac+logos+ava1-l14-linearMSE.pth")
AESTHETIC_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
NSFW_THRESHOLD = 0.5   # clip-retrieval flags p > 0.5 as unsafe


class WeightsError(ValueError):
    pass


def resolve_weights(spec: str | None, default: Path, *, sha256: str | None = None) -> Path:
    """A local weights file: ``spec`` as a path, or an http(s) URL downloaded once (hub cache), or the shipped
    default. A URL download is checked against ``sha256`` when given."""
    if not spec:
        path = default
    elif spec.startswith(("http://", "https://")):
        import os

        import torch.hub

        path = Path(torch.hub.get_dir()) / "audit-weights" / spec.rsplit("/", 1)[-1]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(spec, str(path) + ".part", progress=False)
            except Exception as exc:  # offline, 404, ...
                raise WeightsError(f"could not download {spec}: {exc}; pass a local file instead") from exc
            os.replace(str(path) + ".part", path)
    else:
        path = Path(spec)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 and spec and spec.startswith(("http://", "https://")) and sha256_of(path) != sha256:
        raise WeightsError(f"{path}: sha256 differs from the published file's ({sha256[:12]}…)")
    return path


# ---- NSFW ---------------------------------------------------------------------------------------------
@dataclass
class NsfwModel:
    name: str
    dim: int
    int_columns: np.ndarray                 # columns looked up in a vocabulary
    vocab: dict[int, dict[str, int]]        # column -> {"%f" string: 1 + position}
    mean: np.ndarray
    scale: np.ndarray                       # max(sqrt(var), eps)
    dense: list[tuple[np.ndarray, np.ndarray, str]]   # (kernel [in, out], bias, activation after)

    def predict(self, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """(n, dim) L2-normalised embeddings -> (n,) float32 NSFW probability."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise WeightsError(f"{self.name} takes {self.dim}-d embeddings, got shape {x.shape}")
        out = np.empty(len(x), dtype=np.float32)
        for s in range(0, len(x), batch):
            out[s:s + batch] = self._forward(x[s:s + batch])
        return out

    def _forward(self, x: np.ndarray) -> np.ndarray:
        h = np.nan_to_num(np.array(x, dtype=np.float32), nan=0.0)   # Keras: float64 -> float32, NaN -> 0
        for c in self.int_columns:   # only these columns are looked at in float64 (exact for float32 input)
            h[:, c] = _lookup(np.asarray(x[:, c], dtype=np.float64), self.vocab[int(c)])
        h = (h - self.mean) / self.scale
        for kernel, bias, act in self.dense:
            h = h @ kernel + bias
            if act == "relu":
                np.maximum(h, 0, out=h)
            elif act == "sigmoid":
                with np.errstate(over="ignore"):   # exp(-h) = inf gives 0, as it should
                    h = 1.0 / (1.0 + np.exp(-h))
        return h[:, 0].astype(np.float32)


def _lookup(values: np.ndarray, vocab: dict[str, int]) -> np.ndarray:
    """float64 values -> float32 vocabulary index (1 + position, 0 if absent) of C's ``%f`` string of each value.
    Formats each distinct value once: stored float16 embeddings have a few thousand per column."""
    uniq, inverse = np.unique(values, return_inverse=True)
    idx = np.array([vocab.get("%f" % v, 0) for v in uniq], dtype=np.float32)
    return idx[inverse.ravel()]


def load_nsfw(dim: int, path: str | Path | None = None) -> NsfwModel:
    """The detector for ``dim`` (768: ViT-L/14, 512: ViT-B/32) from its .npz + .json (default: data/models)."""
    if path is None:
        if dim not in NSFW_FILES:
            raise WeightsError(f"LAION's NSFW detectors take 768-d (ViT-L/14) or 512-d (ViT-B/32) image "
                               f"embeddings; this model's are {dim}-d")
        path = MODELS_DIR / f"{NSFW_FILES[dim]}.npz"
    path = Path(path)
    spec = json.loads(path.with_suffix(".json").read_text())
    z = np.load(path)
    layers = {layer.get("index"): layer for layer in spec["layers"]}
    enc = next(lay for lay in spec["layers"] if lay["type"].startswith("MultiCategoryEncoding"))
    norm = next(lay for lay in spec["layers"] if lay["type"] == "Normalization")
    int_cols = z[enc["int_columns_array"]].astype(int)
    vocab = {int(c): {str(s): j + 1 for j, s in enumerate(z[enc["vocab_arrays"][str(int(c))]])} for c in int_cols}
    dense = []
    for i in sorted(k for k in layers if k is not None):
        lay = layers[i]
        if lay["type"] == "Dense":
            dense.append([z[lay["kernel"]].astype(np.float32), z[lay["bias"]].astype(np.float32), lay["activation"]])
        elif lay["type"] == "Activation" and dense:
            dense[-1][2] = lay["activation"]
    in_dim = int(spec["input"]["dim"])
    scale = np.maximum(np.sqrt(z[norm["var"]].astype(np.float32)), np.float32(norm["epsilon"]))
    return NsfwModel(name=spec["name"], dim=in_dim, int_columns=int_cols, vocab=vocab,
                     mean=z[norm["mean"]].astype(np.float32), scale=scale,
                     dense=[(k, b, a) for k, b, a in dense])


# ---- aesthetic ----------------------------------------------------------------------------------------
@dataclass
class AestheticModel:
    layers: list[tuple[np.ndarray, np.ndarray]]   # (kernel [in, out], bias); no activations

    def predict(self, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """(n, 768) L2-normalised ViT-L/14 image embeddings -> (n,) float32 aesthetic score."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.layers[0][0].shape[0]:
            raise WeightsError(f"the aesthetic predictor takes {self.layers[0][0].shape[0]}-d embeddings, "
                               f"got shape {x.shape}")
        out = np.empty(len(x), dtype=np.float32)
        for s in range(0, len(x), batch):
            h = x[s:s + batch]
            for kernel, bias in self.layers:
                h = h @ kernel + bias
            out[s:s + batch] = h[:, 0]
        return out


def load_aesthetic(path: str | Path) -> AestheticModel:
    """The original state dict (keys layers.{0,2,4,6,7}.{weight,bias}), loaded with torch (weights only)."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a torch state dict: {exc}") from exc
    keys = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda k: int(k.split(".")[1]))
    if keys != ["layers.0", "layers.2", "layers.4", "layers.6", "layers.7"]:
        raise WeightsError(f"{path}: expected the improved-aesthetic-predictor MLP (layers.0,2,4,6,7), got {keys}")
    return AestheticModel([(state[f"{k}.weight"].float().numpy().T.copy(), state[f"{k}.bias"].float().numpy())
                           for k in keys])
