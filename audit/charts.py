"""Every chart of the dashboard, built from plain frames and arrays (no streamlit, no store): Plotly figures, and
Vega-Lite specs (``*_spec``: an Arrow table and a spec) for the Overview and the Filter preview's live charts.

Pages compute or fetch (through audit.ui), then call one of these and hand the result to ``st.plotly_chart`` or
``st.vega_lite_chart``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from audit.measure.metrics import MIN_N


def _fit(fig):
    """Axes make room for their labels (Plotly's default cuts long category names such as 'homosexual (n=…)')."""
    fig.update_layout(xaxis_automargin=True, yaxis_automargin=True)
    return fig


def _vline(x: float, line: dict, text: str | None = None, *, xanchor: str = "center") -> tuple[dict, dict | None]:
    """(shape, annotation) of a vertical line across the plot with a label above it: what Figure.add_vline draws,
    as plain layout entries (add_vline costs ~6 ms of Python per figure, which every slider move paid)."""
    shape = dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=line)
    note = None if text is None else dict(x=x, xref="x", y=1, yref="paper", text=text, showarrow=False,
                                          xanchor=xanchor, yanchor="bottom")
    return shape, note


def txt(label) -> str:
    """A label from the data as Plotly text: Plotly reads <a>, <b>, <br>, <span> … in labels, so < > & are escaped
    (a domain or group named '<a href=…>' is shown, not followed)."""
    import html

    return html.escape(str(label), quote=False)

PALETTE = {"kept": "#2b8a3e", "excluded": "#c92a2a", "small": "#adb5bd", "overall": "#1c7ed6"}


def rate_chart(table: pd.DataFrame, *, title: str, min_n: int = MIN_N, max_groups: int = 30,
               xaxis_title: str = "inclusion rate (kept / n), 95% Wilson interval", what: str = "kept",
               color: str | None = None):
    """Inclusion rate per group with 95% Wilson intervals, the overall rate as a reference line.

    With more than ``max_groups`` groups (domains: thousands) the chart shows the largest ones and says so in
    its title; the table beside it keeps every group.
    """
    overall = table.attrs["overall"]
    if len(table) > max_groups:
        title = f"{title} — the {max_groups} largest of {len(table):,} groups"
        table = table.nlargest(max_groups, "n")
    t = table.sort_values("rate", ascending=True).reset_index(drop=True)
    colors = [PALETTE["small"] if s else (color or PALETTE["kept"]) for s in t["small"]]
    labels = [f"{txt(g)} (n={n:,})" for g, n in zip(t["group"], t["n"])]
    fig = go.Figure(go.Scatter(
        x=t["rate"], y=labels, mode="markers", marker=dict(color=colors, size=10),
        error_x=dict(type="data", symmetric=False, array=t["ci_high"] - t["rate"],
                     arrayminus=t["rate"] - t["ci_low"], color="#495057", thickness=1.5),
        customdata=np.stack([t["n"], t["kept"], t["ci_low"], t["ci_high"]], axis=1),
        hovertemplate="%{y}<br>rate %{x:.3f} (95%% CI %{customdata[2]:.3f}–%{customdata[3]:.3f})"
                      "<br>" + what + " %{customdata[1]:,} of %{customdata[0]:,}<extra></extra>"))
    shape, note = _vline(overall, dict(color=PALETTE["overall"], dash="dash"), f"overall {overall:.3f}")
    fig.update_layout(title=title, xaxis_title=xaxis_title, shapes=[shape], annotations=[note],
                      height=max(260, 34 * len(t) + 110), margin=dict(l=10, r=10, t=50, b=40),
                      xaxis=dict(range=_rate_range(t, overall)))
    return _fit(fig)


def _rate_range(t: pd.DataFrame, overall: float) -> list[float]:
    """x range that shows every interval and the overall line, padded; starts at 0 when that is close."""
    lo = float(min(t["ci_low"].min(), overall))
    hi = float(max(t["ci_high"].max(), overall))
    pad = max(0.02, 0.08 * (hi - lo))
    lo = 0.0 if lo - pad < 0.15 * hi else lo - pad
    return [max(0.0, lo), min(1.0, hi + pad)]


def dedup_curve(summary: pd.DataFrame):
    """Share of the pool SemDeDup removes at each ε (columns ε, share, removed)."""
    t = summary.sort_values("ε")
    fig = go.Figure(go.Scatter(x=[f"ε={e:g}" for e in t["ε"]], y=t["share"], mode="lines+markers+text",
                               text=[f"{r:,}" for r in t["removed"]], textposition="top center",
                               marker=dict(color=PALETTE["excluded"], size=9), line=dict(color=PALETTE["excluded"]),
                               hovertemplate="%{x}: %{y:.2%} removed<extra></extra>"))
    top = float(t["share"].max()) if len(t) else 0.0
    fig.update_layout(title="Removed as near-duplicates, by ε", height=260, margin=dict(l=10, r=10, t=40, b=40),
                      xaxis_title="ε (duplicates: cosine similarity > 1 − ε)", yaxis_title="share of the pool",
                      yaxis=dict(tickformat=".1%", range=[0, max(top * 1.3, 0.01)]), xaxis=dict(type="category"))
    return _fit(fig)


def histogram_bins(counts: np.ndarray, edges: np.ndarray, *, title: str, tau: float | None = None):
    """The histogram of histogram() from counts already binned (the browser gets the bins, not every value)."""
    shapes, notes = [], []
    if tau is not None and np.isfinite(tau):
        shape, note = _vline(tau, dict(color=PALETTE["excluded"], width=2), f"threshold {tau:.4f}", xanchor="left")
        shapes, notes = [shape], [note]
    return go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color="#495057",
                            hovertemplate="%{x:.4f}: %{y:,} samples<extra></extra>"),
                     layout=dict(title=title, height=260, margin=dict(l=10, r=10, t=40, b=30), xaxis_title="score",
                                 yaxis_title="samples", bargap=0.02, shapes=shapes, annotations=notes,
                                 xaxis_automargin=True, yaxis_automargin=True))


def shares_chart(table: pd.DataFrame, groups: list[str], target: np.ndarray, *, title: str):
    """Each method's share of the kept membership mass minus the target share, per group (0 = on target)."""
    colors = ["#868e96", "#2b8a3e", "#1c7ed6", "#e8590c", "#ae3ec9"]
    fig = go.Figure()
    rows = list(table.iterrows())
    for i, (_, r) in reversed(list(enumerate(rows))):
        vals = [float(r[f"share {g}"]) - float(t) for g, t in zip(groups, target)]
        shares = [float(r[f"share {g}"]) for g in groups]
        fig.add_bar(name=str(r["method"]), y=[txt(g) for g in groups], x=vals, orientation="h", marker_color=colors[i % len(colors)],
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
    return _fit(fig)


def association_heatmaps(assoc: dict[str, np.ndarray], groups: list[str], proxies: list[str], *, title: str):
    """One heatmap row per method: group × proxy association, diverging colours centred at 0, one shared scale."""
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
            z=assoc[n], x=[txt(x) for x in labels], y=[txt(g) for g in groups], zmin=-zmax, zmax=zmax, zmid=0, colorscale="RdBu_r",
            showscale=(i == 1), colorbar=dict(title="assoc.", len=0.9),
            texttemplate="%{z:.4f}" if show_text else None, textfont=dict(size=11),
            hovertemplate="group %{y}<br>proxy %{x}<br>association %{z:.5f}<extra>" + n + "</extra>"), row=i, col=1)
        fig.update_yaxes(title_text="group", row=i, col=1)
    fig.update_xaxes(title_text="proxy", tickangle=-35, row=len(names), col=1)
    fig.update_layout(title=title, height=120 + len(names) * (45 * len(groups) + 60),
                      margin=dict(l=10, r=10, t=80, b=10))
    return _fit(fig)


def reason_chart(table: pd.DataFrame, *, title: str):
    """Horizontal bars per exclusion reason: samples that failed it, and those that failed only it."""
    t = table.sort_values("excluded", ascending=True)
    fig = go.Figure()
    fig.add_bar(y=t["reason"], x=t["excluded"], orientation="h", name="failed this rule",
                marker_color=PALETTE["excluded"], hovertemplate="%{y}<br>failed by %{x:,} samples<extra></extra>")
    fig.add_bar(y=t["reason"], x=t["only_reason"], orientation="h", name="failed only this rule",
                marker_color="#f59f00", hovertemplate="%{y}<br>%{x:,} samples fail nothing else<extra></extra>")
    fig.update_layout(title=title, barmode="group", height=max(220, 46 * len(t) + 120),
                      margin=dict(l=10, r=10, t=50, b=40), xaxis_title="samples",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return _fit(fig)


def compare_chart(table_a: pd.DataFrame, table_b: pd.DataFrame, *, title: str, label_a: str, label_b: str,
                  max_groups: int = 30):
    """Inclusion rate per group under two filters (95% Wilson intervals), groups ordered by filter A."""
    a = table_a.nlargest(max_groups, "n") if len(table_a) > max_groups else table_a
    a = a.sort_values("rate").reset_index(drop=True)
    b = table_b.set_index("group").loc[a["group"]].reset_index()
    labels = [f"{txt(g)} (n={n:,})" for g, n in zip(a["group"], a["n"])]
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
    return _fit(fig)


def density_spec(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str):
    """2-D histogram of two scores as Vega-Lite (no overplotting at any pool size): a 60 × 60 grid binned here, empty
    cells left out, rows with a NaN left out. Returns (Arrow table, spec). Vega-Lite, not Plotly: it sits among the
    slider's live charts, and Streamlit re-sends a Plotly figure on every move (~9 ms of JSON) where an unchanged
    Vega-Lite element costs nothing in the browser."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        empty = _arrow({k: np.zeros(0) for k in ("x", "x2", "y", "y2", "samples")})
        return empty, {"title": f"{title}: no sample has both scores", "height": 60, "autosize": _VL_FIT_X,
                       "layer": [{"mark": "rect"}]}
    counts, xe, ye = np.histogram2d(x[ok], y[ok], bins=60)
    i, j = np.nonzero(counts)
    cols = {"x": xe[i], "x2": xe[i + 1], "y": ye[j], "y2": ye[j + 1], "samples": counts[i, j].astype(np.int64)}
    axis = lambda title_: {"type": "quantitative", "title": title_, "scale": {"zero": False, "nice": False}}
    spec = {"title": title, "height": 290, "autosize": _VL_FIT_X, "layer": [{
            "mark": {"type": "rect"},
            "encoding": {"x": {"field": "x", **axis(xlabel)}, "x2": {"field": "x2"},
                         "y": {"field": "y", **axis(ylabel)}, "y2": {"field": "y2"},
                         "color": {"field": "samples", "type": "quantitative", "title": "samples",
                                   "scale": {"scheme": "blues"}},
                         "tooltip": _vl_tooltip(("x", f"{xlabel} from", ".4f"), ("x2", "to", ".4f"),
                                                ("y", f"{ylabel} from", ".4f"), ("y2", "to", ".4f"),
                                                ("samples", "samples", ","))}}]}
    return _arrow(cols), spec


# ---- Who's in, who's out ---------------------------------------------------------------------------------
def rate_vs_count_chart(pts: pd.DataFrame, reg, overall: float):
    """Inclusion rate of each labelled group against its pool count (log x), with the least-squares fit."""
    big = pts[~pts["small"]]
    colors = np.where(pts["amplified"], PALETTE["excluded"], np.where(pts["small"], PALETTE["small"],
                                                                       PALETTE["kept"]))
    fig = go.Figure(go.Scatter(
        x=pts["n"], y=pts["rate"], mode="markers+text" if len(pts) <= 25 else "markers", text=pts["group"],
        textposition="top center",
        marker=dict(color=colors, size=10), name="groups",
        error_y=dict(type="data", symmetric=False, array=pts["ci_high"] - pts["rate"],
                     arrayminus=pts["rate"] - pts["ci_low"], color="#868e96", thickness=1),
        hovertemplate="%{text}<br>n %{x:,}<br>rate %{y:.3f}<extra></extra>"))
    if reg is not None:
        xs = np.logspace(np.log10(big["n"].min()), np.log10(big["n"].max()), 50)
        fig.add_trace(go.Scatter(x=xs, y=reg.intercept + reg.slope * np.log10(xs), mode="lines",
                                 line=dict(color=PALETTE["overall"]), name="least-squares fit"))
    fig.add_hline(y=overall, line=dict(color="#495057", dash="dash"), annotation_text=f"overall {overall:.3f}",
                  annotation_position="bottom left")
    fig.update_layout(title="Inclusion rate vs number in the pool (labelled groups)", height=420,
                      xaxis=dict(type="log", title="samples in the pool (log scale)"),
                      yaxis=dict(title="inclusion rate (95% Wilson interval)"),
                      margin=dict(l=10, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return _fit(fig)


def flag_share_bars(bars: list[tuple[str, dict]]):
    """Share of each flagged category (NSFW, copyright) in the pool and in the kept set, 95% intervals."""
    fig = go.Figure()
    for where, key_, color in (("pool", "pool", "#868e96"), ("kept set", "kept", PALETTE["kept"])):
        vals = [fr[f"{key_}_rate"] for _, fr in bars]
        fig.add_trace(go.Bar(
            name=f"share in the {where}", x=[t for t, _ in bars], y=vals, marker_color=color,
            error_y=dict(type="data", symmetric=False, array=[fr[f"{key_}_ci"][1] - v for (_, fr), v in zip(bars, vals)],
                         arrayminus=[v - fr[f"{key_}_ci"][0] for (_, fr), v in zip(bars, vals)])))
    fig.update_layout(barmode="group", height=300, yaxis_title="share of samples (95% Wilson interval)",
                      margin=dict(l=10, r=10, t=30, b=30), legend=dict(orientation="h", y=1.12))
    return _fit(fig)


# ---- Dataset origin -----------------------------------------------------------------------------------------
def probe_accuracy_chart(ok: pd.DataFrame):
    """Held-out accuracy of each feature family's probe, its shuffled-label control and chance."""
    fig = go.Figure()
    fig.add_scatter(x=ok["accuracy"], y=ok["label"], mode="markers", name="probe (held-out accuracy)",
                    marker=dict(color="#1c7ed6", size=11),
                    error_x=dict(type="data", symmetric=False, array=ok["ci_high"] - ok["accuracy"],
                                 arrayminus=ok["accuracy"] - ok["ci_low"], color="#1c7ed6", thickness=1.5),
                    customdata=np.stack([ok["ci_low"], ok["ci_high"], ok["n_test"], ok["macro_f1"]], axis=1),
                    hovertemplate="%{y}<br>accuracy %{x:.3f} (95% CI %{customdata[0]:.3f}–%{customdata[1]:.3f})"
                                  "<br>macro-F1 %{customdata[3]:.3f} · n_test %{customdata[2]:,}<extra></extra>")
    if ok["control_accuracy"].notna().any():
        fig.add_scatter(x=ok["control_accuracy"], y=ok["label"], mode="markers", name="shuffled-label control",
                        marker=dict(color="#868e96", size=9, symbol="diamond"),
                        error_x=dict(type="data", symmetric=False,
                                     array=ok["control_ci_high"] - ok["control_accuracy"],
                                     arrayminus=ok["control_accuracy"] - ok["control_ci_low"], color="#868e96",
                                     thickness=1.2),
                        hovertemplate="%{y}<br>shuffled labels: %{x:.3f}<extra></extra>")
    fig.add_scatter(x=ok["chance"], y=ok["label"], mode="markers", name="chance (majority class)",
                    marker=dict(color="#c92a2a", size=16, symbol="line-ns-open", line=dict(width=2)),
                    hovertemplate="%{y}<br>chance %{x:.3f}<extra></extra>")
    fig.update_layout(height=max(300, 38 * len(ok) + 150), margin=dict(l=10, r=10, t=30, b=90),
                      xaxis=dict(title="accuracy on held-out samples (95% Wilson interval)", range=[0, 1.02]),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    return _fit(fig)


def confusion_heatmap(shares: pd.DataFrame, counts: np.ndarray, *, title: str, by: str):
    """Row-normalised confusion matrix (true class × predicted class) with the counts in each cell."""
    fig = go.Figure(go.Heatmap(
        z=shares.values, x=[txt(c) for c in shares.columns], y=[txt(c) for c in shares.index], colorscale="Blues", zmin=0, zmax=1,
        text=[[f"{v:.2f}<br>({n:,})" for v, n in zip(rv, rn)] for rv, rn in zip(shares.values, counts)],
        texttemplate="%{text}", colorbar=dict(title="share of row"),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=120 + 60 * len(shares), margin=dict(l=10, r=10, t=50, b=40),
                      xaxis_title=f"predicted {by}", yaxis_title=f"true {by}", yaxis=dict(autorange="reversed"))
    return _fit(fig)


def coefficient_bars(coefs: pd.DataFrame):
    """The largest logistic coefficients of each class (frame: class, feature, coefficient)."""
    fig = go.Figure()
    for c in coefs["class"].unique():
        part = coefs[coefs["class"] == c]
        fig.add_bar(y=[txt(f"{c}: {f}") for f in part["feature"]], x=part["coefficient"], orientation="h", name=txt(c))
    fig.update_layout(title="Features that mark each class (largest coefficients)", showlegend=False,
                      height=max(260, 22 * len(coefs) + 90), margin=dict(l=10, r=10, t=50, b=40),
                      xaxis_title="logistic coefficient (higher: more typical of the class)",
                      yaxis=dict(autorange="reversed"))
    return _fit(fig)


def concept_share_heatmap(by_class: dict, concepts: list[str]):
    """Share of each class's samples in which each concept is present, with 95% intervals on hover."""
    cls = list(by_class)
    z = np.array([[by_class[c]["shares"][con][0] for con in concepts] for c in cls])
    lo = np.array([[by_class[c]["shares"][con][1] for con in concepts] for c in cls])
    hi = np.array([[by_class[c]["shares"][con][2] for con in concepts] for c in cls])
    fig = go.Figure(go.Heatmap(
        z=z, x=concepts, y=[f"{txt(c)} (n={by_class[c]['n']:,})" for c in cls], colorscale="Viridis",
        customdata=np.dstack([lo, hi]), colorbar=dict(title="share"),
        hovertemplate="%{y}<br>%{x}: %{z:.3f} (95% CI %{customdata[0]:.3f}–%{customdata[1]:.3f})<extra></extra>"))
    fig.update_layout(title="Share of samples in which each concept is present", height=160 + 45 * len(cls),
                      margin=dict(l=10, r=10, t=50, b=110), xaxis=dict(tickangle=-45, title="concept"))
    return _fit(fig)


def concept_coef_heatmap(coefs: dict, concepts: list[str], classes: list[str]):
    """Logistic coefficients of the concept probe, diverging colours centred at 0."""
    cz = np.array([[dict(coefs[c]).get(con, 0.0) for con in concepts] for c in classes])
    lim = float(np.abs(cz).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=cz, x=[txt(c) for c in concepts], y=[txt(c) for c in classes], colorscale="RdBu_r", zmid=0, zmin=-lim, zmax=lim,
                               colorbar=dict(title="coef"), hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Logistic coefficients on concept presence (red: marks the source)",
                      height=140 + 45 * len(classes), margin=dict(l=10, r=10, t=50, b=110),
                      xaxis=dict(tickangle=-45, title="concept"))
    return _fit(fig)


# ---- Embedding map ------------------------------------------------------------------------------------------
MAP_COLOURS = ["#1c7ed6", "#f76707", "#2b8a3e", "#ae3ec9", "#e03131", "#0c8599", "#f59f00", "#5c940d", "#862e9c",
               "#495057", "#d6336c", "#364fc7"]
MAX_CATEGORIES = 12
KEPT, EXCLUDED = "kept", "excluded"


def map_density(x: np.ndarray, y: np.ndarray, bins: int = 120):
    """Every mapped row binned on a bins × bins grid."""
    counts, xe, ye = np.histogram2d(x, y, bins=bins)
    fig = go.Figure()
    fig.add_heatmap(x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2, z=np.where(counts > 0, counts, np.nan).T,
                    colorscale="Blues", colorbar=dict(title="samples"),
                    hovertemplate="x %{x:.2f}, y %{y:.2f}<br>%{z:,} samples<extra></extra>")
    return _fit(fig)


def map_points(points: pd.DataFrame, vals: np.ndarray, *, numeric: bool, colour: str, keep_colours: bool):
    """WebGL scatter of the displayed points (x, y, pos, caption, source), coloured by ``vals``: a colour scale for
    numbers, else one trace per category (the largest MAX_CATEGORIES, the rest 'other'). ``keep_colours``:
    the categories are kept/excluded of a filter."""
    fig = go.Figure()
    short = points["caption"].fillna("").str.slice(0, 90).map(txt)
    custom = np.column_stack([points["pos"].to_numpy(), short.to_numpy(), points["source"].fillna("").map(txt).to_numpy()])
    if numeric:
        fig.add_scattergl(x=points["x"], y=points["y"], mode="markers", customdata=custom,
                          marker=dict(size=4, color=vals, colorscale="Viridis", opacity=0.7,
                                      colorbar=dict(title=colour[:18])),
                          text=[f"{v:.4f}" if np.isfinite(v) else "no value" for v in vals],
                          hovertemplate="%{customdata[1]}<br>source %{customdata[2]}<br>" + colour
                                        + " %{text}<extra></extra>", name=colour)
        return fig
    s = pd.Series(vals, dtype=object).fillna("unknown").astype(str)
    top = s.value_counts().index[:MAX_CATEGORIES].tolist()
    s = s.where(s.isin(top), "other")
    # the largest class first, so the smaller one is drawn on top and stays visible (70% excluded hid the kept)
    order = (sorted([KEPT, EXCLUDED], key=lambda g: -int((s == g).sum())) if keep_colours else top) + \
        (["other"] if (s == "other").any() else [])
    colours = {KEPT: PALETTE["kept"], EXCLUDED: PALETTE["excluded"]} if keep_colours else {}
    for i, g in enumerate(order):
        m = (s == g).to_numpy()
        if not m.any():
            continue
        fig.add_scattergl(x=points["x"][m], y=points["y"][m], mode="markers", name=f"{txt(g)} ({int(m.sum()):,})",
                          customdata=custom[m],
                          marker=dict(size=4, opacity=0.6,
                                      color=colours.get(g, "#adb5bd" if g == "other" else MAP_COLOURS[i % len(MAP_COLOURS)])),
                          hovertemplate="%{customdata[1]}<br>source %{customdata[2]}"
                                        + ("" if colour == "source" else f"<br>{txt(colour)}: {txt(g)}") + "<extra></extra>")
    return _fit(fig)


def map_layout(fig, *, legend_title: str, density: bool):
    fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=40), xaxis_title="UMAP 1", yaxis_title="UMAP 2",
                      legend=dict(title=legend_title, itemsizing="constant"), dragmode="zoom" if density else "lasso")
    return _fit(fig)


# ---- the Filter preview's live charts, as Vega-Lite ------------------------------------------------------
# Streamlit keys a Plotly chart by a hash of its whole figure, so a figure that changes on every slider move is a
# new element each time: the browser unmounts the chart and draws it from scratch (Plotly.newPlot), ~100 ms a chart
# on this project's 2-core machine, after the script has already finished. A Vega-Lite chart without selections
# keeps its element; with the same spec and new data, the view swaps its dataset in place (bench/bench_charts.py
# measures both). So the charts a slider move redraws are Vega-Lite specs (plain dicts), built so that the spec
# stays the same for a (score, group) and everything that moves with the slider is in the data frame. Each builder
# returns (data, spec) for ``st.vega_lite_chart(data, spec)``. Vega-Lite draws text as text: no escaping needed.

_VL_FIT_X = {"type": "fit-x", "contains": "padding"}   # the width fits the column; "height" is the plot's


def _vl_y(title: str | None = None) -> dict:
    """Groups on the y axis, the highest rate at the top (``order`` is a rank by rate)."""
    return {"field": "label", "type": "nominal", "title": title, "sort": {"field": "order", "order": "descending"},
            "axis": {"labelLimit": 360}}


def _vl_x(title: str) -> dict:
    return {"type": "quantitative", "title": title, "scale": {"zero": False, "nice": True, "padding": 12}}


def _vl_tooltip(*fields: tuple[str, str, str | None]) -> list[dict]:
    out = []
    for field, title, fmt in fields:
        t = {"field": field, "title": title, "type": "quantitative" if fmt else "nominal"}
        if fmt:
            t["format"] = fmt
        out.append(t)
    return out


def _vl_vline(field: str, label: str, fmt: str, rule: dict, text: dict) -> list[dict]:
    """A vertical line across the plot at the one value of column ``field`` (none when it is missing), with the text
    '<label> <value>' beside it: the overall rate of a rate chart, the threshold of a histogram."""
    agg = [{"aggregate": [{"op": "max", "field": field, "as": field}]},
           {"filter": f"isValid(datum.{field}) && isFinite(datum.{field})"},
           {"calculate": f"'{label} ' + format(datum.{field}, '{fmt}')", "as": "note"}]
    x = {"field": field, "type": "quantitative"}
    return [{"transform": agg, "mark": {"type": "rule", **rule}, "encoding": {"x": x}},
            {"transform": agg, "mark": {"type": "text", **text}, "encoding": {"x": x, "text": {"field": "note"}}}]


def _arrow(columns: dict):
    """The chart's data as an Arrow table: Streamlit sends it as it is (a pandas frame would be converted on every
    move, ~3 ms a chart)."""
    import pyarrow as pa

    return pa.table({k: pa.array(v) for k, v in columns.items()})


def _rate_columns(t: pd.DataFrame) -> dict:
    n = t["n"].to_numpy(np.int64)
    return {"label": [f"{g} (n={k:,})" for g, k in zip(t["group"].tolist(), n.tolist())],
            "order": np.arange(len(t), dtype=np.int64), "rate": t["rate"].to_numpy(float),
            "ci_low": t["ci_low"].to_numpy(float), "ci_high": t["ci_high"].to_numpy(float), "n": n}


def rate_spec(table: pd.DataFrame, *, title: str, min_n: int = MIN_N, max_groups: int = 30,
              xaxis_title: str = "inclusion rate (kept / n), 95% Wilson interval", what: str = "kept",
              color: str | None = None):
    """rate_chart as Vega-Lite: inclusion rate per group with 95% Wilson intervals, greyed small groups (n below
    ``min_n``, already flagged in ``small``), the overall rate as a dashed line. Returns (Arrow table, spec)."""
    if len(table) > max_groups:
        title = f"{title} — the {max_groups} largest of {len(table):,} groups"
        table = table.nlargest(max_groups, "n")
    t = table.iloc[np.argsort(table["rate"].to_numpy(float), kind="stable")]
    cols = _rate_columns(t)
    cols["kept"] = t["kept"].to_numpy(np.int64)
    cols["colour"] = np.where(t["small"].to_numpy(bool), PALETTE["small"], color or PALETTE["kept"])
    cols["overall"] = np.full(len(t), float(table.attrs["overall"]))
    y = _vl_y()
    tip = _vl_tooltip(("label", "group", None), ("rate", "rate", ".3f"), ("ci_low", "95% CI low", ".3f"),
                      ("ci_high", "95% CI high", ".3f"), ("kept", what, ","), ("n", "n", ","))
    spec = {"title": title, "height": max(120, 30 * len(t)), "autosize": _VL_FIT_X, "layer": [
        {"mark": {"type": "rule", "color": "#495057", "strokeWidth": 1.5},
         "encoding": {"y": y, "x": {**_vl_x(xaxis_title), "field": "ci_low"}, "x2": {"field": "ci_high"}}},
        {"mark": {"type": "point", "filled": True, "size": 110, "opacity": 1},
         "encoding": {"y": y, "x": {**_vl_x(xaxis_title), "field": "rate"},
                      "color": {"field": "colour", "type": "nominal", "scale": None, "legend": None},
                      "tooltip": tip}},
        *_vl_vline("overall", "overall", ".3f", {"color": PALETTE["overall"], "strokeDash": [6, 4], "strokeWidth": 1.5},
                   {"color": PALETTE["overall"], "baseline": "bottom", "dy": -4, "y": 0})]}
    return _arrow(cols), spec


def histogram_spec(counts: np.ndarray, edges: np.ndarray, *, title: str, tau: float | None = None):
    """histogram_bins as Vega-Lite: the score's binned histogram with the threshold τ as a red line (column ``tau``;
    no line when it is missing). Returns (Arrow table, spec)."""
    tau = float(tau) if tau is not None and np.isfinite(tau) else np.nan
    cols = {"lo": np.asarray(edges[:-1], float), "hi": np.asarray(edges[1:], float),
            "samples": np.asarray(counts, dtype=np.int64), "tau": np.full(len(counts), tau)}
    x = {"field": "lo", "type": "quantitative", "title": "score", "scale": {"zero": False, "nice": False}}
    spec = {"title": title, "height": 170, "autosize": _VL_FIT_X, "layer": [
        {"mark": {"type": "rect", "color": "#495057", "stroke": "white", "strokeWidth": 0.3},
         "encoding": {"x": x, "x2": {"field": "hi"}, "y": {"field": "samples", "type": "quantitative",
                                                         "title": "samples"},
                      "tooltip": _vl_tooltip(("lo", "from", ".4f"), ("hi", "to", ".4f"), ("samples", "samples", ","))}},
        *_vl_vline("tau", "threshold", ".4f", {"color": PALETTE["excluded"], "strokeWidth": 2},
                   {"color": PALETTE["excluded"], "align": "left", "dx": 4, "baseline": "top", "y": 2})]}
    return _arrow(cols), spec


def bars_spec(labels, counts, *, title: str, xtitle: str, colour=None, colour_title: str | None = None):
    """Horizontal bars of counts, one per label in the order given (top to bottom), each with its count beside it;
    ``colour``: a category per bar, shown in a legend (the stage that rejected). The Overview's bars, as Vega-Lite:
    with its histograms, they kept the page from loading Plotly's code, ~2 s of a first open at 12.8M."""
    cols = {"label": [str(x) for x in labels], "n": np.asarray(counts, dtype=np.int64),
            "order": np.arange(len(labels), dtype=np.int64)}
    y = {"field": "label", "type": "nominal", "title": None, "sort": {"field": "order", "order": "ascending"},
         "axis": {"labelLimit": 360}}
    top = float(cols["n"].max()) if len(labels) else 1.0
    x = {"field": "n", "type": "quantitative", "title": xtitle,   # room on the right for the longest bar's count
         "scale": {"domain": [0, max(1.0, top * 1.15)], "nice": False}}
    bar = {"mark": {"type": "bar", "color": PALETTE["overall"]},
           "encoding": {"y": y, "x": x, "tooltip": _vl_tooltip(("label", "", None), ("n", xtitle, ","))}}
    if colour is not None:
        cols["colour"] = [str(c) for c in colour]
        bar["mark"] = {"type": "bar"}
        bar["encoding"]["color"] = {"field": "colour", "type": "nominal", "title": colour_title,
                                    "legend": {"orient": "bottom"}}
    text = {"mark": {"type": "text", "align": "left", "dx": 3, "color": "#495057"},
            "encoding": {"y": y, "x": x, "text": {"field": "n", "type": "quantitative", "format": ","}}}
    spec = {"title": title, "height": max(40, 28 * len(labels)), "autosize": _VL_FIT_X, "layer": [bar, text]}
    return _arrow(cols), spec


def compare_spec(table_a: pd.DataFrame, table_b: pd.DataFrame, *, title: str, label_a: str, label_b: str,
                 max_groups: int = 30):
    """compare_chart as Vega-Lite: inclusion rate per group under filters A and B (95% Wilson intervals), groups
    ordered by A's rate, A above B in each group's row. Returns (Arrow table, spec)."""
    a = table_a.nlargest(max_groups, "n") if len(table_a) > max_groups else table_a
    a = a.iloc[np.argsort(a["rate"].to_numpy(float), kind="stable")]
    pos = pd.Index(table_b["group"]).get_indexer(a["group"])
    if (pos < 0).any():
        raise ValueError("filter B's table lacks a group of filter A's")
    b = table_b.iloc[pos]
    ca, cb = _rate_columns(a), _rate_columns(b)
    cb["label"], cb["order"] = ca["label"], ca["order"]   # B's rows in A's order, labelled with A's n
    cols = {k: np.concatenate([np.asarray(ca[k]), np.asarray(cb[k])]) for k in ("label", "order", "rate", "ci_low", "ci_high")}
    cols["filter"] = np.repeat(np.array([label_a, label_b], dtype=object), len(a))
    y = _vl_y()
    colour = {"field": "filter", "type": "nominal", "title": None,
              "scale": {"range": [PALETTE["kept"], PALETTE["overall"]]},
              "legend": {"orient": "bottom", "direction": "vertical", "labelLimit": 600}}
    off = {"field": "filter", "type": "nominal", "scale": {"paddingInner": 0.3}}
    xt = "inclusion rate (kept / n), 95% Wilson interval"
    spec = {"title": title, "height": max(140, 40 * len(a)), "autosize": _VL_FIT_X, "layer": [
        {"mark": {"type": "rule", "strokeWidth": 1.3},
         "encoding": {"y": y, "yOffset": off, "x": {**_vl_x(xt), "field": "ci_low"}, "x2": {"field": "ci_high"},
                      "color": colour}},
        {"mark": {"type": "point", "filled": True, "size": 90, "opacity": 1},
         "encoding": {"y": y, "yOffset": off, "x": {**_vl_x(xt), "field": "rate"}, "color": colour,
                      "shape": {"field": "filter", "type": "nominal", "scale": {"range": ["circle", "diamond"]},
                                "legend": None},
                      "tooltip": _vl_tooltip(("label", "group", None), ("filter", "filter", None),
                                             ("rate", "rate", ".3f"), ("ci_low", "95% CI low", ".3f"),
                                             ("ci_high", "95% CI high", ".3f"))}}]}
    return _arrow(cols), spec
