"""Overview: pool size, sources, rejects by reason, score histograms, models and runs."""
import streamlit as st

from audit import charts, ui

store, info = ui.page("Overview")
c = info["counts"]

cols = st.columns(5)
cols[0].metric("Samples", f"{c['samples']:,}")
cols[1].metric("Rejected inputs", f"{c['rejects']:,}")
cols[2].metric("Scores", c["scores"])
cols[3].metric("Embedding models", c["models"])
cols[4].metric("Imputed attributes", c["attributes"])

left, right = st.columns(2)
with left:
    src = info["sources"]
    st.vega_lite_chart(*charts.bars_spec([f"{s} (simulated)" if sim else str(s) for s, sim in
                                          zip(src["source"], src["simulated"])], src["n"],
                                         title="Samples by source", xtitle="samples"), width="stretch")
with right:
    rej = info["rejects"]
    if rej.empty:
        st.success("No rejected inputs.")
    else:
        st.vega_lite_chart(*charts.bars_spec(rej["reason"], rej["n"], colour=rej["stage"], colour_title="stage",
                                             title="Rejected inputs by reason", xtitle="rows"), width="stretch")
        st.caption("Every input row is either a sample or a reject: nothing is dropped silently.")

st.subheader("Score distributions")
cat = info["scores"]
if cat.empty:
    st.caption("No scores yet: run `python -m audit score clip --store … --model …`.")
else:
    names = cat["name"].tolist()
    continuous = [n for n in names if n.startswith("clip_")] + [n for n in names if not n.startswith(("clip_", "basic"))]
    chosen = st.multiselect("Scores", names, default=continuous[:3] or names[:3],
                            format_func=lambda n: ui.score_label(cat, n))
    hcols = st.columns(max(1, min(3, len(chosen))))
    for i, name in enumerate(chosen):
        counts, edges = ui.score_histogram(store, name)
        with hcols[i % len(hcols)]:
            st.vega_lite_chart(*charts.histogram_spec(counts, edges, title=name), width="stretch")
            st.caption(f"{ui.score_label(cat, name)} · {int(counts.sum()):,} values")

with st.expander("Embedding models"):
    models = info["models"]
    if models.empty:
        st.caption("none")
    else:
        st.dataframe(ui.blank_missing(models), hide_index=True, width="stretch")
        if models["random_weights"].any():
            st.warning("Models marked random_weights have no pretrained weights: their embeddings and scores "
                       "carry no meaning and are shown only to exercise the pipeline.")
with st.expander("Runs (provenance of every stage)"):
    st.dataframe(ui.blank_missing(info["runs"]), hide_index=True, width="stretch")
