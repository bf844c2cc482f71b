"""Availability as the first filter step: a pool shrinks before any filter because links die or opt out.

img2dataset's failed rows are ``download_failed`` rejects with their url, caption and uid (audit/ingest/webdataset.py).
Here they join the pool as samples that were not downloaded, so the report and the Who's in page can show

* availability alone: rule ``downloaded>=1`` (``downloaded`` is 1 for an ingested sample, 0 for a failed download);
* the chain availability → filter: any score rule, whose thresholds are computed on the downloaded samples as
  DataComp computes them on what it downloaded; a failed row has no score and is never kept.

Failed rows have no image, no embedding and no annotation, so groups come from what they do have, computed the
same way for every row: the URL (``domain_registered``, ``domain_suffix``, ``domain_cctld``, as the domain
annotator) and the caption (``caption_*``, the caption lexicon). Other attributes are refused with a message.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

DOWNLOADED = "downloaded"
URL_ATTRIBUTES = ("domain_registered", "domain_suffix", "domain_cctld")


def derivable(attribute: str) -> bool:
    from audit.annotators.caption import CaptionLexicon as Caption

    return attribute in URL_ATTRIBUTES or attribute in Caption.attributes


def check_attributes(by: Sequence[str]) -> None:
    bad = [a for a in by if not derivable(a)]
    if bad:
        from audit.annotators.caption import CaptionLexicon as Caption

        raise ValueError(f"failed downloads have only a URL and a caption: group them by "
                         f"{', '.join(URL_ATTRIBUTES + tuple(Caption.attributes))}; not {', '.join(bad)}")


def labels_for(attribute: str, urls: pd.Series, captions: pd.Series) -> np.ndarray:
    if attribute in URL_ATTRIBUTES:
        from audit.annotators.domain import parse_urls

        col = {"domain_registered": "registered", "domain_suffix": "suffix", "domain_cctld": "cctld"}[attribute]
        return parse_urls(urls)[col].to_numpy(dtype=object)
    from audit.annotators.caption import label_captions

    return label_captions(captions, attribute)


def load_frame(store, scores: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """Ingested samples and failed downloads: uid, downloaded (1/0), one column per score (NaN for a failed row),
    ``by:<attr>`` per attribute. Rows: samples by uid, then failures."""
    check_attributes(by)
    scores = [s for s in dict.fromkeys(scores) if s != DOWNLOADED]
    samples = store.sample_frame(["url", "caption"])
    if scores:
        sc = store.score_frame(scores)
        samples = samples.merge(sc, on="uid", how="left")
    failed = store.download_failures()
    failed = pd.DataFrame({"uid": failed["uid"], "url": failed["url"], "caption": failed["caption"]})
    for s in scores:
        failed[s] = np.nan
    samples[DOWNLOADED], failed[DOWNLOADED] = 1.0, 0.0
    frame = pd.concat([samples, failed], ignore_index=True)
    for a in by:
        frame[f"by:{a}"] = labels_for(a, frame["url"], frame["caption"])
    return frame


def table_from_frame(frame: pd.DataFrame, rules, by: Sequence[str], *, min_n: int = 30):
    """audit.measure.report.table_from_frame over samples + failed downloads: score rules are decided on the
    downloaded rows (their thresholds too), then a failed row is excluded; ``downloaded>=1`` is availability."""
    from audit.decide.selection import Selection, apply_rule, select
    from audit.measure.fairness import amplification_regression, combine_labels, group_table
    from audit.measure.report import REPORT_COLUMNS, Report

    got = frame[DOWNLOADED].to_numpy(dtype=float) == 1
    keep = got.copy()
    failed = {"download failed": ~got}
    thresholds: dict[str, float] = {}
    score_rules = [r for r in rules if r.score != DOWNLOADED]
    if score_rules:
        sel = select(score_rules, {r.score: frame.loc[got, r.score].to_numpy(dtype=float) for r in score_rules},
                     n=int(got.sum()))
        keep[got] = sel.keep
        thresholds.update(sel.thresholds)
        for reason, mask in sel.failed.items():
            full = np.zeros(len(frame), dtype=bool)
            full[got] = mask
            failed[reason] = full
    for r in rules:
        if r.score == DOWNLOADED:
            keep &= apply_rule(r, frame[DOWNLOADED].to_numpy(dtype=float))
    labels = combine_labels(*[frame[f"by:{c}"].to_numpy() for c in by])
    table = group_table(keep, labels, min_n=min_n)
    sel = Selection(keep=keep, failed=failed, thresholds=thresholds)
    return Report(table[REPORT_COLUMNS], sel, labels, amplification_regression(table, min_n=min_n), list(rules))
