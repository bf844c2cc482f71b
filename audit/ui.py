"""Streamlit glue: the only module (besides app.py and pages/) that imports streamlit.

The dashboard never opens the live store: it opens a snapshot copy taken under a read lock, so a CLI
stage may write to the store meanwhile. When the live store changes, the sidebar says so and offers a
reload. All caching lives here; pages read widgets, call these helpers and ``audit``, and render.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from audit.preview import PreviewData
from audit.store import Store, StoreError, snapshot, store_version, vectors_dir

DEFAULT_STORE = "data/demo.duckdb"
MIN_N = 30
PALETTE = {"kept": "#2b8a3e", "excluded": "#c92a2a", "small": "#adb5bd", "overall": "#1c7ed6"}


def store_path() -> str:
    return os.environ.get("AUDIT_STORE", DEFAULT_STORE)


def _snapshot_dir(path: str) -> Path:
    h = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "clip-audit-snapshots" / h


@st.cache_resource(max_entries=4, show_spinner="Opening a snapshot of the store…")
def _open_snapshot(path: str, version: int) -> Store:
    snap = snapshot(path, _snapshot_dir(path), wait_s=20)
    return Store.open(snap, read_only=True, vectors_root=vectors_dir(path))


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


def page(title: str) -> tuple[Store, str, dict]:
    """Every page's header: title, the store snapshot (or a message and stop), freshness note, sidebar caption.

    Returns (store, cache key, overview info).
    """
    st.title(title)
    store = get_store()
    if store is None:
        st.stop()
    freshness_notice()
    k = key(store)
    info = overview(store, k)
    store_caption(store, info)
    return store, k, info


def freshness_notice() -> None:
    """Sidebar note when the live store is newer than the snapshot on screen."""
    path = store_path()
    live = store_version(path)
    pinned = st.session_state.get("store_version")
    if pinned and live and live != pinned:
        st.sidebar.info("The store has newer data than this view (a CLI stage wrote to it).")
        if st.sidebar.button("Reload data"):
            st.session_state["store_version"] = live
            st.cache_data.clear()
            st.rerun()


def key(store: Store) -> str:
    return f"{store.path}"


# ---- cached queries (keyed on the snapshot path, which changes with each store version) ------------
@st.cache_data(max_entries=8, show_spinner=False)
def overview(_store: Store, k: str) -> dict:
    return {"counts": _store.overview(), "sources": _store.sources(), "rejects": _store.rejects_by_reason(),
            "scores": _store.score_catalog(), "models": _store.models(), "runs": _store.runs(),
            "attributes": _store.attribute_catalog()}


@st.cache_data(max_entries=16, show_spinner="Loading score values…")
def score_values(_store: Store, k: str, score: str) -> np.ndarray:
    return _store.df("SELECT value FROM scores WHERE name = ?", [score])["value"].to_numpy()


@st.cache_resource(max_entries=16, show_spinner="Loading the score and groups…")
def preview_data(_store: Store, k: str, score: str, group: str) -> PreviewData:
    """Held as a resource (not copied per call: at 1M rows a copy costs more than the preview). Read-only."""
    return PreviewData.from_frame(_store.score_and_groups(score, group))


@st.cache_data(max_entries=64, show_spinner=False)
def samples(_store: Store, k: str, uids: tuple[str, ...]) -> pd.DataFrame:
    return _store.samples_page(list(uids))


@st.cache_data(max_entries=512, show_spinner=False)
def thumb(ref: str, size: int = 160, blur: bool = False):
    from audit import images

    try:
        return images.thumbnail(ref, size, blur=blur)
    except images.ImageError:
        return None


# ---- labels ------------------------------------------------------------------------------------
def score_label(cat: pd.DataFrame, name: str) -> str:
    row = cat[cat["name"] == name]
    if row.empty:
        return name
    r = row.iloc[0]
    tags = []
    if bool(r["random_weights"]):
        tags.append("random weights")
    if bool(r["simulated"]):
        tags.append("simulated")
    return f"{name}" + (f"  [{', '.join(tags)}]" if tags else "")


def group_label(store: Store, col: str) -> str:
    if col in store.attributes():
        return f"{col} (imputed)"
    return col


def store_caption(store: Store, info: dict) -> None:
    c = info["counts"]
    sim = c["simulated"]
    st.sidebar.caption(
        f"Store `{store_path()}` · {c['samples']:,} samples · {c['rejects']:,} rejects"
        + (f" · {sim:,} **simulated**" if sim else ""))


def rate_chart(table: pd.DataFrame, *, title: str, min_n: int = MIN_N, max_groups: int = 30):
    """Inclusion rate per group with 95% Wilson intervals, the overall rate as a reference line.

    With more than ``max_groups`` groups (domains: thousands) the chart shows the largest ones and says so in
    its title; the table beside it keeps every group.
    """
    import plotly.graph_objects as go

    overall = table.attrs["overall"]
    if len(table) > max_groups:
        title = f"{title} — the {max_groups} largest of {len(table):,} groups"
        table = table.nlargest(max_groups, "n")
    t = table.sort_values("rate", ascending=True).reset_index(drop=True)
    colors = [PALETTE["small"] if s else PALETTE["kept"] for s in t["small"]]
    labels = [f"{g} (n={n:,})" for g, n in zip(t["group"], t["n"])]
    fig = go.Figure(go.Scatter(
        x=t["rate"], y=labels, mode="markers", marker=dict(color=colors, size=10),
        error_x=dict(type="data", symmetric=False, array=t["ci_high"] - t["rate"],
                     arrayminus=t["rate"] - t["ci_low"], color="#495057", thickness=1.5),
        customdata=np.stack([t["n"], t["kept"], t["ci_low"], t["ci_high"]], axis=1),
        hovertemplate="%{y}<br>rate %{x:.3f} (95%% CI %{customdata[2]:.3f}–%{customdata[3]:.3f})"
                      "<br>kept %{customdata[1]:,} of %{customdata[0]:,}<extra></extra>"))
    fig.add_vline(x=overall, line=dict(color=PALETTE["overall"], dash="dash"),
                  annotation_text=f"overall {overall:.3f}", annotation_position="top")
    fig.update_layout(title=title, xaxis_title="inclusion rate (kept / n), 95% Wilson interval",
                      height=max(260, 34 * len(t) + 110), margin=dict(l=10, r=10, t=50, b=40),
                      xaxis=dict(range=_rate_range(t, overall)))
    return fig


def _rate_range(t: pd.DataFrame, overall: float) -> list[float]:
    """x range that shows every interval and the overall line, padded; starts at 0 when that is close."""
    lo = float(min(t["ci_low"].min(), overall))
    hi = float(max(t["ci_high"].max(), overall))
    pad = max(0.02, 0.08 * (hi - lo))
    lo = 0.0 if lo - pad < 0.15 * hi else lo - pad
    return [max(0.0, lo), min(1.0, hi + pad)]


def histogram(values: np.ndarray, *, title: str, tau: float | None = None):
    import plotly.graph_objects as go

    v = values[~np.isnan(values)]
    fig = go.Figure(go.Histogram(x=v, nbinsx=80, marker_color="#495057"))
    if tau is not None and np.isfinite(tau):
        fig.add_vline(x=tau, line=dict(color=PALETTE["excluded"], width=2),
                      annotation_text=f"threshold {tau:.4f}", annotation_position="top right")
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=30), xaxis_title="score",
                      yaxis_title="samples", bargap=0.02)
    return fig


def show_samples(store: Store, frame: pd.DataFrame, *, reveal: bool, blur_uids: set[str] | None = None,
                 columns: int = 4) -> None:
    """A grid of thumbnails (or caption cards for url-only rows) with captions."""
    if frame.empty:
        st.caption("none")
        return
    cols = st.columns(columns)
    for i, r in enumerate(frame.itertuples()):
        with cols[i % columns]:
            blur = bool(blur_uids and r.uid in blur_uids and not reveal)
            img = thumb(r.image_ref, 160, blur) if isinstance(r.image_ref, str) else None
            if img is not None:
                st.image(img, width="stretch")
            else:
                st.markdown(f"<div style='background:#f1f3f5;border-radius:6px;padding:6px;font-size:0.8em;"
                            f"color:#495057'>no image stored<br>{r.domain or ''}</div>", unsafe_allow_html=True)
            text = r.caption if len(r.caption) < 90 else r.caption[:87] + "…"
            st.caption(("🔞 (blurred) " if blur else "") + text)


# ---- fairness (issue 4): cached inputs of the "Who's in, who's out" page --------------------------------
@st.cache_resource(max_entries=8, show_spinner="Loading scores and labels…")
def fairness_frame(_store: Store, k: str, scores: tuple[str, ...], by: tuple[str, ...]) -> pd.DataFrame:
    """Score columns and label columns of every sample (audit.report.load_frame). Held, not copied: read-only."""
    from audit.report import load_frame

    return load_frame(_store, list(scores), list(by))


@st.cache_resource(max_entries=16, show_spinner=False)
def attribute_labels(_store: Store, k: str, attrs: tuple[str, ...]) -> pd.DataFrame:
    """uid plus one label column per attribute, every sample ordered by uid. Read-only."""
    from audit.store import label_frame

    return label_frame(_store, list(attrs))


# ---- balancing (issue 6): cached balancing inputs/results and the two charts of the Balancing page ----
@st.cache_resource(max_entries=8, show_spinner="Reading memberships and proxies…")
def balance_inputs(_store: Store, k: str, attribute: str, proxies: tuple[str, ...], groups: tuple[str, ...],
                   target: str, utility: str | None, model: str | None):
    """audit.balance.load_inputs, held (read-only)."""
    from audit.balance import load_inputs

    return load_inputs(_store, attribute, list(proxies), groups=list(groups) or None, target=target,
                       utility=utility, model=model)


@st.cache_resource(max_entries=16, show_spinner="Solving the balancing program…")
def balance_m4(_store: Store, k: str, inputs_key: tuple, _inputs, budget: float, eps_rep: float | None,
               eps_assoc: float | None, seed: int):
    """(M4Result, keep) for the inputs identified by inputs_key."""
    from audit.balance import run_m4

    return run_m4(_inputs, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc, seed=seed)


@st.cache_resource(max_entries=2, show_spinner="Matching captions against the MetaCLIP entries…")
def balance_metaclip_index(_store: Store, k: str):
    from audit.balance import metaclip_index

    return metaclip_index(_store)


@st.cache_resource(max_entries=8, show_spinner=False)
def balance_metaclip(_store: Store, k: str, budget: float, seed: int):
    from audit.balance import metaclip_q

    return metaclip_q(_store, budget=budget, index=balance_metaclip_index(_store, k), seed=seed)


@st.cache_resource(max_entries=8, show_spinner=False)
def balance_clip(_store: Store, k: str, score: str, budget: float):
    from audit.balance import clip_filter_q

    return clip_filter_q(_store, score, budget)


def shares_chart(table: pd.DataFrame, groups: list[str], target: np.ndarray, *, title: str):
    """Each method's share of the kept membership mass minus the target share, per group (0 = on target)."""
    import plotly.graph_objects as go

    colors = ["#868e96", "#2b8a3e", "#1c7ed6", "#e8590c", "#ae3ec9"]
    fig = go.Figure()
    rows = list(table.iterrows())
    for i, (_, r) in reversed(list(enumerate(rows))):
        vals = [float(r[f"share {g}"]) - float(t) for g, t in zip(groups, target)]
        shares = [float(r[f"share {g}"]) for g in groups]
        fig.add_bar(name=str(r["method"]), y=groups, x=vals, orientation="h", marker_color=colors[i % len(colors)],
                    customdata=shares, legendrank=i,
                    hovertemplate="%{y}: share %{customdata:.4f} (%{x:+.4f} vs target)<extra>" + str(r["method"])
                                  + "</extra>")
    fig.add_vline(x=0, line=dict(color="#212529", width=1.5))
    span = float(np.nanmax(np.abs([[float(r[f"share {g}"]) - float(t) for g, t in zip(groups, target)]
                                   for _, r in rows]))) if rows else 0.01
    span = max(span * 1.15, 1e-3)
    fig.update_layout(title=title, barmode="group", height=140 + 34 * len(groups) * max(1, len(rows)),
                      margin=dict(l=10, r=10, t=50, b=40), xaxis_title="share of kept members − target share",
                      yaxis_title="group (imputed)", xaxis=dict(range=[-span, span], zeroline=False),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0), legend_title_text="")
    return fig


def association_heatmaps(assoc: dict[str, np.ndarray], groups: list[str], proxies: list[str], *, title: str):
    """One heatmap row per method: group × proxy association, diverging colours centred at 0, one shared scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(assoc)
    zmax = max(1e-12, max(float(np.max(np.abs(a))) if a.size else 0.0 for a in assoc.values()))
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[f"{n} (max |assoc| {np.max(np.abs(assoc[n])) if assoc[n].size else 0:.4f})"
                                        for n in names])
    labels = [p if len(p) <= 28 else p[:27] + "…" for p in proxies]
    show_text = len(proxies) <= 10
    for i, n in enumerate(names, start=1):
        fig.add_trace(go.Heatmap(
            z=assoc[n], x=labels, y=groups, zmin=-zmax, zmax=zmax, zmid=0, colorscale="RdBu_r",
            showscale=(i == 1), colorbar=dict(title="assoc.", len=0.9),
            texttemplate="%{z:.4f}" if show_text else None, textfont=dict(size=11),
            hovertemplate="group %{y}<br>proxy %{x}<br>association %{z:.5f}<extra>" + n + "</extra>"), row=i, col=1)
        fig.update_yaxes(title_text="group", row=i, col=1)
    fig.update_xaxes(title_text="proxy", tickangle=-35, row=len(names), col=1)
    fig.update_layout(title=title, height=120 + len(names) * (45 * len(groups) + 60),
                      margin=dict(l=10, r=10, t=80, b=10))
    return fig


# ---- scores (issue 3): recipe columns, reasons and the side-by-side comparison of the Filter preview -----
@st.cache_resource(max_entries=64, show_spinner=False)
def score_column(_store: Store, k: str, name: str) -> np.ndarray:
    """One score for every sample, ORDER BY uid (aligned with preview_data). Held, not copied: read-only."""
    return _store.score_frame([name])[name].to_numpy(dtype=float)


def score_columns(store: Store, k: str, names) -> dict[str, np.ndarray]:
    return {n: score_column(store, k, n) for n in names}


@st.cache_data(max_entries=64, show_spinner="Ranking both scores…")
def spearman(_store: Store, k: str, a: str, b: str) -> tuple[float, int]:
    """Spearman ρ between two stored scores over the samples that have both; (ρ, n)."""
    from audit.recipes import spearman as rho

    return rho(score_column(_store, k, a), score_column(_store, k, b))


def reason_chart(table: pd.DataFrame, *, title: str):
    """Horizontal bars per exclusion reason: samples that failed it, and those that failed only it."""
    import plotly.graph_objects as go

    t = table.sort_values("excluded", ascending=True)
    fig = go.Figure()
    fig.add_bar(y=t["reason"], x=t["excluded"], orientation="h", name="failed this rule",
                marker_color=PALETTE["excluded"], hovertemplate="%{y}<br>failed by %{x:,} samples<extra></extra>")
    fig.add_bar(y=t["reason"], x=t["only_reason"], orientation="h", name="failed only this rule",
                marker_color="#f59f00", hovertemplate="%{y}<br>%{x:,} samples fail nothing else<extra></extra>")
    fig.update_layout(title=title, barmode="group", height=max(220, 46 * len(t) + 120),
                      margin=dict(l=10, r=10, t=50, b=40), xaxis_title="samples",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


def compare_chart(table_a: pd.DataFrame, table_b: pd.DataFrame, *, title: str, label_a: str, label_b: str,
                  max_groups: int = 30):
    """Inclusion rate per group under two filters (95% Wilson intervals), groups ordered by filter A."""
    import plotly.graph_objects as go

    a = table_a.nlargest(max_groups, "n") if len(table_a) > max_groups else table_a
    a = a.sort_values("rate").reset_index(drop=True)
    b = table_b.set_index("group").loc[a["group"]].reset_index()
    labels = [f"{g} (n={n:,})" for g, n in zip(a["group"], a["n"])]
    fig = go.Figure()
    for t, name, color, sym in ((a, label_a, PALETTE["kept"], "circle"), (b, label_b, "#1c7ed6", "diamond")):
        fig.add_scatter(x=t["rate"], y=labels, mode="markers", name=name,
                        marker=dict(color=color, size=10, symbol=sym),
                        error_x=dict(type="data", symmetric=False, array=t["ci_high"] - t["rate"],
                                     arrayminus=t["rate"] - t["ci_low"], color=color, thickness=1.2),
                        hovertemplate="%{y}<br>" + name + ": %{x:.3f}<extra></extra>")
    both = pd.concat([a, b])
    fig.update_layout(title=title, xaxis_title="inclusion rate (kept / n), 95% Wilson interval",
                      height=max(320, 34 * len(a) + 210), margin=dict(l=10, r=10, t=50, b=100),
                      xaxis=dict(range=_rate_range(both, float(table_a.attrs.get("overall", both["rate"].mean())))),
                      legend=dict(orientation="h", yanchor="top", y=-0.32, x=0))
    return fig


def density_chart(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str):
    """2-D histogram of two scores (no overplotting at any pool size); rows with a NaN are left out."""
    import plotly.graph_objects as go

    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return go.Figure().update_layout(title=f"{title}: no sample has both scores", height=200)
    # binned here, so the browser gets a 60 × 60 grid, not every sample
    counts, xe, ye = np.histogram2d(x[ok], y[ok], bins=60)
    z = np.where(counts > 0, counts, np.nan).T
    fig = go.Figure(go.Heatmap(x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2, z=z, colorscale="Blues",
                               colorbar=dict(title="samples"),
                               hovertemplate="x %{x:.4f}<br>y %{y:.4f}<br>%{z:,} samples<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, height=340,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


# ---- origin probe and embedding map (issue 5): cached inputs of the Dataset origin and Embedding map pages --
@st.cache_data(max_entries=8, show_spinner=False)
def origin_runs(_store: Store, k: str) -> pd.DataFrame:
    from audit.store import origin_runs as runs

    return runs(_store)


@st.cache_data(max_entries=8, show_spinner="Loading the origin probe…")
def origin_result(_store: Store, k: str, run_id: int) -> dict | None:
    from audit.store import origin_result as result

    return result(_store, run_id=run_id)


@st.cache_data(max_entries=8, show_spinner=False)
def map_catalog(_store: Store, k: str) -> pd.DataFrame:
    from audit.store import map_catalog as catalog

    return catalog(_store)


@st.cache_resource(max_entries=4, show_spinner="Loading the map coordinates…")
def map_coords(_store: Store, k: str, model: str) -> pd.DataFrame:
    """uid, x, y, fit, pos of every mapped sample (pos aligns with score_column / attribute_labels). Read-only."""
    from audit.store import map_coords as coords

    return coords(_store, model)


@st.cache_data(max_entries=16, show_spinner="Loading captions of the points shown…")
def map_points(_store: Store, k: str, model: str, max_points: int, seed: int = 0) -> pd.DataFrame:
    """The displayed sample of the map: at most ``max_points`` rows with x, y, pos, source and caption."""
    from audit.embedmap import display_sample

    coords = map_coords(_store, k, model)
    pick = display_sample(len(coords), max_points, seed)
    shown = coords.iloc[pick][["uid", "x", "y", "pos"]].reset_index(drop=True)
    meta = _store.samples_page(shown["uid"].tolist())[["uid", "source", "caption"]]
    return shown.merge(meta, on="uid", how="left")


def keep_mask(store: Store, k: str, specs: tuple[str, ...]) -> np.ndarray:
    """Keep mask over every sample (ORDER BY uid) for plain keep rules (audit.selection); raises RuleError."""
    from audit.selection import Rule, RuleError, select

    rules = [Rule.parse(s) for s in specs]
    names = store.score_names()
    for r in rules:
        if r.score not in names:
            raise RuleError(f"unknown score {r.score!r} in rule {str(r)!r}; this store has: {', '.join(names)}")
    cols = score_columns(store, k, sorted({r.score for r in rules}))
    n = int(store.count("samples"))
    return select(rules, cols, n=n).keep
