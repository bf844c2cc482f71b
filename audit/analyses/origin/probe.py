"""Dataset-origin probe: can the sources of a pool be told apart, and by which kind of information?

After "Understanding Bias in Large-Scale Visual Datasets" (Zeng, Yin & Liu 2024; Liu & He 2024; methods.md §7).
Each source (or any other group column, ``--by``) is a class; a **linear probe** (multinomial logistic
regression, scikit-learn) is trained on one *feature family* at a time and scored on held-out samples:

* embeddings of each stored model: ``image``, ``text`` and ``image+text`` (per model, on the samples that
  have that model's vectors);
* ``concepts``: CLIP zero-shot concept presence per sample (prompts embedded with audit.embed.textenc);
* captions: ``caption_stats`` (length, vocabulary statistics) and ``caption_words`` (binary bag of words);
* image transformations, where images are stored (audit.analyses.origin.features): ``mean_rgb``, ``color_hist``, ``lpf``,
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

import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd



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

    from audit.measure.metrics import wilson

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

    from audit.measure.metrics import wilson

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
    from audit.measure.metrics import wilson

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
