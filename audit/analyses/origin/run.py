"""The origin probe over a store: gather each feature family, probe it (probe.py), store the result.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from audit.analyses.origin.features import IMAGE_FAMILIES
from audit.analyses.origin.probe import CAPTION_FAMILIES, CONCEPT_MIN_P, CONCEPT_PROMPT, CONCEPT_SCALE, DEFAULT_CONCEPTS, EMBEDDING_FAMILIES, MIN_PER_CLASS, NOTE, VERSION, adjust_controls, cap_per_class, concept_presence, concept_prompts, concept_shares, probe_family, typical_samples, usable_classes


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
    from audit.store.vectors import iter_vectors

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
    from audit.store.vectors import iter_vectors

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
            from audit.embed.textenc import text_encoder

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
    from audit.store.labels import samples_simulated

    return bool(len(uids)) and bool(samples_simulated(store, list(uids)).all())


def _labelled(frame: pd.DataFrame, labels: pd.Series):
    """The rows of ``frame`` that have a class label: (frame, labels, probe-able classes, notes)."""
    lab = labels.reindex(pd.Index(frame["uid"])).to_numpy(dtype=object)
    has = pd.notna(lab)
    frame, lab = frame[has].reset_index(drop=True), lab[has]
    classes, notes = usable_classes(lab)
    return frame, lab, classes, notes


def _probe_captions(store, labels: pd.Series, p: OriginParams, seed: int, echo) -> dict:
    from sklearn.feature_extraction.text import CountVectorizer

    from audit.analyses.origin.features import CAPTION_STATS, caption_stats

    wanted = [f for f in CAPTION_FAMILIES if p.wants(f)]
    if not wanted:
        return {}
    frame, lab, classes, notes = _labelled(store.sample_frame(["caption"], non_blank=["caption"]), labels)
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
    from audit.analyses.origin.features import IMAGE_FAMILIES, image_features

    wanted = [f for f in IMAGE_FAMILIES if p.wants(f)]
    if not wanted:
        return {}
    frame, lab, classes, notes = _labelled(store.sample_frame(["image_ref"], not_null=["image_ref"]), labels)
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
    from audit.store.labels import label_frame

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
    from audit.store import Store, param_key
    from audit.store.results import origin_result, write_origin_result

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
            with Store.detached(store_path) as rd:   # holds the file only per query: others write meanwhile
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
