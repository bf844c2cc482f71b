"""DataComp's basic filter (methods.md §1.4 b), with every rule stored as its own column and reason.

A sample is kept iff all hold (``baselines/apply_filter.py``, ``load_uids_with_basic_filter_helper``)::

    English       top-1 language of text.replace("\\n", " ") is "en"   (py3langid here; fastText lid.176 there)
    words         len(text.split()) > 2
    chars         len(text) > 5
    min side      min(original_width, original_height) >= 200
    aspect        max(w, h) / min(w, h) <= 3.0                          (exactly 3.0 is kept)

Stored columns: ``basic`` (1 kept / 0 excluded) and the measured values ``basic_words``, ``basic_chars``,
``basic_english`` (1/0), ``basic_min_side`` (px) and ``basic_aspect``, so each rule is its own reason in a
recipe (``basic`` expands to the five rules, see audit.decide.recipes) and a user can move one threshold alone.
A missing size (url-only rows) or a zero side gives NaN for min side and aspect: both rules fail.
"""
from __future__ import annotations

import numpy as np

from audit.scores.base import SCORES, Score, ScoreContext

MIN_WORDS_EXCLUSIVE = 2
MIN_CHARS_EXCLUSIVE = 5
MIN_SIDE = 200
MAX_ASPECT = 3.0
COLUMNS = ("basic", "basic_words", "basic_chars", "basic_english", "basic_min_side", "basic_aspect")


def basic_columns(captions, widths, heights, english) -> dict[str, np.ndarray]:
    """The basic filter's measures and decision. captions: (n,) str; widths, heights: (n,) numbers (NaN =
    unknown); english: (n,) bool from a language detector -> {column: (n,) float64}."""
    caps = ["" if c is None or (isinstance(c, float) and np.isnan(c)) else str(c) for c in captions]
    words = np.array([len(c.split()) for c in caps], dtype=np.float64)
    chars = np.array([len(c) for c in caps], dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    lo, hi = np.fmin(w, h), np.fmax(w, h)
    lo = np.where(np.isnan(w) | np.isnan(h), np.nan, lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(lo > 0, hi / lo, np.nan)
    min_side = np.where(lo > 0, lo, np.where(lo == 0, 0.0, np.nan))
    eng = np.asarray(english, dtype=bool)
    with np.errstate(invalid="ignore"):
        keep = ((words > MIN_WORDS_EXCLUSIVE) & (chars > MIN_CHARS_EXCLUSIVE) & eng
                & (min_side >= MIN_SIDE) & (aspect <= MAX_ASPECT))
    return {"basic": keep.astype(np.float64), "basic_words": words, "basic_chars": chars,
            "basic_english": eng.astype(np.float64), "basic_min_side": min_side, "basic_aspect": aspect}


@SCORES.register
class Basic(Score):
    name = "basic"
    version = 1
    uses_model = False
    description = "DataComp basic filter: English, > 2 words, > 5 characters, min side ≥ 200 px, aspect ≤ 3"

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        return list(COLUMNS)

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {})]

    row_columns = ("caption", "width", "height")

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        self.run_description = self.run_descriptions(ctx.params)
        return self.compute_rows(ctx.samples(list(self.row_columns)), ctx.params)

    def compute_rows(self, frame, params: dict) -> dict[str, np.ndarray]:
        from audit import lang

        captions = frame["caption"].tolist()
        return basic_columns(captions, frame["width"].to_numpy(dtype=float), frame["height"].to_numpy(dtype=float),
                             lang.is_english(captions))

    def run_descriptions(self, params: dict) -> dict[str, str]:
        from audit import lang

        return {
            "basic": self.description + f" (language: {lang.DETECTOR})",
            "basic_words": "basic filter: number of whitespace-separated words in the caption (rule: > 2)",
            "basic_chars": "basic filter: number of characters in the caption (rule: > 5)",
            "basic_english": f"basic filter: 1 if the caption's top-1 language is English ({lang.DETECTOR})",
            "basic_min_side": "basic filter: smaller image side in pixels (rule: ≥ 200; NaN = size unknown)",
            "basic_aspect": "basic filter: max(w, h) / min(w, h) (rule: ≤ 3.0; NaN = size unknown or zero)",
        }
