"""Who's in, who's out: inclusion rates of a filter by (imputed) group, exclusion amplification, NSFW and
copyright rates, and agreement between caption-based and image-based labels. Same numbers as
`python -m audit report` (both call audit.report.table_from_frame)."""
import numpy as np
import pandas as pd
import streamlit as st

from audit import charts, ui
from audit.export.csvsafe import to_csv
from audit.measure.fairness import HARMONISE, SEP, confusion, flag_rates
from audit.measure import availability
from audit.measure.correct import verdict_changes
from audit.measure.report import REPORT_COLUMNS, table_from_frame
from audit.decide.recipes import default_score
from audit.decide.selection import Rule, RuleError

store, info = ui.page("Who's in, who's out")
cat = info["scores"]
acat = info["attributes"]
if cat.empty:
    st.warning("This store has no scores yet. Run `python -m audit score clip --store … --model …` first.")
    st.stop()
st.caption("For a filter and an attribute: who is kept, who is excluded, and whether filtering widens a gap "
           "that was already in the pool (Hong et al. 2024, *Who's in and who's out?*). Demographic labels are "
           "**imputed / perceived** estimates from captions or models, never anyone's identity; `unknown` "
           "means no evidence, `multiple` conflicting evidence.")


def attr_note(attr: str) -> str:
    row = acat[acat["attribute"] == attr]
    if row.empty:
        return f"**{attr}** is a sample column (read from the data, not imputed)."
    r = row.iloc[0]
    kind = "imputed (perceived) labels" if bool(r["imputed"]) else "labels read from the data"
    method = str(r["method"]).replace(" [RANDOM/SIMULATED: not meaningful]", "")
    warn = " ⚠️ **Random-weight model or simulated text encoder: not meaningful.**" if bool(r["random_weights"]) else ""
    return f"**{attr}** — {kind}; method: {method.rstrip('.')}.{warn}" + ui.accuracy_note(store, attr)


def label_of(attr: str) -> str:
    row = acat[acat["attribute"] == attr]
    if row.empty:
        return attr
    tag = "imputed" if bool(row.iloc[0]["imputed"]) else "data"
    return f"{attr} ({tag}{', random/simulated' if bool(row.iloc[0]['random_weights']) else ''})"


# ---- the filter --------------------------------------------------------------------------------------
st.subheader("Filter")
names = cat["name"].tolist()
default = names.index(default_score(names, cat))
c1, c2, c3 = st.columns([2, 1.3, 2.2])
score = c1.selectbox("Score", names, index=default, format_func=lambda n: ui.score_label(cat, n), key="fz_score")
mode = c2.radio("Rule", ["top fraction", "threshold"], horizontal=True, key="fz_mode",
                help="top fraction: DataComp --fraction (threshold = the (int(N·p)+1)-th largest score; ties kept). "
                     "threshold: keep score ≥ t.")
with c3:
    rule = ui.rule_widget(store, score, mode, top_key="fz_top", threshold_key="fz_threshold")
if rule is None:
    st.stop()
extra = st.text_input("More rules, intersected (comma-separated, e.g. `clip_b32_similarity_score>=0.28`)",
                      key="fz_extra", placeholder="SCORE>=VALUE, SCORE<=VALUE or SCORE:top=FRACTION")
rules = [rule]
try:
    rules += [Rule.parse(s) for s in extra.split(",") if s.strip()]
    for r in rules:
        if r.score not in names:
            raise RuleError(f"unknown score {r.score!r}; this store has: {', '.join(names)}")
except RuleError as exc:
    st.error(str(exc))
    st.stop()

# ---- the grouping ----------------------------------------------------------------------------------
groups = store.group_columns()
gdefault = groups.index("caption_gender") if "caption_gender" in groups else 0
g1, g2, g3 = st.columns([2, 2, 1])
by1 = g1.selectbox("Group by", groups, index=gdefault, format_func=label_of, key="fz_by")
second = ["(none)"] + [g for g in groups if g != by1]
by2 = g2.selectbox("Intersect with", second, index=0, format_func=lambda g: g if g == "(none)" else label_of(g),
                   key="fz_by2", help="Intersections, e.g. caption_gender × caption_age")
min_n = int(g3.number_input("Minimum n", 1, 100_000, ui.MIN_N, key="fz_min_n",
                            help="Groups with fewer samples are greyed (shown, not hidden) and left out of the "
                                 "amplification test and the regression."))
by = [by1] + ([by2] if by2 != "(none)" else [])

frame = ui.fairness_frame(store, tuple(dict.fromkeys(r.score for r in rules)), tuple(by))
rep = table_from_frame(frame, rules, by, min_n=min_n, thresholds=ui.top_thresholds(store, tuple(rules)))
table, sel = rep.table, rep.selection
keep = sel.keep
n_all, kept = len(keep), int(keep.sum())
overall = table.attrs["overall"]

m = st.columns(5)
m[0].metric("Kept", f"{kept:,}")
m[1].metric("Excluded", f"{n_all - kept:,}")
m[2].metric("Overall inclusion rate", f"{overall:.3f}")
m[3].metric("Groups", f"{len(table):,}", help=f"{int(table['small'].sum())} with n < {min_n} (greyed)")
m[4].metric("Amplified groups", f"{int(table['amplified'].sum())}")
st.caption(" · ".join(f"`{rk}` threshold {tv:.5g}" for rk, tv in sel.thresholds.items()))
for r in rules:
    if bool(cat.loc[cat["name"] == r.score, "random_weights"].iloc[0]):
        st.warning(f"{r.score} comes from a model with RANDOM weights: these rates exercise the pipeline only.")
for attr in by:
    st.markdown(attr_note(attr))

# ---- rates by group -------------------------------------------------------------------------------------
title = " × ".join(by)
MAX_CHART = 40
shown = table.sort_values("n", ascending=False).head(MAX_CHART)
shown.attrs.update(table.attrs)
fig = charts.rate_chart(shown, title=f"Inclusion rate by {title}", min_n=min_n)
st.plotly_chart(fig, width="stretch")
if len(table) > MAX_CHART:
    st.caption(f"The chart shows the {MAX_CHART} largest of {len(table):,} groups; the table has all of them.")
st.caption("Dots: inclusion rate kept/n with its 95% Wilson interval; grey dots: n below the minimum. "
           "Dashed line: the overall rate. In the table, − overall = rate − overall rate (diff_to_overall in the CSV) and "
           "÷ overall = rate / overall rate (ratio_to_overall).")


def grey_small(row: pd.Series) -> list[str]:
    if row["small"]:
        return ["color: #adb5bd"] * len(row)
    if row["amplified"]:
        return ["color: #c92a2a; font-weight: 600"] * len(row)
    return [""] * len(row)


view = table[REPORT_COLUMNS].reset_index(drop=True)
FLAG_HELP = {"small": "n below the minimum (greyed, not tested)", "labelled": "not unknown/multiple",
             "under_represented": "share of the labelled pool below 0.8/k", "amplified": "exclusion amplification"}
config = {c: st.column_config.NumberColumn(format="%.4f", width="small") for c in
          ("rate", "ci_low", "ci_high", "pool_share", "kept_share", "diff_to_overall", "ratio_to_overall")}
config.update({c: st.column_config.CheckboxColumn(c.replace("under_represented", "under-rep."), help=h, width="small")
               for c, h in FLAG_HELP.items()})
config.update({"n": st.column_config.NumberColumn(width="small"), "kept": st.column_config.NumberColumn(width="small")})
# short headers so every column fits (the CSV and `report` keep the full names)
SHORT = {"pool_share": "pool share", "kept_share": "kept share", "diff_to_overall": "− overall",
         "ratio_to_overall": "÷ overall", "under_represented": "under-rep.", "amplified": "amplif."}
for col, label in SHORT.items():
    kind = st.column_config.CheckboxColumn if col in FLAG_HELP else st.column_config.NumberColumn
    kw = {"help": FLAG_HELP[col]} if col in FLAG_HELP else {"format": "%.4f", "help": {
        "diff_to_overall": "rate − overall rate", "ratio_to_overall": "rate ÷ overall rate"}.get(col)}
    config[col] = kind(label, width="small", **kw)
shown_table = view.copy()
shown_table["95% CI"] = [f"{lo:.4f}–{hi:.4f}" for lo, hi in zip(view["ci_low"], view["ci_high"])]
order = ["group", "n", "kept", "rate", "95% CI", "pool_share", "kept_share", "diff_to_overall", "ratio_to_overall",
         "small", "under_represented", "amplified"]
st.dataframe(shown_table.style.apply(grey_small, axis=1), hide_index=True, width="stretch", key="fz_table",
             column_config=config, column_order=order)
st.caption("Grey rows: n below the minimum. Red rows: exclusion amplification (defined below).")
st.download_button("Download this table (CSV)", to_csv(view).encode(),
                   file_name=f"fairness_{'_x_'.join(by)}.csv", mime="text/csv")
cmd = (f"python -m audit report --store {ui.store_path()} " + " ".join(f"--keep '{r}'" for r in rules)
       + " " + " ".join(f"--by {b}" for b in by) + f" --min-n {min_n} --out fairness.csv")
st.code(cmd, language="bash", wrap_lines=True)

# ---- label noise: corrected rates ------------------------------------------------------------------------------
imputed_attr = len(by) == 1 and by1 in set(acat["attribute"]) and bool(
    acat.loc[acat["attribute"] == by1, "imputed"].iloc[0])
if imputed_attr:
    st.subheader("Label noise: how much of these rates survives misclassification")
    gold = ui.has_gold(store, by1)
    options = ["naive", "soft", "corrected (gold confusion)", "bounds"] if gold else ["naive", "soft", "bounds"]
    pick = st.radio("Rates by", options, horizontal=True, key="fz_noise",
                    help="naive: by imputed label (the table above). soft: weighted by the annotator's confidence. "
                         "corrected: true-group rates solved with the confusion measured on gold labels, "
                         "bootstrap interval. bounds: the range consistent with unknowns and the measured error.")
    if not gold:
        st.info(f"No gold labels for {by1}: import a hand-labelled sample with `python -m audit labels import "
                f"--store {ui.store_path()} --name gold_{by1} --file labels.csv` to measure its accuracy and "
                "correct for it. Soft and bounds need none (bounds then assume a 10% error).")
    method = {"naive": "none", "soft": "soft", "corrected (gold confusion)": "confusion", "bounds": "bounds"}[pick]
    ct, cm = None, None
    if method != "none":
        try:
            ct, cm = ui.corrected_report(store, tuple(str(r) for r in rules), by1, method, min_n,
                                         None if gold else 0.1)
        except ValueError as exc:   # a singular confusion, gold without a labelled class, …: said, not raised
            st.error(str(exc))
        if ct is not None:
            lo_col, hi_col = (("bound_low", "bound_high") if method == "bounds" else
                              ("ci_low_corrected", "ci_high_corrected"))
            b = ct[["group", "n", lo_col, hi_col]].rename(columns={lo_col: "ci_low", hi_col: "ci_high"})
            b["rate"] = ct["rate_corrected"] if method != "bounds" else (b["ci_low"] + b["ci_high"]) / 2
            shown_b = b[b["rate"].notna()]
            a_t = table[table["group"].isin(shown_b["group"])].copy()
            a_t.attrs.update(table.attrs)
            if len(shown_b):
                st.plotly_chart(charts.compare_chart(a_t, shown_b, title=f"Inclusion rate by {by1}: naive vs {pick}",
                                                     label_a="naive (imputed labels)",
                                                     label_b=pick if method != "bounds" else
                                                     "bounds: the whole range is possible (the mark is its midpoint, "
                                                     "not an estimate)"),
                                width="stretch")
            same = a_t.set_index("group")["rate"].reindex(shown_b["group"]).to_numpy() - shown_b["rate"].to_numpy()
            if method == "soft" and len(same) and np.nanmax(np.abs(same)) < 1e-9:
                st.caption("Soft equals naive here (the marks overlap): this annotator gives every sample of a label "
                           "the same confidence, so weighting changes nothing. Only a gold sample can correct it.")
            worst = shown_b.sort_values("rate").head(1)
            if len(worst):
                w = worst.iloc[0]
                src = (f"correcting for {by1}'s measured confusion (gold n = {int(ct['gold_n'].iloc[0]):,})"
                       if method == "confusion" else "weighting by confidence" if method == "soft" else
                       "allowing unknowns and mislabelled samples to be anyone")
                what = (f"between {w['ci_low']:.3f} and {w['ci_high']:.3f}" if method == "bounds" else
                        f"at {w['rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]")
                st.markdown(f"After {src}, **{ui.md(w['group'])}** is kept {what} against {overall:.3f} overall.")
            changes = verdict_changes(ct)
            st.caption("Amplification verdicts that change under this correction: "
                       + ("; ".join(changes) if changes else "none") + ".")
            if cm is not None and method == "confusion":
                tc, oc, counts = cm
                shares = pd.DataFrame(np.asarray(counts) / np.maximum(np.asarray(counts).sum(1, keepdims=True), 1),
                                      index=[f"gold {t}" for t in tc], columns=[f"imputed {o}" for o in oc])
                st.dataframe(shares.style.format("{:.3f}"), key="fz_noise_conf")
                st.caption(f"P(imputed label | gold label) measured on {int(np.asarray(counts).sum()):,} gold "
                           "samples; `python -m audit imputation` prints it with counts, precision and recall.")

# ---- availability: failed downloads as the first filter step -------------------------------------------------
n_failed = ui.count_download_failures(store)
if n_failed:
    st.subheader("Availability: downloads as the first filter step")
    st.markdown(
        f"**{n_failed:,}** input rows failed to download (img2dataset's status and error are kept as "
        "`download_failed` rejects, with their url and caption). Counted as pool rows that were not kept, they show "
        "who is lost **before** any filter, and the chain availability → this filter. Failed rows have only a URL "
        "and a caption, so groups come from those, computed the same way for every row.")
    choices = list(availability.URL_ATTRIBUTES) + [a for a in groups if a.startswith("caption_")]
    av_by = st.selectbox("Group by (URL- or caption-derived)", choices,
                         index=choices.index(by1) if by1 in choices else 0, key="fz_av_by")
    av_frame = ui.availability_frame(store, tuple(dict.fromkeys(r.score for r in rules)), (av_by,))
    alone = availability.table_from_frame(av_frame, [Rule.parse("downloaded>=1")], [av_by], min_n=min_n).table
    chain = availability.table_from_frame(av_frame, rules, [av_by], min_n=min_n).table
    a1, a2, a3 = st.columns(3)
    a1.metric("Input rows", f"{len(av_frame):,}")
    a2.metric("Downloaded", f"{alone.attrs['overall']:.1%}")
    a3.metric("Kept after availability → filter", f"{chain.attrs['overall']:.1%}")
    st.plotly_chart(charts.compare_chart(alone, chain, title=f"Inclusion by {av_by}: availability alone vs "
                                         "availability → filter", label_a="downloaded",
                                         label_b="downloaded and kept by " + " and ".join(r.keeps for r in rules)),
                    width="stretch")
    st.code(f"python -m audit report --store {ui.store_path()} --include-failed --keep downloaded>=1 --by {av_by} "
            f"--out availability.csv", language="bash", wrap_lines=True)

# ---- exclusion amplification ---------------------------------------------------------------------------
st.subheader("Exclusion amplification")
st.markdown(
    "A group shows **exclusion amplification** when it is **under-represented in the pool** (its share of the "
    "labelled samples is below four fifths of parity, 0.8/k for k labelled groups) **and** its inclusion rate is "
    "**below the "
    "overall rate with the whole 95% interval below it**; filtering then shrinks its share further "
    "(kept share < pool share). `unknown`/`multiple` and groups under the minimum n are not tested. "
    "Across groups, the paper regresses the inclusion rate on the group's pool count: a positive slope means "
    "bigger groups are kept more often.")
amp = table[table["amplified"]]
if len(amp):
    st.dataframe(amp[["group", "n", "rate", "ci_low", "ci_high", "pool_share", "kept_share"]], hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in
                                ("rate", "ci_low", "ci_high", "pool_share", "kept_share")})
else:
    st.info("No group meets the amplification definition for this filter and attribute.")

reg = rep.regression
pts = table[table["labelled"] & (table["n"] > 0)]
if len(pts) < 3:
    st.info(f"The across-groups regression needs at least 3 labelled groups; {by1}"
            + (f" × {by2}" if len(by) > 1 else "") + f" has {len(pts)}. Try an intersection or another attribute.")
else:
    st.plotly_chart(charts.rate_vs_count_chart(pts, reg, overall), width="stretch")
    st.caption("Red: amplified; grey: n below the minimum (not in the fit). "
               + ("Regression (scipy.stats.linregress): " + reg.sentence() if reg else
                  "The regression needs at least 3 labelled groups with n ≥ the minimum."))

# ---- NSFW and copyright ------------------------------------------------------------------------------------
st.subheader("NSFW and copyright-relevant content: pool vs kept")
attrs = set(store.attributes())
flags = [(a, lab, title_) for a, lab, title_ in (("nsfw", "nsfw", "NSFW (combined evidence)"),
                                                   ("copyright", "copyright-relevant", "copyright-relevant"))
         if a in attrs]
if not flags:
    st.info("Run `python -m audit annotate nsfw --store …` and `python -m audit annotate copyright --store … "
            "--model …` to see whether this filter removes or keeps them.")
else:
    labs = ui.attribute_labels(store, tuple(a for a, _, _ in flags))
    rows, bars = [], []
    for a, lab, title_ in flags:
        fr = flag_rates(keep, (labs[a] == lab).to_numpy())
        rows.append({"category": title_, "in pool": fr["pool_count"],
                     "pool rate (95% CI)": f"{fr['pool_rate']:.4f} ({fr['pool_ci'][0]:.4f}–{fr['pool_ci'][1]:.4f})",
                     "kept": fr["kept_count"],
                     "kept rate (95% CI)": f"{fr['kept_rate']:.4f} ({fr['kept_ci'][0]:.4f}–{fr['kept_ci'][1]:.4f})",
                     "their inclusion rate": fr["inclusion_rate"], "kept / pool": fr["concentration"]})
        bars.append((title_, fr))
    ft = pd.DataFrame(rows)
    st.dataframe(ft, hide_index=True, key="fz_flags",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in
                                ("their inclusion rate", "kept / pool")})
    st.plotly_chart(charts.flag_share_bars(bars), width="stretch")
    st.caption("kept / pool > 1: the filter concentrates the category; < 1: it removes it. "
               "Labels are imputed from evidence; see each attribute's method below.")
    for a, _, _ in flags:
        st.markdown("- " + attr_note(a))

# ---- agreement ----------------------------------------------------------------------------------------------
st.subheader("Agreement: caption-based vs image-based labels")
text_attrs = [a for a in sorted(attrs) if a.startswith("caption_")]
image_attrs = [a for a in sorted(attrs) if a.startswith(("face_perceived_", "zeroshot_"))]
if not text_attrs or not image_attrs:
    st.info("Needs a caption attribute (`annotate caption`) and an image attribute (`annotate faces` or "
            "`annotate zeroshot --model …`).")
else:
    pairs = {"caption_gender": ("zeroshot_gender", "face_perceived_gender"),
             "caption_age": ("zeroshot_age", "face_perceived_age_bracket"), "caption_race": ("zeroshot_race",)}
    a1, a2 = st.columns(2)
    ta = a1.selectbox("Caption attribute", text_attrs, index=text_attrs.index("caption_gender")
                      if "caption_gender" in text_attrs else 0, key="fz_agree_text")
    want = [a for a in pairs.get(ta, ()) if a in image_attrs] or image_attrs
    ia = a2.selectbox("Image attribute", image_attrs, index=image_attrs.index(want[0]), key="fz_agree_image")
    labs = ui.attribute_labels(store, (ta, ia))
    ag = confusion(labs[ta].array, labs[ia].array, map_a=HARMONISE.get(ta), map_b=HARMONISE.get(ia),
                   name_a=ta, name_b=ia)
    if ag.n_both == 0:
        st.info(f"No sample has a known label in both {ta} and {ia}.")
    else:
        q = st.columns(3)
        q[0].metric("Samples labelled by both", f"{ag.n_both:,}")
        q[1].metric("Agreement", f"{ag.agreement:.1%}")
        q[2].metric("Cohen's κ", f"{ag.kappa:.2f}")
        st.dataframe(ag.table, key="fz_confusion")
        st.caption(f"Rows: {ta}; columns: {ia}; counts of samples with a known label on both sides "
                   "(labels harmonised where vocabularies differ, e.g. caption 'african' → 'black'). "
                   + attr_note(ia))
        with st.expander("All samples, raw labels (with unknown / multiple)"):
            st.dataframe(ag.raw)

# ---- samples ---------------------------------------------------------------------------------------------------
st.subheader("Samples of a group")
gsel = st.selectbox("Group", table.sort_values("n", ascending=False)["group"].tolist(), key="fz_sample_group")
reveal = st.toggle("Reveal NSFW thumbnails", value=False, key="fz_reveal",
                   help="Thumbnails whose imputed nsfw label is 'nsfw' are blurred until revealed.")
blur = ui.blur_uids(store)
in_group = rep.labels == gsel
rng = np.random.default_rng(0)
sides = []
for name, mask in (("Kept", in_group & keep), ("Excluded", in_group & ~keep)):
    idx = np.flatnonzero(mask)
    pick = rng.choice(idx, size=min(8, len(idx)), replace=False) if len(idx) else idx
    sides.append((name, len(idx), tuple(int(x) for x in pick)))
for name, n_side, pick in sides:
    st.markdown(f"**{name}** ({n_side:,} in {ui.md(gsel.replace(SEP, ' × '))}; showing {len(pick)})")
    ui.show_samples(store, ui.samples_at(store, pick, ui.GRID_COLUMNS), reveal=reveal, blur_uids=blur)
