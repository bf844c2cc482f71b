"""A simulated image-text pool written in the exact DataComp CommonPool format (parquet + npz).

The simulator is a small, documented latent model. Every sample has hidden truths:

* a **source** dataset (``sim-commonpool``, ``sim-laion``, ``sim-cc``), which sets its domain mix and adds a
  per-source *style* direction to the image embedding (what the origin probe should find);
* a **concept** (dog, car, portrait, ...). People concepts also carry perceived **gender**, **age** and
  **race** (FairFace-like categories), and sometimes an **orientation** or **religion** mention;
* flags: **nsfw**, **stock** (copyright-relevant, from a stock/CDN domain, with caption markers),
  **lang** (caption language), and a caption **quality**.

Captions are written from the truths: a person's attributes are *mentioned* with fixed probabilities, so
caption-lexicon imputation sees only part of the truth, as in real alt-text.

The CLIP score of sample i is drawn as ``s_i ~ Normal(mu_i, SIGMA)`` with
``mu_i = MU + sum of SHIFTS of the truths that apply to i``. The image and text vectors are then built so
that ``img_i · txt_i = s_i`` exactly (txt = s·img + sqrt(1−s²)·w with w ⟂ img). Because mu_i is known,
the *expected* inclusion probability of any sample at an absolute threshold t is
``p_i(t) = 1 − Φ((t − mu_i) / SIGMA)``, and the expected inclusion rate of any group is the mean of
p_i over its members: that is the ground truth the audit is checked against (``truth.parquet``).

Injected gaps (``SHIFTS``, on the L/14 score; the B/32 score is correlated) follow the qualitative findings
of "Who's in and who's out?" (methods.md §6.5): lower inclusion for older women, for young men, for
LGBTQ+ mentions and for non-English captions; higher for stock photos.

A few deliberately bad rows (empty captions, duplicate uids, NaN vectors) are injected so that the
rejects path is exercised; ``truth.parquet`` marks them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MU = 0.215          # mean L/14 CLIP score of a baseline sample
SIGMA = 0.045       # spread of the L/14 score around its mean
B32_OFFSET = 0.07   # B/32 scores run higher than L/14 in CommonPool
B32_NOISE = 0.02

# additive shifts of the score mean; keys are (truth column, value)
SHIFTS: dict[tuple[str, str], float] = {
    ("age_gender", "older woman"): -0.035,
    ("age_gender", "young man"): -0.02,
    ("orientation", "lgbtq"): -0.03,
    ("lang", "non-en"): -0.05,
    ("stock", "yes"): +0.025,
    ("nsfw", "yes"): +0.01,
    ("quality", "low"): -0.06,
}

SOURCES = {  # name: (share of pool, style strength, domain weights by kind)
    "sim-commonpool": (0.5, 0.0, {"generic": 0.62, "shop": 0.15, "stock": 0.12, "news": 0.06, "adult": 0.05}),
    "sim-laion": (0.3, 0.55, {"generic": 0.5, "shop": 0.2, "stock": 0.2, "news": 0.08, "adult": 0.02}),
    "sim-cc": (0.2, 0.9, {"generic": 0.55, "shop": 0.05, "stock": 0.1, "news": 0.3, "adult": 0.0}),
}

DOMAINS = {
    "generic": ["flickr.com", "wordpress.com", "blogspot.com", "pinimg.com", "tumblr.com", "imgur.com",
                "wikimedia.org", "reddit.com", "example.de", "bildergalerie.de", "photos.fr", "fotos.es",
                "gazou.jp", "tupian.cn", "picsy.in", "imagens.com.br", "foto.ru", "pics.co.uk", "album.ng",
                "gallery.com.au"],
    "shop": ["etsystatic.com", "ebayimg.com", "media-amazon.com", "alicdn.com", "shopify.com"],
    "stock": ["shutterstock.com", "gettyimages.com", "istockphoto.com", "123rf.com", "alamy.com",
              "dreamstime.com", "vectorstock.com", "bigstockphoto.com", "fineartamerica.com"],
    "news": ["bbc.co.uk", "nytimes.com", "theguardian.com", "spiegel.de", "lemonde.fr", "ndtv.com"],
    "adult": ["hotpics.xxx", "spicygallery.xxx", "adultimg.example"],
}

CONCEPTS = {  # name: (is_person, weight)
    "portrait": (True, 8), "wedding": (True, 3), "athlete": (True, 3), "business meeting": (True, 3),
    "family": (True, 2), "dog": (False, 5), "cat": (False, 5), "car": (False, 5), "shoe": (False, 4),
    "dress": (False, 4), "phone": (False, 3), "pizza": (False, 3), "cake": (False, 3), "mountain": (False, 4),
    "beach": (False, 4), "city skyline": (False, 3), "house": (False, 3), "flower": (False, 3),
    "logo": (False, 2), "painting": (False, 2), "chart": (False, 2), "bicycle": (False, 2), "bird": (False, 2),
}

GENDERS = ["woman", "man"]
AGES = ["child", "young", "middle-aged", "older"]
AGE_P = [0.08, 0.42, 0.32, 0.18]
RACES = ["white", "black", "east asian", "south asian", "latino", "middle eastern"]
RACE_P = [0.46, 0.14, 0.14, 0.1, 0.1, 0.06]
RELIGIONS = ["christian", "muslim", "jewish"]
# probability that the caption mentions each truth
P_MENTION = {"gender": 0.7, "age": 0.45, "race": 0.25}
CAPTION_GENDER_ERROR = {"child": 0.10, "young": 0.03, "middle-aged": 0.03, "older": 0.12}

AGE_WORDS = {"child": ["girl", "boy"], "young": ["young woman", "young man"],
             "middle-aged": ["woman", "man"], "older": ["older woman", "older man"]}
NON_EN = ["una foto de {c}", "ein Bild von {c} im Sommer", "une photo de {c} à Paris", "foto di {c} in vendita",
          "{c} の写真", "фото {c} крупным планом"]
STOCK_MARKERS = ["stock photo", "© Getty Images", "royalty free", "Shutterstock", "stock image", "vector illustration"]
NSFW_WORDS = ["sexy", "nude", "lingerie", "topless"]
LOW_QUALITY = ["IMG_{n}", "DSC{n}.JPG", "image {n}", "untitled", "photo"]


@dataclass
class SimConfig:
    rows: int = 100_000
    seed: int = 0
    shards: int | None = None       # default: one shard per source
    bad_rows: bool = True
    dims: tuple[int, int] = (512, 768)   # b32, l14
    float16: bool = True
    vectors: bool = True            # False: the parquet alone, no npz (a pool's metadata before its embeddings)
    # imputation noise of the caption lexicon: P(a caption that names a gender names the other one | age), as
    # captioners and alt texts mistake the gender of children and older people more often (CAPTION_GENDER_ERROR)
    caption_gender_error: tuple[tuple[str, float], ...] | None = None


def expected_inclusion(mu: np.ndarray, threshold: float, sigma: float = SIGMA) -> np.ndarray:
    """p_i(t) = 1 − Φ((t − mu_i) / sigma): the probability that sample i scores ≥ t."""
    z = (threshold - np.asarray(mu, dtype=np.float64)) / (sigma * math.sqrt(2.0))
    return 0.5 * np.vectorize(math.erfc)(z) if np.ndim(z) else 0.5 * math.erfc(float(z))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pick(rng: np.random.Generator, options: list, p: list | np.ndarray | None, size: int) -> np.ndarray:
    idx = rng.choice(len(options), size=size, p=None if p is None else np.asarray(p) / np.sum(p))
    return np.asarray(options, dtype=object)[idx]


def simulate_truth(cfg: SimConfig) -> pd.DataFrame:
    """Draw the hidden truths and captions of every row (no vectors yet)."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.rows
    names = list(SOURCES)
    source = _pick(rng, names, [SOURCES[s][0] for s in names], n)
    cnames = list(CONCEPTS)
    concept = _pick(rng, cnames, [CONCEPTS[c][1] for c in cnames], n)
    is_person = np.array([CONCEPTS[c][0] for c in concept])
    gender = np.where(is_person, _pick(rng, GENDERS, None, n), "none")
    age = np.where(is_person, _pick(rng, AGES, AGE_P, n), "none")
    race = np.where(is_person, _pick(rng, RACES, RACE_P, n), "none")
    orientation = np.where(is_person & (rng.random(n) < 0.04), "lgbtq", "none")
    religion = np.where(is_person & (rng.random(n) < 0.05), _pick(rng, RELIGIONS, None, n), "none")
    age_gender = np.where(is_person, np.char.add(np.char.add(age.astype(str), " "), gender.astype(str)), "none")
    age_gender = np.where(age_gender == "older woman", "older woman",
                          np.where(age_gender == "young man", "young man", age_gender))
    # domain kind by source
    kind = np.empty(n, dtype=object)
    for s in names:
        m = source == s
        kinds = list(SOURCES[s][2])
        kind[m] = _pick(rng, kinds, [SOURCES[s][2][k] for k in kinds], int(m.sum()))
    domain = np.array([DOMAINS[k][j % len(DOMAINS[k])] for k, j in zip(kind, rng.integers(0, 1000, n))],
                      dtype=object)
    stock = np.where(kind == "stock", "yes", "no")
    nsfw = np.where((kind == "adult") | (is_person & (rng.random(n) < 0.01)), "yes", "no")
    lang = np.where(rng.random(n) < 0.08, "non-en", "en")
    quality = np.where(rng.random(n) < 0.07, "low", "ok")

    truth = pd.DataFrame({
        "source": source, "concept": concept, "is_person": is_person, "gender": gender, "age": age,
        "race": race, "age_gender": age_gender, "orientation": orientation, "religion": religion,
        "domain_kind": kind, "domain": domain, "stock": stock, "nsfw": nsfw, "lang": lang, "quality": quality,
    })
    mu = np.full(n, MU)
    for (col, val), shift in SHIFTS.items():
        mu += np.where(truth[col].to_numpy() == val, shift, 0.0)
    truth["mu"] = mu
    truth["caption"] = _captions(truth, rng, seed=cfg.seed,
                                 error=None if cfg.caption_gender_error is None else dict(cfg.caption_gender_error))
    w = np.exp(rng.normal(6.0, 0.6, n)).clip(32, 6000).astype(np.int64)
    aspect = np.exp(rng.normal(0.0, 0.35, n))
    h = (w / aspect).clip(16, 8000).astype(np.int64)
    truth["width"], truth["height"] = w, h
    uid_hex, sha_hex = rng.bytes(16 * n).hex(), rng.bytes(32 * n).hex()
    truth["uid"] = [uid_hex[32 * i:32 * i + 32] for i in range(n)]
    truth["sha256"] = [sha_hex[64 * i:64 * i + 64] for i in range(n)]
    sub = rng.integers(0, 5, n)
    truth["url"] = [f"https://{'img' + str(s) if s else 'www'}.{d}/p/{u[:10]}.jpg"
                    for s, d, u in zip(sub, truth["domain"], truth["uid"])]
    truth["score_l14"] = np.clip(rng.normal(mu, SIGMA), -1.0, 1.0)
    truth["score_b32"] = np.clip(truth["score_l14"] + B32_OFFSET + rng.normal(0, B32_NOISE, n), -1.0, 1.0)
    truth["bad"] = "none"
    _plant_duplicates(truth, np.random.default_rng([cfg.seed, 11]))
    return truth


DUP_P = {"stock": 0.12, "young person": 0.06, "other": 0.02}   # P(a row re-uploads another row's image)
DUP_NOISE = (0.03, 0.15)   # norm of the noise added to a copied image vector, uniform: cosine 0.9996 … 0.989


def _plant_duplicates(truth: pd.DataFrame, rng: np.random.Generator) -> None:
    """Near-duplicate images, as web pools have them (re-uploads, stock photos on many sites): a row copies another
    row's content (its semantics and caption; its own url, domain and CLIP score stay) and, in embed_truth, its
    image vector plus a little noise. Stock domains and photos of young people are re-posted more (DUP_P), so
    deduplication removes some groups more than others. ``dup_row`` is the copied row (-1 for none); no chains."""
    n = len(truth)
    src = rng.integers(0, n, n)
    young = (truth["is_person"].to_numpy() & (truth["age"].to_numpy() == "young"))[src]
    p = np.where(truth["domain_kind"].to_numpy() == "stock", DUP_P["stock"],
                 np.where(young, DUP_P["young person"], DUP_P["other"]))
    dup = (rng.random(n) < p) & (src != np.arange(n))
    dup &= ~dup[src]                 # the copied row is an original
    cols = ["concept", "is_person", "gender", "age", "race", "age_gender", "orientation", "religion", "nsfw",
            "caption"]
    rows = np.flatnonzero(dup)
    for c in cols:
        v = truth[c].to_numpy().copy()
        v[rows] = v[src[rows]]
        truth[c] = v
    truth["dup_row"] = np.where(dup, src, -1)


def _person_phrase(row_age: str, row_gender: str, row_race: str, rng: np.random.Generator,
                   orient: str, religion: str, swap_gender: bool = False) -> str:
    words = []
    if orient == "lgbtq":
        words.append(["gay", "lesbian", "bisexual", "homosexual"][rng.integers(4)])
    if religion != "none":
        words.append(religion)
    if row_race != "none" and rng.random() < P_MENTION["race"]:
        words.append({"east asian": "asian", "south asian": "indian", "middle eastern": "arab"}.get(row_race, row_race))
    mention_g = rng.random() < P_MENTION["gender"]
    mention_a = rng.random() < P_MENTION["age"]
    if mention_g and swap_gender:   # the captioner names the other gender (the truth keeps the perceived one)
        row_gender = {"woman": "man", "man": "woman"}.get(row_gender, row_gender)
    if mention_g:
        noun = AGE_WORDS[row_age][0 if row_gender == "woman" else 1] if mention_a else row_gender
        if not mention_a and row_age == "child":
            noun = "girl" if row_gender == "woman" else "boy"
    else:
        noun = {"child": "child", "older": "elderly person"}.get(row_age, "person") if mention_a else "person"
    words.append(noun)
    return " ".join(words)


def _captions(truth: pd.DataFrame, rng: np.random.Generator, *, seed: int = 0,
              error: dict | None = None) -> list[str]:
    out = []
    adjs = ["beautiful", "happy", "modern", "vintage", "close-up of a", "portrait of a", "smiling", "red", "new"]
    places = ["in the park", "at home", "on the beach", "in the city", "on white background", "at sunset", ""]
    from types import SimpleNamespace

    fields = ["quality", "is_person", "age", "gender", "race", "orientation", "religion", "concept", "lang", "nsfw",
              "stock"]
    columns = [truth[f].to_numpy(dtype=object) for f in fields]   # plain objects: iterating Arrow strings is slow
    # caption-gender errors drawn from their own stream, so every other draw is as without them
    err = dict(CAPTION_GENDER_ERROR if error is None else error)
    ages = truth["age"].to_numpy(dtype=object)
    swap = np.random.default_rng([seed, 13]).random(len(truth)) < np.array([err.get(a, 0.0) for a in ages])
    for i, values in enumerate(zip(*columns)):
        r = SimpleNamespace(**dict(zip(fields, values)))
        if r.quality == "low" and rng.random() < 0.7:
            out.append(LOW_QUALITY[rng.integers(len(LOW_QUALITY))].format(n=rng.integers(1000, 9999)))
            continue
        if r.is_person:
            subject = _person_phrase(r.age, r.gender, r.race, rng, r.orientation, r.religion, bool(swap[i]))
            c = f"{subject} {['at a', 'in a', 'during a', 'posing for a'][rng.integers(4)]} {r.concept}"
        else:
            c = f"{adjs[rng.integers(len(adjs))]} {r.concept}"
        if r.lang == "non-en":
            out.append(NON_EN[rng.integers(len(NON_EN))].format(c=r.concept))
            continue
        cap = f"{'a' if rng.random() < 0.5 else 'the'} {c} {places[rng.integers(len(places))]}".strip()
        if r.nsfw == "yes":
            cap = f"{NSFW_WORDS[rng.integers(len(NSFW_WORDS))]} {cap}"
        if r.stock == "yes" and rng.random() < 0.8:
            cap = f"{cap} - {STOCK_MARKERS[rng.integers(len(STOCK_MARKERS))]}"
        out.append(cap)
    return out


def latent_directions(dim: int, seed: int) -> dict[str, np.ndarray]:
    """Fixed random unit directions of the latent model for one embedding space (dim)."""
    rng = np.random.default_rng([seed, dim])
    keys = (["concept:" + c for c in CONCEPTS] + ["source:" + s for s in SOURCES]
            + ["gender:" + g for g in GENDERS] + ["age:" + a for a in AGES] + ["race:" + r for r in RACES]
            + ["nsfw", "stock", "watermark"])
    return {k: _unit(rng.standard_normal(dim)) for k in keys}


def embed_truth(truth: pd.DataFrame, dim: int, scores: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and text unit vectors with img·txt = scores exactly. Shapes (n, dim) float32."""
    dirs = latent_directions(dim, seed)
    rng = np.random.default_rng([seed, dim, 1])
    n = len(truth)
    img = rng.standard_normal((n, dim), dtype=np.float32)
    img *= np.float32(0.9 / math.sqrt(dim))
    txt_sem = rng.standard_normal((n, dim), dtype=np.float32)
    txt_sem *= np.float32(1.1 / math.sqrt(dim))
    # (key, truth column, value, image weight, text weight): each sample adds w · direction for every latent
    # property it has. One membership matrix and two matmuls instead of a masked update per key.
    terms = ([("concept:" + c, "concept", c, 1.0, 1.0) for c in CONCEPTS]
             + [("source:" + s, "source", s, style, 0.0) for s, (_, style, _) in SOURCES.items()]
             + [("gender:" + g, "gender", g, 0.5, 0.3) for g in GENDERS]
             + [("age:" + a, "age", a, 0.4, 0.2) for a in AGES]
             + [("race:" + r, "race", r, 0.4, 0.1) for r in RACES]
             + [("nsfw", "nsfw", "yes", 0.7, 0.4), ("watermark", "stock", "yes", 0.5, 0.0),
                ("stock", "stock", "yes", 0.2, 0.5)])
    member = np.zeros((n, len(terms)), dtype=np.float32)
    cols = {c: truth[c].to_numpy() for c in {t[1] for t in terms}}
    for j, (_, col, val, _, _) in enumerate(terms):
        member[:, j] = cols[col] == val
    direction = np.stack([dirs[t[0]] for t in terms]).astype(np.float32)
    img += member @ (np.array([t[3] for t in terms], dtype=np.float32)[:, None] * direction)
    txt_sem += member @ (np.array([t[4] for t in terms], dtype=np.float32)[:, None] * direction)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    if "dup_row" in truth:   # planted near-duplicates: the copied row's image plus a little noise
        dup = np.flatnonzero(truth["dup_row"].to_numpy() >= 0)
        src = truth["dup_row"].to_numpy()[dup]
        r = rng.uniform(*DUP_NOISE, size=(len(dup), 1)).astype(np.float32)
        noise = rng.standard_normal((len(dup), dim), dtype=np.float32) * (r / np.float32(math.sqrt(dim)))
        img[dup] = img[src] + noise
        img[dup] /= np.linalg.norm(img[dup], axis=1, keepdims=True)
    # text: s·img + sqrt(1-s²)·w, w = unit part of txt_sem orthogonal to img (in place: these are n × dim)
    txt_sem -= np.einsum("ij,ij->i", txt_sem, img)[:, None] * img
    txt_sem /= np.linalg.norm(txt_sem, axis=1, keepdims=True)
    s = np.asarray(scores, dtype=np.float32)[:, None]
    txt_sem *= np.sqrt(np.clip(1 - s * s, 0, 1))
    txt_sem += s * img
    return img, txt_sem


def _inject_bad_rows(truth: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(truth)
    k = max(1, n // 2000)
    idx = rng.choice(n, size=3 * k, replace=False)
    empty, dup, nan = idx[:k], idx[k:2 * k], idx[2 * k:]
    truth.loc[truth.index[empty], "caption"] = ""
    truth.loc[truth.index[empty], "bad"] = "empty_caption"
    others = rng.choice(np.setdiff1d(np.arange(n), idx), size=k, replace=False)
    truth.loc[truth.index[dup], "uid"] = truth["uid"].to_numpy()[others]
    truth.loc[truth.index[dup], "bad"] = "duplicate_uid"
    truth.loc[truth.index[nan], "bad"] = "nan_embedding"
    return truth


def write_pool(out_dir: str | Path, cfg: SimConfig, progress=None) -> dict:
    """Write the simulated pool: one parquet+npz pair per shard, truth.parquet, latent.json.

    Returns a summary dict (paths, rows, injected bad rows).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = simulate_truth(cfg)
    rng = np.random.default_rng([cfg.seed, 7])
    if cfg.bad_rows:
        truth = _inject_bad_rows(truth, rng)
    shards: list[tuple[str, np.ndarray]]
    if cfg.shards is None:
        shards = [(s, np.flatnonzero(truth["source"].to_numpy() == s)) for s in SOURCES]
    else:
        shards = [(f"{i:08d}", part) for i, part in enumerate(np.array_split(np.arange(len(truth)), cfg.shards))]
    vecs = {}
    for key, dim, col in (("b32", cfg.dims[0], "score_b32"), ("l14", cfg.dims[1], "score_l14")):
        if cfg.vectors:
            vecs[key] = embed_truth(truth, dim, truth[col].to_numpy(), cfg.seed)
    dtype = np.float16 if cfg.float16 else np.float32
    files = []
    for name, rows in shards:
        part = truth.iloc[rows]
        nan_rows = np.flatnonzero(part["bad"].to_numpy() == "nan_embedding")
        meta = pd.DataFrame({
            "uid": part["uid"].to_numpy(), "url": part["url"].to_numpy(), "text": part["caption"].to_numpy(),
            "original_width": part["width"].to_numpy(), "original_height": part["height"].to_numpy(),
            "clip_b32_similarity_score": part["score_b32"].to_numpy(np.float32),
            "clip_l14_similarity_score": part["score_l14"].to_numpy(np.float32),
            "face_bboxes": [_boxes(rng, p) for p in part["is_person"].to_numpy()],
            "sha256": part["sha256"].to_numpy(),
        })
        pq_path = out / f"{name}.parquet"
        meta.to_parquet(pq_path, index=False)
        arrays = {}
        for key in vecs:
            img, txt = vecs[key][0][rows].astype(dtype), vecs[key][1][rows].astype(dtype)
            if len(nan_rows):
                img[nan_rows, 0] = np.nan
            arrays[f"{key}_img"], arrays[f"{key}_txt"] = img, txt
        if arrays:
            np.savez(out / f"{name}.npz", **arrays)
        files.append(str(pq_path))
        if progress:
            progress(name, len(rows))
    truth.drop(columns=["score_b32"]).to_parquet(out / "truth.parquet", index=False)
    info = {"rows": len(truth), "files": files, "seed": cfg.seed, "mu": MU, "sigma": SIGMA,
            "shifts": {f"{k[0]}={k[1]}": v for k, v in SHIFTS.items()},
            "bad_rows": truth["bad"].value_counts().to_dict()}
    (out / "latent.json").write_text(json.dumps(info, indent=2))
    return info


def _boxes(rng: np.random.Generator, person: bool) -> list[list[float]]:
    if not person:
        return []
    k = 1 if rng.random() < 0.8 else int(rng.integers(2, 4))
    out = []
    for _ in range(k):
        x, y = rng.uniform(0.05, 0.7, 2)
        s = rng.uniform(0.08, 0.3)
        out.append([float(x), float(y), float(x + s), float(y + s)])
    return out
