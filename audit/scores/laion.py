"""DataComp's LAION-2B reproduction filter (methods.md §1.4 d): B/32 CLIP score ≥ 0.28 and English.

Stored columns: ``laion`` (1 kept / 0 excluded), ``laion_b32`` (the B/32 CLIP score it used, copied so the
recipe is self-contained) and ``laion_english`` (1/0). The reference detects language with gcld3; here it is
py3langid (audit.lang), so the English rule can differ on short or mixed captions. The B/32 score is the
DataComp parquet's ``clip_b32_similarity_score`` (OpenAI CLIP B/32), else ``clip_datacomp_b32`` computed from
the stored B/32 vectors; ``--clip-score`` picks another.
"""
from __future__ import annotations

import argparse

import numpy as np

from audit.scores.base import SCORES, Score
from audit.store import StoreError

THRESHOLD = 0.28
CANDIDATES = ("clip_b32_similarity_score", "clip_datacomp_b32")


def laion_columns(b32: np.ndarray, english: np.ndarray, threshold: float = THRESHOLD) -> dict[str, np.ndarray]:
    """b32: (n,) CLIP scores (NaN = none), english: (n,) bool -> {laion, laion_b32, laion_english}."""
    s = np.asarray(b32, dtype=np.float64)
    eng = np.asarray(english, dtype=bool)
    with np.errstate(invalid="ignore"):
        keep = (s >= threshold) & eng
    return {"laion": keep.astype(np.float64), "laion_b32": s, "laion_english": eng.astype(np.float64)}


def pick_clip_score(names: list[str], wanted: str | None) -> str:
    if wanted:
        if wanted not in names:
            raise StoreError(f"unknown score {wanted!r}; this store has: {', '.join(names) or 'none'}")
        return wanted
    for c in CANDIDATES:
        if c in names:
            return c
    raise StoreError("the LAION filter needs a CLIP ViT-B/32 score: this store has neither "
                     "clip_b32_similarity_score (DataComp parquet) nor clip_datacomp_b32 "
                     "(run `python -m audit score clip --model datacomp_b32`); or give --clip-score NAME")


@SCORES.register
class Laion(Score):
    name = "laion"
    version = 1
    uses_model = False
    description = "DataComp LAION-2B filter: CLIP B/32 score ≥ 0.28 and English caption"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--clip-score", help="stored B/32 CLIP score to use (default: " + " or ".join(CANDIDATES) + ")")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"clip_score": args.clip_score}

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        return ["laion", "laion_b32", "laion_english"]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {"clip_score": None})] if "datacomp_b32" in models else []

    row_columns = ("caption",)

    def row_scores(self, store, params: dict) -> dict[str, str]:
        return {"b32": pick_clip_score(store.score_names(), params.get("clip_score"))}

    def compute_rows(self, frame, params: dict) -> dict[str, np.ndarray]:
        from audit import lang

        return laion_columns(frame["b32"].to_numpy(dtype=float), lang.is_english(frame["caption"].tolist()))

    def run_descriptions(self, params: dict) -> dict[str, str]:
        from audit import lang

        name = params["row_scores"]["b32"]
        return {
            "laion": f"{self.description} ({name}; language: {lang.DETECTOR}, the reference uses gcld3)",
            "laion_b32": f"LAION filter: the B/32 CLIP score it used ({name}; rule ≥ {THRESHOLD})",
            "laion_english": f"LAION filter: 1 if the caption's top-1 language is English ({lang.DETECTOR})",
        }
