"""Dataset origin: can a linear probe tell the sources apart, and from which kind of information?"""
import numpy as np
import pandas as pd
import streamlit as st

from audit import charts, ui
from audit.analyses.origin.probe import NOTE, confusion_frame, families_table

store, info = ui.page("Dataset origin")

st.info("**Linear probes on frozen features.** " + NOTE + " A high accuracy says the sources differ in that kind "
        "of information; chance-level accuracy says a linear model cannot tell them apart from it.")
runs = ui.origin_runs(store)
if runs.empty:
    st.warning("No origin probe in this store yet. Run `python -m audit origin --store <store> [--by source]` "
               "(the demo runs it by source).")
    st.stop()

labels = {int(r.run_id): f"by {r.by_column} · run {int(r.run_id)} · {r.created:%Y-%m-%d %H:%M}" for r in runs.itertuples()}
run_id = st.selectbox("Probe run", list(labels), format_func=labels.get, key="origin_run")
result = ui.origin_result(store, run_id)
if not result:
    st.error("This run's result could not be read.")
    st.stop()
by = result.get("by", "source")
if result.get("status") != "ok":
    st.warning(result.get("message") or "The probe did not run.")
    st.stop()

counts = result.get("class_counts", {})
classes = result.get("classes", [])
st.caption(f"Classes ({by}): " + ", ".join(f"**{ui.md(c)}** ({counts.get(c, 0):,})" for c in classes)
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

st.plotly_chart(charts.probe_accuracy_chart(ok), width="stretch")

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
    st.plotly_chart(charts.confusion_heatmap(cm, raw, title=f"Confusion matrix: {fam}", by=by), width="stretch")
    st.caption(f"Rows: true class; cells: share of that class's held-out samples (count). {rec['split']}; "
               f"macro-F1 {rec['macro_f1']:.3f}; {rec['n_features']:,} features"
               + ("" if rec.get("converged", True) else "; the solver hit its iteration limit") + ".")
with c2:
    coefs = rec.get("coefficients")
    if coefs:
        rows = [{"class": c, "feature": f, "coefficient": v} for c, items in coefs.items() for f, v in items[:8]]
        cf = pd.DataFrame(rows)
        st.plotly_chart(charts.coefficient_bars(cf), width="stretch")
    else:
        st.caption("Embedding dimensions have no names, so this family has no readable coefficients; see the "
                   "concept view below for a readable version.")

st.markdown("**Most and least typical samples of each class** (out-of-sample probability of the true class)")
reveal = st.toggle("Reveal NSFW thumbnails", value=False, key="origin_reveal")
blur = ui.blur_uids(store)
typical = rec.get("typical", {})
tabs = st.tabs(list(typical)) if typical else []
for tab, (cls, parts) in zip(tabs, typical.items()):
    with tab:
        for title, rows in (("Most typical", parts["most"]), ("Least typical", parts["least"])):
            st.markdown(f"*{title}*")
            frame = ui.samples(store, tuple(r[0] for r in rows))
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
    st.plotly_chart(charts.concept_share_heatmap(by_class, concepts), width="stretch")
    st.caption("Mean concepts present per sample: " + ", ".join(f"{c} {by_class[c]['mean_present']:.2f}" for c in cls))
    coefs = v.get("coefficients") or {}
    if coefs:
        if crec.get("status") == "ok" and not crec.get("above_chance"):
            st.caption(f"⚠️ The concept probe is not above chance here (accuracy {crec['accuracy']:.3f}, 95% CI "
                       f"{crec['ci_low']:.3f}–{crec['ci_high']:.3f}, chance {crec['chance']:.3f}): the "
                       "coefficients below are noise, not concepts that mark a source.")
        st.plotly_chart(charts.concept_coef_heatmap(coefs, concepts, cls), width="stretch")
