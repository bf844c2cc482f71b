"""Export the audited subset: CSV, Parquet or DataComp uid .npy, with a manifest of every setting."""

import streamlit as st

from audit import ui
from audit.export.csvsafe import json_safe, strict_json
from audit.export.writer import manifest
from audit.decide.selection import Rule, RuleError

store, info = ui.page("Export")

current = st.session_state.get("keep_specs", [])
st.markdown("The selection from **Filter preview** is carried here; add more rules (they intersect), one per line, "
            "as `SCORE>=VALUE`, `SCORE<=VALUE` or `SCORE:top=FRACTION`.")
text = st.text_area("Keep rules", "\n".join(current), key="export_rules", height=100)
specs = [s.strip() for s in text.splitlines() if s.strip()]
try:
    rules = [Rule.parse(s) for s in specs]
except RuleError as exc:
    st.error(str(exc))
    st.stop()


g1, g2 = st.columns([3, 1.2])
by = g1.multiselect("Group columns to include (label and confidence; their method goes in the manifest)",
                    store.group_columns(), key="export_by", format_func=lambda g: ui.group_label(store, g))
all_rows = g2.checkbox("Every sample, with its decision", key="export_all_rows",
                       help="Adds the excluded samples with keep = 0 and the rules they failed, so inclusion rates "
                            "by group can be computed from the file (CSV and Parquet).")
try:
    sel = ui.rule_selection(store, tuple(specs))
except RuleError as exc:
    st.error(str(exc))
    st.stop()
kept, n = int(sel.keep.sum()), len(sel.keep)
c = st.columns(3)
c[0].metric("Kept", f"{kept:,}")
c[1].metric("Excluded", f"{n - kept:,}")
c[2].metric("Rules", len(rules))
if sel.failed:
    st.dataframe([{"excluded because": r, "samples": k} for r, k in sel.counts_by_reason().items()], hide_index=True)
st.caption("Every score column is included. CSV cells starting with = + - @ are prefixed with ' so spreadsheets "
           "do not run them as formulas. The first kept samples:")
st.dataframe(ui.blank_missing(ui.export_preview(store, tuple(specs))), hide_index=True, width="stretch")

if not rules:
    st.info("No keep rules: the whole pool would be exported. Pick a filter on **Filter preview** or type rules above.")
if n > 2_000_000:
    st.caption(f"The file is built when you click, from all {n:,} samples: for a pool this size "
               f"`python -m audit export --store … --keep {' '.join(specs) or '…'} --out subset.parquet` writes "
               "the same file without holding it in the dashboard.")
cols = st.columns(4)
hex_uids = not sel.keep[ui.non_hex_uid_rows(store)].any()
for col, fmt, mime, label in ((cols[0], "csv", "text/csv", "CSV"),
                              (cols[1], "parquet", "application/octet-stream", "Parquet"),
                              (cols[2], "npy", "application/octet-stream", "DataComp uid .npy")):
    if fmt == "npy" and not hex_uids:
        col.warning("DataComp .npy needs 32-hex DataComp uids; some kept uids are not.")
        continue
    # rendered only when clicked (a callable), so a rerun does not serialise three formats
    if fmt == "npy" and all_rows:
        col.caption("A DataComp .npy lists kept uids only.")
        continue
    col.download_button(f"Download {label}",
                        lambda fmt=fmt: ui.render_export(store, tuple(specs), tuple(by), fmt, bool(all_rows)),
                        file_name=f"audited_subset.{fmt}",
                        mime=mime, key=f"dl_{fmt}", on_click="ignore")
man = manifest(store, rules, sel, "dashboard", store_path=ui.store_path(),
               extra={"all_rows": bool(all_rows), "group_columns": list(by)})
cols[3].download_button("Download manifest (JSON)", strict_json(man, indent=2),
                        file_name="audited_subset.manifest.json", mime="application/json", key="dl_manifest")
with st.expander("Manifest"):
    st.json(json_safe({k2: v for k2, v in man.items() if k2 not in ("runs",)}))
