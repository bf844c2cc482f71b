"""Dataset-origin probe: can the sources of a pool be told apart, and by which kind of information?

After "Understanding Bias in Large-Scale Visual Datasets" (Zeng, Yin & Liu 2024; Liu & He 2024; methods.md §7).
Each source (or any other group column, ``--by``) is a class; a **linear probe** (multinomial logistic
regression, scikit-learn) is trained on one *feature family* at a time and scored on held-out samples:

* embeddings of each stored model: ``image``, ``text`` and ``image+text`` (per model, on the samples that
  have that model's vectors);
* ``concepts``: CLIP zero-shot concept presence per sample (prompts embedded with audit.textenc);
* captions: ``caption_stats`` (length, vocabulary statistics) and ``caption_words`` (binary bag of words);
* image transformations, where images are stored (audit.features): ``mean_rgb``, ``color_hist``, ``lpf``,
  ``hpf`` (ideal FFT filters, radius 40, 224×224 greyscale, as the paper), ``edges`` (Canny), ``hog``.

These are linear probes on frozen features, **not** the paper's ConvNeXt trained from scratch on millions
of images, so the accuracies are not comparable to its 82–85%. Every family reports accuracy with a 95%
Wilson interval, the chance level (majority-class share of the evaluated samples), macro-F1, the
confusion matrix, and a **shuffled-label control** (labels permuted, same procedure) whose accuracy must
not sit above chance. Evaluation: a stratified 75/25 hold-out split when a family has at least
HOLDOUT_MIN_N samples, stratified k-fold (out-of-fold predictions for every sample) below that.

Results are stored in the ``origin_results`` table (one JSON document per run; ``--out`` also writes it to a
file) and read by pages/origin.py.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from audit.features import IMAGE_FAMILIES

NOTE = ("Linear probes (multinomial logistic regression) on frozen features, not the paper's ConvNeXt-T "
        "trained from scratch on 1M images per dataset: the accuracies are not comparable to its 82–85%.")
VERSION = 1
HOLDOUT_MIN_N = 1000        # below this many samples a family is evaluated by stratified k-fold
MIN_PER_CLASS = 10          # classes with fewer samples in a family are left out (and named)
MAX_CLASSES = 12            # the largest classes are probed; the rest are left out (and named)
TYPICAL_K = 6               # most / least typical samples kept per class
CONCEPT_PROMPT = "a photo of {article} {concept}."
CONCEPT_SCALE = 100.0       # CLIP's logit scale for the zero-shot softmax
CONCEPT_MIN_P = 0.1         # a concept is "present" when its softmax probability reaches this (or it is top-1)
DEFAULT_CONCEPTS = (
    "person", "portrait", "family", "wedding", "athlete", "business meeting", "dog", "cat", "bird", "car",
    "bicycle", "shoe", "dress", "phone", "pizza", "cake", "flower", "mountain", "beach", "city skyline",
    "house", "logo", "painting", "chart", "text document", "screenshot", "illustration", "food", "landscape",
    "product on a white background",
)
EMBEDDING_FAMILIES = ("image", "text", "image+text", "concepts")
CAPTION_FAMILIES = ("caption_stats", "caption_words")


# ---- the probe (pure: arrays in, numbers out) ---------------------------------------------------------
@dataclass
class ProbeOutcome:
    """One evaluated probe. ``rows``: positions (into X) of the evaluated samples; ``proba`` (len(rows), K)
    out-of-sample class probabilities; ``coef`` (K, f) per-class coefficients of a model fitted on the
    training rows (all rows for k-fold), or None."""

    record: dict
    rows: np.ndarray
    proba: np.ndarray
    coef: np.ndarray | None


def splits(y: np.ndarray, *, seed: int, test_size: float = 0.25, folds: int = 5,
           holdout_min_n: int = HOLDOUT_MIN_N) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Stratified hold-out (n >= holdout_min_n) or stratified k-fold (k = min(folds, smallest class)).

    y: (n,) int class codes, every class with >= 2 samples. Returns (description, [(train, test), ...]).
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    n = len(y)
    idx = np.arange(n)
    if n >= holdout_min_n:
        train, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
        return f"stratified hold-out ({1 - test_size:.0%}/{test_size:.0%})", [(np.sort(train), np.sort(test))]
    k = int(min(folds, np.bincount(y).min()))
    if k < 2:
        raise ValueError("every class needs at least 2 samples for k-fold evaluation")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return f"stratified {k}-fold (out-of-fold predictions)", list(skf.split(idx, y))


def _classifier(C: float, scale: bool, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(C=C, max_iter=max_iter, tol=1e-3)
    return make_pipeline(StandardScaler(), lr) if scale else make_pipeline(lr)


def _coef(model, n_classes: int) -> np.ndarray:
    c = model[-1].coef_
    return np.vstack([-c[0], c[0]]) if c.shape[0] == 1 and n_classes == 2 else c


def evaluate(X, y: np.ndarray, n_classes: int, *, seed: int, test_size: float = 0.25, folds: int = 5,
             C: float = 0.1, scale: bool = True, max_iter: int = 300, want_coef: bool = False,
             holdout_min_n: int = HOLDOUT_MIN_N) -> ProbeOutcome:
    """Train and score one linear probe.

    X: (n, f) float array or scipy sparse matrix; y: (n,) int codes in [0, n_classes). Accuracy interval:
    Wilson 95% on (correct, n_test); chance: majority-class share of the evaluated samples.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import confusion_matrix, f1_score

    from audit.metrics import wilson

    t0 = time.perf_counter()
    desc, parts = splits(y, seed=seed, test_size=test_size, folds=folds, holdout_min_n=holdout_min_n)
    rows, probas, converged, coef = [], [], True, None
    for train, test in parts:
        model = _classifier(C, scale, max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X[train], y[train])
        converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        p = np.zeros((len(test), n_classes))
        p[:, model[-1].classes_] = model.predict_proba(X[test])
        rows.append(test)
        probas.append(p)
        if want_coef and len(parts) == 1:
            coef = _coef(model, n_classes)
    rows_a, proba = np.concatenate(rows), np.vstack(probas)
    if want_coef and len(parts) > 1:  # k-fold: coefficients of one model fitted on every row
        model = _classifier(C, scale, max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        coef = np.zeros((n_classes, X.shape[1]))
        coef[model[-1].classes_] = _coef(model, len(model[-1].classes_))
    truth = y[rows_a]
    pred = proba.argmax(axis=1)
    correct = int((pred == truth).sum())
    n_test = len(rows_a)
    lo, hi = wilson(correct, n_test)
    acc = correct / n_test
    # at k = 0 or k = n the Wilson bound is exactly 0 or 1; keep float rounding from putting it past acc
    lo, hi = min(float(lo), acc), max(float(hi), acc)
    record = {
        "accuracy": acc, "ci_low": lo, "ci_high": hi,
        "chance": float(np.bincount(truth, minlength=n_classes).max() / n_test),
        "macro_f1": float(f1_score(truth, pred, average="macro", labels=np.arange(n_classes), zero_division=0)),
        "n_test": n_test, "n_train": int(round(np.mean([len(tr) for tr, _ in parts]))),
        "n": int(len(y)), "split": desc, "correct": correct,
        "confusion": confusion_matrix(truth, pred, labels=np.arange(n_classes)).tolist(),
        "converged": bool(converged), "n_features": int(X.shape[1]), "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    return ProbeOutcome(record=record, rows=rows_a, proba=proba, coef=coef)


def probe_family(X, y: np.ndarray, classes: Sequence[str], *, seed: int, control: bool = True,
                 feature_names: Sequence[str] | None = None, top_features: int = 12, **kw) -> tuple[dict, ProbeOutcome]:
    """Evaluate a family and its shuffled-label control; returns (JSON-ready record, outcome of the real run).

    The control permutes the labels (seeded) and repeats the same procedure; its accuracy estimates what
    the probe reaches by chance on these samples. ``control.at_chance`` is True when its 95% interval does
    not lie above the chance level (ci_low <= chance); compute_origin re-decides it family-wise
    (adjust_controls) once every family has run.
    """
    K = len(classes)
    real = evaluate(X, y, K, seed=seed, want_coef=feature_names is not None, **kw)
    rec = dict(real.record, classes=list(classes), status="ok")
    rec["above_chance"] = bool(rec["ci_low"] > rec["chance"])
    if control:
        y_perm = np.random.default_rng([seed, 1]).permutation(y)
        ctl = evaluate(X, y_perm, K, seed=seed, **kw).record
        rec["control"] = {k: ctl[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "macro_f1", "n_test")}
        rec["control"]["at_chance"] = bool(ctl["ci_low"] <= ctl["chance"])
    if feature_names is not None and real.coef is not None:
        rec["coefficients"] = {
            cls: [[str(feature_names[j]), round(float(real.coef[k, j]), 4)]
                  for j in np.argsort(-real.coef[k])[:top_features]]
            for k, cls in enumerate(classes)}
    return rec, real


def adjust_controls(families: dict, alpha: float = 0.05) -> int:
    """Family-wise check of the shuffled-label controls (in place); returns the number of controls.

    Each control is one test of "accuracy above chance". With m controls in one run, a 95% interval per
    control would raise a false alarm in about 1 run out of 4 (m ≈ 12). ``control.at_chance`` is therefore
    decided with a Bonferroni interval: Wilson at z = Φ⁻¹(1 − alpha / (2m)) (``ci_low_adjusted``), so a run
    with no leak raises an alarm with probability <= alpha. The displayed interval stays the 95% one.
    """
    from scipy.stats import norm

    from audit.metrics import wilson

    recs = [r for r in families.values() if r.get("status") == "ok" and "control" in r]
    if not recs:
        return 0
    z = float(norm.ppf(1 - alpha / (2 * len(recs))))
    for r in recs:
        c = r["control"]
        k = round(c["accuracy"] * c["n_test"])
        lo, _ = wilson(k, c["n_test"], z=z)
        c["ci_low_adjusted"] = float(min(lo, c["accuracy"]))
        c["z_adjusted"] = round(z, 4)
        c["at_chance"] = bool(c["ci_low_adjusted"] <= c["chance"])
    return len(recs)


def typical_samples(outcome: ProbeOutcome, y: np.ndarray, uids: Sequence[str], classes: Sequence[str],
                    k: int = TYPICAL_K) -> dict:
    """Per class: the k evaluated samples the probe is most and least sure come from it.

    p = out-of-sample probability of the sample's true class. Returns {class: {"most": [[uid, p, predicted]],
    "least": [...]}}.
    """
    truth = y[outcome.rows]
    p_true = outcome.proba[np.arange(len(truth)), truth]
    pred = outcome.proba.argmax(axis=1)
    out = {}
    for c, name in enumerate(classes):
        pos = np.flatnonzero(truth == c)
        order = pos[np.argsort(-p_true[pos], kind="stable")]

        def rows(sel):
            return [[str(uids[outcome.rows[i]]), round(float(p_true[i]), 4), str(classes[pred[i]])] for i in sel]

        out[name] = {"most": rows(order[:k]), "least": rows(order[::-1][:k])}
    return out


# ---- concepts (zero-shot presence) ----------------------------------------------------------------------
def concept_prompts(concepts: Sequence[str]) -> list[str]:
    return [CONCEPT_PROMPT.format(article="an" if c[:1].lower() in "aeiou" else "a", concept=c) for c in concepts]


def concept_presence(img: np.ndarray, text: np.ndarray, *, scale: float = CONCEPT_SCALE,
                     min_p: float = CONCEPT_MIN_P) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot concept presence. img: (n, d), text: (c, d) prompt embeddings (both L2-normalised here).

    p = softmax(scale · cos) over the c concepts; present = p >= min_p or the concept is the top-1.
    Returns (present (n, c) bool, p (n, c) float64).
    """
    a = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    t = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    logits = scale * (a.astype(np.float64) @ t.astype(np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    present = p >= min_p
    present[np.arange(len(p)), p.argmax(axis=1)] = True
    return present, p


def concept_shares(present: np.ndarray, y: np.ndarray, classes: Sequence[str], concepts: Sequence[str]) -> dict:
    """Per class: n, mean number of concepts present per sample, and per concept the share of samples
    where it is present with a 95% Wilson interval ([share, lo, hi])."""
    from audit.metrics import wilson

    out = {}
    for c, name in enumerate(classes):
        m = present[y == c]
        n = len(m)
        k = m.sum(axis=0)
        lo, hi = wilson(k, np.full(len(concepts), n))
        out[name] = {"n": int(n), "mean_present": float(m.sum(axis=1).mean()) if n else 0.0,
                     "shares": {con: [round(float(k[j] / n) if n else 0.0, 4), round(float(lo[j]), 4),
                                      round(float(hi[j]), 4)] for j, con in enumerate(concepts)}}
    return out


# ---- picking the samples of a family -------------------------------------------------------------------
def cap_per_class(labels: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of at most ``cap`` random samples of each label (all of a smaller class)."""
    keep = []
    for lab in pd.unique(labels):
        pos = np.flatnonzero(labels == lab)
        keep.append(pos if len(pos) <= cap else rng.choice(pos, size=cap, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def usable_classes(labels: np.ndarray, *, min_per_class: int = MIN_PER_CLASS,
                   max_classes: int = MAX_CLASSES) -> tuple[list[str], list[str]]:
    """(classes probed, sorted by size then name; notes on the classes left out)."""
    counts = pd.Series(labels).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    notes = [f"{c} left out: {n} samples (< {min_per_class})" for c, n in counts.items() if n < min_per_class]
    ok = [c for c, n in counts.items() if n >= min_per_class]
    if len(ok) > max_classes:
        notes.append(f"{len(ok) - max_classes} smaller classes left out (only the {max_classes} largest are probed): "
                     + ", ".join(map(str, ok[max_classes:][:10])) + ("…" if len(ok) > max_classes + 10 else ""))
        ok = ok[:max_classes]
    return sorted(ok, key=lambda c: (-int(counts[c]), str(c))), notes


def _skipped(family: str, model: str | None, kind: str, message: str, **extra) -> dict:
    return {"family": family, "model": model, "kind": kind, "status": "skipped", "message": message, **extra}


def family_key(family: str, model: str | None) -> str:
    return f"{model} · {family}" if model else family


# ---- the stage ----------------------------------------------------------------------------------------
@dataclass
class OriginParams:
    by: str = "source"
    models: tuple[str, ...] | None = None        # None: every stored model
    families: tuple[str, ...] | None = None      # None: every family
    max_per_source: int = 5000
    max_images_per_source: int = 1000
    concepts: tuple[str, ...] | None = None      # None: DEFAULT_CONCEPTS
    test_size: float = 0.25
    folds: int = 5
    C: float = 0.1
    max_iter: int = 300
    control: bool = True

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def wants(self, family: str) -> bool:
        return self.families is None or family in self.families


ALL_FAMILIES = EMBEDDING_FAMILIES + CAPTION_FAMILIES + IMAGE_FAMILIES


def _model_seed(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _gather_model(store, model: str, have: list[str], labels: pd.Series, classes: list[str], cap: int, seed: int):
    """Sample <= cap rows per class among ``have`` (the uids with ``model``'s vectors); return (uids, y codes,
    img, txt) with finite vectors only, plus the number of non-finite rows dropped. Vectors are read part by
    part (audit.vectors.iter_vectors); only the sampled rows are kept."""
    from audit.vectors import iter_vectors

    lab = labels.reindex(pd.Index(have)).to_numpy(dtype=object)
    ok = pd.Series(lab).isin(classes).to_numpy()
    pos = np.flatnonzero(ok)
    pick = pos[cap_per_class(lab[pos], cap, _model_seed(seed, model))]
    want = {have[i]: j for j, i in enumerate(pick)}
    dim = int(store.model_info(model)["dim"])
    img = np.zeros((len(pick), dim), np.float32)
    txt = np.zeros((len(pick), dim), np.float32)
    for u, cols in iter_vectors(store, model, columns=("img", "txt")):
        sel = [(k, want[v]) for k, v in enumerate(u) if v in want]
        if sel:
            src, dst = np.array([s for s, _ in sel]), np.array([d for _, d in sel])
            img[dst], txt[dst] = cols["img"][src], cols["txt"][src]
    finite = np.isfinite(img).all(axis=1) & np.isfinite(txt).all(axis=1)
    uids = np.array([have[i] for i in pick], dtype=object)[finite]
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code[v] for v in lab[pick][finite]], dtype=np.int64)
    return uids, y, img[finite], txt[finite], int((~finite).sum())


def _probe_model(store, model: str, labels: pd.Series, p: OriginParams, seed: int, echo) -> tuple[dict, dict | None]:
    """Families image / text / image+text / concepts of one model: ({key: record}, concepts view or None)."""
    info = store.model_info(model)
    rw = bool(info["random_weights"])
    have = []
    from audit.vectors import iter_vectors

    for u, _ in iter_vectors(store, model, columns=()):
        have.extend(u)
    lab = labels.reindex(pd.Index(have)).dropna().to_numpy(dtype=object)
    classes, notes = usable_classes(lab)
    wanted = [f for f in EMBEDDING_FAMILIES if p.wants(f)]
    if len(classes) < 2:
        present = ", ".join(f"{c} ({n})" for c, n in pd.Series(lab).value_counts().items()) or "none"
        msg = (f"needs samples of at least two {p.by} classes with embeddings of {model} "
               f"(at least {MIN_PER_CLASS} each); found: {present}")
        return {family_key(f, model): _skipped(f, model, "embedding", msg, random_weights=rw) for f in wanted}, None
    uids, y, img, txt, n_bad = _gather_model(store, model, have, labels, classes, p.max_per_source, seed)
    echo(f"{model}: {len(y):,} samples of {len(classes)} classes"
         + (f" ({n_bad} with non-finite vectors left out)" if n_bad else "")
         + (" [RANDOM-WEIGHT MODEL: not meaningful]" if rw else ""))
    sim = _simulated_share(store, uids)
    kw = dict(seed=seed, test_size=p.test_size, folds=p.folds, C=p.C, max_iter=p.max_iter, control=p.control)
    out = {}
    feats = {"image": lambda: img, "text": lambda: txt, "image+text": lambda: np.hstack([img, txt])}
    for fam in ("image", "text", "image+text"):
        if not p.wants(fam):
            continue
        rec, outcome = probe_family(feats[fam](), y, classes, **kw)
        rec.update(family=fam, model=model, kind="embedding", random_weights=rw, simulated=sim,
                   notes=notes + ([f"{n_bad} samples with non-finite vectors left out"] if n_bad else []),
                   typical=typical_samples(outcome, y, uids, classes))
        out[family_key(fam, model)] = rec
        echo("    " + summary_line(family_key(fam, model), rec))
    view = None
    if p.wants("concepts"):
        concepts = list(p.concepts or DEFAULT_CONCEPTS)
        try:
            from audit.textenc import text_encoder

            encode, enc_label = text_encoder(store, model)
            tvec = np.asarray(encode(concept_prompts(concepts)), dtype=np.float32)
        except Exception as exc:  # no hub / no weights for this model's text tower: say so, go on
            out[family_key("concepts", model)] = _skipped("concepts", model, "concepts",
                                                          f"no text encoder for {model}: {exc}", random_weights=rw)
            return out, None
        present, _ = concept_presence(img, tvec)
        rec, outcome = probe_family(present.astype(np.float64), y, classes, feature_names=concepts,
                                    top_features=len(concepts), scale=False, **kw)
        rec.update(family="concepts", model=model, kind="concepts", random_weights=rw, simulated=sim, notes=notes,
                   encoder=enc_label, typical=typical_samples(outcome, y, uids, classes))
        out[family_key("concepts", model)] = rec
        echo("    " + summary_line(family_key("concepts", model), rec))
        view = {"model": model, "encoder": enc_label, "random_weights": rw, "simulated": sim,
                "concepts": concepts, "prompt": CONCEPT_PROMPT, "scale": CONCEPT_SCALE, "min_p": CONCEPT_MIN_P,
                "by_class": concept_shares(present, y, classes, concepts),
                "coefficients": rec.get("coefficients", {})}
    return out, view


def _simulated_share(store, uids) -> bool:
    """True when every sample used is simulated."""
    from audit.store import samples_simulated

    return bool(len(uids)) and bool(samples_simulated(store, list(uids)).all())


def _probe_captions(store, labels: pd.Series, p: OriginParams, seed: int, echo) -> dict:
    from sklearn.feature_extraction.text import CountVectorizer

    from audit.features import CAPTION_STATS, caption_stats

    wanted = [f for f in CAPTION_FAMILIES if p.wants(f)]
    if not wanted:
        return {}
    frame = store.df("SELECT uid, caption FROM samples WHERE caption IS NOT NULL AND length(trim(caption)) > 0 "
                     "ORDER BY uid")
    lab = labels.reindex(pd.Index(frame["uid"])).to_numpy(dtype=object)
    has = pd.notna(lab)
    frame, lab = frame[has].reset_index(drop=True), lab[has]
    classes, notes = usable_classes(lab)
    if len(classes) < 2:
        msg = f"needs captions from at least two {p.by} classes (at least {MIN_PER_CLASS} each)"
        return {f: _skipped(f, None, "caption", msg) for f in wanted}
    pos = np.flatnonzero(pd.Series(lab).isin(classes).to_numpy())
    pick = pos[cap_per_class(lab[pos], p.max_per_source, _model_seed(seed, "captions"))]
    caps = frame["caption"].to_numpy(dtype=object)[pick]
    uids = frame["uid"].to_numpy(dtype=object)[pick]
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code[v] for v in lab[pick]], dtype=np.int64)
    sim = _simulated_share(store, uids)
    kw = dict(seed=seed, test_size=p.test_size, folds=p.folds, C=p.C, max_iter=p.max_iter, control=p.control)
    out = {}
    echo(f"captions: {len(y):,} samples of {len(classes)} classes")
    if p.wants("caption_stats"):
        rec, outcome = probe_family(caption_stats(list(caps)), y, classes, feature_names=CAPTION_STATS,
                                    top_features=len(CAPTION_STATS), **kw)
        rec.update(family="caption_stats", model=None, kind="caption", simulated=sim, notes=notes,
                   typical=typical_samples(outcome, y, uids, classes))
        out["caption_stats"] = rec
        echo("    " + summary_line("caption_stats", rec))
    if p.wants("caption_words"):
        vec = CountVectorizer(binary=True, min_df=3, max_features=20000)
        try:
            X = vec.fit_transform(list(caps)).tocsr()
        except ValueError:  # empty vocabulary (every word rarer than min_df)
            out["caption_words"] = _skipped("caption_words", None, "caption", "no word occurs in 3 or more captions")
            return out
        rec, outcome = probe_family(X, y, classes, feature_names=vec.get_feature_names_out(), scale=False, **kw)
        rec.update(family="caption_words", model=None, kind="caption", simulated=sim, notes=notes,
                   vocabulary=int(X.shape[1]), typical=typical_samples(outcome, y, uids, classes))
        out["caption_words"] = rec
        echo("    " + summary_line("caption_words", rec))
    return out


def _probe_images(store, labels: pd.Series, p: OriginParams, seed: int, echo) -> dict:
    from audit import images
    from audit.features import IMAGE_FAMILIES, image_features

    wanted = [f for f in IMAGE_FAMILIES if p.wants(f)]
    if not wanted:
        return {}
    frame = store.df("SELECT uid, image_ref FROM samples WHERE image_ref IS NOT NULL ORDER BY uid")
    lab = labels.reindex(pd.Index(frame["uid"])).to_numpy(dtype=object)
    has = pd.notna(lab)
    frame, lab = frame[has].reset_index(drop=True), lab[has]
    classes, notes = usable_classes(lab)
    if len(classes) < 2:
        present = ", ".join(f"{c} ({n})" for c, n in pd.Series(lab).value_counts().items()) or "none"
        msg = (f"needs stored images from at least two {p.by} classes (at least {MIN_PER_CLASS} each); "
               f"images found: {present}")
        return {f: _skipped(f, None, "image transform", msg) for f in wanted}
    pos = np.flatnonzero(pd.Series(lab).isin(classes).to_numpy())
    pick = pos[cap_per_class(lab[pos], p.max_images_per_source, _model_seed(seed, "images"))]
    echo(f"images: computing {', '.join(wanted)} for {len(pick):,} images of {len(classes)} classes")
    rows: dict[str, list[np.ndarray]] = {f: [] for f in wanted}
    kept, failed = [], []
    for i in pick:
        ref = frame["image_ref"].iat[i]
        try:
            feats = image_features(images.load_image(ref), wanted)
        except images.ImageError as exc:
            failed.append([str(frame["uid"].iat[i]), str(exc)[:200]])
            continue
        for f in wanted:
            rows[f].append(feats[f])
        kept.append(i)
    kept_a = np.array(kept, dtype=np.int64)
    labs = lab[kept_a] if len(kept_a) else np.array([], dtype=object)
    classes2, notes2 = usable_classes(labs)
    if len(classes2) < 2:
        msg = f"too few decodable images: {len(kept)} decoded, {len(failed)} failed"
        return {f: _skipped(f, None, "image transform", msg, failed_images=failed[:50]) for f in wanted}
    ok = pd.Series(labs).isin(classes2).to_numpy()
    code = {c: i for i, c in enumerate(classes2)}
    y = np.array([code[v] for v in labs[ok]], dtype=np.int64)
    uids = frame["uid"].to_numpy(dtype=object)[kept_a[ok]]
    sim = _simulated_share(store, uids)
    kw = dict(seed=seed, test_size=p.test_size, folds=p.folds, C=p.C, max_iter=p.max_iter, control=p.control)
    names = {"mean_rgb": ("mean R", "mean G", "mean B")}
    out = {}
    for f in wanted:
        X = np.vstack(rows[f])[ok]
        rec, outcome = probe_family(X, y, classes2, feature_names=names.get(f), **kw)
        rec.update(family=f, model=None, kind="image transform", simulated=sim, notes=notes + notes2,
                   failed_images=failed[:50], n_failed_images=len(failed),
                   typical=typical_samples(outcome, y, uids, classes2))
        out[f] = rec
        echo("    " + summary_line(f, rec))
    return out


def summary_line(key: str, rec: dict) -> str:
    if rec.get("status") != "ok":
        return f"{key}: skipped ({rec.get('message')})"
    line = (f"{key}: accuracy {rec['accuracy']:.3f} [{rec['ci_low']:.3f}, {rec['ci_high']:.3f}] "
            f"chance {rec['chance']:.3f} macro-F1 {rec['macro_f1']:.3f} n_test {rec['n_test']:,}")
    if "control" in rec:
        c = rec["control"]
        line += f" | shuffled control {c['accuracy']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
    return line


def compute_origin(store, params: OriginParams, *, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Run every requested family on an open (read-only) store; returns the JSON-ready result."""
    from audit.store import label_frame

    frame = label_frame(store, [params.by])
    labels = pd.Series(frame[params.by].to_numpy(dtype=object), index=pd.Index(frame["uid"]))
    labels = labels[labels != "unknown"] if params.by != "source" else labels
    counts = labels.value_counts()
    classes, notes = usable_classes(labels.to_numpy(dtype=object))
    result = {
        "version": VERSION, "by": params.by, "seed": seed, "params": params.as_dict(), "note": NOTE,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "class_counts": {str(k): int(v) for k, v in counts.items()},
        "classes": classes, "class_notes": notes, "families": {}, "concepts": {},
    }
    if len(classes) < 2:
        result["status"] = "too_few_classes"
        have = ", ".join(f"{k} ({v:,})" for k, v in counts.items()) or "no samples"
        result["message"] = (f"The origin probe needs at least two {params.by} classes with at least "
                             f"{MIN_PER_CLASS} samples each; this store has: {have}.")
        echo(result["message"])
        return result
    result["status"] = "ok"
    models = list(params.models) if params.models else store.models()["model"].tolist()
    for m in models:
        fams, view = _probe_model(store, m, labels, params, seed, echo)
        result["families"].update(fams)
        if view:
            result["concepts"][m] = view
    result["families"].update(_probe_captions(store, labels, params, seed, echo))
    result["families"].update(_probe_images(store, labels, params, seed, echo))
    m = adjust_controls(result["families"])
    if m:
        alarms = [k for k, r in result["families"].items() if r.get("control") and not r["control"]["at_chance"]]
        result["control_check"] = {"controls": m, "alpha": 0.05, "above_chance": alarms}
        echo(f"shuffled-label controls: {m - len(alarms)} of {m} at chance (family-wise 5% level)"
             + (f"; ABOVE CHANCE: {', '.join(alarms)}: check for duplicates across the split or another leak"
                if alarms else ""))
    return result


def run_origin(store_path: str, params: OriginParams | None = None, *, seed: int = 0, force: bool = False,
               out: str | None = None, echo: Callable[[str], None] = print) -> dict:
    """Compute (or reuse, with the same parameters) the origin probe and store it; optionally write JSON."""
    from audit.store import Store, origin_result, param_key, write_origin_result

    params = params or OriginParams()
    full = {**params.as_dict(), "seed": seed, "version": VERSION}
    with Store.writer(store_path) as st:
        done = st.find_done_run("origin", params.by, param_key(full))
        stored = origin_result(st, run_id=done) if done else None
        if stored is not None and not force:
            echo(f"origin probe by {params.by} already computed with these parameters (run {done}); reusing it")
            result = stored
            run_id = None
        else:
            run_id = st.start_run("origin", params.by, params=full, version=VERSION)
    if run_id is not None:
        try:
            with Store.reader(store_path) as rd:
                result = compute_origin(rd, params, seed=seed, echo=echo)
        except Exception as exc:
            with Store.writer(store_path) as st:
                st.end_run(run_id, status="failed", note=str(exc)[:500])
            raise
        result["run_id"] = run_id
        with Store.writer(store_path) as st:
            write_origin_result(st, run_id, params.by, json.dumps(result))
            n_ok = sum(r.get("status") == "ok" for r in result["families"].values())
            st.end_run(run_id, rows_in=sum(result["class_counts"].values()), rows_out=n_ok,
                       note=result.get("message") or f"{n_ok} feature families probed")
    if out:
        from pathlib import Path

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
        echo(f"wrote {out}")
    return result


# ---- tables for the page (pure) -------------------------------------------------------------------------
def families_table(result: dict) -> pd.DataFrame:
    """One row per family: key, family, model, kind, status, accuracy, ci_low, ci_high, chance, macro_f1,
    n_test, split, control_* and flags."""
    rows = []
    for key, r in result.get("families", {}).items():
        c = r.get("control", {})
        rows.append({
            "key": key, "family": r.get("family"), "model": r.get("model"), "kind": r.get("kind"),
            "status": r.get("status"), "message": r.get("message", ""),
            "accuracy": r.get("accuracy"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"),
            "chance": r.get("chance"), "macro_f1": r.get("macro_f1"), "n_test": r.get("n_test"),
            "n_train": r.get("n_train"), "split": r.get("split"),
            "control_accuracy": c.get("accuracy"), "control_ci_low": c.get("ci_low"),
            "control_ci_high": c.get("ci_high"), "control_at_chance": c.get("at_chance"),
            "random_weights": bool(r.get("random_weights", False)), "simulated": bool(r.get("simulated", False)),
            "converged": r.get("converged"),
        })
    return pd.DataFrame(rows)


def confusion_frame(rec: dict, *, normalise: bool = True) -> pd.DataFrame:
    """Confusion matrix as a frame (rows: true class, columns: predicted), row-normalised if asked."""
    m = np.asarray(rec["confusion"], dtype=np.float64)
    if normalise:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    return pd.DataFrame(m, index=rec["classes"], columns=rec["classes"])


# ---- CLI and demo ---------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    from audit.cli import _store_arg

    p = subparsers.add_parser(
        "origin", help="dataset-origin probe: can the sources be told apart?",
        description="Predict each sample's source (or --by column) from one feature family at a time, with a "
                    "shuffled-label control. " + NOTE)
    _store_arg(p)
    p.add_argument("--by", default="source", help="class column: source (default), domain, tld or an attribute")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--models", help="comma-separated embedding models (default: every stored model)")
    p.add_argument("--families", help="comma-separated families (default: all): " + ", ".join(ALL_FAMILIES))
    p.add_argument("--max-per-source", type=int, default=5000,
                   help="random samples per class for embedding and caption families (default: %(default)s)")
    p.add_argument("--max-images-per-source", type=int, default=1000,
                   help="images per class decoded for the transformation features (default: %(default)s)")
    p.add_argument("--concepts", help="comma-separated zero-shot concepts (default: 30 everyday concepts)")
    p.add_argument("--test-size", type=float, default=0.25, help="hold-out share (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help=f"k for k-fold below {HOLDOUT_MIN_N} samples")
    p.add_argument("--C", type=float, default=0.1,
                   help="inverse L2 regularisation strength on standardised features (default: %(default)s)")
    p.add_argument("--no-control", action="store_true", help="skip the shuffled-label control")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute even if done with these parameters")
    p.set_defaults(func=_run_cli)


def _split(s: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in s.split(",") if x.strip()) if s else None


def params_from_args(a: argparse.Namespace) -> OriginParams:
    fams = _split(a.families)
    if fams:
        bad = [f for f in fams if f not in ALL_FAMILIES]
        if bad:
            raise ValueError(f"unknown feature families: {', '.join(bad)}; known: {', '.join(ALL_FAMILIES)}")
    if not 0.05 <= a.test_size <= 0.5:
        raise ValueError(f"--test-size must be in [0.05, 0.5], got {a.test_size}")
    if a.max_per_source < MIN_PER_CLASS or a.max_images_per_source < 1:
        raise ValueError(f"--max-per-source must be at least {MIN_PER_CLASS}")
    return OriginParams(by=a.by, models=_split(a.models), families=fams, max_per_source=a.max_per_source,
                        max_images_per_source=a.max_images_per_source, concepts=_split(a.concepts),
                        test_size=a.test_size, folds=a.folds, C=a.C, control=not a.no_control)


def _run_cli(a: argparse.Namespace) -> int:
    from audit.store import Store, StoreError

    params = params_from_args(a)
    with Store.reader(a.store) as rd:  # clear messages before any work
        if params.models:
            known = rd.models()["model"].tolist()
            for m in params.models:
                if m not in known:
                    raise StoreError(f"no embeddings for model {m!r}; this store has: {', '.join(known) or 'none'}")
    result = run_origin(a.store, params, seed=a.seed, force=a.force, out=a.out)
    if result.get("status") != "ok":
        print(f"error: {result.get('message')}")
        return 1
    print(NOTE)
    return 0


def demo_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """The demo's probe by source: every model, captions and images, 800 samples per source.

    Simulated sources carry per-source image style offsets (audit.simulate.SOURCES), so the image families
    should find them; the sample photos are embedded by a different (random-weight) model, so they are
    probed per model. Concepts are the simulator's own (its text encoder knows only those words).
    """
    from audit.simulate import CONCEPTS

    params = OriginParams(by="source", max_per_source=800, max_images_per_source=300, concepts=tuple(CONCEPTS))
    t0 = time.perf_counter()
    result = run_origin(store, params, seed=seed, echo=echo)
    echo(f"origin probe stored ({time.perf_counter() - t0:.1f} s)")
    return result
