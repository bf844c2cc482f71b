"""Caption-lexicon demographics (methods.md §6.3, the regexes of "Who's in and who's out?").

Case-insensitive regexes with word boundaries, one attribute per category. A caption that matches one
group is labelled with it; two or more groups of the same attribute give ``multiple``; none gives
``unknown``. These are *mentions in alt-text*, an imputed proxy, not the identity of anyone pictured.
The age words are our addition (the paper's lexicon has none); bare "old" counts only before a person
noun ("old man"), so "old coins" is not an age mention. Known weakness kept on purpose, since it is
the paper's lexicon: "white" also matches "white background".
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from audit.annotators.base import ANNOTATORS, MULTIPLE, UNKNOWN, Annotator

# attribute -> group -> regex alternatives (word-bounded, case-insensitive)
LEXICON: dict[str, dict[str, list[str]]] = {
    "caption_gender": {
        "woman": [r"wom[ae]n", r"females?", r"she", r"her", r"hers"],
        "man": [r"m[ae]n", r"males?", r"he", r"him", r"his"],
        "non-binary": [r"non[ -]?binary"],
        "trans": [r"trans(?:\+|gender)?"],
        "they/them": [r"they", r"them", r"theirs"],
    },
    "caption_orientation": {
        "homosexual": [r"homosexuals?"], "gay": [r"gays?"], "lesbian": [r"lesbians?"],
        "straight": [r"straights?"], "heterosexual": [r"heterosexuals?"], "bisexual": [r"bi-?sexuals?"],
    },
    "caption_race": {
        "black": [r"blacks?"], "african": [r"african(?:[ -]american)?s?"], "latino": [r"latin[oax]?s?"],
        "asian": [r"asian(?:[ -]american)?s?"], "white": [r"whites?"], "caucasian": [r"caucasians?"],
        "european": [r"european(?:[ -]american)?s?"],
    },
    "caption_religion": {
        "muslim": [r"muslims?"], "jewish": [r"jew(?:s|ish)?"], "christian": [r"christians?"],
    },
    "caption_age": {
        "child": [r"child(?:ren)?", r"kids?", r"boys?", r"girls?", r"bab(?:y|ies)", r"toddlers?", r"infants?"],
        "young": [r"young", r"youth", r"teen(?:ager)?s?"],
        "middle-aged": [r"middle[- ]aged"],
        # bare "old" is not a person word ("old coins"): only "old" before a person noun
        "older": [r"older", r"elderly", r"seniors?", r"grand(?:ma|mother|pa|father|parent)s?",
                  r"old (?:m[ae]n|wom[ae]n|lady|ladies|person|people|couples?|folks?)"],
    },
}

METHOD = "caption lexicon (Hong et al. 2024 regexes)"


def compile_lexicon(lexicon=LEXICON) -> dict[str, dict[str, re.Pattern]]:
    return {attr: {g: re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE) for g, alts in groups.items()}
            for attr, groups in lexicon.items()}


_COMPILED = compile_lexicon()


def label_caption(text: str | None, attribute: str) -> str:
    """The group of one caption for one attribute: a group name, ``multiple`` or ``unknown``."""
    if not isinstance(text, str):
        return UNKNOWN
    hits = [g for g, rx in _COMPILED[attribute].items() if rx.search(text)]
    return hits[0] if len(hits) == 1 else (MULTIPLE if hits else UNKNOWN)


def label_captions(texts: pd.Series, attribute: str) -> np.ndarray:
    """Vectorised label_caption over a Series of captions."""
    s = texts.fillna("").astype(str)
    hits = np.stack([s.str.contains(rx).to_numpy() for rx in _COMPILED[attribute].values()], axis=1)
    names = np.array(list(_COMPILED[attribute]), dtype=object)
    count = hits.sum(axis=1)
    first = names[hits.argmax(axis=1)]
    return np.where(count == 1, first, np.where(count > 1, MULTIPLE, UNKNOWN))


@ANNOTATORS.register
class CaptionLexicon(Annotator):
    name = "caption"
    version = 2
    method = METHOD
    attributes = {
        "caption_gender": "gender words in the caption (imputed from text)",
        "caption_orientation": "sexual-orientation words in the caption (imputed from text)",
        "caption_race": "race/ethnicity words in the caption (imputed from text)",
        "caption_religion": "religion words in the caption (imputed from text)",
        "caption_age": "age words in the caption (imputed from text; our addition)",
    }

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {})]

    row_columns = ("caption",)

    def compute_rows(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        parts = []
        for attr in self.attributes:
            labels = label_captions(frame["caption"], attr)
            parts.append(pd.DataFrame({
                "uid": frame["uid"], "attribute": attr, "label": labels,
                "confidence": np.where(labels == UNKNOWN, 0.0, 1.0), "method": METHOD}))
        return pd.concat(parts, ignore_index=True)
