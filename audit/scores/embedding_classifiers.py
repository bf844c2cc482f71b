"""Scores from the stored image embedding alone, so a pool whose images were never downloaded (a DataComp
metadata + npz pool) can still be audited: LAION's NSFW detector and LAION's aesthetic predictor.

``score laion-nsfw --model M``  -> ``laion_nsfw_<model>``: NSFW probability (clip-retrieval flags > 0.5); the
                                   L/14 detector for 768-d embeddings, the B/32 one for 512-d.
``score aesthetic --model M``   -> ``aesthetic_<model>``: predicted aesthetic rating (~1-10, unbounded).

Both were trained on OpenAI CLIP embeddings (ViT-L/14, or B/32 for one NSFW detector). On any other embedding
space — another open_clip checkpoint, random weights, the demo's simulated vectors — the numbers are computed the
same way but mean nothing; the run description says so, and random-weight/simulated flags travel as for every
score. The weights file and its sha256 are parameters of the run (``runs.params``).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np

from audit.scores.base import SCORES, Score
from audit.store import slug
from audit.scores.laion_models import (AESTHETIC_FILE, AESTHETIC_SHA256, MODELS_DIR, NSFW_FILES, NSFW_THRESHOLD,
                                       load_aesthetic, load_nsfw, resolve_weights, sha256_of)

# embedding models the classifiers were trained for: (dim, the OpenAI architecture) per DataComp key or open_clip arch
TRAINED_ON = {768: ("ViT-L-14", "datacomp_l14"), 512: ("ViT-B-32", "datacomp_b32")}


def space_note(store, model: str, dims: tuple[int, ...], what: str) -> str:
    """'' when ``model`` is OpenAI CLIP of a dim the classifier takes; otherwise a warning for the description."""
    info = store.model_info(model)
    dim = int(info["dim"])
    if dim not in dims:
        raise ValueError(f"{what} takes {' or '.join(map(str, dims))}-d image embeddings; {model} has {dim}")
    arch, key = TRAINED_ON[dim]
    if info.get("simulated"):
        return " [SIMULATED vectors: not OpenAI CLIP space, the output carries no meaning]"
    if model == key or (str(info.get("arch")) == arch and str(info.get("pretrained")) == "openai"):
        return ""
    return (f" [model {model} is not OpenAI CLIP {arch}, the space {what} was trained on: "
            "the output carries no meaning]")


def predict_images(img: np.ndarray, predict) -> np.ndarray:
    """predict(the L2-normalised image vectors) for every row with a finite vector; NaN for the others."""
    from audit.store.vectors import l2_normalise

    with np.errstate(invalid="ignore", divide="ignore"):
        x = l2_normalise(img)
    out = np.full(len(x), np.nan)
    ok = np.isfinite(x).all(axis=1)
    out[ok] = predict(x[ok])
    return out


@functools.lru_cache(maxsize=4)
def _nsfw(dim: int, path: str):
    return load_nsfw(dim, path)      # once per process (a Ray worker, a local worker), not once per batch


@functools.lru_cache(maxsize=4)
def _aesthetic(path: str):
    return load_aesthetic(path)


def _weights_params(path) -> dict:
    return {"weights": str(path), "sha256": sha256_of(path)}


def nsfw_params(weights: str | None) -> dict:
    """The run's provenance: the given file and its sha256, or both shipped detectors' (picked by dimension)."""
    if weights:
        return {"weights": weights, "sha256": sha256_of(weights)}
    return {"weights": None, "sha256": {str(d): sha256_of(MODELS_DIR / f"{f}.npz") for d, f in NSFW_FILES.items()}}


@SCORES.register
class LaionNsfw(Score):
    name = "laion-nsfw"
    version = 1
    description = "LAION CLIP-based NSFW detector on the image embedding (probability; > 0.5 = NSFW)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--weights", help="the detector's .npz (its .json beside it); default: the shipped "
                                              "L/14 or B/32 file in data/models/, by the model's dimension")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"weights": args.weights}

    @classmethod
    def complete_params(cls, params: dict) -> dict:
        return {**params, **nsfw_params(params.get("weights"))}

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        return [f"laion_nsfw_{slug(model)}"]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(m, {"weights": None}) for m in models if m == "datacomp_l14"]   # B/32: same code, not needed

    vector_columns = ("img",)

    def prepare_vectors(self, store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        note = space_note(store, model, tuple(NSFW_FILES), "LAION's NSFW detector")
        dim = int(store.model_info(model)["dim"])
        path = Path(params.get("weights") or MODELS_DIR / f"{NSFW_FILES[dim]}.npz")
        detector = _nsfw(dim, str(path))          # a broken weights file fails the run here, before any batch
        sha = params["sha256"] if params.get("weights") else params["sha256"][str(dim)]
        column = self.output_names(model, params)[0]
        if note:
            echo(note.strip())
        return ({"column": column, "dim": dim, "path": str(path)},
                {column: f"{self.description}: {detector.name} ({path.name}, sha256 {sha[:12]}…){note}"})

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        return {prepared["column"]: predict_images(vectors["img"], _nsfw(prepared["dim"], prepared["path"]).predict)}


@SCORES.register
class Aesthetic(Score):
    name = "aesthetic"
    version = 1
    description = "LAION improved aesthetic predictor (sac+logos+ava1, ViT-L/14 linear MLP): rating ~1-10"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--weights", help=f"the state dict: a local path or an http(s) URL (default: "
                                              f"data/models/{AESTHETIC_FILE}, sha256 {AESTHETIC_SHA256[:12]}…)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"weights": args.weights}

    @classmethod
    def complete_params(cls, params: dict) -> dict:
        path = resolve_weights(params.get("weights"), MODELS_DIR / AESTHETIC_FILE, sha256=AESTHETIC_SHA256)
        return {**params, **_weights_params(path)}

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        return [f"aesthetic_{slug(model)}"]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(m, {"weights": None}) for m in models if m == "datacomp_l14"]

    vector_columns = ("img",)

    def prepare_vectors(self, store, model: str, params: dict, echo) -> tuple[dict, dict[str, str]]:
        note = space_note(store, model, (768,), "the aesthetic predictor")
        path = Path(params["weights"])
        _aesthetic(str(path))                     # a broken state dict fails the run here, before any batch
        column = self.output_names(model, params)[0]
        if note:
            echo(note.strip())
        return ({"column": column, "path": str(path)},
                {column: f"{self.description} ({path.name}, sha256 {params['sha256'][:12]}…){note}"})

    def compute_vectors(self, vectors: dict[str, np.ndarray], prepared: dict) -> dict[str, np.ndarray]:
        return {prepared["column"]: predict_images(vectors["img"], _aesthetic(prepared["path"]).predict)}
