"""MetaCLIP curation (Xu et al., ICLR 2024; methods.md §4): sub-string matching and balanced sampling.

    spacing(text) = " " + text + " " with , . ; : ? ! ` wrapped in spaces and \\t \\n \\r turned into spaces
    e matches text  iff  " " + e + " " is a substring of spacing(text)          (case-sensitive)
    count_e         = number of captions of the pool that match e
    p_e             = min(1, t / count_e)                                        (t = 20,000 by default)
    metaclip_p      = 1 − Π_{e ∈ matched(x)} (1 − p_e)       (0 when nothing matches: never kept)
    metaclip_keep   = 1 iff some matched e has U_{x,e} < p_e, U ~ Uniform(0, 1) drawn with --seed

Matching uses one Aho-Corasick automaton (pyahocorasick) over all " e " strings, as the reference
``substr_matching.py``. The metadata is ``--metadata FILE`` (one entry per line, or a JSON list such as
MetaCLIP's ``metadata.json``). Without one, a list is built from the pool's *own* frequent word n-grams
(unigrams and bigrams of the spaced captions found in at least ``--min-count`` captions): a stand-in for
MetaCLIP's 500,000 WordNet/Wikipedia entries, said so in the run's description. The reference's balancing
draws with the unseeded global ``random``; here U_{x,e} is a hash of (--seed, the sample's uid, e), so a sample's
draw does not depend on which batch, worker or engine scores it (version 2; version 1 drew one seeded sequence in
pool order). The score streams over the captions on either engine: a pass for the pool's own n-grams (without
``--metadata``), one for the entries' counts, one for the columns.
Stored columns: ``metaclip_p``, ``metaclip_keep``, ``metaclip_matches`` (number of matched entries) and
``metaclip_min_count`` (count of the rarest matched entry; NaN if none).
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.scores.base import SCORES, Score, keyed_uniforms, read_string_list

DEFAULT_T = 20_000
DEFAULT_MIN_COUNT = 3
PUNCT = [",", ".", ";", ":", "?", "!", "`"]
COLUMNS = ("metaclip_p", "metaclip_keep", "metaclip_matches", "metaclip_min_count")


def spacing(text: str) -> str:
    """MetaCLIP's ``spacing``: pad with spaces, wrap punctuation in spaces, tabs/newlines become spaces."""
    t = " " + text + " "
    for p in PUNCT:
        t = t.replace(p, " " + p + " ")
    for c in ("\t", "\n", "\r"):
        t = t.replace(c, " ")
    return t


def build_automaton(entries: Sequence[str]):
    import ahocorasick

    auto = ahocorasick.Automaton()
    for i, e in enumerate(entries):
        auto.add_word(" " + e + " ", i)
    auto.make_automaton()
    return auto


def match(captions: Sequence[str], entries: Sequence[str], automaton=None) -> tuple[np.ndarray, np.ndarray]:
    """Inverted index of (text id, entry id) pairs, sorted, one per matched (text, entry).

    -> (text_ids int64 (P,), entry_ids int64 (P,)).
    """
    auto = automaton if automaton is not None else build_automaton(entries)
    tids, eids = [], []
    for i, c in enumerate(captions):
        if not isinstance(c, str) or not c:
            continue
        found = sorted({v for _, v in auto.iter(spacing(c))})
        tids.extend([i] * len(found))
        eids.extend(found)
    return np.asarray(tids, dtype=np.int64), np.asarray(eids, dtype=np.int64)


def match_naive(caption: str, entries: Sequence[str]) -> set[int]:
    """The reference's pure-python matcher (O(|entries|·|text|)); for tests."""
    t = spacing(caption)
    return {i for i, e in enumerate(entries) if " " + e + " " in t}


def entry_probability(counts: np.ndarray, t: float) -> np.ndarray:
    """p_e = min(1, t / count_e); entries never matched get 1 (they never matter)."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(c > 0, np.minimum(1.0, t / np.maximum(c, 1e-300)), 1.0)


def keep_probability(text_ids: np.ndarray, entry_ids: np.ndarray, p_entry: np.ndarray, n_texts: int) -> np.ndarray:
    """P(keep x) = 1 − Π_{e∈matched(x)} (1 − p_e); 0 for texts without matches. -> (n_texts,)."""
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-np.minimum(p_entry[entry_ids], 1.0))   # −inf where p_e = 1
    s = np.bincount(text_ids, weights=log_miss, minlength=n_texts) if len(text_ids) else np.zeros(n_texts)
    has_inf = np.bincount(text_ids, weights=np.isneginf(log_miss).astype(float), minlength=n_texts) > 0 \
        if len(text_ids) else np.zeros(n_texts, bool)
    s = np.where(has_inf, 0.0, s)
    p = np.where(has_inf, 1.0, -np.expm1(s))
    matched = np.bincount(text_ids, minlength=n_texts) > 0 if len(text_ids) else np.zeros(n_texts, bool)
    return np.where(matched, p, 0.0)


def draw(text_ids: np.ndarray, entry_ids: np.ndarray, p_entry: np.ndarray, n_texts: int,
         rng: np.random.Generator) -> np.ndarray:
    """MetaCLIP's balance_sampling: one uniform per (text, entry) pair, keep texts with some U < p_e."""
    u = rng.random(len(text_ids))
    hit = u < p_entry[entry_ids]
    keep = np.zeros(n_texts, dtype=bool)
    keep[text_ids[hit]] = True
    return keep


def draw_keyed(uids: Sequence[str], text_ids: np.ndarray, entry_ids: np.ndarray, p_entry: np.ndarray,
               seed: int) -> np.ndarray:
    """``draw`` with ``keyed_uniforms`` (one per (seed, uid, entry)): keep text x iff some matched e has U_{x,e} < p_e. -> (len(uids),) bool."""
    hit = keyed_uniforms(uids, text_ids, entry_ids, seed) < p_entry[entry_ids]
    keep = np.zeros(len(uids), dtype=bool)
    keep[text_ids[hit]] = True
    return keep


def caption_grams(captions: Sequence[str], max_n: int = 2) -> Counter:
    """Per n-gram of the spaced captions, the number of captions holding it (pool_ngrams' counts)."""
    counts: Counter = Counter()
    for c in captions:
        if not isinstance(c, str):
            continue
        toks = [t for t in spacing(c).split(" ") if t]
        grams = set(toks)
        if max_n >= 2:
            grams.update(" ".join(toks[i:i + 2]) for i in range(len(toks) - 1))
        counts.update(grams)
    return counts


def frequent_grams(counts: Counter, min_count: int) -> list[str]:
    """The n-grams in at least ``min_count`` captions, single punctuation dropped, sorted."""
    drop = set(PUNCT)
    return sorted(g for g, n in counts.items() if n >= min_count and g not in drop
                  and not all(ch in "".join(PUNCT) for ch in g.replace(" ", "")))


def pool_ngrams(captions: Sequence[str], *, min_count: int = DEFAULT_MIN_COUNT, max_n: int = 2) -> list[str]:
    """Unigrams and bigrams of the spaced captions found in ≥ min_count captions (single punctuation dropped)."""
    return frequent_grams(caption_grams(captions, max_n), min_count)


def read_metadata(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"metadata file not found: {path}")
    entries = read_string_list(path, "metadata file")
    entries = list(dict.fromkeys(e for e in entries if e.strip() and e not in PUNCT))
    if not entries:
        raise ValueError(f"{path}: no metadata entries")
    return entries


def metaclip_columns(captions: Sequence[str], entries: Sequence[str], *, t: float,
                     rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All MetaCLIP columns for the captions, plus the entry counts (len(entries),)."""
    n = len(captions)
    tids, eids = match(captions, entries)
    counts = np.bincount(eids, minlength=len(entries)) if len(eids) else np.zeros(len(entries), np.int64)
    p_e = entry_probability(counts, t)
    n_match = np.bincount(tids, minlength=n).astype(float) if len(tids) else np.zeros(n)
    min_count = np.full(n, np.inf)
    if len(tids):
        np.minimum.at(min_count, tids, counts[eids].astype(float))
    min_count[np.isinf(min_count)] = np.nan
    cols = {"metaclip_p": keep_probability(tids, eids, p_e, n),
            "metaclip_keep": draw(tids, eids, p_e, n, rng).astype(float),
            "metaclip_matches": n_match, "metaclip_min_count": min_count}
    return cols, counts


@SCORES.register
class MetaClip(Score):
    name = "metaclip"
    version = 2   # 2: streamed; the keep draw is one uniform per (seed, uid, entry), no longer a pool-order sequence
    uses_model = False
    description = "MetaCLIP curation: keep probability 1 − Π(1 − min(1, t/count_e)) over matched metadata entries"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--metadata", metavar="FILE",
                            help="metadata entries: one per line, or a JSON list (default: the pool's own n-grams)")
        parser.add_argument("--t", type=float, default=DEFAULT_T, help="balancing threshold t (default: %(default)s)")
        parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                            help="without --metadata: keep pool n-grams found in at least this many captions")
        parser.add_argument("--entries-out", metavar="CSV", help="also write entry, count, p_e to this CSV")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        if args.t <= 0:
            raise ValueError(f"--t must be > 0, got {args.t}")
        out = {"t": args.t, "min_count": args.min_count, "entries_out": args.entries_out}
        if args.metadata:
            from audit.scores.targets import fingerprint

            read_metadata(args.metadata)  # fail early with a clear message
            out.update(metadata=str(Path(args.metadata).resolve()), metadata_fingerprint=fingerprint(args.metadata))
        return out

    @classmethod
    def output_names(cls, model, params) -> list[str]:
        return list(COLUMNS)

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        # t scaled to the demo pool (20,000 took a 1.6B pool to 400M): t = 100 keeps ~44% of the 100k demo pool;
        # metadata from the pool's own n-grams.
        return [(None, {"t": 100.0, "min_count": DEFAULT_MIN_COUNT, "entries_out": None})]

    # Streamed on either engine, in up to three passes over the captions: the pool's own n-grams (without
    # --metadata), the entries' match counts, then each sample's columns from those counts.
    row_columns = ("caption",)

    def pool_passes(self, params: dict) -> int:
        return 1 if params.get("metadata") else 2

    def pool_start(self, store, params: dict, echo) -> dict:
        if not params.get("metadata"):
            return {}
        entries = read_metadata(params["metadata"])
        return {"entries": entries, "source": f"{len(entries):,} entries from {Path(params['metadata']).name}"}

    def pool_statistics(self, frame, params: dict):
        pooled = params["pooled"]
        captions = frame["caption"].tolist()
        if "entries" not in pooled:
            return caption_grams(captions)
        _, eids = match(captions, pooled["entries"], _automaton(pooled["entries"]))
        return np.bincount(eids, minlength=len(pooled["entries"])).astype(np.int64)

    def pool_finish(self, total, params: dict, echo) -> dict:
        pooled = params["pooled"]
        if "entries" not in pooled:
            min_count = int(params.get("min_count", DEFAULT_MIN_COUNT))
            entries = frequent_grams(total or Counter(), min_count)
            source = (f"{len(entries):,} entries built from the pool's OWN unigrams and bigrams (in ≥ {min_count} "
                      "captions), not MetaCLIP's 500k WordNet/Wikipedia list")
            echo(f"no --metadata given: {source}")
            return {"entries": entries, "source": source}
        entries = pooled["entries"]
        counts = total if total is not None else np.zeros(len(entries), np.int64)
        t = float(params.get("t", DEFAULT_T))
        head = np.argsort(-counts, kind="stable")[:8]
        echo("head entries (count): " + ", ".join(f"{entries[i]!r} ({counts[i]:,})" for i in head))
        echo(f"entries matched at least once: {(counts > 0).sum():,} of {len(entries):,}; above t={t:g}: "
             f"{(counts > t).sum():,}")
        if (counts > t).sum() == 0:
            echo(f"warning: no entry is matched more than t={t:g} times in this pool, "
                 f"so balancing removes nothing and every matched caption is kept; t = 20,000 was chosen for a "
                 f"1.6B-row pool, scale it to the pool (the demo uses t = 100 on 100k rows)")
        if params.get("entries_out"):
            import pandas as pd

            from audit.export.csvsafe import to_csv

            to_csv(pd.DataFrame({"entry": entries, "count": counts, "p": entry_probability(counts, t)}),
                   params["entries_out"])
            echo(f"entry counts -> {params['entries_out']}")
        return {"counts": counts}

    def compute_rows(self, frame, params: dict) -> dict[str, np.ndarray]:
        pooled = params["pooled"]
        entries, counts = pooled["entries"], pooled["counts"]
        captions = frame["caption"].tolist()
        n = len(captions)
        tids, eids = match(captions, entries, _automaton(entries))
        p_e = entry_probability(counts, float(params.get("t", DEFAULT_T)))
        n_match = np.bincount(tids, minlength=n).astype(float) if len(tids) else np.zeros(n)
        min_count = np.full(n, np.inf)
        if len(tids):
            np.minimum.at(min_count, tids, counts[eids].astype(float))
        min_count[np.isinf(min_count)] = np.nan
        keep = draw_keyed(frame["uid"].tolist(), tids, eids, p_e, int(params.get("seed") or 0))
        return {"metaclip_p": keep_probability(tids, eids, p_e, n), "metaclip_keep": keep.astype(float),
                "metaclip_matches": n_match, "metaclip_min_count": min_count}

    def run_descriptions(self, params: dict) -> dict[str, str]:
        t = float(params.get("t", DEFAULT_T))
        source = params["pooled"]["source"]
        return {
            "metaclip_p": f"{self.description}; t={t:g}; metadata: {source}; case-sensitive space-delimited matching",
            "metaclip_keep": f"MetaCLIP seeded draw (seed {params.get('seed')}; one uniform per (uid, entry)): 1 if "
                             "kept; unmatched captions never kept",
            "metaclip_matches": "MetaCLIP: number of metadata entries the caption matches",
            "metaclip_min_count": "MetaCLIP: pool count of the caption's rarest matched entry (NaN: none matched)",
        }


_AUTOMATA: dict = {}


def _automaton(entries: Sequence[str]):
    """The Aho-Corasick automaton of these entries, built once per process (the batches of a run share it)."""
    key = (len(entries), hash(tuple(entries)))
    if key not in _AUTOMATA:
        _AUTOMATA.clear()
        _AUTOMATA[key] = build_automaton(entries)
    return _AUTOMATA[key]
