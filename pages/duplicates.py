"""Duplicates: how many samples SemDeDup removes at each ε, and which (imputed) groups lose most to it.
Numbers from the stored `score semdedup` columns through the same report table as "Who's in, who's out"."""
import re

import pandas as pd
import streamlit as st

from audit import charts, ui
from audit.decide.selection import Rule
from audit.export.csvsafe import to_csv
from audit.measure.report import table_from_frame
from audit.scores.semdedup import column_names

store, info = ui.page("Duplicates")
cat = info["scores"]
st.caption("SemDeDup (Abbas et al. 2023) clusters the image embeddings and, inside each cluster, removes a sample "
           "when another sample ranked before it (farther from the cluster centre) has cosine similarity above "
           "1 − ε. Near-duplicates are often re-uploads of the same picture; removing them is meant to cost nothing, "
           "but it need not remove every group alike. Demographic labels are **imputed / perceived** estimates.")

KEEP = re.compile(r"^semdedup_keep_(?P<model>.+)_eps(?P<eps>[0-9_]+)$")
found = [(m["model"], float(m["eps"].replace("_", ".", 1)), n) for n in cat["name"] for m in [KEEP.match(n)] if m]
if not found:
    st.info("No SemDeDup result in this store yet. Run `python -m audit score semdedup --store … --model MODEL "
            "--eps 0.01,0.05` (k-means on the stored image embeddings; no images needed).")
    st.stop()
models = sorted({m for m, _, _ in found})
model = st.selectbox("Embedding model", models, key="dd_model") if len(models) > 1 else models[0]
runs = sorted((e, n) for m, e, n in found if m == model)
names = column_names(model, [e for e, _ in runs])          # the score's own column names, keep/group per ε
group_of = {k: g for k, g in zip(names["keep"], names["group"]) if g in set(cat["name"])}

# ---- per ε: how many are removed --------------------------------------------------------------------------
frame = ui.fairness_frame(store, tuple(names["keep"]) + tuple(group_of.values()), tuple())
rows = []
for eps, name in runs:
    k = frame[name]
    g = frame[group_of[name]] if name in group_of else None
    scored = int(k.notna().sum())
    removed = int((k == 0).sum())
    n_groups = int(g[g > 0].nunique()) if g is not None else None
    in_groups = int((g > 0).sum()) if g is not None else None
    rows.append({"ε": eps, "cosine above": 1 - eps, "scored": scored, "removed": removed,
                 "share": removed / scored if scored else float("nan"), "groups": n_groups,
                 "in groups": in_groups})
summary = pd.DataFrame(rows)
c1, c2 = st.columns([1.6, 1])
c1.dataframe(summary, hide_index=True, width="stretch",
             column_config={"ε": st.column_config.NumberColumn(format="%g", width="small"),
                            "cosine above": st.column_config.NumberColumn(format="%.4f", width="small"),
                            "share": st.column_config.NumberColumn(format="%.4f", width="small",
                                                                   help="removed / scored"),
                            "groups": st.column_config.NumberColumn(help="duplicate groups (connected components)"),
                            "in groups": st.column_config.NumberColumn(help="samples in a duplicate group")})
c2.plotly_chart(charts.dedup_curve(summary), width="stretch")
desc = cat.set_index("name")["description"].get(names["cluster"][0], "SemDeDup")
st.caption(f"`{model}`: {ui.md(str(desc))}. A sample without a usable vector is not scored.")

# ---- who loses most ---------------------------------------------------------------------------------------
st.subheader("Which groups lose most to deduplication")
groups = store.group_columns()
if not groups:
    st.info("No group labels yet: run `python -m audit annotate caption --store …` (or another annotator).")
    st.stop()
g1, g2, g3 = st.columns([1, 2, 1])
eps_pick = g1.selectbox("ε", [e for e, _ in runs], index=len(runs) - 1, format_func=lambda e: f"{e:g}", key="dd_eps")
by = g2.selectbox("Group by", groups, index=groups.index("caption_gender") if "caption_gender" in groups else 0,
                  key="dd_by")
min_n = int(g3.number_input("Minimum n", 1, 100_000, ui.MIN_N, key="dd_min_n"))
keep_name = dict(runs)[eps_pick]
rule = Rule.parse(f"{keep_name}>=1")
rep = table_from_frame(ui.fairness_frame(store, (keep_name,), (by,)), [rule], [by], min_n=min_n)
t = rep.table
removal = t.copy()
removal["kept"] = t["n"] - t["kept"]             # the chart counts removed samples
removal["rate"], removal["ci_low"], removal["ci_high"] = 1 - t["rate"], 1 - t["ci_high"], 1 - t["ci_low"]
removal.attrs["overall"] = 1 - t.attrs["overall"]
st.plotly_chart(charts.rate_chart(removal, title=f"Share removed as near-duplicates at ε={eps_pick:g}, by {by}",
                                  min_n=min_n, xaxis_title="removal rate (removed / n), 95% Wilson interval",
                                  what="removed", color=charts.PALETTE["excluded"]), width="stretch")
worst = removal[~removal["small"] & removal["labelled"]].sort_values("rate", ascending=False)
if len(worst):
    top = worst.iloc[0]
    st.markdown(f"Most affected: **{ui.md(top['group'])}** loses {top['rate']:.2%} "
                f"(95% CI {top['ci_low']:.2%}–{top['ci_high']:.2%}) against {removal.attrs['overall']:.2%} overall. "
                + (f"{int(t['amplified'].sum())} group(s) meet the exclusion-amplification definition "
                   "(under-represented and removed more, interval clear of the overall rate)."
                   if t["amplified"].any() else "No group meets the exclusion-amplification definition."))
view = pd.DataFrame({"group": t["group"], "n": t["n"], "removed": t["n"] - t["kept"], "removal rate": removal["rate"],
                     "95% CI": [f"{lo:.4f}–{hi:.4f}" for lo, hi in zip(removal["ci_low"], removal["ci_high"])],
                     "pool share": t["pool_share"], "kept share": t["kept_share"], "small": t["small"],
                     "amplified": t["amplified"]})
st.dataframe(view, hide_index=True, width="stretch", key="dd_table",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("removal rate", "pool share", "kept share")})
st.download_button("Download this table (CSV)", to_csv(t).encode(), file_name=f"semdedup_by_{by}.csv",
                   mime="text/csv")
st.code(f"python -m audit report --store {ui.store_path()} --keep '{rule}' --by {by} --out semdedup_{by}.csv",
        language="bash", wrap_lines=True)

# ---- examples ---------------------------------------------------------------------------------------------
st.subheader("Largest duplicate groups")
if keep_name in group_of:
    ex = ui.duplicate_examples(store, group_of[keep_name], keep_name, limit_groups=5)
    if ex.empty:
        st.info(f"No duplicate groups at ε={eps_pick:g}.")
    for gid, part in ex.groupby("group", sort=False):
        st.markdown(f"**Group {int(gid)}** — {len(part)} samples, {int((part['kept'] == 1).sum())} kept")
        st.dataframe(part[["uid", "kept", "caption", "url", "source"]], hide_index=True, width="stretch")
