"""DataComp's text-based filter (methods.md §1.4 e): English captions that mention an entity.

Reference: keep iff fastText says English and some whitespace token ``w`` of the caption has
``nltk.corpus.wordnet.synsets(w)[0].offset()`` in the ImageNet-21k WordNet id list (first synset only,
punctuation stays attached). Two entity lists are accepted here (``--entities``):

* a file of WordNet ids (``n01440764`` per line, the DataComp asset format): the reference rule exactly, which
  needs ``nltk`` with its ``wordnet`` corpus installed (not installed on this machine: a clear message says so);
* a file of words (one per line, or a JSON list), or ``imagenet-words`` (the lower-cased words of open_clip's
  1,000 ImageNet-1k class names, minus a few function words): a token matches when its lower-cased form is in
  the list. No lemmatisation (WordNet would map "dogs" to "dog") and a far smaller vocabulary than the 21k
  synsets, so this is a stand-in, labelled as such.
Stored columns: ``text_based`` (1/0), ``text_based_english`` (1/0), ``text_based_entity`` (1/0).
"""
from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

import numpy as np

from audit.scores.base import SCORES, Score, ScoreContext

BUILTIN = "imagenet-words"
STOP = {"of", "the", "and", "a", "an", "in", "on", "for", "with", "or", "s"}
_WNID = re.compile(r"^n\d{8}$")
ERR_NO_ENTITIES = ("the text-based filter needs an entity list: --entities FILE (one word per line, a JSON list, "
                   "or WordNet ids n01440764 per line) or --entities imagenet-words. DataComp's own list is the "
                   "ImageNet-21k WordNet synsets, which needs nltk + its wordnet corpus (not installed here).")
ERR_WORDNET = ("{path} holds WordNet ids, which need nltk with the wordnet corpus "
               "(pip install nltk && python -m nltk.downloader wordnet); not installed here ({why}). "
               "Give a word list instead.")


class EntityError(ValueError):
    pass


def imagenet_words() -> list[str]:
    from audit.scores.targets import imagenet_classnames

    words = {t for c in imagenet_classnames() for t in c.lower().replace("-", " ").replace("'", " ").split()}
    return sorted(w for w in words if w not in STOP and w.isalpha())


def read_entities(spec: str) -> tuple[str, list[str]]:
    """('words' | 'wordnet', entries) from a spec."""
    if spec == BUILTIN:
        return "words", imagenet_words()
    p = Path(spec)
    if not p.exists():
        raise EntityError(f"entity list not found: {spec}")
    text = p.read_text(encoding="utf-8")
    entries = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
    entries = [str(e).strip() for e in entries if str(e).strip()]
    if not entries:
        raise EntityError(f"no entities in {spec}")
    if all(_WNID.match(e) for e in entries):
        return "wordnet", entries
    return "words", entries


def _text(caption) -> str:
    """A caption as text: a missing one (None, NaN, pandas' NA) is empty."""
    return caption if isinstance(caption, str) else ""


def word_match(captions, words) -> np.ndarray:
    """Any whitespace token, lower-cased, is in ``words``. -> (n,) bool."""
    vocab = {w.lower() for w in words}
    return np.array([any(t.lower() in vocab for t in _text(c).split()) for c in captions], dtype=bool)


def wordnet_match(captions, wnids, *, path: str = "the entity list") -> np.ndarray:
    """DataComp's rule: the first synset's offset of any whitespace token is in the id list."""
    try:
        from nltk.corpus import wordnet as wn

        wn.ensure_loaded()
    except Exception as exc:  # ImportError, or LookupError when the corpus is missing
        raise EntityError(ERR_WORDNET.format(path=path, why=type(exc).__name__)) from None
    ids = {int(e[1:]) for e in wnids}
    cache: dict[str, bool] = {}

    def hit(tok: str) -> bool:
        if tok not in cache:
            s = wn.synsets(tok)
            cache[tok] = bool(s) and s[0].offset() in ids
        return cache[tok]

    return np.array([any(hit(t) for t in _text(c).split()) for c in captions], dtype=bool)


@SCORES.register
class TextBased(Score):
    name = "text-based"
    version = 1
    uses_model = False
    description = "DataComp text-based filter: English caption with a word from an entity list"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--entities", help="entity list: a words file, a WordNet-id file, or " + BUILTIN)

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if not args.entities:
            raise EntityError(ERR_NO_ENTITIES)
        if args.entities != BUILTIN:
            from audit.scores.targets import fingerprint

            if not Path(args.entities).exists():
                raise EntityError(f"entity list not found: {args.entities}")
            return {"entities": str(Path(args.entities).resolve()), "entities_fingerprint": fingerprint(args.entities)}
        return {"entities": BUILTIN}

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        return ["text_based", "text_based_english", "text_based_entity"]

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {"entities": BUILTIN})]

    # row-local: a caption's columns depend on that caption alone (streamed over the samples' parts, either engine)
    row_columns = ("caption",)

    @classmethod
    def complete_params(cls, params: dict) -> dict:
        """Fail the run before it starts (not every batch) when the list cannot be used."""
        spec = params.get("entities")
        if not spec:
            raise EntityError(ERR_NO_ENTITIES)
        kind, entries = _entities(spec, params.get("entities_fingerprint"))
        if kind == "wordnet":
            wordnet_match([], entries, path=spec)          # raises the message when nltk/wordnet is missing
        return params

    def compute(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        self.run_description = self.run_descriptions(ctx.params)
        return self.compute_rows(ctx.samples(list(self.row_columns)), ctx.params)

    def compute_rows(self, frame, params: dict) -> dict[str, np.ndarray]:
        from audit import lang

        spec = params["entities"]
        kind, entries = _entities(spec, params.get("entities_fingerprint"))
        caps = frame["caption"].tolist()
        ent = wordnet_match(caps, entries, path=spec) if kind == "wordnet" else word_match(caps, entries)
        eng = lang.is_english(caps)
        return {"text_based": (ent & eng).astype(float), "text_based_english": eng.astype(float),
                "text_based_entity": ent.astype(float)}

    def run_descriptions(self, params: dict) -> dict[str, str]:
        from audit import lang

        spec = params["entities"]
        kind, entries = _entities(spec, params.get("entities_fingerprint"))
        what = (f"{len(entries):,} WordNet ids (DataComp rule)" if kind == "wordnet" else
                f"{len(entries):,} words from {'ImageNet-1k class names (stand-in for the 21k WordNet synsets)' if spec == BUILTIN else Path(spec).name}, "
                "lower-cased whole-token match, no lemmatisation")
        return {
            "text_based": f"{self.description}: {what}; language {lang.DETECTOR}",
            "text_based_english": f"text-based: 1 if the caption's top-1 language is English ({lang.DETECTOR})",
            "text_based_entity": f"text-based: 1 if a caption token is in the entity list ({what})",
        }


@functools.lru_cache(maxsize=4)
def _entities(spec: str, fingerprint: str | None) -> tuple[str, tuple[str, ...]]:
    """read_entities once per process and file version (every batch of a run uses the same list)."""
    kind, entries = read_entities(spec)
    return kind, tuple(entries)
