"""Data balancing: M4 (methods.md §5.1) and MetaCLIP (§4.3), with before/after RB and AB.

``python -m audit balance m4 ...`` computes per-sample weights q in [0, 1] (Σq = η·n) that meet first-order
(representation) constraints on the groups of a sensitive attribute and second-order (association)
constraints between those groups and each proxy, as close as possible to uniform (or utility-weighted)
sampling; it writes uid, q and a seeded Bernoulli keep draw. ``balance metaclip ...`` gives MetaCLIP's keep
probabilities from the metaclip score's entry matching, optionally at a t matched to the same budget, so the
two can be compared. The maths lives in ``audit.m4``; this module assembles the matrices from the store.

Memberships are imputed: a label with annotator confidence c counts as c of a member of its group (the
rest of the row is treated as unknown); ``unknown`` and ``multiple`` rows carry no membership and are
neither forced in nor out. Proxies (``--proxies``, comma-separated):

    ATTR            one column per label of another attribute or sample column (source, domain, tld):
                    y = the label's confidence; labels with fewer than --min-proxy rows are dropped
    ATTR=LABEL      one column for one label
    zs:P1|P2|...    CLIP zero-shot concepts: softmax over the listed prompts (logit scale 100) of the image
                    embedding of --model, prompts embedded by audit.textenc (simulated text encoder on the
                    demo pool); rows without an embedding get 0
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

NON_GROUPS = ("unknown", "multiple")
DEFAULT_BUDGET = 0.9            # the M4 paper's subsampling rate η [2nd: methods.md §5]
DEFAULT_EPS_REP = 0.01
DEFAULT_EPS_ASSOC = 0.01
DEMO_EPS_REP = 0.001
DEMO_EPS_ASSOC = 0.0005
MIN_GROUP = 30
MIN_PROXY = 30
MAX_PROXY_LABELS = 30
ZS_LOGIT_SCALE = 100.0
DEMO_ZS_PROMPTS = ("portrait", "wedding", "athlete", "business meeting", "family")
M4_NOTE = ("M4 here is this project's formulation (methods.md §5.1): the moment-matching program the paper "
           "describes, solved exactly through its dual. No public M4 code exists to compare against.")


class BalanceError(ValueError):
    """Bad balancing input a user can fix (unknown attribute, bad target, too few members)."""


# ---------------------------------------------------------------------------------------------------
# pure helpers: labels -> matrices
# ---------------------------------------------------------------------------------------------------
def membership_matrix(labels: np.ndarray, conf: np.ndarray, groups: list[str]) -> np.ndarray:
    """S (n, m): s_ik = confidence of row i's label if it is group k, else 0 (NaN confidence counts as 1)."""
    labels = np.asarray(labels, dtype=object)
    c = np.clip(np.nan_to_num(np.asarray(conf, np.float64), nan=1.0), 0.0, 1.0)
    S = np.zeros((len(labels), len(groups)))
    for k, g in enumerate(groups):
        S[:, k] = np.where(labels == g, c, 0.0)
    return S


def parse_target(spec: str | None, groups: list[str], pool_shares: np.ndarray | None = None) -> np.ndarray:
    """'uniform', 'pool', 'G=P,G=P' or 'P,P' (in group order) -> proportions summing to 1."""
    m = len(groups)
    if spec is None or spec.strip().lower() == "uniform":
        return np.full(m, 1.0 / m)
    s = spec.strip()
    if s.lower() == "pool":
        if pool_shares is None or not np.all(np.isfinite(pool_shares)):
            raise BalanceError("target 'pool' needs the pool's group shares")
        return np.asarray(pool_shares, np.float64)
    parts = [p.strip() for p in s.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            got = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
            unknown = set(got) - set(groups)
            if unknown:
                raise BalanceError(f"target names unknown groups {sorted(unknown)}; groups are {groups}")
            vals = np.array([got.get(g, 0.0) for g in groups])
        else:
            vals = np.array([float(p) for p in parts])
    except ValueError as exc:
        if isinstance(exc, BalanceError):
            raise
        raise BalanceError(f"cannot read target {spec!r}: use uniform, pool, G=P,G=P or P,P") from None
    if len(vals) != m:
        raise BalanceError(f"target has {len(vals)} proportions but there are {m} groups ({', '.join(groups)})")
    if np.any(vals < 0) or vals.sum() <= 0:
        raise BalanceError(f"target proportions must be non-negative with a positive sum, got {spec!r}")
    return vals / vals.sum()


def choose_groups(counts: pd.DataFrame, requested: list[str] | None, min_group: int) -> tuple[list[str], list[str]]:
    """Groups to balance and notes. counts: label, n (from store.label_counts)."""
    labels = [str(x) for x in counts["label"]]
    n = dict(zip(labels, counts["n"]))
    notes = []
    if requested:
        missing = [g for g in requested if g not in n]
        if missing:
            raise BalanceError(f"groups {missing} not found; labels are {', '.join(labels)}")
        groups = list(requested)
    else:
        groups = [g for g in labels if g not in NON_GROUPS and n[g] >= min_group]
        small = [g for g in labels if g not in NON_GROUPS and n[g] < min_group]
        if small:
            notes.append(f"groups with fewer than {min_group} rows are not balanced (treated like unknown): "
                         + ", ".join(f"{g} (n={n[g]})" for g in small))
    if len(groups) < 2:
        raise BalanceError(f"need at least two groups with ≥ {min_group} rows to balance; labels: "
                           + ", ".join(f"{g} (n={n[g]})" for g in labels))
    return groups, notes


def parse_proxies(spec: str | list[str] | None) -> list[str]:
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [p.strip() for p in items if p and p.strip()]


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------------
# assembling the inputs from a store
# ---------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    uids: np.ndarray                    # (n,) object, uid order
    S: np.ndarray                       # (n, m)
    groups: list[str]
    Y: np.ndarray                       # (n, c)
    proxies: list[str]                  # column names
    target: np.ndarray                  # (m,)
    utility: np.ndarray | None
    attribute: str
    method: str                         # annotator method of the attribute
    imputed: bool
    notes: list[str] = field(default_factory=list)
    proxy_specs: list[str] = field(default_factory=list)


@dataclass
class ProxyPlan:
    """Fixed proxy columns, so that batches of a streamed pool get the same columns."""

    columns: list[tuple[str, str, str | None]]   # (column name, source attribute, label or None for zs)
    zs: list[str]                                 # zero-shot prompts (in-memory only)
    attributes: list[str]                         # attributes/sample columns to read
    notes: list[str]


def plan_proxies(store, specs: list[str], attribute: str, *, min_proxy: int = MIN_PROXY,
                 max_labels: int = MAX_PROXY_LABELS) -> ProxyPlan:
    from audit.store import SAMPLE_GROUP_COLUMNS, label_counts

    known = set(store.attributes()) | set(SAMPLE_GROUP_COLUMNS)
    cols: list[tuple[str, str, str | None]] = []
    zs: list[str] = []
    attrs: list[str] = []
    notes: list[str] = []
    for spec in specs:
        if spec.startswith("zs:"):
            prompts = [p.strip() for p in spec[3:].split("|") if p.strip()]
            if len(prompts) < 2:
                raise BalanceError(f"{spec!r}: give at least two prompts separated by '|' (zero-shot memberships "
                                   f"are a softmax over the listed prompts)")
            zs += [p for p in prompts if p not in zs]
            continue
        name, _, label = spec.partition("=")
        name = name.strip()
        if name not in known:
            raise BalanceError(f"unknown proxy {name!r}; attributes and sample columns: {', '.join(sorted(known))}")
        if name == attribute:
            raise BalanceError(f"the proxy {name!r} is the sensitive attribute itself")
        if name not in attrs:
            attrs.append(name)
        counts = label_counts(store, name)
        if label:
            label = label.strip()
            if label not in set(counts["label"]):
                raise BalanceError(f"proxy {spec!r}: label {label!r} not found; labels: "
                                   f"{', '.join(map(str, counts['label'][:30]))}")
            cols.append((f"{name}={label}", name, label))
            continue
        keep = counts[~counts["label"].isin(NON_GROUPS) & (counts["n"] >= min_proxy)]
        dropped = len(counts[~counts["label"].isin(NON_GROUPS)]) - len(keep)
        if len(keep) > max_labels:
            dropped += len(keep) - max_labels
            keep = keep.head(max_labels)
        if keep.empty:
            raise BalanceError(f"proxy {name!r} has no label with ≥ {min_proxy} rows")
        if dropped:
            notes.append(f"proxy {name}: {dropped} rarer labels left out (fewer than {min_proxy} rows or beyond "
                         f"the {max_labels} most frequent)")
        cols += [(f"{name}={lab}", name, str(lab)) for lab in keep["label"]]
    for p in zs:
        cols.append((f"zs:{p}", "zs", p))
    return ProxyPlan(cols, zs, attrs, notes)


def proxy_matrix(frame: pd.DataFrame, plan: ProxyPlan, zs_matrix: np.ndarray | None = None) -> np.ndarray:
    """Y (n, c) for a frame of labels/confidences (label_confidence_frame columns)."""
    Y = np.zeros((len(frame), len(plan.columns)))
    zi = 0
    for j, (_, src, label) in enumerate(plan.columns):
        if src == "zs":
            Y[:, j] = zs_matrix[:, zi]
            zi += 1
            continue
        lab = frame[src].to_numpy(dtype=object)
        conf = np.clip(np.nan_to_num(frame[f"{src}__conf"].to_numpy(np.float64), nan=1.0), 0, 1)
        Y[:, j] = np.where(lab == label, conf, 0.0)
    return Y


def default_model(store) -> str | None:
    """A model with a text encoder for zero-shot proxies: prefer the demo's simulated L/14, then any."""
    models = store.models()
    if models.empty:
        return None
    names = models["model"].tolist()
    for pref in ("datacomp_l14", "datacomp_b32"):
        if pref in names:
            return pref
    return names[0]


def zero_shot_matrix(store, prompts: list[str], model: str, uids: np.ndarray) -> tuple[np.ndarray, str, int]:
    """softmax(100 · cos(image, prompt)) over the prompts, rows aligned with uids; (Y, encoder label, missing)."""
    from audit.store import iter_embedding_rows
    from audit.textenc import text_encoder
    from audit.vectors import iter_vectors, parts

    encode, label = text_encoder(store, model)
    T = encode(list(prompts)).astype(np.float32)
    pos = pd.Index(uids)
    Y = np.zeros((len(uids), len(prompts)))
    seen = np.zeros(len(uids), bool)
    if parts(store, model):
        source = ((u, cols["img"]) for u, cols in iter_vectors(store, model, columns=("img",)))
    else:  # a snapshot copy (dashboard): read through the embeddings view
        source = iter_embedding_rows(store, model, "img")
    for part_uids, img in source:
        idx = pos.get_indexer(part_uids)
        ok = idx >= 0
        if not ok.any():
            continue
        img = img[ok]
        img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        Y[idx[ok]] = softmax_rows(ZS_LOGIT_SCALE * (img @ T.T).astype(np.float64))
        seen[idx[ok]] = True
    if not seen.any():
        raise BalanceError(f"no image vectors found for model {model!r}; zero-shot proxies need its embeddings")
    return Y, label, int((~seen).sum())


def attribute_info(store, attribute: str) -> tuple[str, bool]:
    cat = store.attribute_catalog()
    row = cat[cat["attribute"] == attribute]
    if row.empty:
        return "sample column", False
    return str(row.iloc[0]["method"] or ""), bool(row.iloc[0]["imputed"])


def load_inputs(store, attribute: str, proxies: str | list[str] | None = None, *, groups: list[str] | None = None,
                target: str | None = "uniform", utility: str | None = None, model: str | None = None,
                min_group: int = MIN_GROUP, min_proxy: int = MIN_PROXY,
                max_labels: int = MAX_PROXY_LABELS) -> Inputs:
    """Memberships, proxies, target and utility of every sample (uid order) for an in-memory solve."""
    from audit.store import label_confidence_frame, label_counts

    if attribute not in store.attributes():
        raise BalanceError(f"unknown attribute {attribute!r}; this store has: {', '.join(store.attributes()) or 'none'}"
                           " (run `python -m audit annotate caption` first)")
    counts = label_counts(store, attribute)
    grp, notes = choose_groups(counts, groups, min_group)
    specs = parse_proxies(proxies)
    plan = plan_proxies(store, specs, attribute, min_proxy=min_proxy, max_labels=max_labels)
    notes += plan.notes
    frame = label_confidence_frame(store, [attribute, *plan.attributes])
    uids = frame["uid"].to_numpy(dtype=object)
    S = membership_matrix(frame[attribute].to_numpy(dtype=object), frame[f"{attribute}__conf"].to_numpy(), grp)
    zs = None
    if plan.zs:
        model = model or default_model(store)
        if model is None:
            raise BalanceError("zero-shot proxies need embeddings: this store has no embedding model")
        zs, enc_label, missing = zero_shot_matrix(store, plan.zs, model, uids)
        notes.append(f"zero-shot proxies from {model} image embeddings, prompts embedded by {enc_label}"
                     + (f"; {missing:,} rows without an embedding get 0" if missing else ""))
    Y = proxy_matrix(frame, plan, zs)
    mass = S.sum(0)
    pool_shares = mass / mass.sum() if mass.sum() > 0 else None
    tgt = parse_target(target, grp, pool_shares)
    u = None
    if utility:
        u = score_column(store, utility)
        bad = ~np.isfinite(u)
        if bad.any():
            notes.append(f"{int(bad.sum()):,} rows have no {utility} value: utility 0 (least preferred)")
            u = np.where(bad, 0.0, u)
        if u.mean() <= 0:
            raise BalanceError(f"utility {utility} has a non-positive mean ({u.mean():.4g}); it must be positive "
                               f"on average (t_i = η u_i / ū)")
        if (u < 0).any():
            notes.append(f"{int((u < 0).sum()):,} rows have a negative {utility}: their reference weight is 0")
    method, imputed = attribute_info(store, attribute)
    return Inputs(uids=uids, S=S, groups=grp, Y=Y, proxies=[c[0] for c in plan.columns], target=tgt, utility=u,
                  attribute=attribute, method=method, imputed=imputed, notes=notes, proxy_specs=specs)


def score_column(store, name: str) -> np.ndarray:
    """One score for every sample in uid order (NaN where missing)."""
    from audit.store import StoreError

    try:
        frame = store.score_frame([name])
    except StoreError as exc:
        raise BalanceError(str(exc)) from None
    return frame[name].to_numpy(np.float64)


# ---------------------------------------------------------------------------------------------------
# the three ways to reach a budget, measured the same way
# ---------------------------------------------------------------------------------------------------
def run_m4(inputs: Inputs, *, budget: float = DEFAULT_BUDGET, eps_rep: float | None = DEFAULT_EPS_REP,
           eps_assoc: float | None = DEFAULT_EPS_ASSOC, seed: int = 0):
    """(M4Result, keep) for the inputs; keep_i ~ Bernoulli(q_i) from np.random.default_rng(seed) in uid order."""
    from audit.m4 import bernoulli_keep, solve_m4

    res = solve_m4(inputs.S, inputs.Y, target=inputs.target, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc,
                   utility=inputs.utility, rng=np.random.default_rng([seed, 1]))
    keep = bernoulli_keep(res.q, np.random.default_rng(seed))
    return res, keep


def default_clip_score(store) -> str | None:
    names = store.score_names()
    for pref in ("clip_datacomp_l14", "clip_l14_similarity_score", "clip_datacomp_b32"):
        if pref in names:
            return pref
    clip = [n for n in names if n.startswith("clip_")]
    return clip[0] if clip else None


def clip_filter_q(store, score: str, budget: float) -> tuple[np.ndarray, float]:
    """DataComp's top-fraction rule at fraction η (ties kept; NaN never kept): (0/1 weights, threshold)."""
    from audit.selection import top_fraction_threshold

    s = score_column(store, score)
    tau = top_fraction_threshold(s, budget)
    return (np.nan_to_num(s, nan=-np.inf) >= tau).astype(np.float64), float(tau)


@dataclass
class MetaClipIndex:
    """Matched (text, entry) pairs of every caption (uid order), with where the entries came from."""

    text_ids: np.ndarray
    entry_ids: np.ndarray
    counts: np.ndarray
    n_texts: int
    source: str
    stored_t: float | None


def metaclip_run_params(store) -> dict | None:
    runs = store.runs()
    runs = runs[(runs["stage"] == "score") & (runs["name"] == "metaclip") & (runs["status"] == "done")]
    if runs.empty:
        return None
    return json.loads(runs.iloc[-1]["params"])


def metaclip_index(store, *, metadata: str | None = None, min_count: int | None = None) -> MetaClipIndex:
    """Match every caption against the metadata the stored metaclip run used (or the given file / pool n-grams)."""
    from audit.scores import metaclip as mc
    from audit.store import captions_frame

    params = metaclip_run_params(store) or {}
    metadata = metadata or params.get("metadata")
    min_count = int(min_count or params.get("min_count") or mc.DEFAULT_MIN_COUNT)
    caps = captions_frame(store)["caption"].tolist()
    if metadata:
        entries = mc.read_metadata(metadata)
        source = f"{len(entries):,} entries from {Path(metadata).name}"
    else:
        entries = mc.pool_ngrams(caps, min_count=min_count)
        source = (f"{len(entries):,} entries built from the pool's own unigrams and bigrams (in ≥ {min_count} captions),"
                  f" not MetaCLIP's 500k list")
    tids, eids = mc.match(caps, entries)
    counts = np.bincount(eids, minlength=len(entries)) if len(eids) else np.zeros(len(entries), np.int64)
    return MetaClipIndex(tids, eids, counts, len(caps), source, params.get("t"))


def metaclip_q(store, *, budget: float | None = None, t: float | None = None, index: MetaClipIndex | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """MetaCLIP keep probabilities and a seeded draw (uid order): (q, keep, info).

    budget: choose t so that the expected kept count Σ P(keep) is η·n; t: use it; neither: the stored
    metaclip_p / metaclip_keep if present, else the stored run's t."""
    from audit.m4 import metaclip_threshold_for_budget
    from audit.scores import metaclip as mc

    if budget is None and t is None and "metaclip_p" in store.score_names():
        q = score_column(store, "metaclip_p")
        keep = score_column(store, "metaclip_keep") if "metaclip_keep" in store.score_names() else None
        params = metaclip_run_params(store) or {}
        q = np.nan_to_num(q, nan=0.0)
        keep = (np.nan_to_num(keep, nan=0.0) > 0) if keep is not None else \
            np.random.default_rng(seed).random(len(q)) < q
        return q, keep, {"t": params.get("t"), "source": "stored metaclip_p / metaclip_keep", "matched": None}
    idx = index or metaclip_index(store)
    if budget is not None:
        t, q = metaclip_threshold_for_budget(idx.entry_ids, idx.text_ids, idx.counts, idx.n_texts, budget)
    else:
        t = float(t if t is not None else (idx.stored_t or mc.DEFAULT_T))
        q = mc.keep_probability(idx.text_ids, idx.entry_ids, mc.entry_probability(idx.counts, t), idx.n_texts)
    keep = mc.draw(idx.text_ids, idx.entry_ids, mc.entry_probability(idx.counts, t), idx.n_texts,
                   np.random.default_rng(seed))
    matched = int((np.bincount(idx.text_ids, minlength=idx.n_texts) > 0).sum()) if len(idx.text_ids) else 0
    return q, keep, {"t": float(t), "source": idx.source, "matched": matched}


def compare(inputs: Inputs, methods: dict[str, np.ndarray], kept: dict[str, int] | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per method (weights q): expected kept Σq, drawn kept, RB, AB and each group's share;
    plus {method: association matrix (m, c)}."""
    from audit.m4 import summarize

    rows, assoc = [], {}
    for name, q in methods.items():
        s = summarize(q, inputs.S, inputs.Y, inputs.target)
        row = {"method": name, "kept (Σq)": s["sum_q"], "kept share": s["sum_q"] / len(q),
               "drawn kept": (kept or {}).get(name), "RB": s["rb"], "AB": s["ab"],
               "member mass": s["mass"]}
        for g, v in zip(inputs.groups, s["shares"]):
            row[f"share {g}"] = v
        rows.append(row)
        assoc[name] = s["assoc"]
    return pd.DataFrame(rows), assoc


# ---------------------------------------------------------------------------------------------------
# output files
# ---------------------------------------------------------------------------------------------------
def _writer(path: str):
    """A function frame -> None that appends to a CSV or Parquet file, and a close function."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise BalanceError(f"--out must end in .csv or .parquet, got {out.name}")
    state: dict = {"first": True, "pq": None}

    def write(frame: pd.DataFrame) -> None:
        if suffix == ".csv":
            frame.to_csv(out, mode="w" if state["first"] else "a", header=state["first"], index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if state["pq"] is None:
                state["pq"] = pq.ParquetWriter(out, table.schema)
            state["pq"].write_table(table)
        state["first"] = False

    def close() -> None:
        if state["pq"] is not None:
            state["pq"].close()
        elif state["first"]:
            write(pd.DataFrame({"uid": pd.Series([], dtype=object), "q": [], "keep": []}))

    return write, close


def weights_frame(uids, q, keep) -> pd.DataFrame:
    return pd.DataFrame({"uid": uids, "q": np.asarray(q, np.float64), "keep": np.asarray(keep, bool).astype(np.int8)})


# ---------------------------------------------------------------------------------------------------
# streaming (pools that do not fit in memory)
# ---------------------------------------------------------------------------------------------------
def run_m4_streaming(store, attribute: str, proxies: str | list[str] | None, *, out: str,
                     groups: list[str] | None = None, target: str | None = "uniform", utility: str | None = None,
                     budget: float = DEFAULT_BUDGET, eps_rep: float | None = DEFAULT_EPS_REP,
                     eps_assoc: float | None = DEFAULT_EPS_ASSOC, seed: int = 0, batch_rows: int = 200_000,
                     sample_rows: int = 100_000, max_passes: int = 40, echo: Callable[[str], None] = print):
    """M4 over the store read ``batch_rows`` at a time (audit.m4.solve_m4_streaming); weights written as they
    are computed. Same uid order and the same keep draws as the in-memory path. Zero-shot proxies are not
    available here (they need the image vectors aligned by uid; compute a zero-shot attribute first)."""
    from audit.m4 import solve_m4_streaming
    from audit.store import iter_label_confidence, iter_score_values, label_counts

    if attribute not in store.attributes():
        raise BalanceError(f"unknown attribute {attribute!r}; this store has: {', '.join(store.attributes()) or 'none'}")
    grp, notes = choose_groups(label_counts(store, attribute), groups, MIN_GROUP)
    plan = plan_proxies(store, parse_proxies(proxies), attribute)
    if plan.zs:
        raise BalanceError("zero-shot (zs:) proxies are not available with --stream; annotate a zero-shot "
                           "attribute first and pass it as a proxy")
    notes += plan.notes
    cols = [attribute, *plan.attributes]
    counts = label_counts(store, attribute)
    lab = counts[counts["label"].isin(grp)].set_index("label")["mass"].reindex(grp).to_numpy(np.float64)
    tgt = parse_target(target, grp, lab / lab.sum())

    def batches() -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
        uit = iter_score_values(store, utility, batch_rows) if utility else None
        for frame in iter_label_confidence(store, cols, batch_rows):
            u = None
            if uit is not None:
                u = next(uit)
                u = np.where(np.isfinite(u), u, 0.0)
            yield frame, u

    def chunks():
        for frame, u in batches():
            S = membership_matrix(frame[attribute].to_numpy(dtype=object), frame[f"{attribute}__conf"].to_numpy(), grp)
            yield S, proxy_matrix(frame, plan), u

    res = solve_m4_streaming(chunks, target=tgt, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc,
                             sample_rows=sample_rows, max_passes=max_passes, rng=np.random.default_rng([seed, 1]))
    write, close = _writer(out)
    rng = np.random.default_rng(seed)
    kept = 0
    for frame, u in batches():
        S = membership_matrix(frame[attribute].to_numpy(dtype=object), frame[f"{attribute}__conf"].to_numpy(), grp)
        q = res.policy.weights(S, proxy_matrix(frame, plan), u)
        keep = rng.random(len(q)) < q
        kept += int(keep.sum())
        write(weights_frame(frame["uid"].to_numpy(dtype=object), q, keep))
    close()
    for n in notes:
        echo("note: " + n)
    return res, kept, grp, [c[0] for c in plan.columns], tgt


# ---------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------
def describe_attribute(inputs: Inputs) -> str:
    kind = f"imputed: {inputs.method}" if inputs.imputed else inputs.method
    return f"{inputs.attribute} ({kind})"


def summary_lines(title: str, groups: list[str], target: np.ndarray, res, n: int, kept: int | None,
                  budget: float, eps_rep, eps_assoc, proxies: list[str]) -> list[str]:
    lines = [title,
             f"groups: {', '.join(groups)}; target shares: "
             + ", ".join(f"{g} {p:.3f}" for g, p in zip(groups, target)),
             f"proxies ({len(proxies)}): " + (", ".join(proxies[:12]) + (" …" if len(proxies) > 12 else "")
                                               if proxies else "none (first-order constraints only)"),
             f"budget η={budget:g}: Σq = {float(getattr(res, 'sum_q', None) or res.q.sum()):,.1f} of {n:,} rows"
             + (f"; seeded Bernoulli draw keeps {kept:,}" if kept is not None else ""),
             f"status: {res.status} — {res.message}",
             f"{'':12}{'before':>10}{'after':>10}{'tolerance':>11}",
             f"{'RB':12}{res.rb_before:>10.4f}{res.rb:>10.4f}{_tol(eps_rep):>11}",
             f"{'AB':12}{res.ab_before:>10.4f}{res.ab:>10.4f}{_tol(eps_assoc):>11}",
             "group shares (before → after): " + ", ".join(
                 f"{g} {a:.3f} → {b:.3f}" for g, a, b in zip(groups, res.shares_before, res.shares))]
    return lines


def _tol(e) -> str:
    return "off" if e is None else f"{e:g}"


def _save(store_path: str, name: str, params: dict, uids, q, keep, summary: dict, *, description: str) -> int:
    """Record the run, write {name}_q / {name}_keep as scores and the summary under meta 'balance.{name}'."""
    from audit.store import Store, meta_put

    with Store.writer(store_path) as st:
        run = st.start_run("balance", name, params=params)
        st.write_scores(f"{name}_q", list(uids), np.asarray(q, np.float64), run_id=run, kind="balance",
                        description=f"{description}: weight q in [0, 1]")
        st.write_scores(f"{name}_keep", list(uids), np.asarray(keep, np.float64), run_id=run, kind="balance",
                        description=f"{description}: seeded Bernoulli(q) draw, 1 = kept")
        meta_put(st, f"balance.{name}", json.dumps({**summary, "run_id": run, "params": params}, default=_json))
        st.end_run(run, rows_in=len(q), rows_out=int(np.sum(keep)))
    return run


def _record_run(store_path: str, name: str, params: dict, rows_in: int, rows_out: int, note: str) -> None:
    from audit.store import Store

    with Store.writer(store_path) as st:
        run = st.start_run("balance", name, params=params)
        st.end_run(run, rows_in=rows_in, rows_out=rows_out, note=note)


def _json(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def result_summary(inputs: Inputs, res, keep, budget, eps_rep, eps_assoc) -> dict:
    return {"attribute": inputs.attribute, "method": inputs.method, "imputed": inputs.imputed,
            "groups": inputs.groups, "proxies": inputs.proxies, "target": inputs.target, "budget": budget,
            "eps_rep": eps_rep, "eps_assoc": eps_assoc, "status": res.status, "message": res.message,
            "rb_before": res.rb_before, "rb": res.rb, "ab_before": res.ab_before, "ab": res.ab,
            "shares_before": res.shares_before, "shares": res.shares, "sum_q": float(res.q.sum()),
            "kept": int(np.sum(keep)), "n": len(res.q), "seconds": res.seconds, "notes": inputs.notes}


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def _eps(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError("tolerances must be ≥ 0 (or 'off')")
    return v


def _budget(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"budget must be in (0, 1], got {v}")
    return v


def add_parser(sub) -> None:
    from audit.cli import _store_arg

    p = sub.add_parser("balance", help="data balancing weights: M4 or MetaCLIP",
                       description="Per-sample weights that balance the pool; before/after RB and AB "
                                   "(methods.md §5.1). See docs/balancing.md.")
    ss = p.add_subparsers(dest="balancer", required=True, metavar="{m4,metaclip}")

    m = ss.add_parser("m4", help="M4 moment matching (this project's formulation, methods.md §5.1)",
                      description=M4_NOTE)
    _store_arg(m)
    m.add_argument("--attribute", required=True, help="sensitive attribute (e.g. caption_gender)")
    m.add_argument("--proxies", default="",
                   help="comma-separated: ATTR (one column per label), ATTR=LABEL, zs:PROMPT|PROMPT|... (zero-shot)")
    m.add_argument("--groups", help="comma-separated groups to balance (default: labels with ≥ --min-group rows, "
                                    "not unknown/multiple)")
    m.add_argument("--min-group", type=int, default=MIN_GROUP)
    m.add_argument("--budget", type=_budget, required=True, metavar="ETA", help="kept fraction η in (0, 1]")
    m.add_argument("--target", default="uniform", help="uniform, pool, G=P,G=P or P,P (default: %(default)s)")
    m.add_argument("--eps-rep", type=_eps, default=DEFAULT_EPS_REP, metavar="E",
                   help="representation tolerance ε_R on RB, or 'off' (default: %(default)s)")
    m.add_argument("--eps-assoc", type=_eps, default=DEFAULT_EPS_ASSOC, metavar="E",
                   help="association tolerance ε_A on AB, or 'off' (default: %(default)s)")
    m.add_argument("--utility", metavar="SCORE", help="a stored score: sample proportionally to it (t_i = η u_i/ū)")
    m.add_argument("--model", help="embedding model for zs: proxies (default: datacomp_l14 if present)")
    m.add_argument("--seed", type=int, default=0, help="seed of the Bernoulli keep draw")
    m.add_argument("--out", required=True, help="output .csv or .parquet: uid, q, keep")
    m.add_argument("--save", action="store_true", help="also store q and keep as scores m4_q / m4_keep")
    m.add_argument("--stream", action="store_true",
                   help="mini-batch variant: read the pool --batch-rows at a time (for pools that do not fit in memory)")
    m.add_argument("--batch-rows", type=int, default=200_000)
    m.set_defaults(func=_run_m4)

    mc = ss.add_parser("metaclip", help="MetaCLIP balancing (methods.md §4.3), optionally at a matched budget")
    _store_arg(mc)
    mc.add_argument("--budget", type=_budget, metavar="ETA",
                    help="choose t so that the expected kept fraction is η (for comparison with M4)")
    mc.add_argument("--t", type=float, help="balancing threshold t (default: the stored metaclip run's)")
    mc.add_argument("--metadata", metavar="FILE", help="metadata entries (default: what the metaclip score used)")
    mc.add_argument("--attribute", help="also report RB/AB on this attribute")
    mc.add_argument("--proxies", default="", help="proxies for AB (as for m4)")
    mc.add_argument("--target", default="uniform")
    mc.add_argument("--model", help="embedding model for zs: proxies")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--out", required=True, help="output .csv or .parquet: uid, q (= P(keep)), keep")
    mc.set_defaults(func=_run_metaclip)


def _groups_arg(text: str | None) -> list[str] | None:
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def _run_m4(a) -> int:
    from audit.store import Store

    params = {"attribute": a.attribute, "proxies": parse_proxies(a.proxies), "groups": _groups_arg(a.groups),
              "budget": a.budget, "target": a.target, "eps_rep": a.eps_rep, "eps_assoc": a.eps_assoc,
              "utility": a.utility, "model": a.model, "seed": a.seed, "stream": a.stream}
    t0 = time.perf_counter()
    if a.stream:
        if a.batch_rows < 1:
            raise BalanceError("--batch-rows must be ≥ 1")
        with Store.reader(a.store) as st:
            res, kept, grp, cols, tgt = run_m4_streaming(
                st, a.attribute, a.proxies, out=a.out, groups=_groups_arg(a.groups), target=a.target,
                utility=a.utility, budget=a.budget, eps_rep=a.eps_rep, eps_assoc=a.eps_assoc, seed=a.seed,
                batch_rows=a.batch_rows)
        for line in summary_lines(f"M4 (streamed in batches of {a.batch_rows:,}; {res.passes} passes) on "
                                  f"{a.attribute}", grp, tgt, res, res.n, kept, a.budget, a.eps_rep, a.eps_assoc, cols):
            print(line)
        _record_run(a.store, "m4", params, res.n, kept, f"{res.status}: {res.message}")
        print(f"weights -> {a.out} ({time.perf_counter() - t0:.1f} s)")
        return 0 if res.status != "not converged" else 1
    with Store.reader(a.store) as st:
        inputs = load_inputs(st, a.attribute, a.proxies, groups=_groups_arg(a.groups), target=a.target,
                             utility=a.utility, model=a.model, min_group=a.min_group)
    res, keep = run_m4(inputs, budget=a.budget, eps_rep=a.eps_rep, eps_assoc=a.eps_assoc, seed=a.seed)
    write, close = _writer(a.out)
    write(weights_frame(inputs.uids, res.q, keep))
    close()
    for n in inputs.notes:
        print("note: " + n)
    for line in summary_lines(f"M4 on {describe_attribute(inputs)}", inputs.groups, inputs.target, res,
                              len(res.q), int(keep.sum()), a.budget, a.eps_rep, a.eps_assoc, inputs.proxies):
        print(line)
    summary = result_summary(inputs, res, keep, a.budget, a.eps_rep, a.eps_assoc)
    if a.save:
        _save(a.store, "m4", params, inputs.uids, res.q, keep, summary, description="M4 balancing")
        print("stored as scores m4_q, m4_keep")
    else:
        _record_run(a.store, "m4", params, len(res.q), int(keep.sum()), f"{res.status}: {res.message}")
    print(f"weights -> {a.out} ({time.perf_counter() - t0:.1f} s; solve {res.seconds:.1f} s)")
    return 0 if res.status != "not converged" else 1


def _run_metaclip(a) -> int:
    from audit.store import Store

    if a.t is not None and a.t <= 0:
        raise BalanceError(f"--t must be > 0, got {a.t}")
    if a.budget is not None and a.t is not None:
        raise BalanceError("give --budget or --t, not both")
    with Store.reader(a.store) as st:
        if a.metadata:
            idx = metaclip_index(st, metadata=a.metadata)
            q, keep, info = metaclip_q(st, budget=a.budget, t=a.t or idx.stored_t or 20_000.0, index=idx, seed=a.seed) \
                if a.budget is None else metaclip_q(st, budget=a.budget, index=idx, seed=a.seed)
        else:
            q, keep, info = metaclip_q(st, budget=a.budget, t=a.t, seed=a.seed)
        uids = st.sample_uids()
        inputs = None
        if a.attribute:
            inputs = load_inputs(st, a.attribute, a.proxies, target=a.target, model=a.model)
    write, close = _writer(a.out)
    write(weights_frame(uids, q, keep))
    close()
    t_txt = "?" if info["t"] is None else f"{info['t']:,.4g}"
    print(f"MetaCLIP balancing: t = {t_txt}" + (f" (chosen so that Σ P(keep) = η·n, η={a.budget:g})" if a.budget else ""))
    print(f"entries: {info['source']}")
    if info.get("matched") is not None:
        print(f"captions with at least one matched entry: {info['matched']:,} of {len(q):,} (others are never kept)")
    print(f"expected kept Σ P(keep) = {q.sum():,.1f} ({q.mean():.1%}); seeded draw keeps {int(keep.sum()):,}")
    if inputs is not None:
        table, _ = compare(inputs, {"pool": np.ones(len(q)), "MetaCLIP": q})
        for n in inputs.notes:
            print("note: " + n)
        print(f"on {describe_attribute(inputs)}: RB {table['RB'][0]:.4f} → {table['RB'][1]:.4f}, "
              f"AB {table['AB'][0]:.4f} → {table['AB'][1]:.4f}")
    _record_run(a.store, "metaclip", {"budget": a.budget, "t": info["t"], "metadata": a.metadata, "seed": a.seed},
                len(q), int(keep.sum()), info["source"])
    print(f"weights -> {a.out}")
    return 0


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------
def demo_settings(store) -> dict | None:
    """The default balancing of the demo: caption gender (woman vs man), proxies caption age and zero-shot
    person concepts (when a model with a text encoder exists); None when the store lacks caption_gender."""
    if "caption_gender" not in store.attributes():
        return None
    proxies = ["caption_age"] if "caption_age" in store.attributes() else []
    model = default_model(store)
    if model is not None and model.startswith("datacomp_"):
        proxies.append("zs:" + "|".join(DEMO_ZS_PROMPTS))
    # The simulated pool has no built-in gender × concept association (AB ≈ 0.001, noise level), so the demo
    # uses tight tolerances to show what balancing moves; the CLI defaults are ε_R = ε_A = 0.01.
    return {"attribute": "caption_gender", "groups": ["woman", "man"], "proxies": proxies, "target": "uniform",
            "budget": DEFAULT_BUDGET, "eps_rep": DEMO_EPS_REP, "eps_assoc": DEMO_EPS_ASSOC, "utility": None,
            "model": model if any(p.startswith("zs:") for p in proxies) else None}


def demo_step(store: str, *, seed: int = 0, echo: Callable[[str], None] = print) -> None:
    """Default M4 balancing of the demo store, with MetaCLIP and CLIP-score filtering at the same budget;
    stored as scores m4_q / m4_keep and meta 'balance.m4' (the Balancing page's defaults)."""
    from audit.store import Store

    t0 = time.perf_counter()
    with Store.reader(store) as st:
        cfg = demo_settings(st)
        if cfg is None:
            echo("balance: no caption_gender attribute; skipped")
            return
        try:
            inputs = load_inputs(st, cfg["attribute"], cfg["proxies"], groups=cfg["groups"], target=cfg["target"],
                                 model=cfg["model"])
        except BalanceError as exc:
            echo(f"balance: skipped ({exc})")
            return
        res, keep = run_m4(inputs, budget=cfg["budget"], eps_rep=cfg["eps_rep"], eps_assoc=cfg["eps_assoc"],
                           seed=seed)
        methods = {"pool (no filter)": np.ones(len(res.q)), "M4": res.q}
        kept = {"pool (no filter)": len(res.q), "M4": int(keep.sum())}
        extra = {}
        score = default_clip_score(st)
        if score:
            q_clip, tau = clip_filter_q(st, score, cfg["budget"])
            methods[f"CLIP score top {cfg['budget']:.0%}"] = q_clip
            kept[f"CLIP score top {cfg['budget']:.0%}"] = int(q_clip.sum())
            extra["clip_score"] = score
            extra["clip_tau"] = tau
        try:
            q_mc, keep_mc, info = metaclip_q(st, budget=cfg["budget"], seed=seed)
            methods["MetaCLIP"] = q_mc
            kept["MetaCLIP"] = int(keep_mc.sum())
            extra["metaclip"] = info
        except Exception as exc:  # MetaCLIP is a comparison only; say why it is missing
            extra["metaclip_error"] = str(exc)
        table, _ = compare(inputs, methods, kept)
    summary = result_summary(inputs, res, keep, cfg["budget"], cfg["eps_rep"], cfg["eps_assoc"])
    summary["comparison"] = table.to_dict(orient="records")
    summary.update(extra)
    _save(store, "m4", {**cfg, "seed": seed}, inputs.uids, res.q, keep, summary, description="M4 balancing (demo)")
    echo(f"balance: M4 on caption_gender (woman/man) at η={cfg['budget']:g}: {res.status}; "
         f"RB {res.rb_before:.4f} → {res.rb:.4f}, AB {res.ab_before:.4f} → {res.ab:.4f}; "
         f"kept {int(keep.sum()):,} of {len(res.q):,} ({time.perf_counter() - t0:.1f} s)")
