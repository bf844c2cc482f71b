"""CLIP zero-shot perceived gender, age bracket and FairFace race, from stored image embeddings.

Each label is a class with a prompt ensemble (CLIP's templates × a few phrases, averaged and normalised,
as in Radford et al.'s zero-shot recipe). Everyday "no person" scenes (an animal, a car, food, a
landscape, ...) compete as background classes: an image whose top class is one of them gets ``unknown``
(reason "no person"). Probabilities are ``softmax(100 · f_i · t_c)`` summed per label; an image whose top
label leads the runner-up by less than the abstain margin gets ``unknown`` (reason "abstained").

Prompts are embedded with ``audit.textenc.text_encoder`` into the space of the stored model. Results from
a random-weight model or from the demo's *simulated* text encoder are flagged (attribute_catalog
random_weights, and the method string): they exercise the pipeline, they say nothing about people.
The FairFace categories (Kärkkäinen & Joo 2021) are perceived-race labels of a face dataset; here they
are applied to whole images, a further approximation.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from audit.annotators.base import ANNOTATORS, UNKNOWN, Annotator, AnnotatorContext

LOGIT_SCALE = 100.0          # CLIP's learned temperature (exp(4.6052))
NONE = "__none__"            # internal label of the background classes
TEMPLATES = ("a photo of {}.", "a close-up photo of {}.", "a cropped photo of {}.", "a good photo of {}.",
             "a low resolution photo of {}.")

# Everyday scenes without people: each phrase is its own background class.
BACKGROUND = ("an animal", "a dog", "a cat", "a bird", "a car", "a bicycle", "a house", "a city skyline",
              "a mountain landscape", "a beach", "a flower", "food", "a pizza", "a cake", "a shoe", "a dress",
              "a phone", "a logo", "a painting", "a chart", "a page of text")

GENDER = {"woman": ("a woman", "a female person"), "man": ("a man", "a male person")}
AGE = {
    "child": ("a child", "a kid", "a baby"),
    "young": ("a young adult", "a teenager", "a young person"),
    "middle-aged": ("a middle-aged person", "a middle-aged adult"),
    "older": ("an older person", "an elderly person", "a senior citizen"),
}
# FairFace's seven perceived-race categories (labels lower-cased; "Latino_Hispanic" -> "latino/hispanic").
RACE_FAIRFACE7 = {
    "white": ("a White person", "a Caucasian person", "a European person"),
    "black": ("a Black person", "an African person", "an African American person"),
    "latino/hispanic": ("a Latino person", "a Hispanic person"),
    "east asian": ("an East Asian person", "a Chinese person", "a Japanese person", "a Korean person"),
    "southeast asian": ("a Southeast Asian person", "a Filipino person", "a Vietnamese person", "a Thai person"),
    "indian": ("an Indian person", "a South Asian person"),
    "middle eastern": ("a Middle Eastern person", "an Arab person"),
}
# FairFace's four-category variant (White, Black, Asian, Indian).
RACE_FAIRFACE4 = {
    "white": RACE_FAIRFACE7["white"], "black": RACE_FAIRFACE7["black"],
    "asian": RACE_FAIRFACE7["east asian"] + RACE_FAIRFACE7["southeast asian"], "indian": RACE_FAIRFACE7["indian"],
}


def class_list(groups: dict[str, tuple[str, ...]], background: tuple[str, ...] = BACKGROUND
               ) -> list[tuple[str, tuple[str, ...]]]:
    """(label, phrases) per class: one class per group, one background class (label NONE) per scene."""
    return [(g, p) for g, p in groups.items()] + [(NONE, (b,)) for b in background]


def class_embeddings(encode, classes: list[tuple[str, tuple[str, ...]]], templates=TEMPLATES) -> np.ndarray:
    """Prompt-ensemble text embeddings: (k, d) float32, one unit row per class.

    Row c = normalise(mean over templates × phrases of encode(template.format(phrase))).
    """
    prompts, owner = [], []
    for c, (_, phrases) in enumerate(classes):
        for p in phrases:
            for t in templates:
                prompts.append(t.format(p))
                owner.append(c)
    emb = np.asarray(encode(prompts), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    owner = np.asarray(owner)
    out = np.stack([emb[owner == c].mean(axis=0) for c in range(len(classes))])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def label_probabilities(img: np.ndarray, text: np.ndarray, owners: np.ndarray, n_labels: int,
                        scale: float = LOGIT_SCALE) -> np.ndarray:
    """softmax(scale · img @ text.T) summed per label.

    img (n, d) unit rows, text (k, d) unit rows, owners (k,) label index of each class -> (n, n_labels).
    """
    logits = scale * (img.astype(np.float32) @ text.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((len(img), n_labels), np.float64)
    for j in range(n_labels):
        out[:, j] = p[:, owners == j].sum(axis=1)
    return out


def decide(probs: np.ndarray, labels: list[str], margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top label per row with an abstain margin.

    probs (n, L) per-label probabilities. Returns (label, confidence, reason) arrays; reason is "" for a
    decision, "no person" when the top label is the background, "abstained" when p1 − p2 < margin.
    """
    order = np.argsort(-probs, axis=1)
    rows = np.arange(len(probs))
    p1 = probs[rows, order[:, 0]]
    p2 = probs[rows, order[:, 1]] if probs.shape[1] > 1 else np.zeros(len(probs))
    names = np.asarray(labels, dtype=object)
    top = names[order[:, 0]]
    reason = np.where(top == NONE, "no person", np.where(p1 - p2 < margin, "abstained", ""))
    label = np.where(reason == "", top, UNKNOWN)
    conf = np.where(reason == "", p1, 0.0)
    return label.astype(object), conf.astype(np.float64), reason.astype(object)


def zero_shot_labels(img: np.ndarray, text: np.ndarray, owners: np.ndarray, labels: list[str], margin: float,
                     scale: float = LOGIT_SCALE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """label_probabilities + decide, for one chunk of image vectors."""
    return decide(label_probabilities(img, text, owners, len(labels), scale), labels, margin)


def prepare(encode, groups: dict[str, tuple[str, ...]], background=BACKGROUND
            ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(class text embeddings, owner label index per class, label names, number of prompts)."""
    classes = class_list(groups, background)
    labels = list(dict.fromkeys(c[0] for c in classes))
    owners = np.array([labels.index(c[0]) for c in classes])
    n_prompts = sum(len(p) for _, p in classes) * len(TEMPLATES)
    return class_embeddings(encode, classes), owners, labels, n_prompts


def encoder_flags(store, model: str, label: str) -> bool:
    """True when zero-shot results are not meaningful: random-weight model or simulated text encoder."""
    random_model = bool(store.model_info(model)["random_weights"])
    return random_model or "simulated" in label or "RANDOM" in label


def prepare_tasks(store, model: str, tasks: dict[str, dict[str, tuple[str, ...]]], *, margin: float,
                  background=BACKGROUND, text_model: str | None = None) -> tuple[dict, str, bool]:
    """Once per run: ({"margin", "tasks": {attribute: (class text embeddings, owners, labels, method base)}},
    the text encoder's label, flagged). Small and picklable: what every batch of vectors needs."""
    from audit.embed.textenc import text_encoder

    encode, enc_label = text_encoder(store, model, text_model=text_model)
    flagged = encoder_flags(store, model, enc_label)
    tag = " [RANDOM/SIMULATED: not meaningful]" if flagged else ""
    out = {}
    for a, groups in tasks.items():
        text, owners, labels, n_prompts = prepare(encode, groups, background)
        out[a] = (text, owners, labels, f"CLIP zero-shot ({model}; {enc_label}; {n_prompts} prompts; margin {margin:g}){tag}")
    return {"margin": margin, "tasks": out}, enc_label, flagged


def label_vectors(uids, img: np.ndarray, prepared: dict) -> pd.DataFrame:
    """The long frame (uid, attribute, label, confidence, method) of these image vectors (float32 (n, d), any
    norm); a row that is not finite gets ``unknown`` with the reason "no embedding"."""
    uids = np.asarray(uids, dtype=object)
    n = len(uids)
    finite = np.isfinite(img).all(axis=1)
    f = img[finite]
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    frames = []
    for a, (text, owners, labels, base) in prepared["tasks"].items():
        lab, conf, why = np.full(n, UNKNOWN, dtype=object), np.zeros(n), np.full(n, "no embedding", dtype=object)
        if len(f):
            lab[finite], conf[finite], why[finite] = zero_shot_labels(f, text, owners, labels, prepared["margin"])
        method = np.where(why == "", base, base + "; " + why.astype(str))
        frames.append(pd.DataFrame({"uid": uids, "attribute": a, "label": lab, "confidence": conf, "method": method}))
    return pd.concat(frames, ignore_index=True)


def without_vectors(uids, prepared: dict) -> pd.DataFrame:
    """The long frame of samples that have no stored vector: ``unknown``, reason "no embedding"."""
    return label_vectors(uids, np.full((len(uids), 1), np.nan, np.float32), prepared)


@ANNOTATORS.register
class ZeroShot(Annotator):
    name = "zeroshot"
    version = 1
    method = "CLIP zero-shot with prompt ensembles and an abstain margin (perceived labels)"
    attributes = {
        "zeroshot_gender": "perceived gender by CLIP zero-shot (woman/man; unknown = no person or abstained)",
        "zeroshot_age": "perceived age bracket by CLIP zero-shot (child/young/middle-aged/older)",
        "zeroshot_race": "perceived race by CLIP zero-shot, FairFace categories (an estimate, not identity)",
    }

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--margin", type=float, default=0.2,
                            help="abstain when the top label's probability leads the next by less (default 0.2)")
        parser.add_argument("--race-set", choices=["fairface7", "fairface4"], default="fairface7",
                            help="FairFace's 7 categories or its 4-category variant")
        parser.add_argument("--text-model", help="open_clip MODEL:TAG to embed prompts for DataComp npz vectors "
                                                 "(e.g. ViT-L-14:openai)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if not getattr(args, "model", None):
            raise ValueError("zeroshot needs --model (an embedding model in the store, e.g. datacomp_l14)")
        if not 0.0 <= args.margin < 1.0:
            raise ValueError(f"--margin must be in [0, 1), got {args.margin}")
        return {"margin": args.margin, "race_set": args.race_set, "text_model": args.text_model}

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [("datacomp_l14", {"margin": 0.2, "race_set": "fairface7"})] if "datacomp_l14" in models else []

    vector_columns = ("img",)

    def prepare_vectors(self, store, model: str | None, params: dict, echo) -> tuple[dict, dict]:
        if not model:
            raise ValueError("zeroshot needs --model (an embedding model in the store, e.g. datacomp_l14)")
        race = RACE_FAIRFACE4 if params.get("race_set") == "fairface4" else RACE_FAIRFACE7
        tasks = {"zeroshot_gender": GENDER, "zeroshot_age": AGE, "zeroshot_race": race}
        prepared, enc_label, flagged = prepare_tasks(store, model, tasks, margin=float(params.get("margin", 0.2)),
                                                     text_model=params.get("text_model"))
        method = f"{self.method}; {model}; {enc_label}" + (" [RANDOM/SIMULATED: not meaningful]" if flagged else "")
        return prepared, {"method": method, "random_weights": flagged}

    def compute_vectors(self, vectors: dict, prepared: dict) -> pd.DataFrame:
        return label_vectors(vectors["uid"].to_numpy(zero_copy_only=False), vectors["img"], prepared)

    def without_vectors(self, uids, prepared: dict) -> pd.DataFrame:
        return without_vectors(uids, prepared)
