"""Balancing: what M4 and MetaCLIP balancing change (representation and association), before and after."""

import numpy as np
import pandas as pd
import streamlit as st

from audit import charts, ui
from audit.export.csvsafe import strict_json, to_csv
from audit.analyses.balance.core import (DEFAULT_BUDGET, DEFAULT_EPS_ASSOC, DEFAULT_EPS_REP, M4_NOTE, MIN_GROUP,
                                         NON_GROUPS, BalanceError, compare, weights_frame)
from audit.analyses.balance.run import default_clip_score, default_model

store, info = ui.page("Balancing")
st.caption(M4_NOTE + " MetaCLIP balancing follows methods.md §4.3 with t chosen so that its expected kept "
                     "fraction equals the same budget η. RB and AB are defined in methods.md §5.1.")

attrs = store.attributes()
if not attrs:
    st.warning("This store has no attributes yet. Run `python -m audit annotate caption --store …` first.")
    st.stop()
cat = info["attributes"]
stored = ui.stored_json(store, "balance.m4") or {}
defaults = stored.get("params") or {}

n_pool = int(store.count("samples"))
if n_pool > ui.BALANCE_SOLVE_MAX_ROWS:
    # Solving here would hold every sample's memberships and re-match every caption (minutes and GBs at 12.8M
    # rows); the streamed CLI solve stores its result, which this page reads (a few numbers per group).
    st.info(f"This pool has {n_pool:,} samples, more than the page solves itself "
            f"({ui.BALANCE_SOLVE_MAX_ROWS:,}). It shows the result stored by the streamed command-line solve; run "
            "it again for other settings (bounded memory, a few passes over the pool):")
    a0 = defaults.get("attribute") or ("caption_gender" if "caption_gender" in attrs else attrs[0])
    st.code(f"python -m audit balance m4 --store {ui.store_path()} --attribute {a0} --budget "
            f"{defaults.get('budget', DEFAULT_BUDGET):g} --stream --save --out m4_weights.parquet", language="bash")
    if not stored or not stored.get("shares"):
        st.warning("No stored balancing result yet: run the command above, then reload.")
        st.stop()
    groups_s = [str(g) for g in stored["groups"]]
    tgt_s = np.asarray(stored["target"], dtype=float)
    verdict = {"met": st.success, "infeasible": st.warning}.get(stored["status"], st.error)
    verdict(f"Stored M4 run {stored.get('run_id', '?')} on **{stored['attribute']}** (imputed: "
            f"{stored.get('method') or 'method not recorded'}): {stored['status']} at η = {stored['budget']:g}. "
            f"{stored.get('message', '')}")
    m = st.columns(4)
    m[0].metric("Kept (M4 draw)", f"{int(stored['kept']):,}", help=f"of n = {int(stored['n']):,}; Σq = {stored['sum_q']:,.1f}")
    for col, key in ((m[1], "rb"), (m[2], "ab")):
        d = stored[key] - stored[f"{key}_before"]
        col.metric(f"{key.upper()} after", f"{stored[key]:.4f}", f"{d:+.4f} vs {stored[f'{key}_before']:.4f} before",
                   delta_color="off" if abs(d) < 5e-5 else "inverse")   # a change that rounds to 0 is not worse
    m[3].metric("Solve time", f"{stored['seconds']:.1f} s", help=f"{stored.get('passes', '?')} passes over the pool")
    stable = pd.DataFrame([{"method": "pool (no filter)", **{f"share {g}": v for g, v in zip(groups_s, stored["shares_before"])}},
                           {"method": "M4", **{f"share {g}": v for g, v in zip(groups_s, stored["shares"])}}])
    st.dataframe(pd.DataFrame({"group": groups_s, "target share": tgt_s, "share before": stored["shares_before"],
                               "share after M4": stored["shares"]}), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in ("target share", "share before", "share after M4")})
    st.plotly_chart(charts.shares_chart(stable, groups_s, tgt_s, title=f"Group shares of kept members vs target "
                                        f"({stored['attribute']}, imputed)"), width="stretch")
    st.caption(f"Groups are **imputed** labels, estimates and not identities. Proxies: "
               f"{', '.join(stored.get('proxies') or []) or 'none'}. The weights are the store's scores m4_q and "
               "m4_keep: pick m4_keep on **Filter preview** or **Who's in, who's out** to see who the draw keeps.")
    st.stop()


def attr_label(a: str) -> str:
    row = cat[cat["attribute"] == a]
    if row.empty:
        return a
    r = row.iloc[0]
    return f"{a} (imputed: {r['method']})" if bool(r["imputed"]) else f"{a} ({r['method']})"


# ---- settings ----------------------------------------------------------------------------------------
c1, c2, c3 = st.columns([2.2, 2.2, 1.6])
a_default = defaults.get("attribute") if defaults.get("attribute") in attrs else (
    "caption_gender" if "caption_gender" in attrs else attrs[0])
attribute = c1.selectbox("Sensitive attribute", attrs, index=attrs.index(a_default),
                         format_func=lambda a: ui.group_label(store, a), key="bal_attribute",
                         help="Imputed attributes are estimates; the method of the one chosen is named below.")
counts = ui.label_counts(store, attribute)
labels = [str(x) for x in counts["label"] if x not in NON_GROUPS]
n_of = dict(zip(counts["label"].astype(str), counts["n"]))
g_default = [g for g in (defaults.get("groups") or []) if g in labels] if attribute == defaults.get("attribute") else []
g_default = g_default or [g for g in labels if n_of[g] >= 30][:6]
groups = c2.multiselect("Groups to balance", labels, default=g_default, key=f"bal_groups_{attribute}",
                        format_func=lambda g: f"{g} (n={n_of[g]:,})",
                        help="Rows with other labels, `unknown` or `multiple` carry no membership: they are "
                             "neither forced in nor out.")
tmode = c3.radio("Target shares", ["uniform", "pool shares", "custom"], key="bal_tmode",
                 help="Shares among rows that belong to a chosen group.")
target = "uniform" if tmode == "uniform" else "pool"
if tmode == "custom":
    target = c3.text_input("Target (G=P,G=P)", ",".join(f"{g}={1 / max(1, len(groups)):.3f}" for g in groups),
                           key=f"bal_custom_{attribute}")

others = [c for c in store.group_columns() if c != attribute]
p_default = [p for p in defaults.get("proxies", []) if p in others]
zs_default = next((p[3:] for p in defaults.get("proxies", []) if p.startswith("zs:")), "")
c1, c2, c3 = st.columns([2.2, 2.2, 1.6])
proxies = c1.multiselect("Proxies (one column per label)", others, default=p_default, key="bal_proxies",
                         format_func=lambda a: ui.group_label(store, a),
                         help="Association constraints hold between each group and each proxy label.")
models = info["models"]["model"].tolist()
zs_text = c2.text_input("Zero-shot concept prompts (separated by |)", zs_default, key="bal_zs",
                        disabled=not models,
                        help="Each image's softmax over these prompts (CLIP zero-shot) becomes a soft proxy. "
                             "At least two prompts.")
m_default = defaults.get("model") or default_model(store)
model = c3.selectbox("Model for zero-shot", models or ["(none)"],
                     index=(models.index(m_default) if m_default in models else 0), key="bal_model",
                     disabled=not models)

c1, c2, c3, c4, c5 = st.columns([2.2, 1.1, 1.1, 1.6, 0.8])
budget = c1.slider("Budget η (kept fraction)", 0.50, 1.00, float(defaults.get("budget", DEFAULT_BUDGET)), 0.01,
                   key="bal_budget")
eps_rep = c2.number_input("ε_R (RB)", 0.0, 0.5, float(defaults.get("eps_rep") or DEFAULT_EPS_REP), 0.0005,
                          format="%.4f", key="bal_eps_rep", help="tolerance on RB = max_k |share_k − π_k|")
eps_assoc = c3.number_input("ε_A (AB)", 0.0, 0.5, float(defaults.get("eps_assoc") or DEFAULT_EPS_ASSOC), 0.0005,
                            format="%.4f", key="bal_eps_assoc", help="tolerance on AB (centred association)")
scores = info["scores"]["name"].tolist()
util_opts = ["none (uniform sampling)"] + [s for s in scores if not s.startswith("m4_")]
utility = c4.selectbox("Utility (sample proportionally to)", util_opts, key="bal_utility")
utility = None if utility.startswith("none") else utility
seed = int(c5.number_input("Seed", 0, 2**31 - 1, int(defaults.get("seed", 0)), key="bal_seed"))
clip_scores = [s for s in scores if s.startswith("clip_")]
clip_default = default_clip_score(store)

if len(groups) < 2:
    st.info("Pick at least two groups to balance.")
    st.stop()
zs_prompts = [p.strip() for p in zs_text.split("|") if p.strip()] if models else []
if len(zs_prompts) == 1:
    st.warning("Zero-shot proxies need at least two prompts (the memberships are a softmax over them); ignored.")
    zs_prompts = []
proxy_specs = tuple(proxies + (["zs:" + "|".join(zs_prompts)] if zs_prompts else []))
inputs_key = (attribute, proxy_specs, tuple(groups), target, utility, model if zs_prompts else None)
try:
    inputs = ui.balance_inputs(store, *inputs_key)
    res, keep = ui.balance_m4(store, inputs_key, inputs, float(budget), float(eps_rep), float(eps_assoc), seed)
except (BalanceError, ValueError) as exc:
    st.error(f"Cannot balance with these settings: {exc}")
    st.stop()

# ---- comparison at the same budget ----------------------------------------------------------------------
n = len(res.q)
methods = {"pool (no filter)": np.ones(n), "M4": res.q}
kept = {"pool (no filter)": n, "M4": int(keep.sum())}
notes = list(inputs.notes)
mc_info = None
try:
    q_mc, keep_mc, mc_info = ui.balance_metaclip(store, float(budget), seed)
    methods[f"MetaCLIP (t={mc_info['t']:,.4g})"] = q_mc
    kept[f"MetaCLIP (t={mc_info['t']:,.4g})"] = int(keep_mc.sum())
except Exception as exc:  # a comparison only: say why it is missing
    notes.append(f"MetaCLIP comparison unavailable: {exc}")
clip_score = None
if clip_scores:
    clip_score = st.sidebar.selectbox("CLIP score for the comparison", clip_scores,
                                      index=clip_scores.index(clip_default) if clip_default in clip_scores else 0,
                                      format_func=lambda s: ui.score_label(info["scores"], s), key="bal_clip")
    q_clip, tau = ui.balance_clip(store, clip_score, float(budget))
    methods[f"CLIP score top {budget:.0%}"] = q_clip
    kept[f"CLIP score top {budget:.0%}"] = int(q_clip.sum())
table, assoc = compare(inputs, methods, kept)

# ---- headline -------------------------------------------------------------------------------------------
small = [g for g in groups if n_of.get(g, 0) < MIN_GROUP]
if small:
    st.warning(f"{', '.join(f'{g} (n={n_of.get(g, 0):,})' for g in small)}: fewer than {MIN_GROUP} samples. Shares "
               f"and biases of groups this small are noise, so no verdict is given; add samples or pick larger groups.")
elif res.status == "met":
    st.success(f"M4: every tolerance is met at η = {budget:g} (RB ≤ {eps_rep:g}, AB ≤ {eps_assoc:g}).")
elif res.status == "infeasible":
    st.warning(f"M4: infeasible at η = {budget:g}. {res.message}. Loosen ε, raise the budget or drop a proxy.")
else:
    st.error(f"M4: {res.message}")
m = st.columns(5)
m[0].metric("Kept (M4 draw)", f"{int(keep.sum()):,}", help=f"seeded Bernoulli(q) draw; Σq = {res.q.sum():,.1f} = η·n, "
                                                             f"n = {n:,}")
def _delta_colour(d: float) -> str:
    return "off" if abs(d) < 5e-5 else "inverse"   # a change that rounds to ±0.0000 is not shown as worse


m[1].metric("RB after", f"{res.rb:.4f}", f"{res.rb - res.rb_before:+.4f} vs {res.rb_before:.4f} before",
            delta_color=_delta_colour(res.rb - res.rb_before), help="representation bias max_k |Σq s_k / Σq m − π_k| (before: q ≡ 1)")
m[2].metric("AB after", f"{res.ab:.4f}", f"{res.ab - res.ab_before:+.4f} vs {res.ab_before:.4f} before",
            delta_color=_delta_colour(res.ab - res.ab_before), help="association bias max_{k,r} |Σq (s_k − π_k m)(y_r − ȳ_r)| / Σq")
down = int(np.count_nonzero(res.q < budget - 1e-6)) if utility is None else None
m[3].metric("Down-weighted", "—" if down is None else f"{down:,}",
            help="rows kept with a lower probability than uniform sampling (q < η); the others make up the budget")
m[4].metric("Solve time", f"{res.seconds:.2f} s", help=f"{res.iterations} Newton/L-BFGS iterations")
unknown = int((inputs.S.sum(1) == 0).sum())
st.caption(f"Groups are **imputed** labels ({attr_label(attribute)}), estimates and not identities. "
           f"{unknown:,} of {n:,} rows have no membership in the chosen groups (`unknown`, `multiple` or other "
           f"labels) and are neither forced in nor out. Proxies: {len(inputs.proxies)} columns."
           + ui.accuracy_note(store, attribute))
for note in notes:
    st.caption("Note: " + note)

st.subheader("Side by side at the same budget")
show = table.copy()
st.dataframe(show, hide_index=True, width="stretch",
             column_config={**{c: st.column_config.NumberColumn(format="%.4f") for c in show.columns
                               if c.startswith("share") or c in ("RB", "AB", "kept share")},
                            "kept (Σq)": st.column_config.NumberColumn(format="%.1f"),
                            "member mass": st.column_config.NumberColumn(format="%.1f")})
st.caption("kept (Σq): expected kept count; drawn kept: the seeded draw (CLIP filtering is deterministic). "
           + (f"MetaCLIP: {mc_info['source']}; captions without a matched entry are never kept."
              if mc_info else ""))

st.plotly_chart(charts.shares_chart(table, inputs.groups, inputs.target,
                                title=f"Group shares of kept members vs target ({attribute}, imputed)"), width="stretch")
if inputs.proxies:
    st.plotly_chart(charts.association_heatmaps(assoc, inputs.groups, inputs.proxies,
                                            title="Association of each group with each proxy"), width="stretch")
    st.caption("Cell = Σ_i q_i (s_ik − π_k m_i)(y_ir − ȳ_r) / Σq: how much more of proxy r group k's kept rows carry "
               "than its target share implies (0: none; red: over-represented at that proxy, blue: under). One shared "
               "colour scale; AB is the largest |cell|.")
else:
    st.info("No proxies chosen: only first-order (representation) constraints apply, AB is 0.")

# ---- export ---------------------------------------------------------------------------------------------
st.subheader("Export")
c = st.columns(3)


def _weights_csv() -> bytes:
    return to_csv(weights_frame(inputs.uids, res.q, keep)).encode()


def _subset_csv() -> bytes:
    sel = inputs.uids[keep]
    frame = ui.samples(store, tuple(sel))
    frame = frame.merge(pd.DataFrame({"uid": inputs.uids, "m4_q": res.q}), on="uid", how="left")
    return to_csv(frame[["uid", "caption", "url", "source", "m4_q"]]).encode()


c[0].download_button("Download weights (uid, q, keep) CSV", _weights_csv, file_name="m4_weights.csv",
                     mime="text/csv", key="bal_dl_w", on_click="ignore")
c[1].download_button(f"Download resampled subset ({int(keep.sum()):,} rows) CSV", _subset_csv,
                     file_name="m4_subset.csv", mime="text/csv", key="bal_dl_s", on_click="ignore")
params = {"attribute": attribute, "groups": groups, "proxies": list(proxy_specs), "target": target, "budget": budget,
          "eps_rep": eps_rep, "eps_assoc": eps_assoc, "utility": utility, "model": inputs_key[-1], "seed": seed}
c[2].download_button("Download settings + summary (JSON)",
                     strict_json({"params": params, "status": res.status, "message": res.message,
                                  "comparison": table.to_dict(orient="records")}, indent=2),
                     file_name="m4_summary.json", mime="application/json", key="bal_dl_j")
st.caption("Same result from the command line: `python -m audit balance m4 --store … --attribute "
           f"{attribute} --groups {','.join(groups)} --proxies '{','.join(proxy_specs)}' --budget {budget:g} "
           f"--target {target} --eps-rep {eps_rep:g} --eps-assoc {eps_assoc:g} --seed {seed} --out weights.csv`"
           + (f" (with --utility {utility})" if utility else ""))
if stored:
    with st.expander("Stored balancing run (m4_q / m4_keep scores in the store)"):
        st.json({k2: stored[k2] for k2 in ("params", "status", "message", "rb_before", "rb", "ab_before", "ab",
                                            "kept", "n") if k2 in stored})
