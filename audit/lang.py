"""Caption language identification with py3langid: a stand-in for DataComp's fastText lid.176.

DataComp's baselines (methods.md §1.4) take the top-1 label of fastText ``lid.176.bin`` on
``text.replace("\\n", " ")`` with no confidence threshold (the LAION-2B reproduction uses gcld3). Neither
model can be downloaded here, so this module uses py3langid (BSD-3, the langid.py naive-Bayes model that
ships inside the wheel, 97 languages). The two detectors disagree on some captions, mostly very short or
mixed-language ones, so filters that use it say "English (py3langid)" in their reasons and docs.

``detect`` gives exactly ``py3langid.classify(text)[0]`` for every text (a test checks this), but
batched: the byte-DFA walk stays per text, the naive-Bayes product is one sparse matrix product, and
repeated captions are classified once (a per-process memo, so the scores that all need the language
of the same captions pay for it once).
"""
from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np

DETECTOR = "py3langid (stand-in for fastText lid.176)"
_MEMO: dict[str, str] = {}
_MEMO_MAX = 2_000_000
_IDENT = None


def _identifier():
    global _IDENT
    if _IDENT is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENT = LanguageIdentifier.from_model_file(MODEL_FILE)
    return _IDENT


def _prepare(text: str) -> str:
    """DataComp's preprocessing: newlines become spaces (baselines/utils.py)."""
    return text.replace("\n", " ")


def _classify_batch(texts: list[str]) -> list[str]:
    """py3langid top-1 labels of ``texts`` (already prepared), computed in one sparse product."""
    from scipy import sparse

    from py3langid.langid import RAW_FLOOR, visit_counts

    ident = _identifier()
    rows, cols, vals = [], [], []
    empty = np.zeros(len(texts), dtype=bool)
    nm, rowbase, out = ident.tk_nextmove, ident._rowbase, ident.tk_output
    for i, t in enumerate(texts):
        enc = t
        if enc.isupper():
            enc = enc.lower()
        enc = unicodedata.normalize("NFC", enc).encode("utf8", errors="surrogatepass")
        visits = visit_counts(nm, rowbase, out, enc)
        if not visits:
            empty[i] = True
            continue
        rows.extend([i] * len(visits))
        cols.extend(visits.keys())
        vals.extend(visits.values())
    ptc = ident.nb_ptc
    n_feat = ptc.shape[0]
    counts = sparse.csr_matrix((np.log1p(np.asarray(vals, dtype=np.float32)), (rows, cols)),
                               shape=(len(texts), n_feat), dtype=np.float32)
    scores = np.asarray(counts @ ptc, dtype=np.float32) + ident.nb_pc
    scores[empty] = RAW_FLOOR
    for i, j in ident._alias_pairs:  # script aliases share one label (see LanguageIdentifier._decide)
        scores[:, i] = np.maximum(scores[:, i], scores[:, j])
        scores[:, j] = RAW_FLOOR
    best = scores.argmax(axis=1)
    classes = ident.nb_classes
    return [classes[int(b)] for b in best]


def detect(texts: Sequence[str], *, batch: int = 20_000) -> np.ndarray:
    """Top-1 language code of every text (object array). Equal to ``py3langid.classify(t)[0]``."""
    prepared = [_prepare(t) if isinstance(t, str) else "" for t in texts]
    todo = [t for t in dict.fromkeys(prepared) if t not in _MEMO]
    for s in range(0, len(todo), batch):
        chunk = todo[s:s + batch]
        if len(_MEMO) + len(chunk) > _MEMO_MAX:
            _MEMO.clear()
        _MEMO.update(zip(chunk, _classify_batch(chunk)))
    return np.array([_MEMO.get(t) or _classify_batch([t])[0] for t in prepared], dtype=object)


def is_english(texts: Sequence[str]) -> np.ndarray:
    """Boolean (n,): the top-1 language is ``en`` (no confidence threshold, as DataComp)."""
    return detect(texts) == "en"


def clear_memo() -> None:
    _MEMO.clear()

