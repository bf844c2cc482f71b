"""Data balancing: M4 (methods.md §5.1) and MetaCLIP (§4.3), with before/after RB and AB.

``python -m audit balance m4 ...`` computes per-sample weights q in [0, 1] (Σq = η·n) that meet first-order
(representation) constraints on the groups of a sensitive attribute and second-order (association)
constraints between those groups and each proxy, as close as possible to uniform (or utility-weighted)
sampling; it writes uid, q and a seeded Bernoulli keep draw. ``balance metaclip ...`` gives MetaCLIP's keep
probabilities from the metaclip score's entry matching, optionally at a t matched to the same budget, so the
two can be compared. The maths lives in ``audit.analyses.balance.m4``; this module assembles the matrices from the store.

Memberships are imputed: a label with annotator confidence c counts as c of a member of its group (the
rest of the row is treated as unknown); ``unknown`` and ``multiple`` rows carry no membership and are
neither forced in nor out. Proxies (``--proxies``, comma-separated):

    ATTR            one column per label of another attribute or sample column (source, domain, tld):
                    y = the label's confidence; labels with fewer than --min-proxy rows are dropped
    ATTR=LABEL      one column for one label
    zs:P1|P2|...    CLIP zero-shot concepts: softmax over the listed prompts (logit scale 100) of the image
                    embedding of --model, prompts embedded by audit.embed.textenc (simulated text encoder on the
                    demo pool); rows without an embedding get 0
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from audit.analyses.balance.core import BalanceError, DEFAULT_BUDGET, DEFAULT_EPS_ASSOC, DEFAULT_EPS_REP, Inputs, MAX_PROXY_LABELS, MIN_GROUP, MIN_PROXY, NON_GROUPS, ProxyPlan, ZS_LOGIT_SCALE, json_default, choose_groups, membership_matrix, parse_proxies, parse_target, proxy_matrix, softmax_rows, weights_frame
from audit.export.csvsafe import to_csv


def plan_proxies(store, specs: list[str], attribute: str, *, min_proxy: int = MIN_PROXY,
                 max_labels: int = MAX_PROXY_LABELS) -> ProxyPlan:
    from audit.store import SAMPLE_GROUP_COLUMNS
    from audit.store.labels import label_counts

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
    from audit.store.vectors import iter_embedding_rows
    from audit.embed.textenc import text_encoder
    from audit.store.vectors import iter_vectors, parts

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
    from audit.store.labels import label_confidence_frame, label_counts

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


def default_clip_score(store) -> str | None:
    names = store.score_names()
    for pref in ("clip_datacomp_l14", "clip_l14_similarity_score", "clip_datacomp_b32"):
        if pref in names:
            return pref
    clip = [n for n in names if n.startswith("clip_")]
    return clip[0] if clip else None


def clip_filter_q(store, score: str, budget: float) -> tuple[np.ndarray, float]:
    """DataComp's top-fraction rule at fraction η (ties kept; NaN never kept): (0/1 weights, threshold)."""
    from audit.decide.selection import top_fraction_threshold

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

    params = metaclip_run_params(store) or {}
    metadata = metadata or params.get("metadata")
    min_count = int(min_count or params.get("min_count") or mc.DEFAULT_MIN_COUNT)
    caps = store.sample_frame(["caption"])["caption"].tolist()
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
    from audit.analyses.balance.m4 import metaclip_threshold_for_budget
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


# ---------------------------------------------------------------------------------------------------
# output files
# ---------------------------------------------------------------------------------------------------
def weights_writer(path: str):
    """A function frame -> None that appends to a CSV or Parquet file, and a close function."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise BalanceError(f"--out must end in .csv or .parquet, got {out.name}")
    state: dict = {"first": True, "pq": None}

    def write(frame: pd.DataFrame) -> None:
        if suffix == ".csv":
            to_csv(frame, out, mode="w" if state["first"] else "a", header=state["first"])
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
    from audit.analyses.balance.m4 import solve_m4_streaming
    from audit.store.labels import iter_label_confidence, iter_score_values, label_counts

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
    write, close = weights_writer(out)
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


def save_result(store_path: str, name: str, params: dict, uids, q, keep, summary: dict, *, description: str) -> int:
    """Record the run, write {name}_q / {name}_keep as scores and the summary under meta 'balance.{name}'."""
    return save_batches(store_path, name, params, [(uids, q, keep)], summary, description=description)


def save_batches(store_path: str, name: str, params: dict, batches, summary: dict, *, description: str) -> int:
    """save_result over (uids, q, keep) batches: each batch is staged as a part of both scores as it comes, and
    the parts are registered together at the end, so a 12.8M-row weights file is never held whole."""
    from audit.store import Store, failed_run_guard, score_table
    from audit.store.parts import stage_part
    from audit.store.results import meta_put

    import pyarrow as pa

    with Store.writer(store_path) as st:
        run = st.start_run("balance", name, params=params)
        root = st.parts_dir()
    cols = (f"{name}_q", f"{name}_keep")
    staged: dict[str, list] = {c: [] for c in cols}
    rows = kept = 0
    with failed_run_guard(store_path, run):   # a bad weights file fails the run; its staged parts are orphans
        for uids, q, keep in batches:
            uids = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(uids), pa.string())
            for col, values in zip(cols, (q, keep)):
                table = score_table(col, uids, np.asarray(values, np.float64))
                staged[col].append(stage_part(root, "scores", col, table, run_id=run))
            rows, kept = rows + len(q), kept + int(np.sum(keep))
    with Store.writer(store_path) as st:
        st.register_scores(cols[0], staged[cols[0]], run_id=run, kind="balance",
                           description=f"{description}: weight q in [0, 1]")
        st.register_scores(cols[1], staged[cols[1]], run_id=run, kind="balance",
                           description=f"{description}: seeded Bernoulli(q) draw, 1 = kept")
        meta_put(st, f"balance.{name}", json.dumps({**summary, "run_id": run, "params": params}, default=json_default))
        st.end_run(run, rows_in=rows, rows_out=kept)
    from audit.store.columns import refresh

    refresh(store_path, scores=list(cols))   # the pages' pool-order columns of the weights
    return run


def iter_weights(path: str, batch_rows: int = 1_000_000) -> Iterator[tuple]:
    """(uid, q, keep) of a weights file this module wrote (CSV or Parquet), ``batch_rows`` at a time: a pyarrow
    string array and two float64 arrays, no Python string per row."""
    import pyarrow as pa

    if str(path).lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["uid", "q", "keep"])
    else:
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=64 << 20),
                               convert_options=pcsv.ConvertOptions(column_types={"uid": pa.string(), "q": pa.float64()},
                                                                   include_columns=["uid", "q", "keep"]))
    for block in reader:   # a CSV block is 64 MB of text whatever batch_rows is: cut it
        for start in range(0, block.num_rows, batch_rows):
            batch = block.slice(start, batch_rows)
            yield (batch.column("uid"), batch.column("q").to_numpy(zero_copy_only=False).astype(np.float64),
                   batch.column("keep").to_numpy(zero_copy_only=False).astype(np.float64))


def streamed_summary(store, attribute: str, res, kept: int, groups, proxies, target, budget, eps_rep,
                     eps_assoc) -> dict:
    """result_summary for a streamed solve (no per-sample inputs to read the method from)."""
    method, imputed = attribute_info(store, attribute)
    return {"attribute": attribute, "method": method, "imputed": imputed, "groups": list(groups),
            "proxies": list(proxies), "target": np.asarray(target, np.float64).tolist(), "budget": budget,
            "eps_rep": eps_rep, "eps_assoc": eps_assoc, "status": res.status, "message": res.message,
            "rb_before": res.rb_before, "rb": res.rb, "ab_before": res.ab_before, "ab": res.ab,
            "shares_before": res.shares_before, "shares": res.shares, "sum_q": float(res.sum_q), "kept": int(kept),
            "n": int(res.n), "seconds": res.seconds, "notes": [], "streamed": True, "passes": res.passes}


def record_run(store_path: str, name: str, params: dict, rows_in: int, rows_out: int, note: str) -> None:
    from audit.store import Store

    with Store.writer(store_path) as st:
        run = st.start_run("balance", name, params=params)
        st.end_run(run, rows_in=rows_in, rows_out=rows_out, note=note)
