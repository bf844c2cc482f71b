"""Filter preview: move a threshold, combine rules as the papers do, and see, live, who is kept and who is
excluded, by group, with the reason for every exclusion; compare two filters side by side."""
import numpy as np
import streamlit as st

from audit import charts, ui
from audit.measure.metrics import rates_from_codes
from audit.decide.recipes import (FILTER_TITLES, Recipe, default_score, exact_spec, named_filters, overlap,
                                  overlap_counts, paper_presets, paper_scores)
from audit.decide.selection import RuleError

store, info = ui.page("Filter preview")
cat = info["scores"]
if cat.empty:
    st.warning("This store has no scores yet. Run `python -m audit score clip --store … --model …` first.")
    st.stop()

names = cat["name"].tolist()
filters = named_filters(names)
NONE = "(none)"


# Paper recipes available on this store: label -> widget values (applied by a callback before the widgets draw)
main = paper_scores(names)
neg, nsi, clip = main["negclip"], main["normsim_inf"], main["clip"]
PRESETS = paper_presets(names, filters, none=NONE)


def _apply_preset() -> None:
    chosen = st.session_state.get("preset")
    for key_, value in PRESETS.get(chosen, {}).items():
        st.session_state[key_] = value
    st.session_state["recipe_text"] = ""


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _title(f: str) -> str:
    if f.startswith("image_based"):
        return f"{f} — {FILTER_TITLES['image_based']}"
    return f"{f} — {FILTER_TITLES.get(f, f)}"


default = names.index(default_score(names, cat))
# the pickers a preset can set get their defaults through session state; the sliders through ui.shown
for key_, value_ in (("score", names[default]), ("then_score", NONE), ("and_terms", [])):
    st.session_state.setdefault(key_, value_)
if st.session_state["score"] not in names:
    st.session_state["score"] = names[default]
if st.session_state["then_score"] not in names:
    st.session_state["then_score"] = NONE
st.session_state["and_terms"] = [f for f in st.session_state["and_terms"] if f in filters]
c1, c2, c3 = st.columns([2, 1.3, 2])
score = c1.selectbox("Score", names, format_func=lambda n: ui.score_label(cat, n), key="score")
mode = c2.radio("Rule", ["top fraction", "threshold", "off"], horizontal=True, key="mode",
                help="top fraction: DataComp --fraction (the (int(N·p)+1)-th largest score of the whole pool "
                     "is the threshold; ties are kept). threshold: keep score ≥ t. off: no rule on this score "
                     "(use the named filters below).")
groups = store.group_columns()
gdefault = groups.index("caption_gender") if "caption_gender" in groups else 0
group = c3.selectbox("Inclusion rate by", groups, index=gdefault, format_func=lambda g: ui.group_label(store, g),
                     key="group")

data = ui.preview_data(store, score, group)
if len(data.sorted_desc) == 0:
    st.warning(f"No sample has a value for {score}.")
    st.stop()
# read once per page run, not on every slider move
RANDOM_WEIGHTS = set(cat.loc[cat["random_weights"].astype(bool), "name"])
TEXT_PROXY = set(cat.loc[cat["description"].astype(str).str.contains("TEXT PROXY", regex=False), "name"])
group_is_imputed = group in ui.attributes(store)
glabel = ui.group_label(store, group)
min_n = st.sidebar.number_input("Minimum n per group (smaller groups are greyed)", 1, 10_000, ui.MIN_N)


# ---- combine rules into a recipe -----------------------------------------------------------------------------
# Outside the slider's fragment: these controls do not move with the slider (each of them reruns the page), and
# drawn again on every move they cost the browser ~20 ms.
active = any(st.session_state.get(x) for x in ("and_terms", "and_rules", "recipe_text")) or \
    st.session_state.get("then_score", NONE) != NONE
with st.expander("Combine rules — recipes of the papers (AND, THEN), reasons for every exclusion", expanded=active):
    if PRESETS:
        st.selectbox("Paper recipe", ["(choose to fill the controls)"] + list(PRESETS), key="preset",
                     on_change=_apply_preset)
    a1, a2 = st.columns(2)
    and_terms = a1.multiselect(
        "AND named filters (each rule is its own exclusion reason)", filters, key="and_terms", format_func=_title,
        help="basic: words > 2, chars > 5, English, min side ≥ 200, aspect ≤ 3. laion: B/32 ≥ 0.28 and English. "
             "image_based: caption pre-filter and target clusters. text_based: English and an entity word. "
             "metaclip: a metadata entry matched and the seeded draw kept it.")
    and_rules = a1.text_input("AND more rules", key="and_rules", placeholder="clip_b32_similarity_score>=0.28 & basic_aspect<=2",
                              help="SCORE>=V, SCORE<=V, SCORE:top=P or named filters, joined with &")
    then_score = a2.selectbox("THEN, among the samples left: keep the top of", [NONE] + names, key="then_score",
                              format_func=lambda n: n if n == NONE else ui.score_label(cat, n),
                              help="An ordered step: its fraction is of the WHOLE pool (negCLIPLoss top 30% then "
                                   "NormSim∞ top 20% keeps 20% of the pool).")
    then_top = a2.slider("… this fraction of the whole pool", 0.01, 1.0, ui.shown("then_top", 0.20), step=0.01,
                         key="then_top",
                         disabled=then_score == NONE)
    recipe_text = st.text_input(
        "Or type a whole recipe (replaces the controls above)", key="recipe_text",
        placeholder="negclip_datacomp_l14:top=0.3 then normsim_inf_datacomp_l14:top=0.2")

# Everything below the pickers and the recipe controls depends on the slider: a fragment, so that a slider move
# (or any control below) reruns this part only, not the page's header, sidebar, pickers and recipe controls
# (fixed costs that do not depend on the move). A preset that changes a picker reruns the whole page.
@st.fragment
def live() -> None:
    if (st.session_state.get("score"), st.session_state.get("mode"), st.session_state.get("group")) != \
            (score, mode, group):
        st.rerun()
    rule = None if mode == "off" else ui.rule_widget(store, score, mode, top_key="top_fraction", threshold_key="threshold",
                                                      values=data.sorted_desc)

    step1 = ([exact_spec(rule)] if rule is not None else []) + list(and_terms) + ([and_rules] if and_rules.strip() else [])
    spec = " & ".join(step1)
    if then_score != NONE:
        if not spec:
            st.error("A THEN step needs a first step: set a rule on the score, or add named filters.")
            st.stop()
        spec += f" then {then_score}:top={float(then_top)!r}"
    if recipe_text.strip():
        spec = recipe_text.strip()
    simple = spec == (exact_spec(rule) if rule is not None else None)

    ev = None
    if simple:  # one rule on one score: the fast path (no other columns are read)
        table, tau = data.table("top" if rule.op == "top" else "threshold", rule.value, min_n=int(min_n))
        keep = None   # the sketch counts; no per-sample mask is made on a slider move
        st.session_state["keep_specs"] = [str(rule)] if rule.op == "top" else [exact_spec(rule)]
        st.session_state["keep_recipe"] = None
        shown = rule.reason
        keeps_a = rule.keeps
    else:
        if not spec:
            st.info("No rule: pick a rule on the score, or add named filters or a recipe under **Combine rules**.")
            st.session_state["keep_specs"] = []
            st.stop()
        try:
            recipe = Recipe.parse(spec, names=names)
            ev = recipe.evaluate(ui.score_columns(store, recipe.scores()), n=data.n)
        except RuleError as exc:
            st.error(str(exc))
            st.stop()
        keep = ev.keep
        codes, labels = ui.group_codes(store, group)
        table = rates_from_codes(keep, codes, labels, min_n=int(min_n))
        tau = ev.thresholds.get(str(rule), float("nan")) if rule is not None else float("nan")
        st.session_state["keep_specs"] = ev.as_rules()
        st.session_state["keep_recipe"] = str(recipe)
        shown = str(recipe)
        keeps_a = str(recipe)

    kept = int(table.attrs["kept"])
    if simple and rule.op == "top":
        target = min(int(data.n * rule.value) + 1, len(data.sorted_desc))
        if kept > target:
            extra = kept - target
            st.info(f"Ties at the threshold: {extra:,} {'sample shares' if extra == 1 else 'samples share'} the cut-off "
                    f"value {tau:.6g} with the last one in the top fraction, so the rule "
                    f"keeps {kept:,} ({kept / data.n:.1%}) for a top {rule.value:.0%} (DataComp keeps ties; a score with "
                    f"few distinct values cannot hit every fraction).")
    m = st.columns(4)
    m[0].metric("Kept", f"{kept:,}", help="samples the filter keeps")
    m[1].metric("Excluded", f"{data.n - kept:,}")
    m[2].metric("Kept share", f"{kept / data.n:.1%}")
    if ev is None or np.isfinite(tau):
        m[3].metric("Threshold τ", f"{tau:.4f}", help=f"on {score}")
    else:
        m[3].metric("Steps", f"{len(ev.step_kept)}", help="ordered steps of the recipe")
    if ev is not None:
        st.markdown(f"**Recipe**: `{shown}`" + (
            "  ·  kept after each step: " + " → ".join(f"{x:,}" for x in ev.step_kept) if ev.recipe.ordered else ""))
        st.caption("Export uses the equivalent plain rules over the whole pool: "
                   + ", ".join(f"`{r}`" for r in ev.as_rules()))
    if data.n_missing and (ev is None or score in ev.recipe.scores()):
        st.caption(f"{data.n_missing:,} samples have no {score} value (no embedding for that model): they are "
                   f"excluded by this rule and counted in their groups.")
    used = [score] if ev is None else ev.recipe.scores()
    rw = [s for s in used if s in RANDOM_WEIGHTS]
    if rw:
        st.warning(f"{', '.join(rw)} come(s) from a model with RANDOM weights: this preview exercises the pipeline only.")
    proxy = [s for s in used if s in TEXT_PROXY]
    if proxy:
        st.info(f"{', '.join(proxy)}: the target set is a **text proxy** (class-name prompts through the text "
                "encoder), not image embeddings; see the score's description on the Overview page.")

    left, right = st.columns([3, 2])
    with left:
        # Vega-Lite, not Plotly, for the charts a move redraws: the chart is updated in place (audit/charts.py)
        st.vega_lite_chart(*charts.rate_spec(table, title=f"Inclusion rate by {glabel}", min_n=int(min_n)),
                           width="stretch")
        if group_is_imputed:
            st.caption("Groups are **imputed** (perceived) labels, not identities; `unknown` means no evidence, "
                       "`multiple` means conflicting evidence. Grey: n below the minimum (shown, not hidden)."
                       + ui.accuracy_note(store, group))
    with right:
        counts, edges = data.histogram()
        st.vega_lite_chart(*charts.histogram_spec(counts, edges, title=f"{score}", tau=tau), width="stretch")
        if ev is None:
            st.markdown(f"**Why excluded** — `{shown}`: {data.n - kept:,} samples")

    show = table[["group", "n", "kept", "rate", "ci_low", "ci_high", "diff_to_overall", "ratio_to_overall", "pool_share", "kept_share",
                  "small"]].sort_values("rate")
    st.dataframe(show, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                ("rate", "ci_low", "ci_high", "diff_to_overall", "ratio_to_overall", "pool_share", "kept_share")})

    # ---- why excluded: counts per reason and one sample's reasons ---------------------------------------------
    if ev is not None and ev.failed:
        st.subheader("Why excluded")
        reasons = ev.reason_table()
        st.plotly_chart(charts.reason_chart(reasons, title="Exclusions per reason (a sample can fail several rules)"),
                        width="stretch")
        r1, r2 = st.columns([3, 2]) if ev.recipe.ordered else (st.container(), None)
        r1.dataframe(reasons.sort_values("excluded", ascending=False), hide_index=True, width="stretch",
                     column_config={"pool_share": st.column_config.NumberColumn(format="%.3f"),
                                    "only_reason": st.column_config.NumberColumn(help="excluded by this rule alone")})
        if r2 is not None:
            r2.dataframe(ev.funnel(), hide_index=True, width="stretch")
            r2.caption("Samples left after each step; a sample excluded at one step is not tested by later steps.")
        excluded_idx = np.flatnonzero(~keep)
        if len(excluded_idx):
            pick = np.random.default_rng(0).choice(excluded_idx, size=min(200, len(excluded_idx)), replace=False)
            pick_uids = ui.uids_at(store, tuple(int(x) for x in np.sort(pick)))
            w1, w2 = st.columns([1, 2])
            chosen = w1.selectbox("An excluded sample", pick_uids, key="why_pick")
            typed = w1.text_input("…or any uid", key="why_uid").strip()
            uid = typed or chosen
            pos = ui.uid_row(store, uid)
            if pos is None:
                w2.error(f"No sample with uid {uid!r} in this store.")
            else:
                frame = ui.samples(store, (uid,))
                why = ev.why(int(pos))
                with w2:
                    cap = frame["caption"].iloc[0] if len(frame) else ""
                    st.markdown(f"**{ui.md(uid)}** — {ui.md(cap.strip())}")
                    if why:
                        st.markdown("Excluded because:\n" + "\n".join(f"- {r}" for r in why))
                    else:
                        st.success("Kept by this recipe.")
                    rt = ev.rule_table(ui.score_columns(store, ev.recipe.scores()), int(pos))
                    st.dataframe(rt, hide_index=True, width="stretch",
                                 column_config={"value": st.column_config.NumberColumn(format="%.4f"),
                                                "passed": st.column_config.CheckboxColumn(
                                                    help="empty: an earlier step had already excluded it")})

    # ---- compare two filters, and examples: sections opened on demand --------------------------------------
    # Every element a move redraws costs the browser a few ms, and these two sections are half of the page: closed
    # (the default) they are not drawn at all; open, they follow the slider like the rest (measured in docs/scale.md).
    cmp_box = st.expander("Compare two filters: overlap, Spearman ρ, inclusion rates under each", key="cmp_open",
                          on_change="rerun")
    if cmp_box.open:
        with cmp_box:
            _compare(keep, kept, tau, table, keeps_a)
    examples = st.expander("Samples of a group: kept and excluded examples", key="samples_open", on_change="rerun")
    if examples.open:
        with examples:
            _examples(keep, tau, table)


def _compare(keep, kept: int, tau: float, table, keeps_a: str) -> None:
    """Filter A (the page's filter) against filter B: kept counts, overlap, ρ of the two scores, rates under each."""
    st.caption("Filter A is the filter above. Filter B: the top fraction of another score (or a typed recipe). "
               "Overlap of the kept sets, and how the two scores rank the pool: Spearman ρ of the **Score** picked "
               "at the top and the **Filter B score**." + (
                   f" With {data.n:,} samples the first comparison takes a few seconds (then it is cached)."
                   if data.n > ui.COMPARE_SLOW_ROWS else ""))
    b1, b2, b3 = st.columns([2, 1.5, 2.5])
    others = [n for n in names if n != score] or names
    bdefault = next((others.index(n) for n in (neg, clip, nsi) if n in others), 0)
    cmp_score = b1.selectbox("Filter B score", others, index=bdefault, key="cmp_score",
                             format_func=lambda n: ui.score_label(cat, n))
    cmp_top = b2.slider("B: keep the top fraction of the pool", 0.01, 1.0, 0.30, 0.01, key="cmp_top")
    cmp_recipe = b3.text_input("…or B as a recipe", key="cmp_recipe", placeholder="basic & laion")
    spec_b = cmp_recipe.strip() or f"{cmp_score}:top={float(cmp_top)!r}"
    try:
        rb = Recipe.parse(spec_b, names=names)
        keep_b = ui.recipe_keep(store, spec_b)
    except RuleError as exc:
        st.error(f"Filter B: {exc}")
        st.stop()
    # cached; its kept count is B's (every sample has a group): a sum over the pool's mask cost a move ~20 ms at 12.8M
    table_b = ui.recipe_rates(store, spec_b, group, int(min_n))
    if keep is not None:
        ov = overlap(keep, keep_b)
    else:   # A is one rule: its kept set is a prefix of the sketch's order, and B's count along it is indexed
        ov = overlap_counts(kept, int(table_b.attrs["kept"]),
                            int(ui.overlap_index(store, score, group, spec_b)[data.n_kept(tau)]))
    rho, n_rho = ui.spearman(store, score, cmp_score)
    mc = st.columns(5)
    mc[0].metric("A keeps", f"{ov['kept_a']:,}")
    mc[1].metric("B keeps", f"{ov['kept_b']:,}")
    mc[2].metric("Both", f"{ov['both']:,}", help=f"A only {ov['only_a']:,} · B only {ov['only_b']:,}")
    mc[3].metric("Jaccard |A∩B| / |A∪B|", "—" if np.isnan(ov["jaccard"]) else f"{ov['jaccard']:.3f}")
    mc[4].metric("Spearman ρ of the scores", "—" if np.isnan(rho) else f"{rho:.3f}",
                 help=f"rank correlation of {score} and {cmp_score} over the {n_rho:,} samples that have both")
    g1, g2 = st.columns([3, 2])
    g1.vega_lite_chart(*charts.compare_spec(table, table_b, title=f"Inclusion rate by {glabel}: A vs B",
                                            label_a="A keeps " + _short(keeps_a),
                                            label_b="B keeps " + _short(rb.rules[0].keeps if len(rb.rules) == 1 and not cmp_recipe.strip()
                                                                       else str(rb))), width="stretch")
    g2.vega_lite_chart(*ui.density_spec(store, score, cmp_score), width="stretch")


def _examples(keep, tau: float, table) -> None:
    """Examples of one group on each side of the filter: from the page's draw when one rule (a move picks among
    them), else a seeded draw from the recipe's kept and excluded samples."""
    gsel = st.selectbox("Group", table.sort_values("n", ascending=False)["group"].tolist(), key="sample_group")
    reveal = st.toggle("Reveal NSFW thumbnails", value=False, help="Thumbnails flagged NSFW are blurred until revealed.")
    blur = ui.blur_uids(store)
    if keep is None:   # examples from a draw made once per (score, group): a move picks among them
        gallery = ui.group_gallery(store, score, group, gsel)
        row = table.loc[table["group"] == gsel].iloc[0]
        for title, kept_side, n_side in (("Kept", True, int(row["kept"])), ("Excluded", False, int(row["n"] - row["kept"]))):
            pos = gallery.pick(float(tau), kept_side)
            if len(pos) < min(8, n_side) and not gallery.complete:   # a rare side: examples from the whole group
                extra = ui.samples_at(store, tuple(int(r) for r in ui.more_examples(
                    store, score, group, gsel, float(tau), kept_side)["row"]), ui.GRID_COLUMNS)
                shown, grid = len(extra), ui.sample_grid(extra, reveal=reveal, blur_uids=blur) if len(extra) else None
            else:
                shown, grid = len(pos), gallery.grid(pos, reveal=reveal, blur_uids=blur) if len(pos) else None
            st.markdown(f"**{title}** ({n_side:,} in {ui.md(gsel)}; showing {shown})")
            ui.show_grid(grid)
    else:
        codes, labels = ui.group_codes(store, group)
        in_group = codes == int(np.flatnonzero(labels == gsel)[0])
        rng = np.random.default_rng(0)
        for title, mask in (("Kept", in_group & keep), ("Excluded", in_group & ~keep)):
            idx = np.flatnonzero(mask)
            pick = np.sort(rng.choice(idx, size=min(8, len(idx)), replace=False)) if len(idx) else idx
            st.markdown(f"**{title}** ({len(idx):,} in {ui.md(gsel)}; showing {len(pick)})")
            frame = ui.samples_at(store, tuple(int(x) for x in pick), ui.GRID_COLUMNS)
            ui.show_samples(store, frame, reveal=reveal, blur_uids=blur)


live()
