"""Embedding map: a UMAP layout of one model's embeddings, coloured by source, group or the current filter."""
from collections.abc import Mapping

import numpy as np
import pandas as pd
import streamlit as st

from audit import charts, ui
from audit.analyses.embedmap.layout import in_box, in_lasso
from audit.decide.selection import RuleError

KEPT, EXCLUDED = charts.KEPT, charts.EXCLUDED

store, info = ui.page("Embedding map")

catalog = ui.map_catalog(store)
if catalog.empty:
    st.warning("No map in this store yet. Run `python -m audit map --store <store> --model <model>` "
               "(the demo maps datacomp_l14).")
    st.stop()
models = catalog["model"].tolist()
model = st.sidebar.selectbox("Model", models, index=models.index("datacomp_l14") if "datacomp_l14" in models else 0,
                             key="map_model")
meta = catalog[catalog["model"] == model].iloc[0]
coords = ui.map_coords(store, model)
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
    own = ui.clip_score_name(model)
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
        keep = ui.keep_mask(store, tuple(specs))
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
        return ui.score_column(store, colour)[pos], True
    lab = ui.attribute_labels(store, (colour,))[colour].to_numpy(dtype=object)
    return lab[pos], False


# ---- the chart ----------------------------------------------------------------------------------------
points = ui.map_points(store, model, max_points)
pos_shown = points["pos"].to_numpy()
vals, numeric = values_for(pos_shown)
x, y = coords["x"].to_numpy(), coords["y"].to_numpy()
density = view.startswith("density")
if density:
    fig = charts.map_density(x, y)
    st.caption(f"Density of all {n_all:,} mapped rows on a 120 × 120 grid (no colouring, no selection: switch to "
               f"points for those).")
else:
    fig = charts.map_points(points, vals, numeric=numeric, colour=colour, keep_colours=colour == FILTER)
    shown_note = (f"Showing a random sample of {len(points):,} of {n_all:,} rows (seed 0) so that the browser "
                  f"stays responsive; counts of a selected region below use every row." if len(points) < n_all
                  else f"Showing all {n_all:,} rows.")
    st.caption(shown_note + " Drag a box or lasso (toolbar, top right) to see the samples in a region.")
charts.map_layout(fig, legend_title=ui.group_label(store, colour) if colour in attrs else colour, density=density)
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
    v_all = ui.score_column(store, colour)[pos_all]
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
blur = ui.blur_uids(store)
ui.show_samples(store, ui.samples_at(store, tuple(int(x) for x in coords["pos"].to_numpy()[pick]), ui.GRID_COLUMNS),
                reveal=reveal, blur_uids=blur, columns=6)
