"""Filter preview: move a threshold and see, live, who is kept and who is excluded, by group."""
import numpy as np
import streamlit as st

from audit import ui
from audit.selection import Rule

st.title("Filter preview")
store = ui.get_store()
if store is None:
    st.stop()
ui.freshness_notice()
k = ui.key(store)
info = ui.overview(store, k)
ui.store_caption(store, info)
cat = info["scores"]
if cat.empty:
    st.warning("This store has no scores yet. Run `python -m audit score clip --store … --model …` first.")
    st.stop()

names = cat["name"].tolist()
default = names.index("clip_l14_similarity_score") if "clip_l14_similarity_score" in names else 0
c1, c2, c3 = st.columns([2, 1.3, 2])
score = c1.selectbox("Score", names, index=default, format_func=lambda n: ui.score_label(cat, n), key="score")
mode = c2.radio("Rule", ["top fraction", "threshold"], horizontal=True, key="mode",
                help="top fraction: DataComp --fraction (the (int(N·p)+1)-th largest score of the whole pool "
                     "is the threshold; ties are kept). threshold: keep score ≥ t.")
groups = store.group_columns()
gdefault = groups.index("caption_gender") if "caption_gender" in groups else 0
group = c3.selectbox("Inclusion rate by", groups, index=gdefault, format_func=lambda g: ui.group_label(store, g),
                     key="group")

data = ui.preview_data(store, k, score, group)
if len(data.sorted_desc) == 0:
    st.warning(f"No sample has a value for {score}.")
    st.stop()
if mode == "top fraction":
    value = st.slider("Keep the top fraction of the pool", 0.01, 1.0, 0.30, 0.01, key="top_fraction")
    rule = Rule(score, "top", float(value))
else:
    lo, hi = float(data.sorted_desc[-1]), float(data.sorted_desc[0])
    start = float(np.quantile(data.sorted_desc, 0.7, method="lower"))
    value = st.slider("Keep samples with score ≥", lo, hi, start, (hi - lo) / 400 or 0.001, format="%.4f",
                      key="threshold")
    rule = Rule(score, ">=", float(value))
st.session_state["keep_specs"] = [str(rule)]

min_n = st.sidebar.number_input("Minimum n per group (smaller groups are greyed)", 1, 10_000, ui.MIN_N)
table, tau, keep = data.table("top" if rule.op == "top" else "threshold", rule.value, min_n=int(min_n))
kept = int(keep.sum())
m = st.columns(4)
m[0].metric("Kept", f"{kept:,}", help="samples with score ≥ threshold")
m[1].metric("Excluded", f"{data.n - kept:,}")
m[2].metric("Kept share", f"{kept / data.n:.1%}")
m[3].metric("Threshold τ", f"{tau:.4f}")
if data.n_missing:
    st.caption(f"{data.n_missing:,} samples have no {score} value (no embedding for that model): they are "
               f"excluded by this rule and counted in their groups.")
if bool(cat.loc[cat["name"] == score, "random_weights"].iloc[0]):
    st.warning(f"{score} comes from a model with RANDOM weights: this preview exercises the pipeline only.")

left, right = st.columns([3, 2])
with left:
    glabel = ui.group_label(store, group)
    fig = ui.rate_chart(table, title=f"Inclusion rate by {glabel}", min_n=int(min_n))
    st.plotly_chart(fig, width="stretch")
    if group in store.attributes():
        st.caption("Groups are **imputed** (perceived) labels, not identities; `unknown` means no evidence, "
                   "`multiple` means conflicting evidence. Grey: n below the minimum (shown, not hidden).")
with right:
    st.plotly_chart(ui.histogram(data.values, title=f"{score}", tau=tau), width="stretch")
    st.markdown(f"**Why excluded** — `{rule.reason}`: {data.n - kept:,} samples")

show = table[["group", "n", "kept", "rate", "ci_low", "ci_high", "difference", "ratio", "pool_share", "kept_share",
              "small"]].sort_values("rate")
st.dataframe(show, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("rate", "ci_low", "ci_high", "difference", "ratio", "pool_share", "kept_share")})

st.subheader("Samples of a group")
gsel = st.selectbox("Group", table.sort_values("n", ascending=False)["group"].tolist(), key="sample_group")
reveal = st.toggle("Reveal NSFW thumbnails", value=False, help="Thumbnails flagged NSFW are blurred until revealed.")
code = int(np.flatnonzero(data.labels == gsel)[0])
in_group = data.codes == code
rng = np.random.default_rng(0)
blur = set()
if "nsfw" in store.attributes():
    blur = set(store.df("SELECT uid FROM annotations WHERE attribute = 'nsfw' AND label = 'nsfw'")["uid"])
for title, mask in (("Kept", in_group & keep), ("Excluded", in_group & ~keep)):
    idx = np.flatnonzero(mask)
    pick = rng.choice(idx, size=min(8, len(idx)), replace=False) if len(idx) else idx
    st.markdown(f"**{title}** ({len(idx):,} in {gsel}; showing {len(pick)})")
    frame = ui.samples(store, k, tuple(data.uids[pick]))
    ui.show_samples(store, frame, reveal=reveal, blur_uids=blur)
