"""Export the audited subset: CSV, Parquet or DataComp uid .npy, with a manifest of every setting."""

import streamlit as st

from pathlib import Path

from audit import ui
from audit.export.csvsafe import json_safe, strict_json
from audit.export.writer import manifest
from audit.decide.selection import Rule, RuleError

store, info = ui.page("Export")
LARGE_FILE_ROWS = 1_000_000   # above this a CSV/Parquet file is written on the server, not held for a download

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
cols = st.columns(4)
hex_uids = not sel.keep[ui.non_hex_uid_rows(store)].any()
big = (n if all_rows else kept) > LARGE_FILE_ROWS
for col, fmt, mime, label in ((cols[0], "csv", "text/csv", "CSV"),
                              (cols[1], "parquet", "application/octet-stream", "Parquet"),
                              (cols[2], "npy", "application/octet-stream", "DataComp uid .npy")):
    if fmt == "npy" and not hex_uids:
        col.warning("DataComp .npy needs 32-hex DataComp uids; some kept uids are not.")
        continue
    if fmt == "npy" and all_rows:
        col.caption("A DataComp .npy lists kept uids only.")
        continue
    if big and fmt != "npy":
        col.caption(f"{label}: {n if all_rows else kept:,} rows are too many to hold in the browser; write the file "
                    "on the server below.")
        continue
    # rendered only when clicked (a callable), so a rerun does not serialise three formats
    col.download_button(f"Download {label}",
                        lambda fmt=fmt: ui.render_export(store, tuple(specs), tuple(by), fmt, bool(all_rows)),
                        file_name=f"audited_subset.{fmt}",
                        mime=mime, key=f"dl_{fmt}", on_click="ignore")

with st.form("write_on_server"):
    st.markdown("**Write the file on the server** (streamed: any pool size; the same file as "
                f"`python -m audit export --store … --keep {' '.join(specs) or '…'} --out FILE`)")
    w1, w2 = st.columns([4, 1])
    target = w1.text_input("File (.csv, .parquet or .npy)", str(Path(ui.store_path()).parent / "exports" /
                                                                 "audited_subset.parquet"), key="export_target")
    go = w2.form_submit_button("Write", type="primary")
if go:
    from audit.export.writer import export

    lines = []
    try:
        with st.spinner(f"Writing {n if all_rows else kept:,} rows to {target} …"):
            written = export(ui.store_path(), target, specs, by=list(by), all_rows=bool(all_rows), echo=lines.append)
    except (ValueError, RuleError, OSError) as exc:
        st.error(f"Not written: {exc}")
    else:
        st.success(f"Wrote {written['file']['rows']:,} rows ({written['file']['bytes'] / 1e6:,.1f} MB) to {target}, "
                   f"manifest {target}.manifest.json. It reads the store as it is now"
                   + (" (newer than this page: reload to see the same data)" if ui.store_is_newer() else "") + ".")
        for line in lines[1:]:
            st.caption(line)
man = manifest(store, rules, sel, "dashboard", store_path=ui.store_path(),
               extra={"all_rows": bool(all_rows), "group_columns": list(by)})
cols[3].download_button("Download manifest (JSON)", strict_json(man, indent=2),
                        file_name="audited_subset.manifest.json", mime="application/json", key="dl_manifest")
with st.expander("Manifest"):
    st.json(json_safe({k2: v for k2, v in man.items() if k2 not in ("runs",)}))
