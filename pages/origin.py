"""Dataset origin: can a linear probe tell the sources apart, and from which kind of information?"""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from audit import ui
from audit.origin import NOTE, confusion_frame, families_table

store, k, info = ui.page("Dataset origin")

st.info("**Linear probes on frozen features.** " + NOTE + " A high accuracy says the sources differ in that kind "
        "of information; chance-level accuracy says a linear model cannot tell them apart from it.")
runs = ui.origin_runs(store, k)
if runs.empty:
    st.warning("No origin probe in this store yet. Run `python -m audit origin --store <store> [--by source]` "
               "(the demo runs it by source).")
    st.stop()

labels = {int(r.run_id): f"by {r.by_column} · run {int(r.run_id)} · {r.created:%Y-%m-%d %H:%M}" for r in runs.itertuples()}
run_id = st.selectbox("Probe run", list(labels), format_func=labels.get, key="origin_run")
result = ui.origin_result(store, k, run_id)
if not result:
    st.error("This run's result could not be read.")
    st.stop()
by = result.get("by", "source")
if result.get("status") != "ok":
    st.warning(result.get("message") or "The probe did not run.")
    st.stop()

counts = result.get("class_counts", {})
classes = result.get("classes", [])
st.caption(f"Classes ({by}): " + ", ".join(f"**{c}** ({counts.get(c, 0):,})" for c in classes)
           + f" · seed {result.get('seed')} · computed {result.get('created')}")
for note in result.get("class_notes", []):
    st.caption(f"ℹ️ {note}")

table = families_table(result)
ok = table[table["status"] == "ok"].copy()
skipped = table[table["status"] != "ok"]
KIND_ORDER = {"embedding": 0, "concepts": 1, "caption": 2, "image transform": 3}


def _label(r) -> str:
    tags = [t for t, on in (("random weights", r.random_weights), ("simulated", r.simulated)) if on]
    return r.key + (f"  [{', '.join(tags)}]" if tags else "")


st.subheader("Which information gives the source away?")
if ok.empty:
    st.warning("No feature family could be probed: " + "; ".join(sorted(set(skipped["message"])))[:600])
    st.stop()
ok["label"] = [_label(r) for r in ok.itertuples()]
ok["order"] = ok["kind"].map(KIND_ORDER).fillna(9)
ok = ok.sort_values(["order", "accuracy"], ascending=[False, True]).reset_index(drop=True)

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
                    error_x=dict(type="data", symmetric=False, array=ok["control_ci_high"] - ok["control_accuracy"],
                                 arrayminus=ok["control_accuracy"] - ok["control_ci_low"], color="#868e96",
                                 thickness=1.2),
                    hovertemplate="%{y}<br>shuffled labels: %{x:.3f}<extra></extra>")
fig.add_scatter(x=ok["chance"], y=ok["label"], mode="markers", name="chance (majority class)",
                marker=dict(color="#c92a2a", size=16, symbol="line-ns-open", line=dict(width=2)),
                hovertemplate="%{y}<br>chance %{x:.3f}<extra></extra>")
fig.update_layout(height=max(300, 38 * len(ok) + 150), margin=dict(l=10, r=10, t=30, b=90),
                  xaxis=dict(title="accuracy on held-out samples (95% Wilson interval)", range=[0, 1.02]),
                  legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
st.plotly_chart(fig, width="stretch")

bad = ok[ok["control_at_chance"] == False]  # noqa: E712 (NaN when no control ran)
if len(bad):
    st.error("The shuffled-label control sits **above chance** (family-wise 5% level) for: " + ", ".join(bad["key"])
             + ". Something other than the features separates the classes (duplicates across splits, leakage): "
               "do not trust these accuracies.")
elif ok["control_at_chance"].notna().any():
    m = int(ok["control_at_chance"].notna().sum())
    st.success(f"Every shuffled-label control sits at chance (family-wise 5% level, Bonferroni over {m} controls): "
               "the probe procedure itself does not invent differences.")
if ok["random_weights"].any():
    st.warning("Families marked *random weights* use embeddings from a model with RANDOM weights: they exercise "
               "the pipeline only.")
if ok["simulated"].any():
    st.caption("Families marked *simulated* use only simulated samples (the demo pool, whose sources carry injected "
               "image-style offsets): they show how the probe works, not a finding about real datasets.")

show = ok[["key", "accuracy", "ci_low", "ci_high", "chance", "macro_f1", "n_train", "n_test", "split",
           "control_accuracy", "control_ci_low", "control_ci_high", "control_at_chance"]].iloc[::-1]
st.dataframe(show, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("accuracy", "ci_low", "ci_high", "chance", "macro_f1", "control_accuracy",
                             "control_ci_low", "control_ci_high")})
if len(skipped):
    with st.expander(f"{len(skipped)} families not probed, and why"):
        st.dataframe(skipped[["key", "message"]], hide_index=True, width="stretch")

# ---- one family in detail ----------------------------------------------------------------------------
st.subheader("One family in detail")
keys = ok["key"].iloc[::-1].tolist()
fam = st.selectbox("Feature family", keys, key="origin_family")
rec = result["families"][fam]
c1, c2 = st.columns([1, 1])
with c1:
    cm = confusion_frame(rec)
    raw = np.asarray(rec["confusion"])
    hm = go.Figure(go.Heatmap(z=cm.values, x=list(cm.columns), y=list(cm.index), colorscale="Blues", zmin=0, zmax=1,
                              text=[[f"{v:.2f}<br>({n:,})" for v, n in zip(rv, rn)] for rv, rn in zip(cm.values, raw)],
                              texttemplate="%{text}", colorbar=dict(title="share of row"),
                              hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.3f}<extra></extra>"))
    hm.update_layout(title=f"Confusion matrix: {fam}", height=120 + 60 * len(cm), margin=dict(l=10, r=10, t=50, b=40),
                     xaxis_title=f"predicted {by}", yaxis_title=f"true {by}", yaxis=dict(autorange="reversed"))
    st.plotly_chart(hm, width="stretch")
    st.caption(f"Rows: true class; cells: share of that class's held-out samples (count). {rec['split']}; "
               f"macro-F1 {rec['macro_f1']:.3f}; {rec['n_features']:,} features"
               + ("" if rec.get("converged", True) else "; the solver hit its iteration limit") + ".")
with c2:
    coefs = rec.get("coefficients")
    if coefs:
        rows = [{"class": c, "feature": f, "coefficient": v} for c, items in coefs.items() for f, v in items[:8]]
        cf = pd.DataFrame(rows)
        bar = go.Figure()
        for c in cf["class"].unique():
            part = cf[cf["class"] == c]
            bar.add_bar(y=[f"{c}: {f}" for f in part["feature"]], x=part["coefficient"], orientation="h", name=c)
        bar.update_layout(title="Features that mark each class (largest coefficients)", showlegend=False,
                          height=max(260, 22 * len(cf) + 90), margin=dict(l=10, r=10, t=50, b=40),
                          xaxis_title="logistic coefficient (higher: more typical of the class)",
                          yaxis=dict(autorange="reversed"))
        st.plotly_chart(bar, width="stretch")
    else:
        st.caption("Embedding dimensions have no names, so this family has no readable coefficients; see the "
                   "concept view below for a readable version.")

st.markdown("**Most and least typical samples of each class** (out-of-sample probability of the true class)")
reveal = st.toggle("Reveal NSFW thumbnails", value=False, key="origin_reveal")
blur = set()
if "nsfw" in store.attributes():
    blur = set(store.df("SELECT uid FROM annotations WHERE attribute = 'nsfw' AND label = 'nsfw'")["uid"])
typical = rec.get("typical", {})
tabs = st.tabs(list(typical)) if typical else []
for tab, (cls, parts) in zip(tabs, typical.items()):
    with tab:
        for title, rows in (("Most typical", parts["most"]), ("Least typical", parts["least"])):
            st.markdown(f"*{title}*")
            frame = ui.samples(store, k, tuple(r[0] for r in rows))
            info_by = {r[0]: (r[1], r[2]) for r in rows}
            frame = frame.set_index("uid").loc[[r[0] for r in rows if r[0] in set(frame["uid"])]].reset_index()
            frame["caption"] = [f"p={info_by[u][0]:.2f} → {info_by[u][1]} · {c}" for u, c in
                                zip(frame["uid"], frame["caption"])]
            ui.show_samples(store, frame, reveal=reveal, blur_uids=blur, columns=6)

# ---- concepts ------------------------------------------------------------------------------------------
views = result.get("concepts", {})
st.subheader("Concepts: what is in each source's images")
if not views:
    st.caption("No concept view (no model with a text encoder and at least two classes).")
else:
    vkeys = list(views)
    model = st.selectbox("Model", vkeys, index=vkeys.index("datacomp_l14") if "datacomp_l14" in vkeys else 0,
                         key="origin_concept_model")
    v = views[model]
    crec = result["families"].get(f"{model} · concepts", {})
    st.caption(f"CLIP zero-shot: prompt “{v['prompt']}”, softmax at scale {v['scale']:g} over {len(v['concepts'])} "
               f"concepts; a concept is *present* when its probability is ≥ {v['min_p']:g} (or it is the top one). "
               f"Text encoder: **{v['encoder']}**."
               + (" RANDOM-weight model: not meaningful." if v.get("random_weights") else "")
               + (" Simulated samples: the simulator draws concepts independently of the source, so equal "
                  "shares are the expected answer here." if v.get("simulated") else ""))
    by_class = v["by_class"]
    cls = list(by_class)
    concepts = v["concepts"]
    z = np.array([[by_class[c]["shares"][con][0] for con in concepts] for c in cls])
    lo = np.array([[by_class[c]["shares"][con][1] for con in concepts] for c in cls])
    hi = np.array([[by_class[c]["shares"][con][2] for con in concepts] for c in cls])
    custom = np.dstack([lo, hi])
    heat = go.Figure(go.Heatmap(z=z, x=concepts, y=[f"{c} (n={by_class[c]['n']:,})" for c in cls], colorscale="Viridis",
                                customdata=custom, colorbar=dict(title="share"),
                                hovertemplate="%{y}<br>%{x}: %{z:.3f} (95% CI %{customdata[0]:.3f}–%{customdata[1]:.3f})"
                                              "<extra></extra>"))
    heat.update_layout(title="Share of samples in which each concept is present", height=160 + 45 * len(cls),
                       margin=dict(l=10, r=10, t=50, b=110), xaxis=dict(tickangle=-45, title="concept"))
    st.plotly_chart(heat, width="stretch")
    st.caption("Mean concepts present per sample: " + ", ".join(f"{c} {by_class[c]['mean_present']:.2f}" for c in cls))
    coefs = v.get("coefficients") or {}
    if coefs:
        cz = np.array([[dict(coefs[c]).get(con, 0.0) for con in concepts] for c in cls])
        lim = float(np.abs(cz).max()) or 1.0
        ch = go.Figure(go.Heatmap(z=cz, x=concepts, y=cls, colorscale="RdBu_r", zmid=0, zmin=-lim, zmax=lim,
                                  colorbar=dict(title="coef"),
                                  hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>"))
        ch.update_layout(title="Logistic coefficients on concept presence (red: marks the source)",
                         height=140 + 45 * len(cls), margin=dict(l=10, r=10, t=50, b=110),
                         xaxis=dict(tickangle=-45, title="concept"))
        if crec.get("status") == "ok" and not crec.get("above_chance"):
            st.caption(f"⚠️ The concept probe is not above chance here (accuracy {crec['accuracy']:.3f}, 95% CI "
                       f"{crec['ci_low']:.3f}–{crec['ci_high']:.3f}, chance {crec['chance']:.3f}): the "
                       "coefficients below are noise, not concepts that mark a source.")
        st.plotly_chart(ch, width="stretch")
