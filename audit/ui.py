"""Streamlit glue: the page frame and every cached read of the dashboard (the only audit module importing streamlit).

The dashboard never opens the live store: it opens a snapshot copy taken under a read lock, so a CLI
stage may write to the store meanwhile. When the live store changes, the sidebar says so and offers a
reload. Pages read widgets, call these helpers (data) and audit.charts (figures), and render.

Caching: every cached function takes the snapshot ``Store`` first. A store is hashed by its path (HASH), and
each store version is a new snapshot file, so a cached result is reused exactly while the data is unchanged.
"""
from __future__ import annotations

import hashlib
import html
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from audit.decide.preview import PreviewData
from audit.config import default_store
from audit.measure.metrics import MIN_N  # noqa: F401 (pages read ui.MIN_N)
from audit.store import Store, StoreError, parts_dir, prune_orphan_snapshots, snapshot, store_version, vectors_dir

DUCKDB_MEMORY = "1GB"   # the dashboard's DuckDB spills larger sorts and joins to disk instead of growing
HASH = {Store: lambda s: s.path}  # a snapshot path names one version of the store


def store_path() -> str:
    return default_store()


def _snapshot_dir(path: str) -> Path:
    h = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "clip-audit-snapshots" / h


@st.cache_resource(max_entries=4, show_spinner="Opening a snapshot of the store…")
def _open_snapshot(path: str, version: int) -> Store:
    snap = snapshot(path, _snapshot_dir(path), wait_s=20)
    prune_orphan_snapshots(_snapshot_dir(path).parent, keep=_snapshot_dir(path))   # copies of deleted stores
    try:   # our copy: add the columns newer versions write (another dashboard process may hold it: it did this)
        Store.open(snap, read_only=False, wait_s=1, vectors_root=vectors_dir(path), parts_root=parts_dir(path)).close()
    except Exception:
        pass
    return Store.open(snap, read_only=True, vectors_root=vectors_dir(path), parts_root=parts_dir(path),
                      memory_limit=DUCKDB_MEMORY)


def get_store() -> Store | None:
    """The pinned snapshot of the store; renders an error and returns None if there is none."""
    path = store_path()
    live = store_version(path)
    if live == 0:
        st.error(f"No store at `{path}`. Build the demo with `make run` (or `python -m audit demo`), "
                 "or point `AUDIT_STORE` at a store made with `python -m audit ingest`.")
        return None
    pinned = st.session_state.setdefault("store_version", live)
    try:
        return _open_snapshot(path, pinned)
    except StoreError as exc:
        st.error(f"Cannot open the store: {exc}. A CLI stage may be writing; try again in a moment.")
        return None


def page(title: str) -> tuple[Store, dict]:
    """Every page's header: title, the store snapshot (or a message and stop), freshness note, sidebar caption.

    Returns (store, overview info).
    """
    st.title(title)
    store = get_store()
    if store is None:
        st.stop()
    freshness_notice()
    info = overview(store)
    store_caption(store, info)
    provenance_banner(info)
    return store, info


def provenance_banner(info: dict) -> None:
    """On every page: which of the numbers below come from simulated data or from random-weight models."""
    c, models = info["counts"], info["models"]
    parts = []
    if c["simulated"]:
        parts.append(f"{c['simulated']:,} of {c['samples']:,} samples are **simulated** (the demo's latent-model pool "
                     "in DataComp format): their numbers show how the audit works and describe no real dataset")
    sim_models = (models.loc[models["simulated"].fillna(False).astype(bool), "model"].tolist()
                  if len(models) and "simulated" in models.columns else [])
    if sim_models:
        parts.append(f"the vectors of {', '.join(sim_models)} are simulated, not OpenAI CLIP's, so NSFW, aesthetic "
                     "and zero-shot results on them carry no meaning")
    rw = models.loc[models["random_weights"].astype(bool), "model"].tolist() if len(models) else []
    if rw:
        parts.append(f"{', '.join(md(m) for m in rw)} {'has' if len(rw) == 1 else 'have'} **random weights**: every "
                     "score and label from it only exercises the pipeline")
    if parts:
        st.info("Provenance: " + "; ".join(parts) + ".", icon=":material/science:")


def store_is_newer() -> bool:
    """The live store has changed since the snapshot on screen was taken."""
    live, pinned = store_version(store_path()), st.session_state.get("store_version")
    return bool(pinned and live and live != pinned)


def freshness_notice() -> None:
    """Sidebar note when the live store is newer than the snapshot on screen."""
    if store_is_newer():
        live = store_version(store_path())
        st.sidebar.info("The store has newer data than this view (a CLI stage wrote to it).")
        if st.sidebar.button("Reload data"):
            st.session_state["store_version"] = live
            st.cache_data.clear()
            st.rerun()


# ---- cached queries (keyed on the snapshot path, which changes with each store version) ------------
@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=HASH)
def overview(store: Store) -> dict:
    return {"counts": store.overview(), "sources": store.sources(), "rejects": store.rejects_by_reason(),
            "scores": store.score_catalog(), "models": store.models(), "runs": store.runs(),
            "attributes": store.attribute_catalog()}


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=HASH)
def uids_at(store: Store, rows: tuple[int, ...]) -> list[str]:
    return store.uids_at(list(rows))


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=HASH)
def uid_row(store: Store, uid: str) -> int | None:
    return store.uid_row(uid)


@st.cache_data(max_entries=32, show_spinner=False, hash_funcs=HASH)
def score_histogram(store: Store, score: str, bins: int = 80) -> tuple[np.ndarray, np.ndarray]:
    return store.score_histogram(score, bins)


@st.cache_data(max_entries=16, show_spinner="Loading score values…", hash_funcs=HASH)
def score_values(store: Store, score: str) -> np.ndarray:
    return store.score_values(score)


@st.cache_resource(max_entries=3, show_spinner="Sorting the score by group…", hash_funcs=HASH)
def preview_data(store: Store, score: str, group: str) -> PreviewData:
    """The slider's sketch (~13 bytes per sample). Held as a resource, not copied per call. Read-only."""
    values, codes, labels = store.score_group_arrays(score, group)
    return PreviewData.from_arrays(values, codes, labels, store.score_order(score))


@st.cache_resource(max_entries=4, show_spinner=False, hash_funcs=HASH)
def group_codes(store: Store, group: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes in uid order, sorted labels) of a group column, for recipes evaluated over the whole pool."""
    _, codes, labels = store.score_group_arrays(None, group)
    return codes, labels


@st.cache_resource(max_entries=4, show_spinner="Drawing examples of each group…", hash_funcs=HASH)
def group_examples(store: Store, score: str, group: str, per_group: int = 2000) -> pd.DataFrame:
    """A uniform random draw of up to ``per_group`` scored samples of each group (uid, value, grp, in random order),
    drawn once: the examples of a slider position are its kept / excluded members, not a query per move."""
    return store.group_examples(score, group, per_group)


class Gallery:
    """One group's whole example draw (``group_examples``) for the Filter preview: its values, and the grid's columns
    read once by row number (0.5–1 s for 2,000 rows at 12.8M). A slider move picks the first ``k`` of the draw on each
    side of τ with numpy and reuses the grid's HTML when the picked samples did not change (most moves): pandas
    filtering and rebuilding the grid were ~10 ms of every move."""

    def __init__(self, store: Store, ex: pd.DataFrame, *, complete: bool):
        self.complete = complete   # the draw holds every scored sample of the group (it has fewer than per_group)
        self.values = ex["value"].to_numpy(float)
        self.rows = store.samples_at(ex["row"].to_numpy(), GRID_COLUMNS)   # in draw order
        self._html: dict = {}

    def pick(self, tau: float, kept: bool, k: int = 8) -> np.ndarray:
        """Positions in the draw of its first ``k`` samples kept (value ≥ τ) or excluded (value < τ)."""
        side = self.values >= tau if kept else self.values < tau
        return np.flatnonzero(side)[:k]

    def grid(self, pos: np.ndarray, *, reveal: bool, blur_uids) -> str:
        """The grid's HTML for these positions (kept for the last 64 shown sets; shared by every session)."""
        rows = self.rows.iloc[pos]
        blurred = tuple(u in blur_uids for u in rows["uid"].tolist()) if blur_uids else ()
        key = (tuple(pos.tolist()), reveal, blurred)
        html_ = self._html.get(key)
        if html_ is None:
            html_ = sample_grid(rows, reveal=reveal, blur_uids=blur_uids)
            if len(self._html) >= 64:
                self._html.clear()
            self._html[key] = html_
        return html_


@st.cache_resource(max_entries=16, show_spinner=False, hash_funcs=HASH)
def group_gallery(store: Store, score: str, group: str, label: str, per_group: int = 2000) -> Gallery:
    """The Gallery of one group's draw, keyed by the group, not by its 2,000 uids (hashing them cost a slider move
    ~5 ms). Held, not copied."""
    ex = group_examples(store, score, group, per_group)
    ex = ex[ex["grp"] == label]
    return Gallery(store, ex, complete=len(ex) < per_group)


@st.cache_data(max_entries=32, show_spinner=False, hash_funcs=HASH)
def more_examples(store: Store, score: str, group: str, label: str, tau: float, kept: bool, k: int = 8) -> pd.DataFrame:
    """Examples of one side of τ in one group when the draw of group_examples has too few (a rare side)."""
    return store.group_examples(score, group, k, label=label, tau=tau, kept=kept)


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=HASH)
def samples(store: Store, uids: tuple[str, ...]) -> pd.DataFrame:
    """Samples by uid (a join with every part's uids: ~3 s at 12.8M rows); ``samples_at`` when the rows are known."""
    return store.samples_page(list(uids))


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=HASH)
def samples_at(store: Store, rows: tuple[int, ...], columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The samples at these pool-order rows, in that order (``Store.samples_at``: read by row number)."""
    return store.samples_at(list(rows), columns)


@st.cache_data(max_entries=512, show_spinner=False)
def thumb(ref: str, size: int = 160, blur: bool = False) -> str | None:
    """A thumbnail as a ``data:`` URI (JPEG), or None when the image cannot be read."""
    import base64
    import io

    from audit import images

    try:
        im = images.thumbnail(ref, size, blur=blur)
    except images.ImageError:
        return None
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---- text from the data --------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text) -> str:
    """Text from the data, made inert for st.markdown / st.caption: every markdown, HTML, LaTeX ($) and
    Streamlit directive (:colour[...]) character is backslash-escaped, so a caption's ``![](http://…)`` is not
    fetched and a domain's ``<img onerror=…>`` is shown as text. Newlines become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def blank_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame for display with missing text cells as "—" (st.dataframe shows None as the word "None")."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].astype(object).where(out[col].notna(), "—")
    return out


# ---- labels ------------------------------------------------------------------------------------
_LABELS: dict[int, tuple[pd.DataFrame, dict[str, str]]] = {}


def score_label(cat: pd.DataFrame, name: str) -> str:
    """A score's name with where it came from and its provenance tags. Select boxes call this once per option on
    every rerun: the labels of one catalogue frame are built once (a frame filter per call cost ~3 ms)."""
    got = _LABELS.get(id(cat))
    if got is None or got[0] is not cat:
        got = (cat, {str(r["name"]): _score_label_row(r) for r in cat.to_dict("records")})
        _LABELS.clear()
        _LABELS[id(cat)] = got
    return got[1].get(name, name)


def _score_label_row(r: dict) -> str:
    name = str(r["name"])
    tags = []
    if bool(r["random_weights"]):
        tags.append("random weights")
    if bool(r["simulated"]):
        tags.append("simulated")
    # where the values came from, so the parquet's clip_l14_similarity_score and a computed clip_datacomp_l14 differ
    # (short: the name already carries the model; a select box cuts long labels)
    kind = str(r.get("kind") or "")
    origin = "from the parquet" if kind == "datacomp" else ("computed" if kind else "")
    return f"{name}" + (f" ({origin})" if origin else "") + (f"  [{', '.join(tags)}]" if tags else "")


def group_label(store: Store, col: str) -> str:
    if col in attributes(store):
        return f"{col} (imputed)"
    return col


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs=HASH)
def top_thresholds(store: Store, rules: tuple) -> dict[str, float]:
    """{str(rule): τ} of the top-fraction rules among ``rules`` (Rule objects), read off the stored sorted order."""
    from audit.decide.selection import top_fraction_threshold_sorted

    return {str(r): top_fraction_threshold_sorted(store.score_array(r.score), store.score_order(r.score), r.value)
            for r in rules if r.op == "top"}


@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=HASH)
def attributes(store: Store) -> tuple[str, ...]:
    return tuple(store.attributes())


def store_caption(store: Store, info: dict) -> None:
    c = info["counts"]
    sim = c["simulated"]
    st.sidebar.caption(
        f"Store `{store_path()}` · {c['samples']:,} samples · {c['rejects']:,} rejects"
        + (f" · {sim:,} **simulated**" if sim else ""))


GRID_COLUMNS = ("image_ref", "caption", "domain")   # what sample_grid shows, besides the uid


def show_samples(store: Store, frame: pd.DataFrame, *, reveal: bool, blur_uids: set[str] | None = None,
                 columns: int = 4) -> None:
    """A grid of thumbnails (or caption cards for url-only rows) with captions.

    One HTML element for the whole grid, thumbnails inlined as data URIs: drawn as 16 cards of columns, images and
    captions (48 elements) a slider move cost the browser ~40–90 ms more (bench/bench_charts.py). Text from the data
    is HTML-escaped; the HTML is sanitised again by Streamlit, and Markdown is not read in it at all."""
    show_grid(None if frame.empty else sample_grid(frame, reveal=reveal, blur_uids=blur_uids, columns=columns))


def show_grid(grid_html: str | None) -> None:
    """A grid's HTML from sample_grid (or Gallery.grid), or "none" when there is no sample to show."""
    if grid_html is None:
        st.caption("none")
    else:
        st.html(grid_html)


def sample_grid(frame: pd.DataFrame, *, reveal: bool, blur_uids: set[str] | None = None, columns: int = 4) -> str:
    """The HTML of show_samples' grid."""
    cards = []
    col = {c: frame[c].tolist() if c in frame.columns else [None] * len(frame)
           for c in ("uid", *GRID_COLUMNS)}   # columns as lists: itertuples is ~0.3 ms a row
    for uid, ref, caption, domain in zip(col["uid"], col["image_ref"], col["caption"], col["domain"]):
        blur = bool(blur_uids and uid in blur_uids and not reveal)
        img = thumb(ref, 160, blur) if isinstance(ref, str) else None
        if img is not None:
            top = f"<img src='{img}' alt='' style='width:100%;border-radius:6px;display:block'>"
        else:
            top = (f"<div style='background:#f1f3f5;border-radius:6px;padding:6px;font-size:0.8em;color:#495057'>"
                   f"no image stored<br>{html.escape(domain if isinstance(domain, str) else '')}</div>")
        caption = " ".join(caption.split()) if isinstance(caption, str) else "—"
        text = caption if len(caption) < 90 else caption[:87] + "…"
        note = "🔞 (blurred) " if blur else ""
        cards.append(f"<div title='{html.escape(str(uid), quote=True)}'>{top}<div style='font-size:0.85em;"
                     f"opacity:0.65;margin-top:4px;overflow-wrap:anywhere'>{note}{html.escape(text)}</div></div>")
    return (f"<div style='display:grid;grid-template-columns:repeat({columns},minmax(0,1fr));gap:0.9rem 1rem'>"
            + "".join(cards) + "</div>")


# ---- cached inputs of the "Who's in, who's out" page ---------------------------------------------------
@st.cache_resource(max_entries=8, show_spinner="Loading scores and labels…", hash_funcs=HASH)
def fairness_frame(store: Store, scores: tuple[str, ...], by: tuple[str, ...]) -> pd.DataFrame:
    """Score columns and label columns of every sample (audit.report.load_frame). Held, not copied: read-only."""
    from audit.measure.report import load_frame

    return load_frame(store, list(scores), list(by))


@st.cache_data(max_entries=16, show_spinner="Accounting for label noise…", hash_funcs=HASH)
def corrected_report(store: Store, specs: tuple[str, ...], by: str, method: str, min_n: int,
                     max_error: float | None = None):
    """(report table with the corrected columns, the gold confusion as (true classes, imputed classes, counts) or
    None). The same computation as `report --correct` (audit/measure/correct.py)."""
    from audit.measure.correct import corrected_columns, load_confusion
    from audit.measure.report import parse_rules, table_from_frame
    from audit.store.labels import label_confidence_frame

    rules = parse_rules(specs)   # the page's cached frame (fairness_frame), not a second read of the pool
    rep = table_from_frame(fairness_frame(store, tuple(dict.fromkeys(r.score for r in rules)), (by,)), rules, [by],
                           min_n=min_n)
    conf = load_confusion(store, by, None)
    lc = label_confidence_frame(store, [by])
    table = corrected_columns(rep.table, rep.selection.keep, rep.labels, lc[f"{by}__conf"].to_numpy(dtype=float),
                              method, conf=conf, max_error=max_error)
    return table, (None if conf is None else (conf.true_classes, conf.obs_classes, conf.counts))


@st.cache_data(max_entries=32, show_spinner=False, hash_funcs=HASH)
def accuracy_note(store: Store, attribute: str) -> str:
    """' Measured …' against the stored gold labels gold_<attribute> ('' when there are none): every page that shows
    an imputed attribute says how accurate it measured."""
    from audit.measure.gold import accuracy, gold_labels, gold_name, imputed_labels

    gold = gold_name(attribute)
    if gold not in store.attributes() or attribute not in store.attributes():
        return ""
    g = gold_labels(store, gold)
    acc = accuracy(g, imputed_labels(store, attribute, g.index), attribute=attribute, method="")
    kappa = f"Cohen's κ {acc.kappa:.2f}, " if np.isfinite(acc.kappa) else ""
    return (f" Measured against {len(g):,} gold labels ({gold}): {kappa}coverage {acc.coverage:.0%} "
            f"(`python -m audit imputation --attribute {attribute} --gold {gold}`).")


@st.cache_data(max_entries=4, show_spinner=False, hash_funcs=HASH)
def has_gold(store: Store, attribute: str) -> bool:
    from audit.measure.gold import gold_name

    return gold_name(attribute) in store.attributes()


@st.cache_data(max_entries=4, show_spinner=False, hash_funcs=HASH)
def count_download_failures(store: Store) -> int:
    return store.count_download_failures()


@st.cache_resource(max_entries=4, show_spinner=False, hash_funcs=HASH)
def availability_frame(store: Store, scores: tuple[str, ...], by: tuple[str, ...]) -> pd.DataFrame:
    """Samples plus failed downloads (audit.measure.availability.load_frame). Held, not copied: read-only."""
    from audit.measure.availability import load_frame

    return load_frame(store, list(scores), list(by))


@st.cache_data(max_entries=16, show_spinner=False, hash_funcs=HASH)
def duplicate_examples(store: Store, group_score: str, keep_score: str, limit_groups: int = 5) -> pd.DataFrame:
    """The largest SemDeDup duplicate groups' members (audit.store.results.duplicate_examples)."""
    from audit.store.results import duplicate_examples as query

    return query(store, group_score, keep_score, limit_groups=limit_groups)


@st.cache_resource(max_entries=16, show_spinner=False, hash_funcs=HASH)
def attribute_labels(store: Store, attrs: tuple[str, ...]) -> pd.DataFrame:
    """One label column per attribute (a Categorical: a code per sample), every sample in uid order. Read-only."""
    from audit.measure.report import load_frame

    return load_frame(store, [], list(attrs)).rename(columns=lambda c: c.removeprefix("by:"))


# ---- cached balancing inputs and results of the Balancing page -----------------------------------------
COMPARE_SLOW_ROWS = 2_000_000   # Filter preview: above this, opening the A-vs-B comparison says it takes seconds
BALANCE_SOLVE_MAX_ROWS = 200_000   # above this the Balancing page shows the stored streamed CLI solve (23.6 s to solve at 1M)


@st.cache_resource(max_entries=8, show_spinner="Reading memberships and proxies…", hash_funcs=HASH)
def balance_inputs(store: Store, attribute: str, proxies: tuple[str, ...], groups: tuple[str, ...],
                   target: str, utility: str | None, model: str | None):
    """audit.balance.load_inputs, held (read-only)."""
    from audit.analyses.balance.run import load_inputs

    return load_inputs(store, attribute, list(proxies), groups=list(groups) or None, target=target,
                       utility=utility, model=model)


@st.cache_resource(max_entries=16, show_spinner="Solving the balancing program…", hash_funcs=HASH)
def balance_m4(store: Store, inputs_key: tuple, _inputs, budget: float, eps_rep: float | None,
               eps_assoc: float | None, seed: int):
    """(M4Result, keep) for the inputs identified by inputs_key."""
    from audit.analyses.balance.core import run_m4

    return run_m4(_inputs, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc, seed=seed)


@st.cache_resource(max_entries=2, show_spinner="Matching captions against the MetaCLIP entries…", hash_funcs=HASH)
def balance_metaclip_index(store: Store):
    from audit.analyses.balance.run import metaclip_index

    return metaclip_index(store)


@st.cache_resource(max_entries=8, show_spinner=False, hash_funcs=HASH)
def balance_metaclip(store: Store, budget: float, seed: int):
    from audit.analyses.balance.run import metaclip_q

    return metaclip_q(store, budget=budget, index=balance_metaclip_index(store), seed=seed)


@st.cache_resource(max_entries=8, show_spinner=False, hash_funcs=HASH)
def balance_clip(store: Store, score: str, budget: float):
    from audit.analyses.balance.run import clip_filter_q

    return clip_filter_q(store, score, budget)


# ---- score columns of the Filter preview's recipes and comparison -----------------------------------------
@st.cache_resource(max_entries=6, show_spinner=False, hash_funcs=HASH)
def score_column(store: Store, name: str) -> np.ndarray:
    """One score for every sample, ORDER BY uid (aligned with preview_data). Held, not copied: read-only."""
    return store.score_array(name)


def score_columns(store: Store, names) -> dict[str, np.ndarray]:
    return {n: score_column(store, n) for n in names}


@st.cache_resource(max_entries=8, show_spinner="Applying filter B to the pool…", hash_funcs=HASH)
def recipe_keep(store: Store, spec: str) -> np.ndarray:
    """Keep mask (uid order) of a recipe; cached, so a move of another slider does not evaluate it again."""
    from audit.decide.recipes import Recipe

    recipe = Recipe.parse(spec, names=store.score_names())
    return recipe.evaluate(score_columns(store, recipe.scores()), n=int(store.count("samples"))).keep


@st.cache_resource(max_entries=8, show_spinner=False, hash_funcs=HASH)
def recipe_rates(store: Store, spec: str, group: str, min_n: int) -> pd.DataFrame:
    from audit.measure.metrics import rates_from_codes

    codes, labels = group_codes(store, group)
    return rates_from_codes(recipe_keep(store, spec), codes, labels, min_n=min_n)


@st.cache_resource(max_entries=4, show_spinner=False, hash_funcs=HASH)
def overlap_index(store: Store, score: str, group: str, spec_b: str) -> np.ndarray:
    """Cumulative count of filter B's kept samples along the sketch's sorted order of ``score`` (int32/64, F + 1):
    both(τ) = index[n_kept(τ)], O(1) per move of A's slider."""
    data = preview_data(store, score, group)
    keep_b = recipe_keep(store, spec_b)
    out = np.zeros(len(data.order) + 1, dtype=np.int64)
    np.cumsum(keep_b[data.order], out=out[1:])
    return out


@st.cache_resource(max_entries=8, show_spinner="Binning both scores…", hash_funcs=HASH)
def density_spec(store: Store, a: str, b: str):
    """The 60 × 60 density of two scores over every sample as (Arrow table, Vega-Lite spec): independent of the
    sliders, binned once. Held, not copied: read-only."""
    from audit import charts

    return charts.density_spec(score_column(store, a), score_column(store, b), xlabel=a, ylabel=b,
                               title="Both scores, every sample")


@st.cache_data(max_entries=64, show_spinner="Ranking both scores…", hash_funcs=HASH)
def spearman(store: Store, a: str, b: str) -> tuple[float, int]:
    """Spearman ρ between two stored scores over the samples that have both; (ρ, n). Exact, from the scores'
    sorted orders (no sort of the pool here)."""
    from audit.decide.recipes import spearman_sorted

    return spearman_sorted(score_column(store, a), score_column(store, b), store.score_order(a), store.score_order(b))


# ---- cached inputs of the Dataset origin and Embedding map pages ------------------------------------------
@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=HASH)
def origin_runs(store: Store) -> pd.DataFrame:
    from audit.store.results import origin_runs as runs

    return runs(store)


@st.cache_data(max_entries=8, show_spinner="Loading the origin probe…", hash_funcs=HASH)
def origin_result(store: Store, run_id: int) -> dict | None:
    from audit.store.results import origin_result as result

    return result(store, run_id=run_id)


@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=HASH)
def map_catalog(store: Store) -> pd.DataFrame:
    from audit.store.results import map_catalog as catalog

    return catalog(store)


@st.cache_resource(max_entries=4, show_spinner="Loading the map coordinates…", hash_funcs=HASH)
def map_coords(store: Store, model: str) -> pd.DataFrame:
    """uid, x, y, fit, pos of every mapped sample (pos aligns with score_column / attribute_labels). Read-only."""
    from audit.store.results import map_coords as coords

    return coords(store, model)


@st.cache_data(max_entries=16, show_spinner="Loading captions of the points shown…", hash_funcs=HASH)
def map_points(store: Store, model: str, max_points: int, seed: int = 0) -> pd.DataFrame:
    """The displayed sample of the map: at most ``max_points`` rows with x, y, pos, source and caption."""
    from audit.analyses.embedmap.layout import display_sample

    coords = map_coords(store, model)
    pick = display_sample(len(coords), max_points, seed)
    shown = coords.iloc[pick][["uid", "x", "y", "pos"]].reset_index(drop=True)
    meta = store.samples_page(shown["uid"].tolist())[["uid", "source", "caption"]]
    return shown.merge(meta, on="uid", how="left")


def keep_mask(store: Store, specs: tuple[str, ...]) -> np.ndarray:
    """Keep mask over every sample (ORDER BY uid) for plain keep rules (audit.decide.selection); raises RuleError."""
    return rule_selection(store, specs).keep


@st.cache_resource(max_entries=8, show_spinner=False, hash_funcs=HASH)
def blur_uids(store: Store) -> frozenset[str]:
    """uids whose imputed nsfw label is 'nsfw': their thumbnails are blurred until the user reveals them. Held,
    not copied per call (a copied set of every flagged uid cost each rerun time proportional to the pool)."""
    from audit.store.labels import uids_with_label

    return frozenset(uids_with_label(store, "nsfw", "nsfw") if "nsfw" in store.attributes() else ())


@st.cache_data(max_entries=16, show_spinner=False, hash_funcs=HASH)
def label_counts(store: Store, column: str) -> pd.DataFrame:
    """label, n, mass of one attribute or sample column (audit.store.labels.label_counts)."""
    from audit.store.labels import label_counts as counts

    return counts(store, column)


@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=HASH)
def stored_json(store: Store, key: str):
    """A JSON document a CLI stage stored under ``key`` in the store's meta table (None if absent)."""
    import json

    from audit.store.results import meta_get

    return json.loads(meta_get(store, key) or "null")


def clip_score_name(model: str) -> str:
    """The name `score clip --model MODEL` stores its score under."""
    from audit.store import slug

    return f"clip_{slug(model)}"


def shown(key: str, default: float) -> float:
    """The value to give a keyed slider as its default: the one it shows now, else ``default``.

    A keyed slider given no value (or a fixed one) reset itself to that default when a rerun came from a fresh
    page before the browser had drawn the slider: the browser then sends the slider's default from the page, not
    the value the session holds (seen on the Filter preview: a click within ~0.5 s of opening it set the top
    fraction to 0.01). Given the value it shows, the slider's default is that value, so the early rerun keeps it.
    A preset or test may still set the key through session state (.streamlit/config.toml mutes the log line).
    """
    return st.session_state.get(key, default)


def rule_widget(store: Store, score: str, mode: str, *, top_key: str, threshold_key: str,
                values: np.ndarray | None = None, top_default: float = 0.30):
    """The slider of a one-score keep rule: 'top fraction' (DataComp) or 'threshold' (keep score ≥ t).

    ``values``: the score's finite values sorted descending (the Filter preview's sketch has them), else read here.
    Returns the Rule, or None when the score has no values (a warning is shown).
    """
    from audit.decide.selection import Rule

    if mode == "top fraction":
        value = st.slider("Keep the top fraction of the pool", 0.01, 1.0, shown(top_key, top_default), step=0.01,
                          key=top_key)
        return Rule(score, "top", float(value))
    if values is None:
        vals = score_values(store, score)
        vals = -np.sort(-vals[~np.isnan(vals)])
    else:
        vals = values   # finite, descending: the bounds and the start are lookups, not passes over the pool
    if len(vals) == 0:
        st.warning(f"No sample has a value for {score}.")
        return None
    lo, hi = float(vals[-1]), float(vals[0])
    start = float(vals[len(vals) - 1 - int(0.7 * (len(vals) - 1))])   # np.quantile(vals, 0.7, method="lower")
    now = shown(threshold_key, start)
    start = float(now) if lo <= now <= hi else start   # the value of another score's slider can be out of this range
    value = st.slider("Keep samples with score ≥", lo, hi, start, (hi - lo) / 400 or 0.001, format="%.4f",
                      key=threshold_key)
    return Rule(score, ">=", float(value))


@st.cache_resource(max_entries=4, show_spinner="Applying the rules to the whole pool…", hash_funcs=HASH)
def rule_selection(store: Store, specs: tuple[str, ...]):
    """The Selection of plain keep rules over the whole pool (Export page, map colouring), from the cached score
    columns only: a keep mask and one failure mask per rule, N bools each. Raises RuleError. Read-only."""
    from audit.decide.selection import Rule, RuleError, select

    rules = [Rule.parse(s) for s in specs]
    names = store.score_names()
    for r in rules:
        if r.score not in names:
            raise RuleError(f"unknown score {r.score!r} in rule {str(r)!r}; this store has: {', '.join(names)}")
    return select(rules, score_columns(store, sorted({r.score for r in rules})), n=int(store.count("samples")))


@st.cache_data(max_entries=8, show_spinner=False, hash_funcs=HASH)
def export_preview(store: Store, specs: tuple[str, ...], limit: int = 20) -> pd.DataFrame:
    """The first ``limit`` kept samples (uid order) with every score: a LIMIT-sized read, not the pool."""
    keep = rule_selection(store, specs).keep
    rows = np.flatnonzero(keep)[:limit]
    frame = store.samples_at(rows)
    for name in store.score_names():
        frame[name] = score_column(store, name)[rows]
    return frame


@st.cache_data(max_entries=4, show_spinner=False, hash_funcs=HASH)
def non_hex_uid_rows(store: Store) -> np.ndarray:
    """Rows (uid order) whose uid is not 32 hex digits, which a DataComp .npy cannot list (usually none)."""
    return store.non_hex_uid_rows()


def render_export(store: Store, specs: tuple[str, ...], by: tuple[str, ...], fmt: str, all_rows: bool) -> bytes:
    """The export file's bytes, built when the user clicks (the same streamed writer as `python -m audit
    export`, on the cached decision); not cached."""
    from audit.export.writer import render_selection

    return render_selection(store, rule_selection(store, specs), fmt, by=by, all_rows=all_rows)


@st.cache_resource
def favicon():
    """A 64 × 64 magnifier over three bars (kept/excluded), drawn locally: no request leaves the machine."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    for x, h, colour in ((8, 30, "#2b8a3e"), (20, 18, "#c92a2a"), (32, 40, "#2b8a3e")):
        d.rectangle([x, 56 - h, x + 8, 56], fill=colour)
    d.ellipse([26, 6, 54, 34], outline="#1c7ed6", width=5)
    d.line([50, 30, 60, 42], fill="#1c7ed6", width=6)
    return im
