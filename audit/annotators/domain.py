"""The web source of each sample: registered domain, public suffix and country-code TLD of its URL.

Parsed with tldextract and the Public Suffix List snapshot bundled in the wheel (no fetch:
``TLDExtract(suffix_list_urls=(), cache_dir=None)``), as the paper does ("domain = tldextract domain +
suffix", methods.md §6.3). These labels are read off the URL, not imputed. A country-code TLD is where a
site is registered, not where its images or people are from; a few ccTLDs are mostly used generically
(.io, .co, .tv, .me, ...) and are labelled ``generic``. Samples without a parsable URL get ``unknown``.
"""
from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from audit.annotators.base import ANNOTATORS, UNKNOWN, Annotator

METHOD = "URL parsed with tldextract (bundled Public Suffix List, no fetch)"
# ccTLDs mostly sold as generic names (not a country signal)
GENERIC_CCTLDS = frozenset({"io", "co", "tv", "me", "ai", "ly", "fm", "ws", "cc", "to", "gg", "am", "la", "nu",
                            "tk", "ml", "ga", "cf", "gq", "vc", "sh", "ms", "ac", "so", "im", "st"})
NO_CCTLD = "generic"

_extract = None


def extractor():
    """One offline tldextract instance (bundled suffix list; never touches the network or a cache dir)."""
    global _extract
    if _extract is None:
        import tldextract

        _extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    return _extract


@lru_cache(maxsize=200_000)
def parse_host(host: str) -> tuple[str | None, str | None, str | None]:
    """(registered domain, public suffix, subdomain) of a host name; (None, None, None) if unparsable."""
    if not host:
        return None, None, None
    r = extractor()(host)
    if not r.suffix:  # IP address or a name without a public suffix
        return (r.domain or None), None, (r.subdomain or None)
    registered = f"{r.domain}.{r.suffix}" if r.domain else r.suffix
    return registered, r.suffix, (r.subdomain or None)


def host_of(url) -> str:
    if not isinstance(url, str) or not url.strip():
        return ""
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    try:
        return (urlsplit(u).hostname or "").lower()
    except ValueError:
        return ""


_HOST_RX = r"^\s*(?:[A-Za-z][A-Za-z0-9+.\-]*://)?(?:[^@/?#\s]*@)?(\[[^\]/]*\]|[^:/?#\s\[\]]+)"


def hosts_of(urls: pd.Series) -> np.ndarray:
    """Vectorised host_of: the lower-case host of every URL ('' when missing); one regex pass."""
    s = pd.Series(urls, copy=False).astype(object).where(pd.notna(urls), "").astype(str)
    got = s.str.extract(_HOST_RX, expand=False).fillna("").str.lower().str.strip("[]")
    return got.to_numpy(dtype=object)


def by_host(urls: pd.Series, fn) -> list:
    """fn(host) for every URL, computed once per distinct host."""
    hosts = hosts_of(urls)
    done = {h: fn(h) for h in pd.unique(hosts)}
    return [done[h] for h in hosts]


def cctld(suffix: str | None) -> str:
    """Country code of a public suffix ('co.uk' -> 'uk'), 'generic' for gTLDs and generic-use ccTLDs."""
    if not suffix:
        return UNKNOWN
    last = suffix.rsplit(".", 1)[-1]
    if len(last) == 2 and last.isascii() and last.isalpha() and last not in GENERIC_CCTLDS:
        return last
    return NO_CCTLD


def parse_urls(urls: pd.Series) -> pd.DataFrame:
    """host, registered, suffix, cctld per URL (parsed once per distinct host); missing parts are None."""
    hosts = hosts_of(urls).tolist()
    parsed = {h: parse_host(h) for h in set(hosts)}
    reg = [parsed[h][0] for h in hosts]
    suf = [parsed[h][1] for h in hosts]
    return pd.DataFrame({"host": hosts, "registered": reg, "suffix": suf, "cctld": [cctld(s) for s in suf]},
                        dtype=object)


@ANNOTATORS.register
class Domain(Annotator):
    name = "domain"
    version = 1
    method = METHOD
    imputed = False
    attributes = {
        "domain_registered": "registered domain of the URL (domain + public suffix)",
        "domain_suffix": "public suffix of the URL (com, co.uk, de, ...)",
        "domain_cctld": "country-code TLD of the URL ('generic' for gTLDs and generic-use ccTLDs like .io)",
    }

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        return [(None, {})]

    row_columns = ("url",)

    def compute_rows(self, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        p = parse_urls(frame["url"])
        parts = []
        for attr, col in (("domain_registered", "registered"), ("domain_suffix", "suffix"), ("domain_cctld", "cctld")):
            lab = np.array([UNKNOWN if v is None else v for v in p[col]], dtype=object)
            method = np.where(p["host"].to_numpy() == "", METHOD + "; no URL", METHOD)
            if attr == "domain_cctld":
                generic = np.array([bool(s) and s.rsplit(".", 1)[-1] in GENERIC_CCTLDS for s in p["suffix"]])
                method = np.where(generic, METHOD + "; ccTLD used generically", method)
            parts.append(pd.DataFrame({"uid": frame["uid"], "attribute": attr, "label": lab,
                                       "confidence": np.where(lab == UNKNOWN, 0.0, 1.0), "method": method}))
        return pd.concat(parts, ignore_index=True)
