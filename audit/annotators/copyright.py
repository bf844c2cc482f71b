"""Copyright-relevant content: stock/CDN domains, caption markers and CLIP zero-shot visual categories.

"CLIP-filtering includes several categories of copyrighted content at high rates" (Hong et al. 2024,
methods.md §6.4). The notebooks single out stock-photo and shopping CDNs (shutterstock.com,
gettyimages.com, bigstockphoto.com, 123rf.com, vectorstock.com, fineartamerica.com, etsystatic.com, ...);
the paper's final taxonomy is unconfirmed, so ours is stated here:

* ``copyright_domain``: ``stock`` (stock agencies and art-print sites), ``shop-cdn`` (shop image CDNs),
  ``none``, ``unknown`` (no URL);
* ``copyright_caption``: ``marker`` when the caption has ©/(c)/"copyright"/"all rights reserved", "stock
  photo/image/vector", "royalty free" or a stock agency's name; ``none``; ``unknown`` (empty caption);
* ``copyright_visual``: CLIP zero-shot over the stored image embeddings among watermark, logo/brand,
  artwork, celebrity, movie poster, product photo, and everyday "none" scenes (abstain margin as in
  ``zeroshot``). Needs ``--model``; flagged when the model has random weights or the text encoder is
  the demo's simulated one;
* ``copyright``: ``copyright-relevant`` if any of the three flags it, ``none`` if all checked sources are
  clean, ``unknown`` if nothing could be checked. Evidence in the method column.

Copyright-*relevant* means "worth a rights check", not "infringing": most web images are copyrighted.
"""
from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd

from audit.annotators.base import ANNOTATORS, UNKNOWN, Annotator
from audit.annotators.domain import by_host, host_of, parse_host

STOCK_DOMAINS = frozenset({
    "shutterstock.com", "gettyimages.com", "istockphoto.com", "123rf.com", "alamy.com", "dreamstime.com",
    "vectorstock.com", "bigstockphoto.com", "depositphotos.com", "fotolia.com", "canstockphoto.com",
    "pond5.com", "agefotostock.com", "stocksy.com", "colourbox.com", "photodune.net", "fineartamerica.com",
    "pixels.com", "featurepics.com", "crushpixel.com", "freepik.com", "vecteezy.com", "gettyimages.co.uk",
    "gettyimages.de", "gettyimages.fr", "alamy.de", "shutterstock.de"})
STOCK_HOSTS = ("stock.adobe.com", "t3.ftcdn.net", "as1.ftcdn.net", "as2.ftcdn.net")  # Adobe Stock / Fotolia CDN
SHOP_CDNS = frozenset({"etsystatic.com", "ebayimg.com", "media-amazon.com", "ssl-images-amazon.com", "alicdn.com",
                       "shopify.com", "walmartimages.com", "wixstatic.com", "squarespace-cdn.com", "zalando.net",
                       "redbubble.net", "teepublic.com", "aliexpress.com", "ebay.com", "etsy.com"})
AGENCIES = ["getty images", "gettyimages", "shutterstock", "istock(?:photo)?", "alamy", "dreamstime", "depositphotos",
            "adobe stock", "123rf", "bigstock(?:photo)?", "vectorstock", "fotolia", "pond5", "agefotostock",
            "canstock(?:photo)?", "ap photo", "reuters", "afp"]
MARKERS = [r"copyright(?:ed)?", r"all rights reserved", r"stock (?:photo\w*|image|vector|footage|illustration)",
           r"royalty[- ]free", r"vector illustration", r"watermark(?:ed)?"] + AGENCIES
# © anywhere, "(c)" before a name or year, the words only as whole words
_MARKER_RX = re.compile(r"©|\(c\)(?=\s*\w)|(?<!\w)(?:" + "|".join(MARKERS) + r")(?!\w)", re.IGNORECASE)

VISUAL = {
    "watermark": ("a photo with a watermark", "an image with a stock photo watermark", "a watermarked image"),
    "logo/brand": ("a logo", "a brand logo", "a company logo"),
    "artwork": ("a painting", "an artwork", "a work of art", "an illustration"),
    "celebrity": ("a celebrity", "a famous person", "a movie star"),
    "movie poster": ("a movie poster", "a film poster"),
    "product photo": ("a product photo", "a product on a white background", "an item for sale"),
}
# everyday scenes that are not copyright categories (each its own "none" class)
VISUAL_NONE = ("an animal", "a dog", "a cat", "a bird", "a car", "a bicycle", "a house", "a city skyline",
               "a mountain landscape", "a beach", "a flower", "food", "a pizza", "a cake", "a person",
               "people at a wedding", "a family", "an athlete", "a business meeting", "a portrait of a person",
               "a chart")
RELEVANT_VISUAL = tuple(VISUAL)


def domain_kind(url) -> tuple[str, str]:
    """('stock' | 'shop-cdn' | 'none' | 'unknown', registered domain) of one URL."""
    return host_kind(host_of(url))


def host_kind(host: str) -> tuple[str, str]:
    """domain_kind for a lower-case host name ('' = no URL)."""
    if not host:
        return UNKNOWN, ""
    registered, _, _ = parse_host(host)
    if registered in STOCK_DOMAINS or any(host == h or host.endswith("." + h) for h in STOCK_HOSTS):
        return "stock", registered or host
    if registered in SHOP_CDNS:
        return "shop-cdn", registered
    return "none", registered or host


def caption_marker(text) -> str:
    """The first copyright marker in a caption ('' if none); None for a blank caption."""
    if not isinstance(text, str) or not text.strip():
        return None
    m = _MARKER_RX.search(text)
    return m.group(0) if m else ""


def combine(domain: np.ndarray, caption: np.ndarray, visual: np.ndarray) -> np.ndarray:
    """Combined label: copyright-relevant / none / unknown from the three per-source labels."""
    flagged = np.isin(domain, ["stock", "shop-cdn"]) | (caption == "marker") | np.isin(visual, RELEVANT_VISUAL)
    checked = (domain != UNKNOWN) | (caption != UNKNOWN) | (visual != UNKNOWN)
    return np.where(flagged, "copyright-relevant", np.where(checked, "none", UNKNOWN)).astype(object)


@ANNOTATORS.register
class Copyright(Annotator):
    name = "copyright"
    version = 1
    method = "copyright-relevant: stock/CDN domains + caption markers + CLIP zero-shot categories"
    attributes = {
        "copyright": "combined copyright-relevant label (worth a rights check; not a legal finding)",
        "copyright_domain": "stock-photo or shop-CDN domain (methods.md §6.4 list)",
        "copyright_caption": "copyright marker in the caption (©, 'stock photo', agency names)",
        "copyright_visual": "CLIP zero-shot visual category: watermark, logo/brand, artwork, celebrity, movie "
                            "poster, product photo (imputed)",
    }

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--margin", type=float, default=0.2, help="zero-shot abstain margin (default 0.2)")
        parser.add_argument("--text-model", help="open_clip MODEL:TAG to embed prompts for DataComp npz vectors")

    @classmethod
    def params_from_args(cls, args: argparse.Namespace) -> dict:
        return {"margin": args.margin, "text_model": args.text_model}

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [("datacomp_l14" if "datacomp_l14" in models else None, {"margin": 0.2})]

    # Two passes on either engine: with --model, the visual zero-shot over the vector parts first; then the domain
    # and caption rules row by row, with that pass's visual label joined to each sample, combined into one label.
    row_columns = ("caption", "url")
    vector_columns = ("img",)

    def prepare_vectors(self, store, model: str | None, params: dict, echo) -> tuple[dict, dict]:
        from audit.annotators.zeroshot import prepare_tasks

        prepared, _, flagged = prepare_tasks(store, model, {"copyright_visual": VISUAL},
                                             margin=float(params.get("margin", 0.2)), background=VISUAL_NONE,
                                             text_model=params.get("text_model"))
        method = self.method + (" [visual part: RANDOM/SIMULATED text encoder, not meaningful]" if flagged else "")
        return prepared, {"method": method, "random_weights": ["copyright_visual", "copyright"] if flagged else False}

    def compute_vectors(self, vectors: dict, prepared: dict) -> pd.DataFrame:
        from audit.annotators.zeroshot import label_vectors

        return _visual(label_vectors(vectors["uid"].to_numpy(zero_copy_only=False), vectors["img"], prepared))

    def without_vectors(self, uids, prepared: dict) -> pd.DataFrame:
        from audit.annotators.zeroshot import without_vectors

        return _visual(without_vectors(uids, prepared))

    def compute_rows(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        n = len(frame)
        uids = frame["uid"].to_numpy(dtype=object)
        pairs = by_host(frame["url"], host_kind)
        dom = np.array([p[0] for p in pairs], dtype=object)
        dom_name = np.array([p[1] for p in pairs], dtype=object)
        marks = [caption_marker(t) for t in frame["caption"].tolist()]
        cap = np.array([UNKNOWN if m is None else ("marker" if m else "none") for m in marks], dtype=object)
        mark_txt = np.array([m or "" for m in marks], dtype=object)
        visual_pass = params.get("vector_pass")
        parts = []
        if visual_pass is not None:     # the vector pass's labels (a sample it rejected: unknown)
            vis = frame["copyright_visual"].astype(object).where(frame["copyright_visual"].notna(), UNKNOWN)
            vis = vis.to_numpy(dtype=object)
            flagged = bool(visual_pass.get("random_weights"))
        else:
            vis = np.full(n, UNKNOWN, dtype=object)
            flagged = False
            parts.append(pd.DataFrame({"uid": uids, "attribute": "copyright_visual", "label": vis, "confidence": 0.0,
                                       "method": "CLIP zero-shot not run (no --model)"}))
        label = combine(dom, cap, vis)
        evidence = []
        for d, dn, c, m, v in zip(dom, dom_name, cap, mark_txt, vis):
            bits = []
            if d in ("stock", "shop-cdn"):
                bits.append(f"{d} domain {dn}")
            if c == "marker":
                bits.append(f"caption marker '{m}'")
            if v in RELEVANT_VISUAL:
                bits.append(f"visual: {v}" + (" [simulated/random encoder]" if flagged else ""))
            evidence.append("; ".join(bits) if bits else "no flag")
        conf = np.where(label == "copyright-relevant",
                        np.where(np.isin(dom, ["stock"]) | (cap == "marker"), 0.9, 0.6),
                        np.where(label == "none", 0.5, 0.0))
        parts = [
            pd.DataFrame({"uid": uids, "attribute": "copyright", "label": label, "confidence": conf,
                          "method": ["combined (domain | caption | visual): " + e for e in evidence]}),
            pd.DataFrame({"uid": uids, "attribute": "copyright_domain", "label": dom,
                          "confidence": np.where(dom == UNKNOWN, 0.0, 1.0),
                          "method": np.where(dom == UNKNOWN, "domain list; no URL", "domain list (methods.md §6.4)")}),
            pd.DataFrame({"uid": uids, "attribute": "copyright_caption", "label": cap,
                          "confidence": np.where(cap == UNKNOWN, 0.0, np.where(cap == "marker", 0.9, 0.5)),
                          "method": ["caption markers" + (f"; '{m}'" if m else "") for m in mark_txt]}),
            *parts,
        ]
        return pd.concat(parts, ignore_index=True)


def _visual(frame: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot rows as copyright_visual labels: the top class an everyday scene -> ``none`` ("everyday scene")."""
    scene = frame["method"].str.endswith("no person")
    return frame.assign(label=frame["label"].where(~scene, "none"),
                        method=frame["method"].str.replace("; no person", "; everyday scene", regex=False))
