"""Embedding map: a UMAP layout of one model's embeddings, coloured by source, group or the current filter."""
from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from audit import ui
from audit.embedmap import in_box, in_lasso
from audit.selection import RuleError
from audit.store import slug

MAX_CATEGORIES = 12
PALETTE = ["#1c7ed6", "#f76707", "#2b8a3e", "#ae3ec9", "#e03131", "#0c8599", "#f59f00", "#5c940d", "#862e9c",
           "#495057", "#d6336c", "#364fc7"]
KEPT, EXCLUDED = "kept", "excluded"

store, k, info = ui.page("Embedding map")

catalog = ui.map_catalog(store, k)
if catalog.empty:
    st.warning("No map in this store yet. Run `python -m audit map --store <store> --model <model>` "
               "(the demo maps datacomp_l14).")
    st.stop()
models = catalog["model"].tolist()
model = st.sidebar.selectbox("Model", models, index=models.index("datacomp_l14") if "datacomp_l14" in models else 0,
                             key="map_model")
meta = catalog[catalog["model"] == model].iloc[0]
coords = ui.map_coords(store, k, model)
n_all = len(coords)
st.caption(f"UMAP of **{model}** {'image' if meta['column_name'] == 'img' else 'text'} embeddings: fitted on "
           f"{int(meta['fit_rows']):,} randomly drawn rows, the other {n_all - int(meta['fit_rows']):,} placed with "
           f"the fitted map ({meta['knn']} neighbour search). Distances between far-apart clusters mean little in "
           f"UMAP; neighbourhoods do." + (f" {int(meta['skipped']):,} rows with broken vectors are not placed."
                                           if int(meta["skipped"]) else ""))
if bool(meta["random_weights"]):
    st.warning(f"{model} has RANDOM weights: this layout carries no meaning.")

# ---- colour column -------------------------------------------------------------------------------------
cat = info["scores"]
score_names = cat["name"].tolist()
attrs = store.attributes()
FILTER = "kept / excluded (current filter)"
options = ["source", FILTER] + [c for c in store.group_columns() if c != "source"] + score_names
colour = st.sidebar.selectbox("Colour by", options, key="map_colour",
                              format_func=lambda c: ui.group_label(store, c) if c in attrs else
                              (f"score: {ui.score_label(cat, c)}" if c in score_names else c))
view = st.sidebar.radio("View", ["points (a sample)", "density (every row)"], key="map_view",
                        help="Points: a random sample, coloured, with captions on hover and region selection. "
                             "Density: every row binned on a grid.")
max_points = int(st.sidebar.select_slider("Points shown", [2_000, 5_000, 10_000, 20_000, 50_000, 100_000],
                                          value=20_000, key="map_points"))

# the current filter: rules from the Filter preview page, or a default
specs = list(st.session_state.get("keep_specs") or [])
default_rule = None
if not specs and score_names:
    own = f"clip_{slug(model)}"
    default_rule = f"{own if own in score_names else score_names[0]}:top=0.3"
keep = None
if colour == FILTER:
    if not score_names:
        st.warning("This store has no scores, so there is no filter to show.")
        st.stop()
    text = st.sidebar.text_area("Keep rules (one per line; from Filter preview when set there)",
                                "\n".join(specs) if specs else default_rule, key="map_rules", height=90)
    specs = [s.strip() for s in text.splitlines() if s.strip()]
    try:
        keep = ui.keep_mask(store, k, tuple(specs))
    except RuleError as exc:
        st.error(str(exc))
        st.stop()
    st.caption("Filter: " + (" ∩ ".join(f"`{s}`" for s in specs) if specs else "none (everything kept)")
               + ("" if st.session_state.get("keep_specs") else " — a default rule (top 30% of this model's CLIP "
                                                              "score when stored); set your own on **Filter "
                                                              "preview** or in the sidebar."))


def values_for(pos: np.ndarray):
    """(labels or numbers, is_numeric) of the colour column for sample positions ``pos``."""
    if colour == FILTER:
        return np.where(keep[pos], KEPT, EXCLUDED), False
    if colour in score_names:
        return ui.score_column(store, k, colour)[pos], True
    lab = ui.attribute_labels(store, k, (colour,))[colour].to_numpy(dtype=object)
    return lab[pos], False


# ---- the chart ----------------------------------------------------------------------------------------
points = ui.map_points(store, k, model, max_points)
pos_shown = points["pos"].to_numpy()
vals, numeric = values_for(pos_shown)
x, y = coords["x"].to_numpy(), coords["y"].to_numpy()
fig = go.Figure()
if view.startswith("density"):
    counts, xe, ye = np.histogram2d(x, y, bins=120)
    fig.add_heatmap(x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2, z=np.where(counts > 0, counts, np.nan).T,
                    colorscale="Blues", colorbar=dict(title="samples"),
                    hovertemplate="x %{x:.2f}, y %{y:.2f}<br>%{z:,} samples<extra></extra>")
    st.caption(f"Density of all {n_all:,} mapped rows on a 120 × 120 grid (no colouring, no selection: switch to "
               f"points for those).")
else:
    short = points["caption"].fillna("").str.slice(0, 90)
    custom = np.column_stack([points["pos"].to_numpy(), short.to_numpy(), points["source"].fillna("").to_numpy()])
    if numeric:
        fig.add_scattergl(x=points["x"], y=points["y"], mode="markers", customdata=custom,
                          marker=dict(size=4, color=vals, colorscale="Viridis", opacity=0.7,
                                      colorbar=dict(title=colour[:18])),
                          text=[f"{v:.4f}" if np.isfinite(v) else "no value" for v in vals],
                          hovertemplate="%{customdata[1]}<br>source %{customdata[2]}<br>" + colour
                                        + " %{text}<extra></extra>", name=colour)
    else:
        s = pd.Series(vals, dtype=object).fillna("unknown").astype(str)
        top = s.value_counts().index[:MAX_CATEGORIES].tolist()
        s = s.where(s.isin(top), "other")
        order = ([KEPT, EXCLUDED] if colour == FILTER else top) + (["other"] if (s == "other").any() else [])
        colours = {KEPT: "#2b8a3e", EXCLUDED: "#c92a2a"} if colour == FILTER else {}
        for i, g in enumerate(order):
            m = (s == g).to_numpy()
            if not m.any():
                continue
            fig.add_scattergl(x=points["x"][m], y=points["y"][m], mode="markers", name=f"{g} ({int(m.sum()):,})",
                              customdata=custom[m],
                              marker=dict(size=4, opacity=0.6,
                                          color=colours.get(g, "#adb5bd" if g == "other" else PALETTE[i % len(PALETTE)])),
                              hovertemplate="%{customdata[1]}<br>source %{customdata[2]}"
                                            + ("" if colour == "source" else f"<br>{colour}: {g}") + "<extra></extra>")
    shown_note = (f"Showing a random sample of {len(points):,} of {n_all:,} rows (seed 0) so that the browser "
                  f"stays responsive; counts of a selected region below use every row." if len(points) < n_all
                  else f"Showing all {n_all:,} rows.")
    st.caption(shown_note + " Drag a box or lasso (toolbar, top right) to see the samples in a region.")
fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=40), xaxis_title="UMAP 1", yaxis_title="UMAP 2",
                  legend=dict(title=ui.group_label(store, colour) if colour in attrs else colour, itemsizing="constant"),
                  dragmode="lasso" if not view.startswith("density") else "zoom")
event = st.plotly_chart(fig, width="stretch", key=f"map_chart_{model}_{view[:3]}",
                        on_select="rerun" if not view.startswith("density") else "ignore",
                        selection_mode=("box", "lasso"))

# ---- the selected region --------------------------------------------------------------------------------
sel = event.get("selection") if isinstance(event, Mapping) else None   # a PlotlyState when selections are on
region = None
if isinstance(sel, Mapping):
    if sel.get("box"):
        b = sel["box"][0]
        region = in_box(x, y, (b["x"][0], b["x"][-1]), (b["y"][0], b["y"][-1]))
    elif sel.get("lasso"):
        lasso = sel["lasso"][0]
        region = in_lasso(x, y, lasso["x"], lasso["y"])
st.subheader("Selected region")
if region is None:
    st.caption("Nothing selected yet.")
    st.stop()
n_in = int(region.sum())
st.markdown(f"**{n_in:,}** of {n_all:,} mapped rows ({n_in / max(n_all, 1):.1%}) fall in the selected region.")
if n_in == 0:
    st.stop()
pos_all = coords["pos"].to_numpy()
if colour in score_names:
    v_all = ui.score_column(store, k, colour)[pos_all]
    st.markdown(f"Mean {colour}: **{np.nanmean(v_all[region]):.4f}** in the region vs {np.nanmean(v_all):.4f} on "
                f"the whole map.")
else:
    v_all, _ = values_for(pos_all)
    s_all = pd.Series(v_all, dtype=object).fillna("unknown").astype(str)
    comp = pd.DataFrame({"in region": s_all[region].value_counts(), "whole map": s_all.value_counts()}).fillna(0)
    comp["share in region"] = comp["in region"] / n_in
    comp["share of map"] = comp["whole map"] / n_all
    comp = comp.sort_values("in region", ascending=False).head(15).reset_index(names=colour)
    st.dataframe(comp, hide_index=True, width="stretch",
                 column_config={"share in region": st.column_config.NumberColumn(format="%.3f"),
                                "share of map": st.column_config.NumberColumn(format="%.3f"),
                                "in region": st.column_config.NumberColumn(format="%d"),
                                "whole map": st.column_config.NumberColumn(format="%d")})
rng = np.random.default_rng(0)
idx = np.flatnonzero(region)
pick = rng.choice(idx, size=min(12, len(idx)), replace=False)
st.markdown(f"**Samples in the region** (random {len(pick)} of {n_in:,})")
reveal = st.toggle("Reveal NSFW thumbnails", value=False, key="map_reveal")
blur = set()
if "nsfw" in attrs:
    blur = set(store.df("SELECT uid FROM annotations WHERE attribute = 'nsfw' AND label = 'nsfw'")["uid"])
ui.show_samples(store, ui.samples(store, k, tuple(coords["uid"].to_numpy()[pick])), reveal=reveal, blur_uids=blur,
                columns=6)
